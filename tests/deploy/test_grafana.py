"""The city dashboard's every query, run against the history our broker wrote from real Beijing data.

Data: four days of the UCI Beijing station Aotizhongxin ingested through `climaborough ingest`,
KPIs backfilled by `climaborough kpi run --since/--until`, twin forecasts written in the twin's
own entity shape (`twin.service.forecast_entities`) for several forecast origins. SQL panels run
on the tenant's database (the one the broker writes, with the Grafana view); Infinity panels are
sent to the broker's NGSI-LD API with the panel's headers and read with the panel's selectors.

Grafana macros are expanded the way Grafana's PostgreSQL datasource does (docs/deploy.md):
`$__timeFilter(c)` → `c BETWEEN '<from>' AND '<to>'` (RFC 3339 UTC), `$__timeGroupAlias(c, '1h')`
→ `floor(extract(epoch from c)/3600)*3600 AS "time"` (`time_bucket('3600s', c) AS "time"` with
TimescaleDB), `$__timeFrom()`/`$__timeTo()` → the quoted bounds; `$var`/`${var}` → the
variable's value, `${__from:date:iso}`/`${__to:date:iso}` → the bounds in ISO 8601.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml

from ngsi.client import BrokerClient
from smart_data_models.models import KPI_CONTEXT
from twin.service import Forecast, StationSources, eea_bands, forecast_entities

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "city.json"
DATASOURCES = REPO / "docker" / "grafana" / "provisioning" / "datasources" / "climaborough.yaml"
SAMPLE = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
STATION = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
HOURS = 96
FROM = datetime(2013, 2, 28, 16, tzinfo=UTC)  # 2013-03-01 00:00 Beijing time
TO = FROM + timedelta(hours=HOURS)
VARIABLES = {"pollutant": "pm25", "station": STATION}


# -- Grafana's macro expansion ------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(interval: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smhd])", interval.strip().strip("'\"")).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def expand(text: str, start: datetime, end: datetime, variables: dict[str, str], *, timescaledb: bool = False) -> str:
    """A query as Grafana sends it, for the time range [start, end] and these variable values."""

    def time_group(match: re.Match[str]) -> str:
        column, interval = (part.strip() for part in match.group(1).split(",", 1))
        seconds = _seconds(interval)
        if timescaledb:
            return f"time_bucket('{seconds}s', {column}) AS \"time\""
        return f'floor(extract(epoch from {column})/{seconds})*{seconds} AS "time"'

    text = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", time_group, text)
    text = re.sub(
        r"\$__timeFilter\(([^)]*)\)",
        lambda m: f"{m.group(1).strip()} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'",
        text,
    )
    text = text.replace("$__timeFrom()", f"'{_rfc3339(start)}'").replace("$__timeTo()", f"'{_rfc3339(end)}'")
    text = text.replace("${__from:date:iso}", _rfc3339(start)).replace("${__to:date:iso}", _rfc3339(end))
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in text.replace("$$", ""), f"unexpanded Grafana syntax left in: {text}"
    return text


def select(document: Any, selector: str) -> Any:
    """An Infinity backend-parser selector (dotted path, numbers index arrays); '' is the document."""
    value = document
    for part in filter(None, selector.split(".")):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


# -- the data -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def sql_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in dashboard()["panels"] for target in panel["targets"]
            if "rawSql" in target]  # fmt: skip


def infinity_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in dashboard()["panels"] for target in panel["targets"]
            if target.get("source") == "url"]  # fmt: skip


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _forecasts(broker_url: str, tenant: str) -> None:
    """Forecasts made every 6 hours over the period, each written as the twin writes them."""
    sources = StationSources.named(STATION, None)
    with BrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as client:
        for origin_hour in range(24, HOURS - 24, 6):
            origin = pd.Timestamp(FROM + timedelta(hours=origin_hour))
            values = np.linspace(30.0, 80.0, 24) + origin_hour
            forecast = Forecast(STATION, "pm25", "v1", origin, "test", values, values * 0.8, values * 1.2,
                                eea_bands("pm25", values))  # fmt: skip
            result = client.batch_upsert(forecast_entities(forecast, sources, ["pm25"]))
            assert result.ok, result


@pytest.fixture(scope="module")
def history(broker_url: str, postgres_url: str) -> Iterator[tuple[str, str]]:
    """(tenant, URL of the tenant's history database) loaded with real data."""
    tenant = f"grafana{os.getpid()}"
    folder = Path(tempfile.mkdtemp(prefix="climaborough-grafana-"))
    sample = folder / SAMPLE.name
    with SAMPLE.open(encoding="utf-8") as source:
        sample.write_text("".join(line for _, line in zip(range(HOURS + 1), source, strict=False)), encoding="utf-8")
    env = {**os.environ, "CLIMABOROUGH_BROKER_URL": broker_url, "CLIMABOROUGH_TENANT": tenant,
           "CLIMABOROUGH_DATA_DIR": str(folder)}  # fmt: skip
    cli = [sys.executable, "-m", "cli.main"]
    _run([*cli, "ingest", str(sample), "--mapping", "beijing_multisite", "--tenant", tenant], env)
    _run([*cli, "kpi", "run", "--since", _rfc3339(FROM), "--until", _rfc3339(TO),
          "--kpi", "eea-air-quality-index", "--kpi", "pm25-daily-mean"], env)  # fmt: skip
    _forecasts(broker_url, tenant)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        names = [row[0] for row in connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"%\\_{tenant}",)).fetchall()]  # fmt: skip
    assert len(names) == 1, names
    yield tenant, urlsplit(postgres_url)._replace(path=f"/{names[0]}").geturl()


@pytest.fixture(scope="module")
def query(history: tuple[str, str]) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    with psycopg.connect(history[1], autocommit=True) as connection:

        def run(sql: str) -> list[dict[str, Any]]:
            cursor = connection.execute(sql)
            columns = [column.name for column in cursor.description or []]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

        yield run


def panel_rows(title_part: str, query: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    (target,) = [target for title, target in sql_targets() if title_part in title]
    return query(expand(target["rawSql"], FROM, TO, VARIABLES))


# -- the dashboard and its datasources ----------------------------------------------------------


def test_dashboard_has_the_city_panels_on_the_provisioned_datasources() -> None:
    board = dashboard()
    provisioned = {source["uid"]: source["type"] for source in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    kinds = {panel["type"] for panel in board["panels"]}
    assert {"geomap", "timeseries", "table"} <= kinds
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert provisioned[target["datasource"]["uid"]] == target["datasource"]["type"], panel["title"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])


def test_every_sql_panel_returns_rows_in_the_time_range(query: Callable[[str], list[dict[str, Any]]]) -> None:
    for title, target in sql_targets():
        rows = query(expand(target["rawSql"], FROM, TO, VARIABLES))
        assert rows, f"panel {title!r} is empty"


def test_every_sql_panel_also_runs_with_timescaledb_macros_on_plain_postgres_shapes() -> None:
    for _, target in sql_targets():
        expanded = expand(target["rawSql"], FROM, TO, VARIABLES, timescaledb=True)
        assert "$__" not in expanded


def test_pollutant_series_are_hourly_real_concentrations(query: Callable[[str], list[dict[str, Any]]]) -> None:
    rows = panel_rows("per station", query)
    assert {row["metric"] for row in rows} == {"Aotizhongxin"}
    assert len(rows) == HOURS - sum(1 for row in rows if row["value"] is None)
    assert all(0 <= row["value"] < 1000 for row in rows)
    first = min(rows, key=lambda row: row["time"])
    assert first["time"] == FROM.timestamp() and first["value"] == 4  # the CSV's first PM2.5


def test_eea_index_is_one_band_per_hour(query: Callable[[str], list[dict[str, Any]]]) -> None:
    rows = panel_rows("European Air Quality Index", query)
    assert {row["metric"] for row in rows} == {"Aotizhongxin"}
    assert len(rows) >= HOURS - 4
    assert {row["value"] for row in rows} <= {1, 2, 3, 4, 5, 6}
    assert len({row["value"] for row in rows}) > 1


def test_kpi_table_has_the_latest_value_of_each_kpi(query: Callable[[str], list[dict[str, Any]]]) -> None:
    rows = panel_rows("KPIs", query)
    kpis = {row["kpi"] for row in rows}
    assert {"eea-air-quality-index", "pm25-daily-mean", "twin-pm25-forecast"} <= kpis
    daily = [row for row in rows if row["kpi"] == "pm25-daily-mean"]
    assert daily and all(0 < row["value"] < 1000 for row in daily)


def test_twin_panel_puts_forecast_and_observation_side_by_side(query: Callable[[str], list[dict[str, Any]]]) -> None:
    rows = panel_rows("Twin", query)
    observed = {row["time"]: row["value"] for row in rows if row["metric"].endswith("observed")}
    forecast = {row["time"]: row["value"] for row in rows if row["metric"].endswith("forecast +1 h")}
    assert observed and forecast
    assert set(forecast) <= set(observed), "one-hour-ahead forecasts fall on observed hours"
    origins = range(24, HOURS - 24, 6)
    assert len(forecast) == len(origins)
    assert {value for value in forecast.values()} == {round(30.0 + hour, 2) for hour in origins}


def test_station_variable_lists_the_station(query: Callable[[str], list[dict[str, Any]]]) -> None:
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "station")
    assert [row["entity"] for row in query(expand(variable["query"], FROM, TO, VARIABLES))] == [STATION]


def test_infinity_panels_read_the_stations_and_their_history_from_the_ngsi_ld_api(
    broker_url: str, history: tuple[str, str]
) -> None:
    tenant = history[0]
    for title, target in infinity_targets():
        headers = {header["key"]: header["value"] for header in target["url_options"]["headers"]}
        url = expand(target["url"], FROM, TO, VARIABLES)
        response = httpx.get(broker_url + url, headers={**headers, "NGSILD-Tenant": tenant}, timeout=30)
        assert response.status_code == 200, f"{title}: {response.status_code} {response.text[:500]}"
        rows = select(response.json(), expand(target["root_selector"], FROM, TO, VARIABLES))
        assert isinstance(rows, list) and rows, f"panel {title!r} is empty"
        columns = {column["text"]: column for column in target["columns"]}
        values = [{name: select(row, expand(c["selector"], FROM, TO, VARIABLES)) for name, c in columns.items()}
                  for row in rows]  # fmt: skip
        if "latitude" in columns:
            (station,) = [value for value in values if value["station"] == STATION]
            assert (station["longitude"], station["latitude"]) == (116.397, 39.982)
            assert isinstance(station["$pollutant"], int | float)
        else:
            assert len(values) == HOURS - sum(1 for value in values if value["$pollutant"] is None)
            times = [datetime.fromisoformat(value["time"].replace("Z", "+00:00")) for value in values]
            assert all(FROM <= moment <= TO for moment in times)

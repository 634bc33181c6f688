"""The temporal API over real HTTP: a week of Beijing air quality in, history and aggregates out."""

from __future__ import annotations

import csv
import math
import statistics
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "aotizhongxin_2013-03-01_07.csv"
BEIJING = timezone(timedelta(hours=8))
API = "/ngsi-ld/v1"
SDM_ENV = "https://smartdatamodels.org/dataModel.Environment/"
CONTEXT_LINK = "<https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld>"
CORE_LD = "application/ld+json"


@dataclass(frozen=True)
class Reading:
    at: datetime  # UTC
    no2: float | None
    pm25: float | None
    wd: str | None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def load_readings() -> list[Reading]:
    readings = []
    with FIXTURE.open(newline="") as handle:
        for row in csv.DictReader(handle):
            local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=BEIJING)

            def number(text: str) -> float | None:
                return None if text == "NA" else float(text)

            readings.append(
                Reading(local.astimezone(UTC), number(row["NO2"]), number(row["PM2.5"]),
                        None if row["wd"] == "NA" else row["wd"])
            )  # fmt: skip
    return readings


READINGS = load_readings()
ENTITY = "urn:ngsi-ld:AirQualityObserved:beijing:aotizhongxin"


def instances(attr: str, unit: str) -> list[dict[str, Any]]:
    out = []
    for reading in READINGS:
        value = getattr(reading, attr)
        if value is None:
            continue
        out.append({"type": "Property", "value": value, "unitCode": unit, "observedAt": iso(reading.at)})
    return out


def wind_instances() -> list[dict[str, Any]]:
    return [{"type": "Property", "value": r.wd, "observedAt": iso(r.at)} for r in READINGS if r.wd is not None]


@pytest.fixture(scope="module")
async def loaded(broker_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A tenant holding the fixture week: created with day one, the rest appended (the backfill path)."""
    tenant = f"temporal{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=broker_url, timeout=60, headers={"NGSILD-Tenant": tenant}) as client:
        no2, pm25, wind = instances("no2", "GQ"), instances("pm25", "GQ"), wind_instances()
        first = {"id": ENTITY, "type": "AirQualityObserved", "no2": no2[:24], "pm25": pm25[:24],
                 "windDirection": wind[:24]}  # fmt: skip
        created = await client.post(f"{API}/temporal/entities", json=first)
        assert created.status_code == 201, created.text
        assert created.headers["location"].endswith(ENTITY)
        appended = await client.post(
            f"{API}/temporal/entities/{ENTITY}/attrs",
            json={"no2": no2[24:], "pm25": pm25[24:], "windDirection": wind[24:]},
        )
        assert appended.status_code == 204, appended.text
        other = {
            "id": "urn:ngsi-ld:WeatherObserved:beijing:aotizhongxin",
            "type": "WeatherObserved",
            "temperature": [{"type": "Property", "value": 3.5, "observedAt": "2013-03-01T00:00:00Z"}],
        }
        assert (await client.post(f"{API}/temporal/entities", json=other)).status_code == 201
        yield client, tenant


async def get_entity(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/temporal/entities/{ENTITY}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def no2_series(start: datetime | None = None, end: datetime | None = None) -> list[tuple[datetime, float]]:
    return [
        (r.at, r.no2) for r in READINGS
        if r.no2 is not None and (start is None or r.at >= start) and (end is None or r.at < end)
    ]  # fmt: skip


async def test_history_holds_every_reading_in_time_order(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    entity = await get_entity(client)
    assert entity["id"] == ENTITY
    assert entity["type"] == "AirQualityObserved"
    expected = no2_series()
    got = entity["no2"]
    assert [i["value"] for i in got] == [v for _, v in expected]
    assert [i["observedAt"] for i in got] == [iso(t) for t, _ in expected]
    assert all(i["type"] == "Property" and i["unitCode"] == "GQ" and i["instanceId"] for i in got)
    assert [i["value"] for i in entity["windDirection"]] == [r.wd for r in READINGS if r.wd is not None]


async def test_between_keeps_instances_from_time_at_up_to_end_time_at(
    loaded: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = loaded
    start, end = datetime(2013, 3, 3, tzinfo=UTC), datetime(2013, 3, 4, 12, tzinfo=UTC)
    entity = await get_entity(client, timerel="between", timeAt=iso(start), endTimeAt=iso(end), attrs="no2")
    assert [i["value"] for i in entity["no2"]] == [v for _, v in no2_series(start, end)]
    assert "pm25" not in entity


async def test_before_and_after_split_the_history(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    cut = datetime(2013, 3, 5, 6, tzinfo=UTC)
    before = await get_entity(client, timerel="before", timeAt=iso(cut), attrs="no2")
    after = await get_entity(client, timerel="after", timeAt=iso(cut), attrs="no2")
    assert len(before["no2"]) == len(no2_series(end=cut))
    assert len(after["no2"]) == len(no2_series(start=cut))


async def test_last_n_gives_the_most_recent_instances(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    entity = await get_entity(client, lastN="5", attrs="no2")
    assert [i["value"] for i in entity["no2"]] == [v for _, v in no2_series()[-5:]]


async def test_temporal_values_is_the_simplified_representation(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    entity = await get_entity(client, options="temporalValues", attrs="no2")
    assert entity["no2"]["type"] == "Property"
    assert entity["no2"]["values"] == [[v, iso(t)] for t, v in no2_series()]


async def test_concise_instances_drop_the_type(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    entity = await get_entity(client, options="concise", attrs="no2", lastN="1")
    assert entity["no2"] == [{"value": no2_series()[-1][1], "observedAt": iso(no2_series()[-1][0]),
                              "unitCode": "GQ", "instanceId": entity["no2"][0]["instanceId"]}]  # fmt: skip


def buckets(series: list[tuple[datetime, float]], origin: datetime, step: timedelta) -> dict[datetime, list[float]]:
    grouped: dict[datetime, list[float]] = defaultdict(list)
    for at, value in series:
        grouped[origin + step * math.floor((at - origin) / step)].append(value)
    return dict(sorted(grouped.items()))


def expected_aggregates(values: list[float]) -> dict[str, float]:
    return {
        "totalCount": len(values),
        "distinctCount": len(set(values)),
        "sum": sum(values),
        "avg": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stddev": statistics.stdev(values) if len(values) > 1 else float("nan"),
        "sumsq": sum(v * v for v in values),
    }


ALL_METHODS = "totalCount,distinctCount,sum,avg,min,max,stddev,sumsq"


@pytest.mark.parametrize("duration,step", [("P1D", timedelta(days=1)), ("PT6H", timedelta(hours=6))])
async def test_aggregates_per_period_match_plain_python(
    loaded: tuple[httpx.AsyncClient, str], duration: str, step: timedelta
) -> None:
    client, _ = loaded
    start, end = datetime(2013, 3, 1, tzinfo=UTC), datetime(2013, 3, 7, tzinfo=UTC)
    entity = await get_entity(
        client, timerel="between", timeAt=iso(start), endTimeAt=iso(end), attrs="no2",
        aggrMethods=ALL_METHODS, aggrPeriodDuration=duration,
    )  # fmt: skip
    expected = buckets(no2_series(start, end), start, step)
    aggregated = entity["no2"]
    assert aggregated["type"] == "Property"
    for method in ALL_METHODS.split(","):
        got = aggregated[method]
        wanted = [(b, expected_aggregates(v)[method]) for b, v in expected.items()]
        wanted = [(b, w) for b, w in wanted if not math.isnan(w)]
        assert [g[1] for g in got] == [iso(b) for b, _ in wanted], method
        assert [g[2] for g in got] == [iso(b + step) for b, _ in wanted], method
        for (value, *_), (_, w) in zip(got, wanted, strict=True):
            assert value == pytest.approx(w, rel=1e-9), method


async def test_calendar_month_and_whole_interval_periods(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    # The fixture starts 2013-02-28T16:00Z (Beijing midnight): February and March are two months.
    monthly = await get_entity(client, attrs="no2", aggrMethods="avg,totalCount", aggrPeriodDuration="P1M")
    series = no2_series()
    february = [v for t, v in series if t.month == 2]
    march = [v for t, v in series if t.month == 3]
    assert monthly["no2"]["totalCount"] == [
        [len(february), "2013-02-01T00:00:00.000Z", "2013-03-01T00:00:00.000Z"],
        [len(march), "2013-03-01T00:00:00.000Z", "2013-04-01T00:00:00.000Z"],
    ]
    assert monthly["no2"]["avg"][1][0] == pytest.approx(statistics.fmean(march))
    start, end = datetime(2013, 3, 2, tzinfo=UTC), datetime(2013, 3, 4, tzinfo=UTC)
    whole = await get_entity(client, attrs="no2", aggrMethods="max", timerel="between", timeAt=iso(start),
                             endTimeAt=iso(end))  # fmt: skip
    assert whole["no2"]["max"] == [[max(v for _, v in no2_series(start, end)), iso(start), iso(end)]]


async def test_the_longest_periods_aggregate_and_longer_ones_are_400(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    # 999 years (calendar) and 365,000 days (fixed) fit PostgreSQL's timestamps; longer ones were 500s.
    for period in ("P999Y", "P365000D"):
        whole = await get_entity(client, attrs="no2", aggrMethods="totalCount", aggrPeriodDuration=period)
        assert sum(count for count, *_ in whole["no2"]["totalCount"]) == len(no2_series()), period
    for period in ("PT1000000000H", "P100000Y", "P9999999999999999999D"):
        response = await client.get(f"{API}/temporal/entities/{ENTITY}", params={
            "attrs": "no2", "aggrMethods": "avg", "aggrPeriodDuration": period})
        assert response.status_code == 400 and response.json()["parameter"] == "aggrPeriodDuration", response.text


async def test_aggregates_without_attrs_cover_every_attribute_and_keep_millisecond_periods(
    loaded: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = loaded
    # Periods counted from a time with milliseconds start and end on those milliseconds.
    start, end = datetime(2013, 3, 2, 0, 0, 0, 250_000, tzinfo=UTC), datetime(2013, 3, 3, tzinfo=UTC)
    entity = await get_entity(
        client, timerel="between", timeAt="2013-03-02T00:00:00.250Z", endTimeAt=iso(end),
        aggrMethods="totalCount,max", aggrPeriodDuration="PT12H",
    )  # fmt: skip
    assert {"no2", "pm25", "windDirection"} <= entity.keys()
    expected = buckets(no2_series(start, end), start, timedelta(hours=12))
    with_ms = "%Y-%m-%dT%H:%M:%S.250Z"
    assert entity["no2"]["totalCount"] == [
        [len(values), at.strftime(with_ms), (at + timedelta(hours=12)).strftime(with_ms)]
        for at, values in expected.items()
    ]
    assert [v for v, *_ in entity["no2"]["max"]] == [max(values) for values in expected.values()]
    # Text values are counted, but have no maximum.
    assert sum(v for v, *_ in entity["windDirection"]["totalCount"]) == len(
        [r for r in READINGS if r.wd is not None and start <= r.at < end]
    )
    assert entity["windDirection"]["max"] == []


async def test_query_selects_entities_by_type_and_counts_them(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    response = await client.get(f"{API}/temporal/entities",
                                params={"type": "AirQualityObserved", "lastN": "2", "count": "true"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["NGSILD-Results-Count"] == "1"
    [entity] = response.json()
    assert entity["id"] == ENTITY and len(entity["no2"]) == 2
    only_count = await client.get(f"{API}/temporal/entities", params={"type": "AirQualityObserved", "count": "true",
                                                                       "limit": "0"})
    assert only_count.json() == [] and only_count.headers["NGSILD-Results-Count"] == "1"  # it said 0
    by_pattern = await client.get(f"{API}/temporal/entities",
                                  params={"idPattern": ".*:beijing:.*", "attrs": "temperature"})  # fmt: skip
    assert [e["id"] for e in by_pattern.json()] == ["urn:ngsi-ld:WeatherObserved:beijing:aotizhongxin"]


async def test_post_query_answers_as_the_get_with_the_same_terms(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    start, end = "2013-03-02T00:00:00Z", "2013-03-03T00:00:00Z"
    got = await client.get(f"{API}/temporal/entities", params={
        "type": "AirQualityObserved", "attrs": "no2", "timerel": "between", "timeAt": start,
        "endTimeAt": end, "options": "temporalValues", "count": "true"})
    query = {"type": "Query", "entities": [{"type": "AirQualityObserved"}], "attrs": ["no2"],
             "temporalQ": {"timerel": "between", "timeAt": start, "endTimeAt": end}}
    posted = await client.post(f"{API}/temporal/entityOperations/query", json=query,
                               params={"options": "temporalValues", "count": "true"})
    assert posted.status_code == 200, posted.text
    assert posted.json() == got.json() and posted.json()[0]["no2"]["values"]
    assert posted.headers["NGSILD-Results-Count"] == got.headers["NGSILD-Results-Count"] == "1"
    # Several selectors are any of them.
    both = await client.post(f"{API}/temporal/entityOperations/query", params={"lastN": "1"}, json={
        "type": "Query", "entities": [{"type": "AirQualityObserved"}, {"type": "WeatherObserved"}]})
    assert sorted(e["type"] for e in both.json()) == ["AirQualityObserved", "WeatherObserved"], both.text
    bad = await client.post(f"{API}/temporal/entityOperations/query", json={"type": "Query", "temporalQ": 5})
    assert bad.status_code == 400 and bad.json()["parameter"] == "temporalQ"


async def test_names_are_expanded_with_the_request_context(loaded: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = loaded
    entity_id = "urn:ngsi-ld:AirQualityObserved:beijing:linked"
    body = {
        "id": entity_id,
        "type": "AirQualityObserved",
        "no2": [{"type": "Property", "value": 40, "observedAt": "2013-03-01T00:00:00Z"}],
        "@context": {"no2": SDM_ENV + "no2", "AirQualityObserved": SDM_ENV + "AirQualityObserved"},
    }
    response = await client.post(f"{API}/temporal/entities", content=httpx.Request("POST", "/", json=body).content,
                                 headers={"Content-Type": CORE_LD})  # fmt: skip
    assert response.status_code == 201, response.text
    plain = await client.get(f"{API}/temporal/entities/{entity_id}")
    assert SDM_ENV + "no2" in plain.json() and plain.json()["type"] == SDM_ENV + "AirQualityObserved"


async def test_answers_are_cut_with_206_and_a_date_time_content_range(broker_url: str, tenant: str) -> None:
    entity_id = "urn:ngsi-ld:AirQualityObserved:test:long"
    start = datetime(2020, 1, 1, tzinfo=UTC)
    many = [{"type": "Property", "value": i, "observedAt": iso(start + timedelta(minutes=i))} for i in range(1500)]
    async with httpx.AsyncClient(base_url=broker_url, timeout=60, headers={"NGSILD-Tenant": tenant}) as client:
        created = await client.post(f"{API}/temporal/entities", json={"id": entity_id, "type": "T", "n": many})
        assert created.status_code == 201, created.text
        cut = await client.get(f"{API}/temporal/entities/{entity_id}")
        assert cut.status_code == 206
        values = [i["value"] for i in cut.json()["n"]]
        assert values == list(range(len(values))) and 0 < len(values) < 1500
        assert cut.headers["Content-Range"] == (
            f"date-time {iso(start)}-{iso(start + timedelta(minutes=len(values) - 1))}/*"
        )
        last = await client.get(f"{API}/temporal/entities/{entity_id}", params={"lastN": "1200"})
        assert last.status_code == 206
        got = [i["value"] for i in last.json()["n"]]
        assert got == list(range(1500 - len(got), 1500))
        assert last.headers["Content-Range"].endswith("/1200")
        assert last.headers["Content-Range"].startswith(f"date-time {iso(start + timedelta(minutes=1499))}-")
        small = await client.get(f"{API}/temporal/entities/{entity_id}", params={"lastN": "10"})
        assert small.status_code == 200 and len(small.json()["n"]) == 10


BAD_QUERIES = [
    ({"timerel": "before"}, "timeAt"),
    ({"timerel": "between", "timeAt": "2013-03-01T00:00:00Z"}, "endTimeAt"),
    ({"timeAt": "2013-03-01T00:00:00Z"}, "timerel"),
    ({"timerel": "during", "timeAt": "2013-03-01T00:00:00Z"}, "timerel"),
    ({"timerel": "after", "timeAt": "yesterday"}, "timeAt"),
    ({"timerel": "between", "timeAt": "2013-03-02T00:00:00Z", "endTimeAt": "2013-03-01T00:00:00Z"}, "endTimeAt"),
    ({"aggrMethods": "median", "aggrPeriodDuration": "P1D"}, "aggrMethods"),
    ({"aggrMethods": "avg", "aggrPeriodDuration": "1 day"}, "aggrPeriodDuration"),
    ({"aggrMethods": "avg", "aggrPeriodDuration": "P1M2D"}, "aggrPeriodDuration"),
    ({"aggrPeriodDuration": "P1D"}, "aggrMethods"),
    ({"options": "aggregatedValues"}, "aggrMethods"),
    ({"lastN": "0"}, "lastN"),
    ({"lastN": "three"}, "lastN"),
    ({"timeproperty": "deletedAt"}, "timeproperty"),
]


@pytest.mark.parametrize("params,parameter", BAD_QUERIES)
async def test_bad_temporal_parameters_are_400_naming_the_parameter(
    loaded: tuple[httpx.AsyncClient, str], params: dict[str, str], parameter: str
) -> None:
    client, _ = loaded
    for path in (f"{API}/temporal/entities/{ENTITY}", f"{API}/temporal/entities"):
        response = await client.get(path, params={"type": "AirQualityObserved", **params})
        assert response.status_code == 400, (path, response.text)
        problem = response.json()
        assert problem["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")
        assert parameter in problem["detail"], problem


async def test_unknown_entity_is_404_and_missing_tenant_is_404(broker_url: str) -> None:
    async with httpx.AsyncClient(base_url=broker_url, timeout=30) as client:
        missing = await client.get(f"{API}/temporal/entities/urn:ngsi-ld:T:nothing")
        assert missing.status_code == 404
        assert missing.json()["type"].endswith("/ResourceNotFound")
        no_tenant = await client.get(f"{API}/temporal/entities/urn:ngsi-ld:T:x",
                                     headers={"NGSILD-Tenant": f"nobody{uuid.uuid4().hex[:6]}"})  # fmt: skip
        assert no_tenant.status_code == 404
        bad = await client.post(f"{API}/temporal/entities/urn:ngsi-ld:T:nothing/attrs",
                                json={"n": [{"type": "Property", "value": 1}]})  # fmt: skip
        assert bad.status_code == 404
        not_json = await client.post(
            f"{API}/temporal/entities", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400

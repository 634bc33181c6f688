"""Reading a station's history for the twin: through the NGSI-LD temporal API of any broker, or
straight from TRoE-shaped tables (Orion-LD's or ours) with psycopg for bulk reads.

Both return the same frame: a UTC DatetimeIndex and one column per attribute short name
(`pm25`, `temperature` …), numeric values only, several entities (an AirQualityObserved and
the WeatherObserved at or near the station) merged on time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ngsi.client import AsyncBrokerClient

_LAST_SEGMENT = re.compile(r"[^/#:]+$")
PAGE = timedelta(days=30)  # at most 720 hourly instances per attribute and request


def short_name(attribute: str) -> str:
    """`https://smartdatamodels.org/dataModel.Environment/pm25` → `pm25`; short names unchanged."""
    match = _LAST_SEGMENT.search(attribute)
    return match.group(0) if match else attribute


def _frame(points: Iterable[tuple[str, datetime, float]]) -> pd.DataFrame:
    rows = list(points)
    if not rows:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"))
    long = pd.DataFrame(rows, columns=["attribute", "time", "value"])
    long["time"] = pd.to_datetime(long["time"], utc=True)
    wide = long.pivot_table(index="time", columns="attribute", values="value", aggfunc="mean")
    wide.columns.name = None
    return wide.sort_index()


def _simplified_values(attribute: Any) -> list[tuple[Any, Any]]:
    """Values of one attribute in the simplified temporal form (GS CIM 009 4.5.8)."""
    parts = attribute if isinstance(attribute, list) else [attribute]
    values: list[tuple[Any, Any]] = []
    for part in parts:
        if isinstance(part, dict):
            values.extend((v[0], v[1]) for v in part.get("values", []) if isinstance(v, list) and len(v) >= 2)
    return values


async def read_history_api(
    client: AsyncBrokerClient,
    entity_ids: Sequence[str],
    attributes: Sequence[str],
    since: datetime,
    until: datetime,
) -> pd.DataFrame:
    """History of `attributes` of `entity_ids` between `since` and `until` over the temporal
    API, paged by time so that no answer is cut by the broker's instance limit."""
    points: list[tuple[str, datetime, float]] = []
    for entity_id in entity_ids:
        start = since
        while start < until:
            end = min(start + PAGE, until)
            entity = await client.get_temporal_entity(
                entity_id,
                attrs=list(attributes),
                options="temporalValues",
                timerel="between",
                time_at=start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                end_time_at=end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            )
            for name, attribute in entity.items():
                if name in ("id", "type", "@context"):
                    continue
                for value, moment in _simplified_values(attribute):
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        points.append((short_name(name), moment, float(value)))
            start = end
    return _frame(points)


def read_history_troe(
    conninfo: str,
    entity_ids: Sequence[str],
    attributes: Sequence[str],
    since: datetime,
    until: datetime,
) -> pd.DataFrame:
    """The same frame read directly from TRoE tables (`attributes`), for bulk training reads.

    Attribute ids in TRoE are expanded IRIs; they are matched by their last path segment.
    """
    import psycopg

    wanted = set(attributes)
    sql = """
        SELECT id, COALESCE(observedAt, ts) AS time, number
        FROM attributes
        WHERE entityId = ANY(%s) AND number IS NOT NULL
          AND opMode IS DISTINCT FROM 'Delete'
          AND COALESCE(observedAt, ts) >= %s AND COALESCE(observedAt, ts) < %s
    """
    naive = [moment.astimezone(UTC).replace(tzinfo=None) for moment in (since, until)]
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(sql, (list(entity_ids), naive[0], naive[1]))
        points = [
            (name, time, value)
            for attribute, time, value in cur
            if (name := short_name(attribute)) in wanted
        ]
    return _frame(points)

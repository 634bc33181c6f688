"""Reads the observations a KPI window needs from any broker's temporal API (GS CIM 009 6.18), page by page.

Requests use the simplified temporal representation (`options=temporalValues`) over
`timerel=between` slices of at most `slice_hours`; when a broker still cuts an answer (206 with
Content-Range, GS CIM 009 6.3.10), the next request starts at the earliest last instant among
the attributes it returned, and instances seen twice are merged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import numpy as np

from kpi.catalogue import Series
from kpi.observations import to_micros
from ngsi.client import AsyncBrokerClient, raise_for_problem
from smart_data_models import format_timestamp

log = logging.getLogger(__name__)

History = dict[str, dict[str, Series]]
"""Entity id → attribute → time-ordered (UTC) values."""

MAX_ENTITIES_PER_REQUEST = 100


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> datetime:
    # Cached: a notification's attributes, and every station's report of one hour, share their observedAt.
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _instances(attribute: Any) -> Iterable[tuple[Any, str]]:
    """(value, time) pairs of a simplified temporal attribute (one dict, or a list per datasetId)."""
    for dataset in attribute if isinstance(attribute, list) else [attribute]:
        if not isinstance(dataset, dict):
            continue
        if "values" in dataset:
            for pair in dataset["values"]:
                if isinstance(pair, list) and len(pair) >= 2:
                    yield pair[0], pair[1]
        elif "value" in dataset and "observedAt" in dataset:  # a broker answering in the normalized form
            yield dataset["value"], dataset["observedAt"]


async def read_history(
    client: AsyncBrokerClient,
    *,
    entity_type: str,
    attributes: Sequence[str],
    start: datetime,
    end: datetime,
    entity_ids: Sequence[str] | None = None,
    slice_hours: int = 960,
    numeric_only: bool = True,
) -> History:
    """Instances of `attributes` observed in `[start, end)`, for the given entities (or every one of the type).

    `numeric_only` (default) keeps numbers only, the input of calculators.
    """
    merged: dict[str, dict[str, dict[datetime, Any]]] = {}
    id_batches: list[Sequence[str] | None] = [None]
    if entity_ids is not None:
        ids = list(entity_ids)
        if not ids:
            return {}
        id_batches = [ids[i : i + MAX_ENTITIES_PER_REQUEST] for i in range(0, len(ids), MAX_ENTITIES_PER_REQUEST)]
    for batch in id_batches:
        cursor = start.astimezone(UTC)
        stop = end.astimezone(UTC)
        while cursor < stop:
            slice_end = min(stop, cursor + timedelta(hours=slice_hours))
            cursor = await _read_slice(
                client, merged, entity_type, attributes, batch, cursor, slice_end, numeric_only=numeric_only
            )
    return {
        entity_id: {attr: sorted(values.items()) for attr, values in attrs.items()}
        for entity_id, attrs in merged.items()
    }


async def _read_slice(
    client: AsyncBrokerClient,
    merged: dict[str, dict[str, dict[datetime, Any]]],
    entity_type: str,
    attributes: Sequence[str],
    ids: Sequence[str] | None,
    start: datetime,
    end: datetime,
    *,
    numeric_only: bool,
) -> datetime:
    """Read `[start, end)` (all entity pages); returns where the next read starts."""
    offset = 0
    resume = end
    while True:
        params = {
            "type": entity_type,
            "id": ",".join(ids) if ids else None,
            "attrs": ",".join(attributes),
            "timerel": "between",
            "timeAt": format_timestamp(start),
            "endTimeAt": format_timestamp(end),
            "options": "temporalValues",
            "limit": MAX_ENTITIES_PER_REQUEST,
            "offset": offset,
        }
        response = await client.request("GET", "/temporal/entities", params=params)
        raise_for_problem(response)
        entities = response.json()
        for entity in entities:
            last_per_attribute: list[datetime] = []
            target = merged.setdefault(entity["id"], {})
            for attr in attributes:
                if attr not in entity:
                    continue
                values = target.setdefault(attr, {})
                latest: datetime | None = None
                for value, stamp in _instances(entity[attr]):
                    moment = parse_time(stamp)
                    latest = moment if latest is None or moment > latest else latest
                    if not numeric_only:
                        values[moment] = value
                    elif (number := _number(value)) is not None:
                        values[moment] = number
                if latest is not None:
                    last_per_attribute.append(latest)
            if response.status_code == 206 and last_per_attribute:
                # Cut by the broker: resume where the first attribute stopped (no instance is skipped).
                resume = min(resume, min(last_per_attribute))
        if len(entities) < MAX_ENTITIES_PER_REQUEST:
            break
        offset += MAX_ENTITIES_PER_REQUEST
    if resume <= start:
        # More instances at one instant than a page holds: move on rather than loop.
        log.warning("temporal answer cut at its first instant %s; skipping to %s", start, end)
        return end
    return resume


StoredInstance = tuple[str, Any, str]
"""(observedAt as written, value, instanceId) of one history instance."""


async def read_instances(
    client: AsyncBrokerClient,
    entity_id: str,
    attributes: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    slice_hours: int = 960,
) -> dict[str, list[StoredInstance]]:
    """The instances of one entity's `attributes` observed in `[start, end)`, with their instanceIds (normalized form).

    An entity without history gives {}. Cut answers (206) are followed like `read_history`.
    """
    found: dict[str, dict[str, StoredInstance]] = {}
    cursor, stop = start.astimezone(UTC), end.astimezone(UTC)
    while cursor < stop:
        slice_end = min(stop, cursor + timedelta(hours=slice_hours))
        params = {
            "attrs": ",".join(attributes), "timerel": "between", "timeAt": format_timestamp(cursor),
            "endTimeAt": format_timestamp(slice_end),
        }  # fmt: skip
        response = await client.request("GET", f"/temporal/entities/{quote(entity_id, safe=':')}", params=params)
        if response.status_code == 404:
            return {}
        raise_for_problem(response)
        entity = response.json()
        last_per_attribute: list[datetime] = []
        for attr in attributes:
            attribute = entity.get(attr)
            if attribute is None:
                continue
            target = found.setdefault(attr, {})
            latest: datetime | None = None
            for instance in attribute if isinstance(attribute, list) else [attribute]:
                stamp, instance_id = instance.get("observedAt"), instance.get("instanceId")
                if not isinstance(stamp, str) or not isinstance(instance_id, str):
                    continue
                target[instance_id] = (stamp, instance.get("value"), instance_id)
                moment = parse_time(stamp)
                latest = moment if latest is None or moment > latest else latest
            if latest is not None:
                last_per_attribute.append(latest)
        resume = slice_end
        if response.status_code == 206 and last_per_attribute:
            resume = min(last_per_attribute)
        if resume <= cursor:
            log.warning("temporal answer cut at its first instant %s; skipping to %s", cursor, slice_end)
            resume = slice_end
        cursor = resume
    return {attr: sorted(rows.values()) for attr, rows in found.items()}


# -- straight from the TRoE tables -----------------------------------------------------------------

_TROE_ATTRIBUTE_IDS = "SELECT DISTINCT id FROM attributes WHERE entityId = %s"
_TROE_NUMBERS = """
    SELECT (extract(epoch FROM coalesce(observedAt, ts)) * 1000000)::bigint AS micros, number
    FROM attributes
    WHERE entityId = %s AND id = %s AND number IS NOT NULL AND opMode IS DISTINCT FROM 'Delete'
      AND coalesce(observedAt, ts) >= %s AND coalesce(observedAt, ts) < %s
    ORDER BY coalesce(observedAt, ts), ts
"""


def tenant_database_url(database_url: str, tenant: str | None) -> str:
    """The database of `tenant` on the broker's PostgreSQL (docs/internals.md "Tenants": `<default db>_<tenant>`)."""
    if tenant is None:
        return database_url
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(database_url)
    return make_conninfo("", **{**params, "dbname": f"{params.get('dbname') or 'postgres'}_{tenant.lower()}"})


def short_name(attribute_iri: str) -> str:
    """The last segment of an expanded attribute name (`https://…/dataModel.Environment/pm25` → `pm25`)."""
    return attribute_iri.rstrip("/#").rsplit("/", 1)[-1].rsplit("#", 1)[-1].rsplit(":", 1)[-1]


HistoryArrays = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Attribute → (times in µs since the epoch, ascending and distinct; values): one source's history as arrays."""


def history_arrays(history: Mapping[str, Series]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`read_history`'s series of one entity (time-ordered, distinct times) as arrays."""
    return {
        attr: (np.array([to_micros(moment) for moment, _ in series], dtype=np.int64),
               np.array([value for _, value in series], dtype=np.float64))
        for attr, series in history.items()
    }  # fmt: skip


async def read_history_troe(
    database_url: str, entity_id: str, attributes: Sequence[str], start: datetime, end: datetime
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Numeric instances of one entity's `attributes` observed in `[start, end)`, straight from the TRoE tables.

    What `read_history` gets from the temporal API (GS CIM 009 6.18), without the broker in
    between: instances by `observedAt` (their write time when they have none), deleted ones left
    out, the later write winning at one instant. Attributes are stored expanded; a short name
    matches the stored names whose last segment it is. Times come as exact microseconds.
    """
    import psycopg

    wanted = set(attributes)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(_TROE_ATTRIBUTE_IDS, (entity_id,))
        names = {row[0]: short_name(row[0]) for row in await cursor.fetchall()}
        history: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        naive = [moment.astimezone(UTC).replace(tzinfo=None) for moment in (start, end)]
        for iri, name in names.items():
            if name not in wanted:
                continue
            cursor = await conn.execute(_TROE_NUMBERS, (entity_id, iri, naive[0], naive[1]))
            rows = await cursor.fetchall()
            if not rows:
                continue
            times = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            values = np.fromiter((row[1] for row in rows), dtype=np.float64, count=len(rows))
            # Rows come by time, then write time: at an instant seen twice the last row wins.
            last = np.append(times[1:] != times[:-1], True)
            history[name] = (times[last], values[last])
    return history

"""History reads the same whether a write's rows went in at once, in chunks, a few at a time or pipelined."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from broker.storage.history import HistoryRows, write_history
from broker.storage.migrations import migrate

NO2 = "https://smartdatamodels.org/dataModel.Environment/no2"
ACCURACY = "https://uri.etsi.org/ngsi-ld/default-context/accuracy"
AT = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
INSTANCES: list[dict[str, Any]] = [
    {"type": "Property", "value": 22.5, "unitCode": "GQ", "observedAt": "2026-01-01T11:00:00.000Z",
     ACCURACY: [{"type": "Property", "value": 0.5, "observedAt": "2026-01-01T11:00:00.000Z"}]},
    {"type": "Property", "value": "good", "datasetId": "urn:ngsi-ld:Dataset:1"},
    {"type": "Property", "value": True},
    {"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
    {"type": "Property", "value": {"@type": "DateTime", "@value": "2016-03-15T11:00:00.000Z"}},
    {"type": "Property", "value": {"nested": [1, "x", None]}},
    {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.35, 48.85]}},
    {"type": "LanguageProperty", "languageMap": {"en": "Park", "fr": "Parc"}},
]
ENTITIES = 30  # 30 x 11 rows in one write, or two entities at a time
PER_WRITE = 2


def history_of(first: int, count: int) -> HistoryRows:
    rows = HistoryRows()
    for n in range(first, first + count):
        entity_id = f"urn:ngsi-ld:T:{n}"
        rows.add_entity("Create", entity_id, ["https://example.org/T"], AT)
        for instance in INSTANCES:
            rows.add_attribute("Create", entity_id, NO2, instance, AT)
        rows.add_attribute_deletion(entity_id, ACCURACY, None, AT)
    return rows


async def stored_history(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every history row without the per-write instance ids, in a stable order."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        tables = {}
        for table in ("entities", "attributes", "subAttributes"):
            cur = await conn.execute(f"SELECT * FROM {table}")
            names = [column.name for column in cur.description or []]
            kept = [i for i, name in enumerate(names) if name not in ("instanceid", "attrinstanceid")]
            tables[table] = sorted((tuple(row[i] for i in kept) for row in await cur.fetchall()), key=repr)
        return tables


async def migrated(url: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await migrate(conn)
    await conn.set_autocommit(False)
    return conn


@pytest.mark.parametrize("pipelined", [False, True])
async def test_small_writes_read_as_one_bulk_write_and_as_a_chunked_one(
    create_database: Callable[[str], str], pipelined: bool
) -> None:
    bulk_url, chunked_url, small_url = create_database("bulk"), create_database("chunked"), create_database("small")
    async with await migrated(bulk_url) as conn, conn.transaction():
        await write_history(conn, history_of(0, ENTITIES))
    async with await migrated(chunked_url) as conn, conn.transaction():
        await write_history(conn, history_of(0, ENTITIES), chunk_rows=7)
    async with await migrated(small_url) as conn:
        for first in range(0, ENTITIES, PER_WRITE):
            few = history_of(first, PER_WRITE)
            if pipelined:
                async with conn.pipeline(), conn.transaction():
                    await write_history(conn, few)
            else:
                async with conn.transaction():
                    await write_history(conn, few)
    bulk = await stored_history(bulk_url)
    assert len(bulk["attributes"]) == ENTITIES * (len(INSTANCES) + 1)
    assert len(bulk["subAttributes"]) == ENTITIES
    assert await stored_history(chunked_url) == bulk
    assert await stored_history(small_url) == bulk


async def test_a_pipelined_write_of_many_rows_goes_in_whole(create_database: Callable[[str], str]) -> None:
    url = create_database("pipelined_bulk")
    async with await migrated(url) as conn:
        async with conn.pipeline(), conn.transaction():
            await write_history(conn, history_of(0, ENTITIES))
        cur = await conn.execute("SELECT count(*) FROM attributes WHERE valueType IS NOT NULL")
        assert (await cur.fetchone()) == (ENTITIES * len(INSTANCES),)

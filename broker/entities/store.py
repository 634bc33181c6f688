"""SQL over `current_entities`: read, insert, replace, delete and filter entities (no HTTP here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import orjson
import psycopg
from psycopg import AsyncClientCursor, AsyncConnection, errors, pq, sql
from psycopg.types.json import Jsonb

from broker.entities.stored import StoredEntity, location_bbox
from broker.query.params import Param, bound_params

COLUMNS = "id, types, scope, doc, created_at, modified_at"
UPSERT_ENTITY = (
    "INSERT INTO current_entities (id, types, scope, doc, created_at, modified_at, geo_bbox)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET types = EXCLUDED.types, scope = EXCLUDED.scope,"
    " doc = EXCLUDED.doc, created_at = EXCLUDED.created_at, modified_at = EXCLUDED.modified_at,"
    " geo_bbox = EXCLUDED.geo_bbox"
)

# The rows of `save_entities`: `[id, [type, ...], [scope, ...] | null, doc, created, modified, bbox]`.
UPSERT_ENTITIES = (
    "INSERT INTO current_entities (id, types, scope, doc, created_at, modified_at, geo_bbox)"
    " SELECT e->>0,"
    " ARRAY(SELECT t FROM jsonb_array_elements_text(e->1) WITH ORDINALITY AS x(t, n) ORDER BY n),"
    " CASE WHEN jsonb_typeof(e->2) = 'array' THEN"
    "  ARRAY(SELECT t FROM jsonb_array_elements_text(e->2) WITH ORDINALITY AS x(t, n) ORDER BY n) END,"
    " e->3, (e->>4)::timestamptz, (e->>5)::timestamptz, (e->>6)::box"
    " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(e, n) ORDER BY n"
    " ON CONFLICT (id) DO UPDATE SET types = EXCLUDED.types, scope = EXCLUDED.scope,"
    " doc = EXCLUDED.doc, created_at = EXCLUDED.created_at, modified_at = EXCLUDED.modified_at,"
    " geo_bbox = EXCLUDED.geo_bbox"
)


# Prepared once on every pooled connection (broker/storage/tenants.py), for the statement that carries
# BEGIN in a simple-protocol message: there it would otherwise be parsed and planned on every write.
LOCK_ENTITY = "lock_entity"
LOCK_ENTITIES = "lock_entities"
LOCK_IDS = "lock_ids"
# Every writer of `current_entities` first takes one transaction-scoped advisory lock per entity id, in
# one canonical order (the sorted hashes), in a statement of its own before it reads the rows: FOR UPDATE
# locks no row of an entity that does not exist yet, so two transactions creating the same id (two write
# groups in flight, a batch and a group) would both see it absent and both answer 201. The statement
# after the lock takes a new snapshot (READ COMMITTED), so it sees what the previous holder committed.
# The ids travel as one JSON array (`ids_json`): orjson writes it in C, psycopg's text[] dumper is
# Python per element.
ADVISORY_LOCKS = (
    "SELECT pg_advisory_xact_lock(h) FROM"
    " (SELECT DISTINCT hashtextextended(i, 0) AS h FROM jsonb_array_elements_text({ids}) AS i ORDER BY h) AS hashes"
)
SESSION_STATEMENTS = (
    f"PREPARE {LOCK_IDS} (jsonb) AS " + ADVISORY_LOCKS.format(ids="$1"),
    f"PREPARE {LOCK_ENTITY} (text) AS SELECT {COLUMNS} FROM current_entities WHERE id = $1 FOR UPDATE",
    # The ids sorted: two transactions locking overlapping sets take the locks in the same order.
    f"PREPARE {LOCK_ENTITIES} (jsonb) AS SELECT {COLUMNS} FROM current_entities"
    " WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text($1))) ORDER BY id FOR UPDATE",
)


def ids_json(entity_ids: list[str]) -> str:
    """The parameter of ADVISORY_LOCKS and LOCK_ENTITIES."""
    return orjson.dumps(entity_ids).decode()


async def prepare_session_statements(conn: AsyncConnection) -> None:
    """PREPARE the SESSION_STATEMENTS on `conn` (in its transaction, if one is open)."""
    for statement in SESSION_STATEMENTS:
        await conn.execute(statement)


def row_to_entity(row: tuple[Any, ...]) -> StoredEntity:
    return StoredEntity(
        id=row[0], types=list(row[1]), scope=list(row[2]) if row[2] is not None else None,
        doc=row[3], created_at=row[4], modified_at=row[5],
    )  # fmt: skip


def entity_params(entity: StoredEntity) -> tuple[Any, ...]:
    return (
        entity.id, entity.types, entity.scope, Jsonb(entity.doc), entity.created_at, entity.modified_at,
        location_bbox(entity.doc),
    )  # fmt: skip


@asynccontextmanager
async def autocommit(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Run lone statements outside a transaction: a pooled connection otherwise pays a BEGIN and a
    COMMIT round trip around each read (3 round trips for a GET by id instead of 1)."""
    await conn.set_autocommit(True)
    try:
        yield conn
    finally:
        await conn.set_autocommit(False)


@asynccontextmanager
async def write_transaction(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """The transaction of one single-entity write, in as few messages to PostgreSQL as possible.

    The connection runs in autocommit mode and the transaction is explicit: BEGIN travels in the
    same message as the first statement (`lock_entity` or `begin`), each write is one prepared
    statement, COMMIT (ROLLBACK on an error) is one more. Each message is a send() that wakes the
    server; psycopg's pipeline mode sent one per statement plus syncs (7 for an attribute update)
    and its bookkeeping cost the broker about a third more CPU per request than these 3 messages.
    """
    await conn.set_autocommit(True)
    try:
        yield conn
        await conn.commit()  # COMMIT if a transaction is open (a simple-protocol message, no cursor)
    except BaseException:
        if not conn.closed:
            with suppress(psycopg.Error):  # a broken connection: closed below, the error that broke it raised
                await conn.rollback()
        raise
    finally:
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            await conn.set_autocommit(False)
        else:  # a broken connection: the pool replaces it
            await conn.close()


@asynccontextmanager
async def pipelined_transaction(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """A transaction in pipeline mode, for bulk writes: each statement leaves as soon as it is issued,
    so PostgreSQL stores one part of a batch while this process builds the next."""
    async with conn.pipeline(), conn.transaction():
        yield conn


async def begin_locking(conn: AsyncConnection, entity_ids: list[str]) -> None:
    """Open the transaction of `write_transaction` and take the advisory locks of `entity_ids`, in one message."""
    await _begin_and_lock(conn, None, entity_ids)


async def lock_ids(conn: AsyncConnection, entity_ids: list[str]) -> None:
    """Take the advisory locks of `entity_ids` in the open transaction (any id, existing or not)."""
    await conn.execute(ADVISORY_LOCKS.format(ids="%s::jsonb"), (ids_json(entity_ids),))


async def lock_entity(conn: AsyncConnection, entity_id: str) -> StoredEntity | None:
    """Open the transaction of `write_transaction` and lock and read the entity, in one message.

    Simple query protocol with the parameter bound by psycopg (two statements cannot share an
    extended-protocol message), executing the statement prepared by `prepare_session_statements`.
    """
    rows = await _begin_and_lock(conn, LOCK_ENTITY, [entity_id])
    return row_to_entity(rows[0]) if rows else None


async def lock_entities(conn: AsyncConnection, entity_ids: list[str]) -> dict[str, StoredEntity | None]:
    """`lock_entity` for several ids (distinct, sorted): every id maps to its locked state or None."""
    if len(entity_ids) == 1:
        return {entity_ids[0]: await lock_entity(conn, entity_ids[0])}
    found = {row[0]: row_to_entity(row) for row in await _begin_and_lock(conn, LOCK_ENTITIES, entity_ids)}
    return {entity_id: found.get(entity_id) for entity_id in entity_ids}


async def _begin_and_lock(conn: AsyncConnection, statement: str | None, entity_ids: list[str]
                          ) -> list[tuple[Any, ...]]:
    """BEGIN, the advisory locks of `entity_ids`, then `statement` (lock_entity: the one id, lock_entities:
    the ids) if any: one message, three statements, each with its own snapshot."""
    query = f"BEGIN; EXECUTE {LOCK_IDS}(%s)"
    ids = ids_json(entity_ids)
    params: tuple[Any, ...] = (ids,)
    if statement is not None:
        query += f"; EXECUTE {statement}(%s)"
        params += (entity_ids[0] if statement == LOCK_ENTITY else ids,)
    cursor = AsyncClientCursor(conn)
    try:
        await cursor.execute(query, params)
    except errors.InvalidSqlStatementName:
        # psycopg deallocates all prepared statements of a connection after any ROLLBACK on it.
        await conn.rollback()
        await prepare_session_statements(conn)
        await cursor.execute(query, params)
    if statement is None:
        return []
    cursor.nextset()
    cursor.nextset()
    return await cursor.fetchall()


async def fetch_entity(conn: AsyncConnection, entity_id: str, *, for_update: bool = False) -> StoredEntity | None:
    lock = " FOR UPDATE" if for_update else ""
    cur = await conn.execute(f"SELECT {COLUMNS} FROM current_entities WHERE id = %s{lock}", (entity_id,))
    row = await cur.fetchone()
    return row_to_entity(row) if row else None


async def fetch_entities(conn: AsyncConnection, entity_ids: list[str], *, for_update: bool = False
                         ) -> dict[str, StoredEntity]:
    lock = " FOR UPDATE" if for_update else ""
    if len(entity_ids) == 1:  # a single-entity batch: no array parameter to encode
        cur = await conn.execute(f"SELECT {COLUMNS} FROM current_entities WHERE id = %s{lock}", (entity_ids[0],))
    else:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM current_entities WHERE id = ANY(%s) ORDER BY id{lock}", (entity_ids,)
        )
    return {row[0]: row_to_entity(row) for row in await cur.fetchall()}


async def insert_entity(conn: AsyncConnection, entity: StoredEntity) -> bool:
    """Insert a new entity; False if one with the same id exists already."""
    cur = await conn.execute(
        "INSERT INTO current_entities (id, types, scope, doc, created_at, modified_at, geo_bbox)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
        entity_params(entity),
    )
    return await cur.fetchone() is not None  # a result, not rowcount: works in pipeline mode too


async def save_entity(conn: AsyncConnection, entity: StoredEntity) -> None:
    """Write an entity's whole current state (insert or overwrite)."""
    await save_entities(conn, [entity])


def save_statement(entities: list[StoredEntity]) -> tuple[str, tuple[Any, ...]]:
    """`save_entities` as a statement and its parameters, to send along with other writes."""
    if len(entities) == 1:
        return UPSERT_ENTITY, entity_params(entities[0])
    return UPSERT_ENTITIES, (entity_rows_json(entities),)


def entity_rows_json(entities: list[StoredEntity]) -> str:
    """The rows of UPSERT_ENTITIES as one JSON array."""
    rows = [
        (entity.id, entity.types, entity.scope, entity.doc, entity.created_at, entity.modified_at,
         location_bbox(entity.doc))
        for entity in entities
    ]  # fmt: skip
    # orjson writes the whole array (docs and timestamps included) in C; psycopg's executemany spent
    # tens of microseconds of Python per row binding parameters, PostgreSQL one Bind/Execute per row.
    return orjson.dumps(rows).decode()


async def save_entities(conn: AsyncConnection, entities: list[StoredEntity]) -> None:
    """Write many entities' current state with one statement (their rows as one JSON array, in order).

    The ids must be distinct (one row per entity: ON CONFLICT cannot change a row twice).
    """
    if not entities:
        return
    await conn.execute(*save_statement(entities))


async def delete_entities(conn: AsyncConnection, entity_ids: list[str]) -> list[StoredEntity]:
    """Delete entities, returning the deleted ones."""
    cur = await conn.execute(
        f"DELETE FROM current_entities WHERE id = ANY(%s) RETURNING {COLUMNS}", (entity_ids,)
    )
    return [row_to_entity(row) for row in await cur.fetchall()]


async def select_entities(conn: AsyncConnection, conditions: list[sql.Composable], *, limit: int | None,
                          offset: int = 0, order_by: sql.Composable | None = None) -> list[StoredEntity]:
    """One page (all rows if `limit` is None) of the entities matching all `conditions`, oldest first."""
    if limit == 0:
        return []
    order = order_by if order_by is not None else sql.SQL("created_at, id")
    statement = sql.SQL("SELECT {} FROM current_entities WHERE {} ORDER BY {}").format(
        sql.SQL(COLUMNS), where(conditions), order
    )
    if limit is not None:
        statement += sql.SQL(" LIMIT {} OFFSET {}").format(Param(limit), Param(offset))
    cur = await conn.execute(statement, bound_params(statement))
    return [row_to_entity(row) for row in await cur.fetchall()]


async def count_entities(conn: AsyncConnection, conditions: list[sql.Composable]) -> int:
    statement = sql.SQL("SELECT count(*) FROM current_entities WHERE {}").format(where(conditions))
    cur = await conn.execute(statement, bound_params(statement))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def where(conditions: list[sql.Composable]) -> sql.Composable:
    if not conditions:
        return sql.SQL("TRUE")
    return sql.SQL(" AND ").join(sql.SQL("(") + condition + sql.SQL(")") for condition in conditions)

"""SQL of the subscriptions slice: the `subscriptions` table and the notification outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from broker.query.params import Param, bound_params

OUTBOX_CHANNEL = "climaborough_outbox"
"""LISTEN/NOTIFY channel: the payload is the sequence numbers a committed transaction added (or `*`)."""

SUBSCRIPTION_COLUMNS = (
    "id, tenant, body, is_active, expires_at, time_interval, times_sent, times_failed, "
    "consecutive_failures, last_notification, last_success, last_failure, created_at, modified_at"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One pending notification."""

    seq: int
    subscription_id: str
    notification_id: str
    entities: list[dict[str, Any]]
    attempts: int
    next_attempt_at: datetime
    entities_json: str = ""
    """A key for `entities`, equal for the rows of one change that get the same entities: the text
    the outbox holds, or (for rows read from an announcement) `#<first seq>:<index>`."""


async def insert_subscription(
    conn: AsyncConnection, body: dict[str, Any], tenant: str | None, expires_at: datetime | None,
    time_interval: float | None, now: datetime,
) -> bool:
    """Insert a subscription; False when one with this id exists already."""
    cur = await conn.execute(
        "INSERT INTO subscriptions (id, tenant, body, is_active, expires_at, time_interval, created_at, "
        "modified_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (body["id"], tenant, Jsonb(body), body.get("isActive", True), expires_at, time_interval, now, now),
    )
    return cur.rowcount == 1


async def update_subscription(
    conn: AsyncConnection, body: dict[str, Any], expires_at: datetime | None, time_interval: float | None,
    now: datetime, *, reset_failures: bool,
) -> bool:
    cur = await conn.execute(
        "UPDATE subscriptions SET body = %s, is_active = %s, expires_at = %s, time_interval = %s, "
        "modified_at = %s, consecutive_failures = CASE WHEN %s THEN 0 ELSE consecutive_failures END "
        "WHERE id = %s",
        (Jsonb(body), body.get("isActive", True), expires_at, time_interval, now, reset_failures, body["id"]),
    )
    return cur.rowcount == 1


async def fetch_subscription(conn: AsyncConnection, subscription_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = %s", (subscription_id,))
        return await cur.fetchone()


async def list_subscriptions(
    conn: AsyncConnection, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of subscriptions (oldest first) and how many there are in all."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {SUBSCRIPTION_COLUMNS}, count(*) OVER () AS total FROM subscriptions "
            "ORDER BY created_at, id LIMIT %s OFFSET %s",
            (limit, offset),
        )
        rows = await cur.fetchall()
    if rows:
        return rows, int(rows[0]["total"])
    cur2 = await conn.execute("SELECT count(*) FROM subscriptions")
    total = await cur2.fetchone()
    return [], int(total[0]) if total else 0


async def all_subscriptions(conn: AsyncConnection) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY created_at, id")
        return await cur.fetchall()


SubscriptionsVersion = tuple[int, int]
"""How many subscriptions there are and a hash of their ids and modification times."""


async def subscriptions_version(conn: AsyncConnection) -> SubscriptionsVersion:
    """A cheap fingerprint of the subscription set for cache checks.

    It changes when a subscription is created, deleted or modified (each sets `modified_at`), not
    when deliveries update its counters; the hashes are summed, so the order of rows does not matter.
    """
    cur = await conn.execute(
        "SELECT count(*), coalesce(sum(hashtextextended(id || modified_at::text, 0)), 0)::text FROM subscriptions"
    )
    row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def delete_subscription(conn: AsyncConnection, subscription_id: str) -> bool:
    cur = await conn.execute("DELETE FROM subscriptions WHERE id = %s", (subscription_id,))
    return cur.rowcount == 1


NOTIFY_PAYLOAD_LIMIT = 7_900
"""PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more."""
SEQ_TEXT_MAX = 20
"""Characters a sequence number and its separator take at most in a NOTIFY payload."""
ANNOUNCED_AT = datetime(1970, 1, 1, tzinfo=UTC)
"""`next_attempt_at` of rows read from an announcement: first attempts, due at once."""


async def enqueue(conn: AsyncConnection, rows: list[tuple[str, str, list[dict[str, Any]]]]) -> None:
    """Add notifications (subscription id, notification id, entities) in the caller's transaction.

    One statement inserts the rows and queues one NOTIFY announcing them: their sequence numbers,
    then a newline and as many of the rows themselves as fit a payload, so that the notifier
    reads back only the others (see `parse_announcement`); `*` when not even the numbers fit.
    NOTIFY is delivered to listeners only when the transaction commits, so the notifier never
    sees a notification of a change that rolled back, and it learns exactly the committed rows,
    in commit order, without scanning the outbox.
    """
    if not rows:
        return
    # jsonb parameters (dumped by orjson) are far cheaper to send than text-format arrays. Rows
    # that carry the same entities list (one change notified to several subscriptions) send it once.
    index_of: dict[int, int] = {}
    distinct: list[bytes] = []
    records: list[bytes] = []
    indices: list[int] = []
    for sub_id, notification_id, entities in rows:
        index = index_of.get(id(entities))
        if index is None:
            index = index_of[id(entities)] = len(distinct)
            distinct.append(orjson.dumps(entities))
        records.append(orjson.dumps({"s": sub_id, "n": notification_id, "i": index}))
        indices.append(index)
    distinct_json, records_json = b"[" + b",".join(distinct) + b"]", b"[" + b",".join(records) + b"]"
    rows_text, with_rows_limit = _announced_rows(records, indices, distinct)
    await conn.execute(
        "WITH added AS (INSERT INTO subscription_outbox (subscription_id, notification_id, entities)"
        " SELECT r.s, r.n, %s::jsonb -> r.i FROM jsonb_to_recordset(%s) AS r(s text, n text, i int) RETURNING seq),"
        " announced AS (SELECT pg_notify(%s, CASE"
        "   WHEN sum(length(seq::text) + 1) < %s THEN string_agg(seq::text, ' ' ORDER BY seq) || %s"
        "   WHEN sum(length(seq::text) + 1) < %s THEN string_agg(seq::text, ' ' ORDER BY seq)"
        "   ELSE '*' END) FROM added)"
        " SELECT 1 FROM announced",
        (Jsonb(distinct_json, dumps=bytes), Jsonb(records_json, dumps=bytes),  # dumped above already
         OUTBOX_CHANNEL, with_rows_limit, rows_text, NOTIFY_PAYLOAD_LIMIT),
    )


def _announced_rows(records: list[bytes], indices: list[int], distinct: list[bytes]) -> tuple[str, int]:
    """The rows part of the NOTIFY payload: the first rows that fit beside every sequence number.

    Returns it with the length the numbers must stay under for it to be sent; `("", -1)` when
    not one row fits. `records[k]` refers to `distinct[indices[k]]`; indices first appear in order.
    """
    budget = NOTIFY_PAYLOAD_LIMIT - SEQ_TEXT_MAX * len(records) - len(b'\n{"r":[],"e":[]}')
    taken_records = taken_entities = 0
    for record, index in zip(records, indices, strict=True):
        cost = len(record) + 1 + sum(len(distinct[i]) + 1 for i in range(taken_entities, index + 1))
        if cost > budget:
            break
        budget -= cost
        taken_records += 1
        taken_entities = max(taken_entities, index + 1)
    if not taken_records:
        return "", -1
    text = (b'\n{"r":[' + b",".join(records[:taken_records]) + b'],"e":['
            + b",".join(distinct[:taken_entities]) + b"]}")
    return text.decode(), NOTIFY_PAYLOAD_LIMIT - len(text)


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one outbox NOTIFY says: the rows a transaction added, or only their numbers, or neither."""

    seqs: list[int] | None
    """None: some rows, look at every lane."""
    rows: list[OutboxRow] | None = None
    """The rows themselves (in `seq` order) as far as they fitted the payload: the first ones, or
    all; the others are read by their `seqs`."""


def parse_announcement(payload: str) -> Announcement:
    """The rows (or sequence numbers) an outbox NOTIFY names; a payload it cannot read means "look everywhere"."""
    if payload == "*":
        return Announcement(None)
    numbers, newline, rows_text = payload.partition("\n")
    try:
        seqs = [int(seq) for seq in numbers.split()]
    except ValueError:
        return Announcement(None)
    if not newline:
        return Announcement(seqs)
    try:
        announced = orjson.loads(rows_text)
        records, distinct = announced["r"], announced["e"]
        # Rows of one change share their entities: one parsed list, one key for its rendering.
        rows = [
            OutboxRow(seq, record["s"], record["n"], distinct[record["i"]], 0, ANNOUNCED_AT,
                      f"#{seqs[0]}:{record['i']}")
            for seq, record in zip(seqs, records, strict=False)  # the first rows, or all of them
        ]
        if len(records) > len(seqs):
            raise ValueError("more rows than sequence numbers")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return Announcement(seqs)  # read them from the outbox instead
    return Announcement(seqs, rows)


OUTBOX_ROW_COLUMNS = "seq, subscription_id, notification_id, entities::text, attempts, next_attempt_at"
"""`entities` as text: rows of one change for several subscriptions carry the same text, parsed once."""


def _outbox_rows(rows: list[tuple[Any, ...]]) -> list[OutboxRow]:
    """Rows whose entities are equal share one parsed list (and are rendered once per format)."""
    parsed: dict[str, list[dict[str, Any]]] = {}
    result = []
    for seq, subscription_id, notification_id, text, attempts, next_attempt_at in rows:
        entities = parsed.get(text)
        if entities is None:
            entities = parsed[text] = orjson.loads(text)
        result.append(OutboxRow(seq, subscription_id, notification_id, entities, attempts, next_attempt_at, text))
    return result


async def fetch_rows(conn: AsyncConnection, seqs: list[int]) -> list[OutboxRow]:
    """The rows with these sequence numbers that are still pending, in `seq` order."""
    cur = await conn.execute(
        f"SELECT {OUTBOX_ROW_COLUMNS} FROM subscription_outbox WHERE seq = ANY(%s) ORDER BY seq", (seqs,)
    )
    return _outbox_rows(await cur.fetchall())


async def lanes_with_pending(conn: AsyncConnection) -> list[str]:
    """Subscriptions that have notifications waiting (a loose index scan over the lane index)."""
    cur = await conn.execute(
        "WITH RECURSIVE lanes AS ("
        " (SELECT subscription_id FROM subscription_outbox ORDER BY subscription_id LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT o.subscription_id FROM subscription_outbox o WHERE o.subscription_id > l.subscription_id"
        "         ORDER BY o.subscription_id LIMIT 1) FROM lanes l WHERE l.subscription_id IS NOT NULL)"
        " SELECT subscription_id FROM lanes WHERE subscription_id IS NOT NULL"
    )
    return [row[0] for row in await cur.fetchall()]


async def claim_lane(conn: AsyncConnection, subscription_id: str, limit: int) -> list[OutboxRow]:
    """The oldest pending notifications of one subscription, in order.

    `FOR UPDATE SKIP LOCKED` keeps two broker processes on one database from sending the same
    row at the same moment; the caller holds the transaction while it delivers the batch.
    """
    cur = await conn.execute(
        f"SELECT {OUTBOX_ROW_COLUMNS} FROM subscription_outbox WHERE subscription_id = %s "
        "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
        (subscription_id, limit),
    )
    return _outbox_rows(await cur.fetchall())


async def record_delivered(
    conn: AsyncConnection, seqs: list[int], counts: dict[str, int], at: datetime
) -> None:
    """Delivered rows leave the outbox; each subscription counts its own (GS CIM 009 5.2.12 timesSent).

    One statement (atomic on its own, one round trip): the DELETE runs as a data-modifying CTE.
    """
    await conn.execute(
        "WITH gone AS (DELETE FROM subscription_outbox WHERE seq = ANY(%s))"
        " UPDATE subscriptions SET times_sent = times_sent + delivered.n, last_notification = %s,"
        " last_success = %s, consecutive_failures = 0"
        " FROM unnest(%s::text[], %s::bigint[]) AS delivered(id, n) WHERE subscriptions.id = delivered.id",
        (seqs, at, at, list(counts), list(counts.values())),
    )


async def record_failed(
    conn: AsyncConnection, subscription_id: str, seq: int, error: str, at: datetime, next_attempt_at: datetime
) -> None:
    await conn.execute(
        "UPDATE subscription_outbox SET attempts = attempts + 1, next_attempt_at = %s, last_error = %s "
        "WHERE seq = %s",
        (next_attempt_at, error[:500], seq),
    )
    await conn.execute(
        "UPDATE subscriptions SET times_sent = times_sent + 1, times_failed = times_failed + 1, "
        "last_notification = %s, last_failure = %s, consecutive_failures = consecutive_failures + 1 "
        "WHERE id = %s",
        (at, at, subscription_id),
    )


async def pending_count(conn: AsyncConnection, subscription_id: str | None = None) -> int:
    if subscription_id is None:
        cur = await conn.execute("SELECT count(*) FROM subscription_outbox")
    else:
        cur = await conn.execute(
            "SELECT count(*) FROM subscription_outbox WHERE subscription_id = %s", (subscription_id,)
        )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def conditions_hold(
    conn: AsyncConnection, entity_id: str, conditions: list[sql.Composable | None]
) -> list[bool]:
    """Evaluate subscription conditions (q, geoQ) on one entity's current state, in one query.

    Run inside the writing transaction, so the entity is seen as the change left it.
    """
    compiled = [c for c in conditions if c is not None]
    if not compiled:
        return [True] * len(conditions)
    query = sql.SQL("SELECT {} FROM current_entities WHERE id = {}").format(
        sql.SQL(", ").join(sql.SQL("coalesce({}, false)").format(c) for c in compiled), Param(entity_id)
    )
    cur = await conn.execute(query, bound_params(query))
    row = await cur.fetchone()
    answers = iter(row if row is not None else [False] * len(compiled))
    return [True if c is None else bool(next(answers)) for c in conditions]


async def entities_of_types(
    conn: AsyncConnection, types: list[str] | None, condition: sql.Composable | None
) -> list[dict[str, Any]]:
    """Current entities (stored shape) for periodic notifications, filtered by type and q/geoQ."""
    clauses: list[sql.Composable] = []
    if types is not None:
        clauses.append(sql.SQL("types && {}").format(Param(types)))
    if condition is not None:
        clauses.append(condition)
    query: sql.Composable = sql.SQL("SELECT id, types, scope, doc, created_at, modified_at FROM current_entities")
    if clauses:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)
    query += sql.SQL(" ORDER BY id")
    cur = await conn.execute(query, bound_params(query))
    return [
        {"id": row[0], "types": row[1], "scope": row[2], "doc": row[3],
         "createdAt": row[4], "modifiedAt": row[5]}
        for row in await cur.fetchall()
    ]

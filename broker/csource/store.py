"""SQL of the context source registrations table (migration 0100_csource_registrations.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from broker.csource.registrations import attributes_of, entity_types_of


async def insert_registration(conn: AsyncConnection, registration_id: str, doc: dict[str, Any], now: datetime) -> bool:
    """Store a new registration; False if the id is taken."""
    cur = await conn.execute(
        "INSERT INTO csource_registrations (id, doc, entity_types, attributes, created_at, modified_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (registration_id, Jsonb(doc), entity_types_of(doc), attributes_of(doc), now, now),
    )
    return cur.rowcount == 1


async def fetch_registration(
    conn: AsyncConnection, registration_id: str, *, for_update: bool = False
) -> dict[str, Any] | None:
    query = "SELECT id, doc, created_at, modified_at FROM csource_registrations WHERE id = %s"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query + (" FOR UPDATE" if for_update else ""), (registration_id,))
        return await cur.fetchone()


async def replace_registration(conn: AsyncConnection, registration_id: str, doc: dict[str, Any], now: datetime) -> None:
    await conn.execute(
        "UPDATE csource_registrations SET doc = %s, entity_types = %s, attributes = %s, modified_at = %s WHERE id = %s",
        (Jsonb(doc), entity_types_of(doc), attributes_of(doc), now, registration_id),
    )


async def delete_registration(conn: AsyncConnection, registration_id: str) -> bool:
    cur = await conn.execute("DELETE FROM csource_registrations WHERE id = %s", (registration_id,))
    return cur.rowcount == 1


async def candidate_registrations(
    conn: AsyncConnection, types: Sequence[str], attrs: Sequence[str]
) -> list[dict[str, Any]]:
    """Registrations that may match: naming one of `types` (or any type if none asked), in id order.

    A registration without propertyNames/relationshipNames covers every attribute, so `attrs`
    narrows only those that list names; the exact matching happens in `registrations.matches`.
    """
    conditions, params = [], []
    if types:
        conditions.append("entity_types && %s")
        params.append(list(types))
    if attrs:
        conditions.append("(attributes && %s OR attributes = '{}')")
        params.append(list(attrs))
    where = " AND ".join(conditions) or "TRUE"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, doc, created_at, modified_at FROM csource_registrations WHERE " + where + " ORDER BY id",
            params,
        )
        return await cur.fetchall()

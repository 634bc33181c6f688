"""SQL for hosted user @contexts, kept in the default database so they survive restarts."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


async def load_user_contexts(conn: AsyncConnection) -> list[tuple[str, str, dict[str, Any]]]:
    cur = await conn.execute("SELECT id, url, body FROM user_contexts ORDER BY created_at")
    return [(row[0], row[1], row[2]) for row in await cur.fetchall()]


async def save_user_context(conn: AsyncConnection, local_id: str, url: str, body: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO user_contexts (id, url, body) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (local_id, url, Jsonb(body)),
    )


async def delete_user_context(conn: AsyncConnection, local_id: str) -> None:
    await conn.execute("DELETE FROM user_contexts WHERE id = %s", (local_id,))

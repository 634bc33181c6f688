"""SQL for hosted user @contexts, kept in the default database so they survive restarts."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


async def load_user_contexts(conn: AsyncConnection) -> list[tuple[str, str, dict[str, Any], str]]:
    """(local id, URL, document, kind) of every stored context, oldest first."""
    cur = await conn.execute("SELECT id, url, body, kind FROM user_contexts ORDER BY created_at")
    return [(row[0], row[1], row[2], row[3]) for row in await cur.fetchall()]


async def save_user_context(conn: AsyncConnection, local_id: str, url: str, body: dict[str, Any],
                            kind: str = "Hosted") -> None:
    await conn.execute(
        "INSERT INTO user_contexts (id, url, body, kind) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (local_id, url, Jsonb(body), kind),
    )


async def delete_user_context(conn: AsyncConnection, local_id: str) -> None:
    await conn.execute("DELETE FROM user_contexts WHERE id = %s", (local_id,))

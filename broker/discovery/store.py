"""SQL behind type and attribute discovery over `current_entities`."""

from __future__ import annotations

from psycopg import AsyncConnection


async def types_with_attributes(conn: AsyncConnection) -> dict[str, tuple[int, set[str]]]:
    """Each expanded type → (entity count, expanded attribute names)."""
    cur = await conn.execute(
        "SELECT t, count(DISTINCT e.id), array_remove(array_agg(DISTINCT k), NULL)"
        " FROM current_entities e CROSS JOIN LATERAL unnest(e.types) AS t"
        " LEFT JOIN LATERAL jsonb_object_keys(e.doc) AS k ON TRUE GROUP BY t ORDER BY t"
    )
    return {row[0]: (int(row[1]), set(row[2])) for row in await cur.fetchall()}

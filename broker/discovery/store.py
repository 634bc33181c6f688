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


async def attribute_statistics(conn: AsyncConnection, name: str | None = None) -> dict[str, tuple[int, list[str]]]:
    """Each expanded attribute name (or only `name`) → (instances, attribute types): GS CIM 009 5.2.28
    attributeCount and attributeTypes."""
    cur = await conn.execute(
        "SELECT a.k, count(*), array_agg(DISTINCT i->>'type' ORDER BY i->>'type')"
        " FROM current_entities e CROSS JOIN LATERAL jsonb_each(e.doc) AS a(k, v)"
        " CROSS JOIN LATERAL jsonb_array_elements(a.v) AS i"
        + (" WHERE e.doc ? %s AND a.k = %s" if name is not None else "") + " GROUP BY a.k",
        (name, name) if name is not None else None,
    )
    return {row[0]: (int(row[1]), [t for t in row[2] if t]) for row in await cur.fetchall()}

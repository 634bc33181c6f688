"""Brings a broker database's schema up to date: ordered migrations, then the TRoE setup SQL."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

from psycopg import AsyncConnection, sql

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x636C696D61  # pg advisory lock: one migrator per database at a time


def migration_files() -> list[Path]:
    """The schema migrations in the order they apply (`0001_...sql`, `0002_...sql`, ...)."""
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def troe_sql() -> str:
    """The idempotent TRoE history DDL shared with the FIWARE deployment."""
    return resources.files("broker_config").joinpath("sql/troe.sql").read_text(encoding="utf-8")


def troe_indexes_sql() -> str:
    """The indexes the temporal queries need over the TRoE tables (shared with the FIWARE deployment)."""
    return resources.files("broker_config").joinpath("sql/troe_indexes.sql").read_text(encoding="utf-8")


def query_indexes_sql() -> str | None:
    """The indexes the query engine asks for (`broker/query/indexes.sql`), if it ships any."""
    path = Path(__file__).parent.parent / "query" / "indexes.sql"
    return path.read_text(encoding="utf-8") if path.exists() else None


async def migrate(conn: AsyncConnection) -> None:
    """Apply every migration not yet applied, then the TRoE, temporal-index and query-index setup SQL.

    `conn` must be in autocommit mode; each migration runs in its own transaction, under an
    advisory lock so that two broker processes starting together do not race.
    """
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT name FROM schema_migrations")
        applied = {row[0] for row in await cur.fetchall()}
        for path in migration_files():
            if path.name in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql.SQL(path.read_text(encoding="utf-8")))
                await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
            log.info("migration applied name=%s", path.name)
        # The setup SQL is idempotent but takes table locks (CREATE INDEX IF NOT EXISTS locks the
        # table before it sees the index exists): run each version of it once per database, not
        # on every pool opened by every process, where it would deadlock with running writes.
        setup = [("troe.sql", troe_sql()), ("troe_indexes.sql", troe_indexes_sql()),
                 ("query/indexes.sql", query_indexes_sql() or "")]  # fmt: skip
        for name, text in setup:
            key = f"setup:{name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
            if not text or key in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql.SQL(text))
                await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (key,))
            log.info("setup applied name=%s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

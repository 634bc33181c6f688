"""One PostgreSQL database per NGSI-LD tenant: naming, creation on first write, pooled connections."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from broker.entities.store import prepare_session_statements
from broker.settings import BrokerSettings
from broker.storage.migrations import migrate
from ngsi.errors import BadRequestData, InternalError, NonexistentTenant

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")


def tenant_database_name(default_database: str, tenant: str | None) -> str:
    """The database of `tenant` (docs/internals.md "Tenants"): `<default db>_<tenant lower-cased>`."""
    if tenant is None:
        return default_database
    if not TENANT_NAME.fullmatch(tenant):
        raise BadRequestData(
            f"Invalid NGSILD-Tenant {tenant!r}: use 1 to 48 letters, digits, '_' or '-'",
            title="Invalid tenant name",
        )
    return f"{default_database}_{tenant.lower()}"


async def configure_connection(conn: AsyncConnection) -> None:
    """JSON in and out of jsonb with orjson: `doc` columns are the hot path of every request."""
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson_dumps, conn)


async def configure_pooled_connection(conn: AsyncConnection) -> None:
    """`configure_connection` plus the server-side prepared statements of the write path (broker.entities.store),
    for the pools of `TenantDatabases`, which open a database only once it is migrated."""
    await configure_connection(conn)
    await prepare_session_statements(conn)
    await conn.commit()


def orjson_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class TenantDatabases:
    """Opens, creates and migrates the databases of the default tenant and named tenants."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._settings = settings
        self._params = conninfo_to_dict(settings.database_url)
        self.default_database = str(self._params.get("dbname") or "postgres")
        self._pools: dict[str, AsyncConnectionPool] = {}
        self._lock = asyncio.Lock()

    def _conninfo(self, database: str) -> str:
        return make_conninfo("", **{**self._params, "dbname": database})

    async def open(self) -> None:
        """Open (creating and migrating if needed) the default database."""
        await self._ensure_database(self.default_database, create=True)
        await self._open_pool(self.default_database)

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    async def pool(self, tenant: str | None, *, create: bool) -> AsyncConnectionPool:
        """The pool of `tenant`'s database; `create=True` (writes) creates it if missing.

        Raises NonexistentTenant on a read (`create=False`) of a tenant that has no database.
        """
        name = tenant_database_name(self.default_database, tenant)
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        async with self._lock:
            pool = self._pools.get(name)
            if pool is not None:
                return pool
            exists = await self._ensure_database(name, create=create)
            if not exists:
                raise NonexistentTenant(f"Tenant {tenant!r} does not exist", tenant=tenant)
            return await self._open_pool(name)

    async def _open_pool(self, database: str) -> AsyncConnectionPool:
        is_default = database == self.default_database
        pool = AsyncConnectionPool(
            self._conninfo(database),
            min_size=self._settings.pool_min_size if is_default else 0,
            max_size=self._settings.pool_max_size if is_default else self._settings.tenant_pool_max_size,
            max_idle=600.0 if is_default else self._settings.tenant_pool_max_idle_s,
            open=False,
            name=f"broker-{database}",
            configure=configure_pooled_connection,
        )
        await pool.open(wait=True, timeout=30)
        self._pools[database] = pool
        return pool

    async def _ensure_database(self, database: str, *, create: bool) -> bool:
        """Make sure `database` exists (if `create`) and has the current schema; False if absent."""
        try:
            conn = await AsyncConnection.connect(self._conninfo(database), autocommit=True)
        except psycopg.OperationalError as error:
            if "does not exist" not in str(error):
                raise
            if not create:
                return False
            await self._create_database(database)
            conn = await AsyncConnection.connect(self._conninfo(database), autocommit=True)
        async with conn:
            await migrate(conn)
        return True

    async def _create_database(self, database: str) -> None:
        # CREATE DATABASE cannot run inside a transaction; two writers racing to create the
        # same tenant both succeed because the loser's DuplicateDatabase is expected. Tenant
        # databases are created from the default database's connection, never from template1,
        # which CREATE DATABASE copies and so must not be in use.
        if database != self.default_database:
            maintenance = self.default_database
        else:
            maintenance = "postgres" if database != "postgres" else "template1"
        async with await AsyncConnection.connect(self._conninfo(maintenance), autocommit=True) as conn:
            for attempt in range(20):
                try:
                    await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    log.info("database created database=%s", database)
                    return
                except (errors.DuplicateDatabase, errors.UniqueViolation):
                    return
                except errors.ObjectInUse:
                    # Another process is copying template1 right now; wait for it, briefly.
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise InternalError(f"Could not create database {database!r}: template database stays busy")

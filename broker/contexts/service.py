"""User @context management (GS CIM 009 5.13) over ngsi-core's ContextStore, persisted in PostgreSQL."""

from __future__ import annotations

from typing import Any

from broker.contexts import store
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import ContextEntry, ContextKind, ContextStore


class UserContextService:
    """Lists, serves, adds and deletes hosted @contexts; reloads the hosted ones at start."""

    def __init__(self, databases: TenantDatabases, contexts: ContextStore) -> None:
        self.databases = databases
        self.contexts = contexts

    async def load(self) -> None:
        pool = await self.databases.pool(None, create=True)
        async with pool.connection() as conn:
            rows = await store.load_user_contexts(conn)
        for local_id, url, body, kind in rows:
            self.contexts.restore(ContextEntry(url=url, local_id=local_id, kind=ContextKind(kind), document=body))

    def list(self, *, details: bool, kind: str | None) -> list[Any]:
        wanted = ContextKind(kind) if kind else None
        entries = self.contexts.list(wanted)
        return [entry.info() if details else entry.url for entry in entries]

    def get(self, local_id: str, *, details: bool) -> Any:
        entry = self.contexts.get(local_id)
        entry.touch()
        return entry.info() if details else entry.document

    async def add_implicit(self, context: Any) -> ContextEntry:
        """An inline @context kept as ImplicitlyCreated (GS CIM 009 5.13), so that a URL can stand for it:
        the same content gives the same entry and URL."""
        known = len(self.contexts.list())
        entry = self.contexts.add({"@context": context}, kind=ContextKind.IMPLICITLY_CREATED)
        if len(self.contexts.list()) > known:  # a new one: keep it across restarts
            pool = await self.databases.pool(None, create=True)
            async with pool.connection() as conn:
                await store.save_user_context(conn, entry.local_id, entry.url, entry.document, entry.kind.value)
        return entry

    async def add(self, document: Any) -> ContextEntry:
        entry = self.contexts.add(document)
        pool = await self.databases.pool(None, create=True)
        async with pool.connection() as conn:
            await store.save_user_context(conn, entry.local_id, entry.url, entry.document)
        return entry

    async def delete(self, local_id: str) -> None:
        entry = self.contexts.delete(local_id)
        pool = await self.databases.pool(None, create=True)
        async with pool.connection() as conn:
            await store.delete_user_context(conn, entry.local_id)

"""The subscriptions of each database, compiled for matching and cached between writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from broker.subscriptions import store
from broker.subscriptions.filters import EntityFilter, entity_filter
from broker.subscriptions.model import Subscription, build_subscription
from ngsi.contexts import ContextStore

CACHE_TTL_S = 1.0
"""How long a compiled subscription set is trusted before it is reloaded (another process may have changed it)."""


@dataclass(slots=True)
class _Cached:
    loaded_at: float
    entries: dict[str, tuple[Subscription, EntityFilter]]


class SubscriptionRegistry:
    """Loads, compiles and caches subscriptions per database (`conn.info.dbname`)."""

    def __init__(self, contexts: ContextStore) -> None:
        self._contexts = contexts
        self._cache: dict[str, _Cached] = {}
        self._generation: dict[str, int] = {}

    async def compile(self, row: dict[str, Any]) -> tuple[Subscription, EntityFilter]:
        body = row["body"]
        context = body.get("@context")
        terms = await self._contexts.term_map(context)
        sub = build_subscription(
            {k: v for k, v in body.items() if k != "@context"}, terms, tenant=row["tenant"], context=context
        )
        return sub, entity_filter(sub, terms)

    async def all(self, conn: AsyncConnection) -> dict[str, tuple[Subscription, EntityFilter]]:
        database = conn.info.dbname
        cached = self._cache.get(database)
        if cached is not None and time.monotonic() - cached.loaded_at < CACHE_TTL_S:
            return cached.entries
        generation = self._generation.get(database, 0)
        entries = {}
        for row in await store.all_subscriptions(conn):
            entries[row["id"]] = await self.compile(row)
        # A load that overlapped an invalidation may have read the old set: use it, do not keep it.
        if self._generation.get(database, 0) == generation:
            self._cache[database] = _Cached(time.monotonic(), entries)
        return entries

    def cached(self, database: str) -> dict[str, tuple[Subscription, EntityFilter]] | None:
        """The compiled set of `database` if it is fresh, without touching the database."""
        cached = self._cache.get(database)
        if cached is not None and time.monotonic() - cached.loaded_at < CACHE_TTL_S:
            return cached.entries
        return None

    async def get(self, conn: AsyncConnection, subscription_id: str) -> Subscription | None:
        entry = (await self.all(conn)).get(subscription_id)
        if entry is None:
            self.invalidate(conn.info.dbname)
            entry = (await self.all(conn)).get(subscription_id)
        return entry[0] if entry else None

    def invalidate(self, database: str) -> None:
        """Forget the set of `database`; call it after the change to subscriptions has committed."""
        self._generation[database] = self._generation.get(database, 0) + 1
        self._cache.pop(database, None)

"""The subscriptions of each database, compiled for matching, indexed by entity type and cached between writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from psycopg import AsyncConnection

from broker.subscriptions import store
from broker.subscriptions.filters import EntityFilter, entity_filter
from broker.subscriptions.model import Subscription, build_subscription
from ngsi.contexts import ContextStore, TermMap

CACHE_TTL_S = 1.0
"""How long a compiled subscription set is trusted before it is checked again (another process may have changed it)."""

Compiled = tuple[Subscription, EntityFilter]


@dataclass(slots=True)
class SubscriptionSet:
    """The compiled subscriptions of one database, with the ones that may select each entity type.

    A write asks only for the subscriptions of its entity's types (plus those that select any
    type: no `entities`, or a selector without a type), not for every subscription of the database.
    """

    entries: dict[str, Compiled]
    version: store.SubscriptionsVersion
    by_type: dict[str, list[Compiled]] = field(default_factory=dict)
    any_type: list[Compiled] = field(default_factory=list)

    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, compiled in enumerate(self.entries.values()):
            sub = compiled[0]
            self.position[sub.id] = index
            types = {selector.type for selector in sub.entities}
            if not sub.entities or None in types:
                self.any_type.append(compiled)
                continue
            for entity_type in sorted(t for t in types if t is not None):
                self.by_type.setdefault(entity_type, []).append(compiled)

    def for_types(self, types: Iterable[str]) -> list[Compiled]:
        """The subscriptions that may select an entity of `types` (each once, in the stored order)."""
        lists = [self.by_type[entity_type] for entity_type in types if entity_type in self.by_type]
        if not lists:
            return self.any_type
        if len(lists) == 1 and not self.any_type:
            return lists[0]
        unique = {compiled[0].id: compiled for compiled in chain(self.any_type, *lists)}
        return sorted(unique.values(), key=lambda compiled: self.position[compiled[0].id])


@dataclass(slots=True)
class _Cached:
    checked_at: float
    subscriptions: SubscriptionSet


class SubscriptionRegistry:
    """Loads, compiles and caches subscriptions per database (`conn.info.dbname`).

    After `CACHE_TTL_S` the cached set is checked against the table's fingerprint (one small
    query) and compiled again only when it changed; concurrent writes that find it stale wait for
    one check instead of each loading and compiling every subscription.
    """

    def __init__(self, contexts: ContextStore) -> None:
        self._contexts = contexts
        self._cache: dict[str, _Cached] = {}
        self._generation: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def term_map(self, context: Any) -> TermMap:
        """The term map of an @context (a subscription's own, or a request's)."""
        return await self._contexts.term_map(context)

    async def compile(self, row: dict[str, Any]) -> Compiled:
        body = row["body"]
        context = body.get("@context")
        terms = await self._contexts.term_map(context)
        sub = build_subscription(
            {k: v for k, v in body.items() if k != "@context"}, terms, tenant=row["tenant"], context=context
        )
        return sub, entity_filter(sub, terms)

    async def all(self, conn: AsyncConnection) -> dict[str, Compiled]:
        return (await self.subscriptions(conn)).entries

    async def subscriptions(self, conn: AsyncConnection) -> SubscriptionSet:
        """The compiled set of the connection's database, checked at most every `CACHE_TTL_S`."""
        database = conn.info.dbname
        cached = self._cache.get(database)
        if cached is not None and time.monotonic() - cached.checked_at < CACHE_TTL_S:
            return cached.subscriptions
        lock = self._locks.get(database)
        if lock is None:
            lock = self._locks[database] = asyncio.Lock()
        async with lock:
            cached = self._cache.get(database)
            if cached is not None and time.monotonic() - cached.checked_at < CACHE_TTL_S:
                return cached.subscriptions  # checked by the write we waited for
            return await self._load(conn, database, cached)

    async def _load(self, conn: AsyncConnection, database: str, cached: _Cached | None) -> SubscriptionSet:
        generation = self._generation.get(database, 0)
        checked_at = time.monotonic()
        version = await store.subscriptions_version(conn)
        if cached is not None and cached.subscriptions.version == version:
            subscriptions = cached.subscriptions
        else:
            rows = await store.all_subscriptions(conn)
            entries = {row["id"]: await self.compile(row) for row in rows}
            subscriptions = SubscriptionSet(entries, version)
        # A load that overlapped an invalidation may have read the old set: use it, do not keep it.
        if self._generation.get(database, 0) == generation:
            self._cache[database] = _Cached(checked_at, subscriptions)
        return subscriptions

    def cached(self, database: str) -> dict[str, Compiled] | None:
        """The compiled set of `database` if it is fresh, without touching the database."""
        cached = self._cache.get(database)
        if cached is not None and time.monotonic() - cached.checked_at < CACHE_TTL_S:
            return cached.subscriptions.entries
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

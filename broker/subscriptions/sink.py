"""The change sink of the write path: matches subscriptions and fills the outbox inside the writing transaction."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from broker.changes import EntityChange
from broker.subscriptions import store
from broker.subscriptions.matching import match_change
from broker.subscriptions.registry import SubscriptionRegistry

NOTIFICATION_ID_PREFIX = "urn:ngsi-ld:Notification:"


def new_notification_id() -> str:
    return NOTIFICATION_ID_PREFIX + str(uuid.uuid4())


class SubscriptionSink:
    """`broker.changes.ChangeSink` for subscriptions (docs/internals.md "Change hook").

    `on_enqueued(tenant)` is called after rows are added, so the notifier makes sure it watches
    that tenant's database (its LISTEN hears the rows once the transaction commits).
    """

    def __init__(self, registry: SubscriptionRegistry, on_enqueued: Callable[[str | None], None] | None = None):
        self._registry = registry
        self._on_enqueued = on_enqueued
        self._last_enqueued: dict[tuple[str, str], float] = {}

    async def record(self, conn: Any, changes: list[EntityChange]) -> None:
        if not changes:
            return
        subscriptions = await self._registry.subscriptions(conn)
        if not subscriptions.entries:
            return
        now = datetime.now(UTC)
        rows: list[tuple[str, str, list[dict[str, Any]]]] = []
        for change in changes:
            entity = change.after or change.before
            if entity is None:
                continue
            compiled = subscriptions.for_types(entity.get("types") or ())
            if not compiled:
                continue
            candidates = match_change((sub for sub, _ in compiled), change, now)
            if change.after is not None and candidates:
                # GS CIM 009 5.11: q and geoQ hold on the entity as the change left it.
                filters = [subscriptions.entries[sub.id][1] for sub, _ in candidates]
                if any(f.condition is not None or f.geo is not None for f in filters):
                    holds = await store.conditions_hold(conn, change.entity_id, [f.condition for f in filters])
                    candidates = [
                        pair for pair, entity_filter, q_holds in zip(candidates, filters, holds, strict=True)
                        if q_holds and entity_filter.geo_holds(change.after)
                    ]
            json_safe: dict[int, list[dict[str, Any]]] = {}  # subscriptions given the same entity share one list
            for sub, notified in candidates:
                if sub.throttling is not None and self._throttled(conn.info.dbname, sub.id, sub.throttling):
                    continue
                safe = json_safe.get(id(notified))
                if safe is None:
                    safe = json_safe[id(notified)] = [_json_safe(notified)]
                rows.append((sub.id, new_notification_id(), safe))
        if rows:
            await store.enqueue(conn, rows)
            if self._on_enqueued is not None:
                self._on_enqueued(changes[0].tenant)

    def _throttled(self, database: str, subscription_id: str, throttling: float) -> bool:
        """GS CIM 009 5.2.12 throttling: at most one notification per `throttling` seconds."""
        key = (database, subscription_id)
        moment = time.monotonic()
        last = self._last_enqueued.get(key)
        if last is not None and moment - last < throttling:
            return True
        self._last_enqueued[key] = moment
        return False


def _json_safe(entity: dict[str, Any]) -> dict[str, Any]:
    """Stored entities may carry datetimes for createdAt/modifiedAt; the outbox keeps ISO strings."""
    return {
        key: value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(value, datetime) else value
        for key, value in entity.items()
    }

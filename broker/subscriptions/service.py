"""NGSI-LD subscription operations (GS CIM 009 5.8): create, retrieve, list, update, delete."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from broker.storage.tenants import TenantDatabases
from broker.subscriptions import store
from broker.subscriptions.model import (
    check_members,
    merge_update,
    new_subscription_id,
    parse_datetime,
    validate_body,
)
from broker.subscriptions.notifier.delivery import Notifier
from broker.subscriptions.notifier.process import NotifierProcess
from broker.subscriptions.registry import SubscriptionRegistry
from ngsi.contexts import TermMap
from ngsi.errors import AlreadyExists, BadRequestData, InvalidRequest, ResourceNotFound

SUBSCRIPTION_TYPE = "Subscription"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


class SubscriptionService:
    """The rules of the subscription API; storage through `store`, matching state through the registry."""

    def __init__(self, databases: TenantDatabases, registry: SubscriptionRegistry,
                 notifier: Notifier | NotifierProcess,
                 keep_context: Callable[[Any], Awaitable[str]] | None = None) -> None:
        """`keep_context` stores an inline @context (ImplicitlyCreated) and returns the URL that serves it."""
        self._databases = databases
        self._registry = registry
        self._notifier = notifier
        self._keep_context = keep_context

    async def _settle_context(self, stored: dict[str, Any]) -> None:
        """The @context of the notifications and the URL their Link header names (GS CIM 009 5.2.12).

        `jsonldContext` given: that @context. Otherwise the request's: a single URL as it is; an inline one
        (or several URLs, which one Link cannot name) is kept as ImplicitlyCreated and its URL becomes
        `jsonldContext`, as Orion-LD does, so that a receiver expanding with the Link gets the same names.
        """
        given = stored.get("jsonldContext")
        if given is not None:
            if not isinstance(given, str) or not ABSOLUTE_URL.match(given):
                raise BadRequestData("'jsonldContext' must be the URL of an @context", parameter="jsonldContext")
            stored["@context"] = given
            return
        context = stored.get("@context")
        single_url = isinstance(context, str) or (
            isinstance(context, list) and len(context) == 1 and isinstance(context[0], str))
        if context is not None and not single_url and self._keep_context is not None:
            stored["jsonldContext"] = await self._keep_context(context)

    async def create(self, body: Any, context: Any, tenant: str | None) -> str:
        """GS CIM 009 5.8.1: validate, store, return the new id."""
        now = datetime.now(UTC)
        if not isinstance(body, dict):
            raise InvalidRequest("A subscription must be a JSON object")
        validate_body(body, now)
        stored = {**body, "type": SUBSCRIPTION_TYPE}
        stored.setdefault("id", new_subscription_id())
        if context is not None:
            stored["@context"] = context
        await self._settle_context(stored)
        row = {"body": stored, "tenant": tenant}
        await self._registry.compile(row)  # q / geoQ / @context problems surface as 400 before storing
        pool = await self._databases.pool(tenant, create=True)
        async with pool.connection() as conn:
            inserted = await store.insert_subscription(
                conn, stored, tenant, _expires(stored), stored.get("timeInterval"), now
            )
            if not inserted:
                raise AlreadyExists(f"Subscription {stored['id']} already exists", id=stored["id"])
            await conn.commit()
            self._registry.invalidate(conn.info.dbname)
        self._notifier.watch_soon(tenant)
        return str(stored["id"])

    async def retrieve(self, subscription_id: str, tenant: str | None, context: Any = None) -> dict[str, Any]:
        """The subscription with its type and attribute names in the request's @context (`context`)."""
        pool = await self._databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            row = await store.fetch_subscription(conn, subscription_id)
        if row is None:
            raise ResourceNotFound(f"Subscription {subscription_id} not found", id=subscription_id)
        return await self._in_context(self.represent(row), row, await self._registry.term_map(context))

    async def list(self, tenant: str | None, limit: int, offset: int, context: Any = None
                   ) -> tuple[list[dict[str, Any]], int]:
        pool = await self._databases.pool(tenant, create=False)  # an unknown tenant: 404, as for entities
        async with pool.connection() as conn:
            rows, total = await store.list_subscriptions(conn, limit, offset)
        terms = await self._registry.term_map(context)
        return [await self._in_context(self.represent(row), row, terms) for row in rows], total

    async def _in_context(self, body: dict[str, Any], row: dict[str, Any], terms: TermMap) -> dict[str, Any]:
        """Entity types and attribute names, written in the subscription's own @context, as the request's
        @context names them (full IRIs when it has no term for them), as Orion-LD answers."""
        own = await self._registry.term_map(row["body"].get("@context"))
        if own is terms:  # the same @context (term maps are cached per context)
            return body

        def names(values: Any) -> Any:
            return [terms.compact(own.expand(v)) if isinstance(v, str) else v for v in values] \
                if isinstance(values, list) else values

        if isinstance(body.get("entities"), list):
            body["entities"] = [
                {**item, "type": terms.compact_type(own.expand_type(item["type"]))}
                if isinstance(item, dict) and isinstance(item.get("type"), str) else item
                for item in body["entities"]
            ]
        if "watchedAttributes" in body:
            body["watchedAttributes"] = names(body["watchedAttributes"])
        notification = body.get("notification")
        if isinstance(notification, dict) and "attributes" in notification:
            body["notification"] = {**notification, "attributes": names(notification["attributes"])}
        return body

    async def update(self, subscription_id: str, patch: Any, context: Any, tenant: str | None) -> None:
        """GS CIM 009 5.8.2: members in the patch replace the stored ones; the result must be valid."""
        now = datetime.now(UTC)
        if isinstance(patch, dict):
            check_members(patch)
        pool = await self._databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            row = await store.fetch_subscription(conn, subscription_id)
            if row is None:
                raise ResourceNotFound(f"Subscription {subscription_id} not found", id=subscription_id)
            merged = merge_update(row["body"], patch)
            if context is not None:
                merged["@context"] = context
                if "jsonldContext" not in patch:
                    merged.pop("jsonldContext", None)  # it named the @context this request replaces
            await self._settle_context(merged)
            validate_body({k: v for k, v in merged.items() if k != "@context"}, now,
                          check_expiry="expiresAt" in patch)
            await self._registry.compile({"body": merged, "tenant": row["tenant"]})
            await store.update_subscription(
                conn, merged, _expires(merged), merged.get("timeInterval"), now,
                reset_failures="notification" in patch,
            )
            await conn.commit()
            self._registry.invalidate(conn.info.dbname)
        self._notifier.wake(tenant, subscription_id)

    async def delete(self, subscription_id: str, tenant: str | None) -> None:
        pool = await self._databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            if not await store.delete_subscription(conn, subscription_id):
                raise ResourceNotFound(f"Subscription {subscription_id} not found", id=subscription_id)
            await conn.commit()
            self._registry.invalidate(conn.info.dbname)

    def represent(self, row: dict[str, Any]) -> dict[str, Any]:
        """The subscription as GET returns it: the user's members plus the broker-maintained ones."""
        body = {k: v for k, v in row["body"].items() if k != "@context"}
        now = datetime.now(UTC)
        failed = row["consecutive_failures"] >= self._notifier.settings.failed_after
        # GS CIM 009 5.2.12: the subscription is active, paused or expired; whether its notifications get
        # through is notification.status (ok / failed), with the counters, as Orion-LD shows them.
        if not row["is_active"]:
            status = "paused"
        elif row["expires_at"] is not None and row["expires_at"] <= now:
            status = "expired"
        else:
            status = "active"
        notification = dict(body.get("notification") or {})
        counters = {
            "timesSent": row["times_sent"],
            "timesFailed": row["times_failed"],
            "lastNotification": _iso(row["last_notification"]),
            "lastSuccess": _iso(row["last_success"]),
            "lastFailure": _iso(row["last_failure"]),
        }
        notification.update({k: v for k, v in counters.items() if v is not None})
        if row["times_sent"]:
            notification["status"] = "failed" if failed else "ok"
        result = {
            "id": body["id"],
            "type": SUBSCRIPTION_TYPE,
            **{k: v for k, v in body.items() if k not in {"id", "type", "notification"}},
            "isActive": row["is_active"],
            "status": status,
            "notification": notification,
            "createdAt": _iso(row["created_at"]),
            "modifiedAt": _iso(row["modified_at"]),
        }
        if "jsonldContext" not in result and isinstance(row["body"].get("@context"), str):
            result["jsonldContext"] = row["body"]["@context"]
        return result


def _expires(body: dict[str, Any]) -> datetime | None:
    return parse_datetime(body["expiresAt"], "expiresAt") if "expiresAt" in body else None

"""Turns an outbox row into the notification a receiver gets: body, headers, MQTT envelope (GS CIM 009 5.3.1)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from broker.subscriptions.model import Subscription
from ngsi.contexts import CORE_CONTEXT_URL, TermMap, with_core_context

JSONLD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
SYS_ATTRS = ("createdAt", "modifiedAt", "deletedAt")


@dataclass(frozen=True, slots=True)
class RenderedNotification:
    """What the senders put on the wire."""

    body: bytes
    headers: dict[str, str]


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NotifiedAt:
    """`notifiedAt` stamps (`iso_now()`), formatted once per millisecond however many notifications leave in it."""

    def __init__(self) -> None:
        self._millisecond = -1
        self._text = ""

    def __call__(self) -> str:
        millisecond = time.time_ns() // 1_000_000
        if millisecond != self._millisecond:
            moment = datetime.fromtimestamp(millisecond / 1000, UTC).isoformat(timespec="milliseconds")
            self._millisecond, self._text = millisecond, moment.replace("+00:00", "Z")
        return self._text


def with_core(context: Any) -> Any:
    """The @context in a JSON-LD notification: the subscription's with the core context after it (as the
    broker's JSON-LD answers), the core one without any."""
    return with_core_context(context, CORE_CONTEXT_URL)


def context_url(context: Any) -> str:
    """The URL for the Link header: the subscription's own @context URL, else the core context."""
    if isinstance(context, str):
        return context
    if isinstance(context, list) and len(context) == 1 and isinstance(context[0], str):
        return context[0]
    return CORE_CONTEXT_URL


def compact(entity: dict[str, Any], terms: TermMap, sub: Subscription) -> dict[str, Any]:
    """The stored entity in the subscription's format, names compacted with its @context."""
    try:
        from ngsi.forms import compact_entity
    except ImportError:  # ngsi.forms not built yet: the slice keeps working with its own minimal form
        return _compact_minimal(entity, terms, sub)
    stored = {k: v for k, v in entity.items() if k != "deletedAt"}
    compacted: dict[str, Any] = compact_entity(stored, terms, form=sub.format, sys_attrs=sub.sys_attrs)  # type: ignore[arg-type]
    if "deletedAt" in entity:
        compacted["deletedAt"] = entity["deletedAt"]
    return compacted


def _compact_minimal(entity: dict[str, Any], terms: TermMap, sub: Subscription) -> dict[str, Any]:
    types = [terms.compact_type(t) for t in entity.get("types") or []]
    result: dict[str, Any] = {"id": entity["id"], "type": types[0] if len(types) == 1 else types}
    for name, instances in (entity.get("doc") or {}).items():
        rendered = [_attribute(instance, terms, sub) for instance in instances]
        result[terms.compact(name)] = rendered[0] if len(rendered) == 1 else rendered
    if sub.sys_attrs:
        for member in ("createdAt", "modifiedAt"):
            if isinstance(entity.get(member), str):
                result[member] = entity[member]
    if "deletedAt" in entity:
        result["deletedAt"] = entity["deletedAt"]
    return result


def _attribute(instance: dict[str, Any], terms: TermMap, sub: Subscription) -> Any:
    if sub.format == "keyValues":
        for member in ("value", "object", "objectList", "languageMap", "vocab", "json"):
            if member in instance:
                return instance[member]
        return None
    rendered: dict[str, Any] = {}
    for member, value in instance.items():
        if member in SYS_ATTRS[:2] and not sub.sys_attrs:
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict) and ":" in member:
            nested = [_attribute(v, terms, sub) for v in value]
            rendered[terms.compact(member)] = nested[0] if len(nested) == 1 else nested
        else:
            rendered[member] = value
    return rendered


def render_data(sub: Subscription, entities: list[dict[str, Any]], terms: TermMap) -> bytes:
    """The notification's `data` member as JSON: the entities in the subscription's format.

    It depends only on the entities, the @context and the format, not on the subscription's id,
    so subscriptions that get the same change in the same form share one rendering.
    """
    return orjson.dumps([compact(entity, terms, sub) for entity in entities])


def render(sub: Subscription, notification_id: str, data: bytes, notified_at: str | None = None
           ) -> RenderedNotification:
    """GS CIM 009 5.3.1 Notification around rendered `data`, plus the headers Orion-LD sends with it."""
    notification: dict[str, Any] = {
        "id": notification_id,
        "type": "Notification",
        "subscriptionId": sub.id,
        "notifiedAt": notified_at or iso_now(),
    }
    headers = {"Content-Type": sub.endpoint.accept if sub.endpoint.accept != "application/geo+json"
               else "application/json"}
    if sub.endpoint.accept == "application/ld+json":
        notification["@context"] = with_core(sub.context)
    else:
        link = sub.body.get("jsonldContext") or context_url(sub.context)
        headers["Link"] = f'<{link}>; rel="{JSONLD_CONTEXT_REL}"; type="application/ld+json"'
    if sub.tenant:
        headers["NGSILD-Tenant"] = sub.tenant
    headers.update(sub.endpoint.receiver_info)
    return RenderedNotification(body=orjson.dumps(notification)[:-1] + b',"data":' + data + b"}", headers=headers)


def mqtt_payload(rendered: RenderedNotification) -> bytes:
    """Orion-LD's MQTT envelope: `{"metadata": {headers}, "body": notification}`."""
    return b'{"metadata":' + orjson.dumps(rendered.headers) + b',"body":' + rendered.body + b"}"

"""Subscription payloads: validation at the edge (GS CIM 009 5.2.12, 5.2.14, 5.2.15) into a plain record."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from ngsi.errors import BadRequestData, InvalidRequest
from ngsi.forms import MAX_VALUE_DEPTH, nests_deeper

TRIGGERS = frozenset(
    {
        "entityCreated",
        "entityUpdated",
        "entityDeleted",
        "attributeCreated",
        "attributeUpdated",
        "attributeDeleted",
    }
)
# GS CIM 009 5.2.12: without notificationTrigger, creations and updates notify (not deletions).
DEFAULT_TRIGGERS = ("entityCreated", "entityUpdated", "attributeCreated", "attributeUpdated")
FORMATS = frozenset({"normalized", "concise", "keyValues", "simplified"})
ACCEPTS = frozenset({"application/json", "application/ld+json", "application/geo+json"})
ENDPOINT_SCHEMES = frozenset({"http", "https", "mqtt", "mqtts"})
MQTT_VERSIONS = frozenset({"mqtt3.1.1", "mqtt5.0"})
SUBSCRIPTION_ID_PREFIX = "urn:ngsi-ld:Subscription:"
# Members the broker maintains itself; accepted on input (Orion-LD clients echo them) and ignored.
READ_ONLY_MEMBERS = frozenset(
    {"status", "createdAt", "modifiedAt", "timesSent", "timesFailed", "lastNotification",
     "lastSuccess", "lastFailure"}
)
# GS CIM 009 5.2.33 EntitySelector.
SELECTOR_MEMBERS = frozenset({"id", "idPattern", "type"})
KNOWN_MEMBERS = frozenset(
    {"id", "type", "@context", "subscriptionName", "name", "description", "entities", "watchedAttributes",
     "q", "geoQ", "csf", "scopeQ", "lang", "notification", "expiresAt", "isActive", "throttling",
     "timeInterval", "notificationTrigger", "temporalQ", "showChanges", "sysAttrs", "jsonldContext"}
) | READ_ONLY_MEMBERS


class Terms(Protocol):
    """What the subscription slice needs from a resolved @context (`ngsi.contexts.TermMap`)."""

    def expand(self, term: str) -> str: ...

    def expand_type(self, term: str) -> str: ...


@dataclass(frozen=True, slots=True)
class EntitySelector:
    """One element of `entities`: type (expanded IRI) with an optional id or idPattern."""

    type: str | None
    id: str | None = None
    id_pattern: re.Pattern[str] | None = None

    def selects(self, entity_id: str, types: list[str]) -> bool:
        if self.type is not None and self.type not in types:
            return False
        if self.id is not None and self.id != entity_id:
            return False
        return self.id_pattern is None or self.id_pattern.fullmatch(entity_id) is not None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """GS CIM 009 5.2.15: where notifications go and how."""

    uri: str
    accept: str = "application/json"
    receiver_info: dict[str, str] = field(default_factory=dict)
    notifier_info: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription ready for matching: names expanded, expressions kept as the user wrote them."""

    id: str
    body: dict[str, Any]
    tenant: str | None
    entities: tuple[EntitySelector, ...]
    watched: frozenset[str]
    notify_attributes: frozenset[str]
    q: str | None
    geo_q: dict[str, Any] | None
    triggers: frozenset[str]
    format: str
    sys_attrs: bool
    show_changes: bool
    endpoint: Endpoint
    context: Any
    throttling: float | None
    time_interval: float | None
    expires_at: datetime | None
    is_active: bool

    def is_live(self, now: datetime) -> bool:
        """Active and not expired: the only state in which changes enqueue notifications."""
        return self.is_active and (self.expires_at is None or self.expires_at > now)


def new_subscription_id() -> str:
    return SUBSCRIPTION_ID_PREFIX + str(uuid.uuid4())


def parse_datetime(value: Any, member: str) -> datetime:
    """An ISO 8601 date-time with a time zone (UTC assumed without one)."""
    if not isinstance(value, str):
        raise BadRequestData(f"'{member}' must be an ISO 8601 date-time string", title="Invalid subscription")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestData(
            f"'{member}' is not an ISO 8601 date-time: {value!r}", title="Invalid subscription"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _bad(detail: str) -> BadRequestData:
    return BadRequestData(detail, title="Invalid subscription")


def _is_uri(value: Any) -> bool:
    return isinstance(value, str) and ":" in value and " " not in value


def _string_list(body: dict[str, Any], member: str) -> list[str]:
    value = body.get(member)
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(f"'{member}' must be a non-empty array of strings")
    return value


def _positive_number(body: dict[str, Any], member: str) -> float | None:
    value = body.get(member)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _bad(f"'{member}' must be a positive number of seconds")
    return float(value)


def _key_values(value: Any, member: str) -> dict[str, str]:
    """receiverInfo / notifierInfo: an array of {key, value} (GS CIM 009 5.2.22 KeyValuePair)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise _bad(f"'notification.endpoint.{member}' must be an array of {{key, value}} objects")
    pairs: dict[str, str] = {}
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("value"), str)):
            raise _bad(f"'notification.endpoint.{member}' items must be {{\"key\": str, \"value\": str}}")
        pairs[item["key"]] = item["value"]
    return pairs


def parse_endpoint(value: Any) -> Endpoint:
    """GS CIM 009 5.2.15 Endpoint, with MQTT notifierInfo checked as Orion-LD does."""
    if not isinstance(value, dict):
        raise _bad("'notification.endpoint' is required and must be an object")
    uri = value.get("uri")
    if not isinstance(uri, str) or not uri:
        raise _bad("'notification.endpoint.uri' is required")
    parts = urlsplit(uri)
    if parts.scheme not in ENDPOINT_SCHEMES:
        raise _bad(
            f"'notification.endpoint.uri' has an unsupported scheme {parts.scheme!r}: "
            "use http, https, mqtt or mqtts"
        )
    if not parts.hostname:
        raise _bad(f"'notification.endpoint.uri' has no host: {uri!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise _bad(f"'notification.endpoint.uri' has an invalid port: {uri!r}") from None
    if parts.scheme.startswith("mqtt") and len(parts.path) <= 1:
        raise _bad("'notification.endpoint.uri' of an MQTT endpoint needs a topic: mqtt://host:port/topic")
    accept = value.get("accept", "application/json")
    if not isinstance(accept, str) or accept not in ACCEPTS:
        raise _bad(f"'notification.endpoint.accept' must be one of {sorted(ACCEPTS)}")
    notifier_info = _key_values(value.get("notifierInfo"), "notifierInfo")
    qos = notifier_info.get("MQTT-QoS")
    if qos is not None and qos not in {"0", "1", "2"}:
        raise _bad("'notification.endpoint.notifierInfo' MQTT-QoS must be 0, 1 or 2")
    version = notifier_info.get("MQTT-Version")
    if version is not None and version not in MQTT_VERSIONS:
        raise _bad(f"'notification.endpoint.notifierInfo' MQTT-Version must be one of {sorted(MQTT_VERSIONS)}")
    return Endpoint(
        uri=uri,
        accept=accept,
        receiver_info=_key_values(value.get("receiverInfo"), "receiverInfo"),
        notifier_info=notifier_info,
    )


def _entity_selectors(body: dict[str, Any], terms: Terms) -> tuple[EntitySelector, ...]:
    entities = body.get("entities")
    if entities is None:
        return ()
    if not isinstance(entities, list) or not entities:
        raise _bad("'entities' must be a non-empty array of EntitySelector objects")
    selectors = []
    for index, item in enumerate(entities):
        if not isinstance(item, dict):
            raise _bad(f"'entities[{index}]' must be an object")
        unknown = sorted(set(item) - SELECTOR_MEMBERS)
        if unknown:
            raise _bad(f"'entities[{index}]' has members an EntitySelector does not define: {unknown}")
        type_ = item.get("type")
        if type_ is not None and (not isinstance(type_, str) or not type_):
            raise _bad(f"'entities[{index}].type' must be a string")
        if type_ is None:
            raise _bad(f"'entities[{index}].type' is required")
        entity_id = item.get("id")
        if entity_id is not None and not _is_uri(entity_id):
            raise _bad(f"'entities[{index}].id' must be a URI")
        pattern = item.get("idPattern")
        compiled = None
        if pattern is not None:
            if not isinstance(pattern, str):
                raise _bad(f"'entities[{index}].idPattern' must be a string")
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise _bad(f"'entities[{index}].idPattern' is not a valid regular expression: {error}") from None
        selectors.append(EntitySelector(type=terms.expand_type(type_), id=entity_id, id_pattern=compiled))
    return tuple(selectors)


def _notification(body: dict[str, Any]) -> dict[str, Any]:
    notification = body.get("notification")
    if not isinstance(notification, dict):
        raise _bad("'notification' is required and must be an object with an 'endpoint'")
    return notification


def check_members(body: dict[str, Any]) -> None:
    """Reject members NGSI-LD does not define (a typo would otherwise silently do nothing)."""
    for member in body:
        if member not in KNOWN_MEMBERS:
            raise _bad(f"Unknown subscription member {member!r}")


def validate_body(body: dict[str, Any], now: datetime, *, check_expiry: bool = True) -> None:
    """Every check that needs no @context and no q parser: GS CIM 009 5.2.12 constraints."""
    check_members(body)
    if nests_deeper(body, MAX_VALUE_DEPTH):
        raise _bad(f"The subscription nests arrays and objects deeper than {MAX_VALUE_DEPTH} levels")
    if body.get("type", "Subscription") != "Subscription":
        raise _bad("'type' must be 'Subscription'")
    if "id" in body and not _is_uri(body["id"]):
        raise _bad("'id' must be a URI")
    if "entities" not in body and "watchedAttributes" not in body and "timeInterval" not in body:
        raise _bad("A subscription needs 'entities' or 'watchedAttributes'")
    notification = _notification(body)
    parse_endpoint(notification.get("endpoint"))
    fmt = notification.get("format", "normalized")
    if fmt not in FORMATS:
        raise _bad(f"'notification.format' must be one of normalized, concise, keyValues; got {fmt!r}")
    _string_list(notification, "attributes")
    _string_list(body, "watchedAttributes")
    for trigger in _string_list(body, "notificationTrigger"):
        if trigger not in TRIGGERS:
            raise _bad(f"'notificationTrigger' has an unknown trigger {trigger!r}: use one of {sorted(TRIGGERS)}")
    throttling = _positive_number(body, "throttling")
    interval = _positive_number(body, "timeInterval")
    if throttling is not None and interval is not None:
        raise _bad("'throttling' and 'timeInterval' cannot be used together")
    if interval is not None and "watchedAttributes" in body:
        raise _bad("'timeInterval' and 'watchedAttributes' cannot be used together")
    if "expiresAt" in body:
        expires = parse_datetime(body["expiresAt"], "expiresAt")
        if check_expiry and expires <= now:
            raise _bad(f"'expiresAt' is in the past: {body['expiresAt']}")
    for flag in ("isActive", "showChanges", "sysAttrs"):
        if flag in body and not isinstance(body[flag], bool):
            raise _bad(f"'{flag}' must be true or false")
    if "showChanges" in notification and not isinstance(notification["showChanges"], bool):
        raise _bad("'notification.showChanges' must be true or false")
    if "sysAttrs" in notification and not isinstance(notification["sysAttrs"], bool):
        raise _bad("'notification.sysAttrs' must be true or false")
    if "q" in body and (not isinstance(body["q"], str) or not body["q"].strip()):
        raise _bad("'q' must be a non-empty string")
    if "geoQ" in body:
        geo_q = body["geoQ"]
        if not isinstance(geo_q, dict) or not {"geometry", "coordinates", "georel"} <= geo_q.keys():
            raise _bad("'geoQ' must be an object with 'geometry', 'coordinates' and 'georel'")


def build_subscription(
    body: dict[str, Any], terms: Terms, *, tenant: str | None, context: Any
) -> Subscription:
    """The matching record of a validated body; `terms` is the subscription's own @context."""
    notification = _notification(body)
    endpoint = parse_endpoint(notification.get("endpoint"))
    expires = body.get("expiresAt")
    return Subscription(
        id=body["id"],
        body=body,
        tenant=tenant,
        entities=_entity_selectors(body, terms),
        watched=frozenset(terms.expand(a) for a in _string_list(body, "watchedAttributes")),
        notify_attributes=frozenset(terms.expand(a) for a in _string_list(notification, "attributes")),
        q=body.get("q"),
        geo_q=body.get("geoQ"),
        triggers=frozenset(_string_list(body, "notificationTrigger") or DEFAULT_TRIGGERS),
        format=_form(notification.get("format", "normalized")),
        sys_attrs=bool(notification.get("sysAttrs", body.get("sysAttrs", False))),
        show_changes=bool(notification.get("showChanges", body.get("showChanges", False))),
        endpoint=endpoint,
        context=context,
        throttling=_positive_number(body, "throttling"),
        time_interval=_positive_number(body, "timeInterval"),
        expires_at=parse_datetime(expires, "expiresAt") if expires is not None else None,
        is_active=bool(body.get("isActive", True)),
    )


def _form(value: str) -> str:
    return "keyValues" if value == "simplified" else value


def merge_update(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """GS CIM 009 5.8.2 Update Subscription: members replace, `notification` merges one level deep."""
    if not isinstance(patch, dict) or not patch:
        raise InvalidRequest("The subscription update must be a non-empty JSON object")
    if "id" in patch and patch["id"] != current.get("id"):
        raise _bad("'id' of a subscription cannot be changed")
    merged = dict(current)
    for member, value in patch.items():
        if member in READ_ONLY_MEMBERS or member == "@context":
            continue
        if member == "notification" and isinstance(value, dict) and isinstance(current.get("notification"), dict):
            merged["notification"] = {**current["notification"], **value}
        elif value is None:
            merged.pop(member, None)
        else:
            merged[member] = value
    return merged

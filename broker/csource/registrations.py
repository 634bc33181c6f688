"""Checks, expands, compacts and matches context source registrations (GS CIM 009 5.2.9, 5.9), pure."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.query.q import matches_q
from ngsi import forms
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData

REGISTRATION_TYPE = "ContextSourceRegistration"
MODES = ("inclusive", "exclusive", "redirect", "auxiliary")
ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
TIME_MEMBERS = ("expiresAt", "expires")
READ_ONLY_MEMBERS = ("createdAt", "modifiedAt", "status", "timesSent", "timesFailed", "lastSuccess", "lastFailure")


@dataclass(frozen=True, slots=True)
class RegistrationFilter:
    """GS CIM 009 5.10.2 Query context source registrations: what the caller asks for, expanded.

    `csf`: a parsed query over the registration's own members (endpoint, mode, name, its context source
    properties), as Orion-LD reads it. `now`: registrations that expired before it are left out."""

    ids: Sequence[str] = ()
    id_pattern: str | None = None
    types: Sequence[str] = ()
    attrs: Sequence[str] = ()
    csf: Any = None
    now: datetime | None = None


def check_uri(value: Any, what: str) -> str:
    if not forms.is_uri(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}", attribute=what)
    return str(value)


def new_registration_id() -> str:
    return f"urn:ngsi-ld:ContextSourceRegistration:{uuid.uuid4()}"


def _bad(detail: str, member: str) -> BadRequestData:
    return BadRequestData(detail, title="Invalid context source registration", attribute=member)


def _check_time(value: Any, member: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{member} must be an ISO 8601 date-time string", member)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{member} {value!r} is not an ISO 8601 date-time", member) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check_interval(value: Any, member: str) -> None:
    if not isinstance(value, dict) or "startAt" not in value:
        raise _bad(f"{member} must be an object with startAt (and optionally endAt)", member)
    start = _check_time(value["startAt"], f"{member}.startAt")
    if "endAt" in value and _check_time(value["endAt"], f"{member}.endAt") < start:
        raise _bad(f"{member}.endAt is before its startAt", member)


def _expand_entity_info(item: Any, terms: TermMap, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object with type and optionally id or idPattern", where)
    entity_type = item.get("type")
    types = entity_type if isinstance(entity_type, list) else [entity_type]
    if entity_type is None or not all(isinstance(t, str) and t for t in types):
        raise _bad(f"{where}.type is required and must be a string", f"{where}.type")
    expanded: dict[str, Any] = {"type": [terms.expand_type(str(t)) for t in types]}
    if isinstance(entity_type, str):
        expanded["type"] = expanded["type"][0]
    if "id" in item:
        expanded["id"] = check_uri(item["id"], f"{where}.id")
    if "idPattern" in item:
        pattern = item["idPattern"]
        try:
            re.compile(pattern)
        except (re.error, TypeError):
            raise _bad(f"{where}.idPattern {pattern!r} is not a regular expression", f"{where}.idPattern") from None
        expanded["idPattern"] = pattern
    return expanded


def _expand_names(value: Any, terms: TermMap, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
        raise _bad(f"{where} must be an array of attribute names", where)
    return [terms.expand(name) for name in value]


def expand_registration(body: Any, terms: TermMap, *, partial: bool = False) -> dict[str, Any]:
    """Check a registration (or, `partial`, a PATCH fragment) and expand its types and attribute names."""
    if not isinstance(body, dict):
        raise BadRequestData("A context source registration must be a JSON object")
    if forms.nests_deeper(body, forms.MAX_VALUE_DEPTH):
        raise BadRequestData(f"The registration nests arrays and objects deeper than {forms.MAX_VALUE_DEPTH} levels")
    if not partial:
        if body.get("type") != REGISTRATION_TYPE:
            raise _bad(f"type must be {REGISTRATION_TYPE!r}, got {body.get('type')!r}", "type")
        for member in ("information", "endpoint"):
            if member not in body:
                raise _bad(f"{member} is required", member)
    elif "type" in body and body["type"] != REGISTRATION_TYPE:
        raise _bad(f"type must be {REGISTRATION_TYPE!r}", "type")
    expanded: dict[str, Any] = {}
    for member, value in body.items():
        if member in READ_ONLY_MEMBERS:
            continue
        if member == "id":
            expanded["id"] = check_uri(value, "Registration id")
        elif member == "information":
            if not isinstance(value, list) or not value:
                raise _bad("information must be a non-empty array of RegistrationInfo", "information")
            expanded["information"] = [_expand_information(info, terms, i) for i, info in enumerate(value)]
        elif member == "endpoint":
            if not isinstance(value, str) or not ABSOLUTE_URI.match(value):
                raise _bad(f"endpoint must be an absolute URI, got {value!r}", "endpoint")
            expanded["endpoint"] = value
        elif member == "mode":
            if value not in MODES:
                raise _bad(f"mode must be one of {', '.join(MODES)}, got {value!r}", "mode")
            expanded["mode"] = value
        elif member in TIME_MEMBERS:
            if _check_time(value, member) <= datetime.now(UTC):  # as for subscriptions: it would never be used
                raise _bad(f"{member} {value!r} is in the past", member)
            expanded["expiresAt"] = value
        elif member in ("observationInterval", "managementInterval"):
            _check_interval(value, member)
            expanded[member] = value
        elif member in ("location", "observationSpace", "operationSpace"):
            try:
                expanded[member] = forms.check_geometry(value, member)
            except BadRequestData as error:
                raise _bad(f"{member} must be a GeoJSON geometry: {error.detail}", member) from None
        elif member == "management":
            if not isinstance(value, dict) or not all(
                    isinstance(value[key], int | float) and not isinstance(value[key], bool) and value[key] >= 0
                    for key in ("timeout", "cooldown") if key in value):
                raise _bad("management must be an object whose timeout and cooldown are non-negative numbers",
                           member)
            expanded[member] = value
        elif member == "operations":
            if not isinstance(value, list) or not all(isinstance(op, str) for op in value):
                raise _bad("operations must be an array of operation names", "operations")
            expanded[member] = value
        elif member in ("name", "description", "type", "tenant"):
            if not isinstance(value, str):
                raise _bad(f"{member} must be a string", member)
            expanded[member] = value
        else:
            # Context source properties and other members are kept as given (5.2.9 "additional").
            expanded[member] = value
    return expanded


def _expand_information(info: Any, terms: TermMap, index: int) -> dict[str, Any]:
    where = f"information[{index}]"
    if not isinstance(info, dict):
        raise _bad(f"{where} must be an object", where)
    if not any(key in info for key in ("entities", "propertyNames", "relationshipNames")):
        raise _bad(f"{where} needs entities, propertyNames or relationshipNames", where)
    expanded: dict[str, Any] = {}
    if "entities" in info:
        entities = info["entities"]
        if not isinstance(entities, list) or not entities:
            raise _bad(f"{where}.entities must be a non-empty array", f"{where}.entities")
        expanded["entities"] = [
            _expand_entity_info(item, terms, f"{where}.entities[{i}]") for i, item in enumerate(entities)
        ]
    for key in ("propertyNames", "relationshipNames"):
        if key in info:
            expanded[key] = _expand_names(info[key], terms, f"{where}.{key}")
    return expanded


def entity_types_of(doc: dict[str, Any]) -> list[str]:
    """The expanded entity types a registration names (for the GIN-indexed column)."""
    types: list[str] = []
    for info in doc.get("information", []):
        for entity in info.get("entities", []):
            kind = entity["type"]
            types.extend(kind if isinstance(kind, list) else [kind])
    return sorted(set(types))


def attributes_of(doc: dict[str, Any]) -> list[str]:
    """The expanded attribute names a registration names."""
    names: set[str] = set()
    for info in doc.get("information", []):
        names.update(info.get("propertyNames", []))
        names.update(info.get("relationshipNames", []))
    return sorted(names)


def _entity_matches(entity: dict[str, Any], where: RegistrationFilter) -> bool:
    kinds = entity["type"] if isinstance(entity["type"], list) else [entity["type"]]
    if where.types and not set(kinds) & set(where.types):
        return False
    registered_id = entity.get("id")
    pattern = entity.get("idPattern")
    if where.ids:
        if registered_id is not None:
            if registered_id not in where.ids:
                return False
        elif pattern is not None and not any(re.fullmatch(pattern, i) for i in where.ids):
            return False
    if where.id_pattern and registered_id is not None and not re.search(where.id_pattern, registered_id):
        return False
    return True


def _information_matches(info: dict[str, Any], where: RegistrationFilter) -> bool:
    if where.attrs:
        names = set(info.get("propertyNames", [])) | set(info.get("relationshipNames", []))
        if names and not names & set(where.attrs):
            return False
    if where.types or where.ids or where.id_pattern:
        entities = info.get("entities")
        if not entities:
            return not (where.types or where.ids)
        return any(_entity_matches(entity, where) for entity in entities)
    return True


def matches(doc: dict[str, Any], where: RegistrationFilter) -> bool:
    """GS CIM 009 5.12 (registration matching): some RegistrationInfo covers the entities and attributes,
    the registration has not expired and its own members match `csf`."""
    if where.now is not None and (expiry := expires_at(doc)) is not None and expiry <= where.now:
        return False
    if where.csf is not None and not matches_q(where.csf, _members_as_attributes(doc)):
        return False
    return any(_information_matches(info, where) for info in doc.get("information", []))


def expires_at(doc: dict[str, Any]) -> datetime | None:
    text = doc.get("expiresAt")
    return _check_time(text, "expiresAt") if isinstance(text, str) else None


def _members_as_attributes(doc: dict[str, Any]) -> dict[str, Any]:
    """The registration's members in the shape the q evaluator reads (name → instances with a value)."""
    return {name: [{"type": "Property", "value": value}] for name, value in doc.items()
            if name not in ("id", "type", "information", "@context")}


def compact_registration(
    doc: dict[str, Any], terms: TermMap, *, created_at: str, modified_at: str, sys_attrs: bool
) -> dict[str, Any]:
    """The registration as the API returns it, types and names compacted with the request's @context."""
    body: dict[str, Any] = {}
    for member, value in doc.items():
        if member == "information":
            body[member] = [_compact_information(info, terms) for info in value]
        else:
            body[member] = value
    if sys_attrs:
        body["createdAt"] = created_at
        body["modifiedAt"] = modified_at
    return body


def _compact_information(info: dict[str, Any], terms: TermMap) -> dict[str, Any]:
    compacted: dict[str, Any] = {}
    if "entities" in info:
        compacted["entities"] = []
        for entity in info["entities"]:
            item = dict(entity)
            kind = entity["type"]
            item["type"] = [terms.compact_type(k) for k in kind] if isinstance(kind, list) else terms.compact_type(kind)
            compacted["entities"].append(item)
    for key in ("propertyNames", "relationshipNames"):
        if key in info:
            compacted[key] = [terms.compact(name) for name in info[key]]
    return compacted

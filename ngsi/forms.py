"""NGSI-LD payload forms as pure functions: normalize, validate, expand to the stored shape, compact back."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeGuard

import shapely.geometry
from shapely.errors import GEOSException

from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData
from ngsi.timestamps import format_timestamp, normalize_timestamp

Form = Literal["normalized", "concise", "keyValues"]

NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
LOCATION_IRI = NGSI_LD + "location"

# GS CIM 009 v1.8 4.5: the attribute types and the member that carries each one's value.
VALUE_MEMBER_BY_TYPE = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
    "LanguageProperty": "languageMap",
    "VocabularyProperty": "vocab",
    "JsonProperty": "json",
}
# The v1.8 core context names the vocabulary attribute type `VocabProperty`; v1.7 (and Orion-LD, and the
# FIWARE tutorials) `VocabularyProperty`. Both are taken; it is stored and answered as `VocabularyProperty`.
TYPE_ALIASES = {"VocabProperty": "VocabularyProperty"}
ATTRIBUTE_TYPES = frozenset(VALUE_MEMBER_BY_TYPE) | frozenset(TYPE_ALIASES)
# The member that, without `type`, says which attribute type a concise attribute is (GS CIM 009 4.5.x).
TYPE_BY_VALUE_MEMBER = {
    "object": "Relationship",
    "objectList": "ListRelationship",
    "valueList": "ListProperty",
    "languageMap": "LanguageProperty",
    "vocab": "VocabularyProperty",
    "json": "JsonProperty",
    "value": "Property",
}
GEOJSON_GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
SYSTEM_TIMESTAMPS = ("createdAt", "modifiedAt", "deletedAt")
# Members of an attribute instance that are NGSI-LD keywords, not sub-attributes (GS CIM 009 4.5, 5.2).
ATTRIBUTE_KEYWORDS = frozenset(
    {
        "type", "value", "object", "objectType", "objectList", "valueList", "languageMap", "vocab", "json",
        "observedAt", "unitCode", "datasetId", "instanceId", "lang",
        "createdAt", "modifiedAt", "deletedAt",
        "previousValue", "previousObject", "previousObjectList", "previousValueList", "previousLanguageMap",
        "previousVocab", "previousJson",
    }
)
ENTITY_MEMBERS = frozenset({"id", "type", "scope", "@context"})
# GS CIM 009 4.5.0 / 5.5.4: the NGSI-LD Null, allowed only in the fragments of merge and partial updates,
# where it removes the member it is the value of; anywhere else it is BadRequestData.
NGSI_LD_NULL = "urn:ngsi-ld:null"
# How deep payloads may nest. Values are stored and answered inside a few more levels (the stored doc,
# GeoJSON features, notifications) and orjson writes at most 255; deeper input is a 400, never a 500.
MAX_VALUE_DEPTH = 100
MAX_SUB_ATTRIBUTE_DEPTH = 20
# GS CIM 009 4.6.2: names an attribute may not have because they mean something else in a payload.
RESERVED_ATTRIBUTE_NAMES = frozenset(
    {"@context", "id", "type", "scope", "createdAt", "modifiedAt", "deletedAt", "observedAt", "unitCode",
     "datasetId", "value", "object", "objectList", "valueList", "languageMap", "vocab", "json", "instanceId",
     "objectType", "lang", "@id", "@type"}
)
_FORBIDDEN_NAME_CHARS = re.compile(r"[\s<>\"'=;()\\\x00-\x1f\x7f]")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")


# PostgreSQL indexes a text of at most ~2,700 bytes (btree): longer ids and names could not be stored
# and failed at INSERT (a 500). Entity ids, types and attribute names share index entries (entity id +
# attribute IRI, type + entity id), so each gets half of that; an instanceId is indexed alone (with its
# time) and may be longer, enough for an id derived from the entity id. Orion (NGSIv2) allows 256
# characters for an entity id, its MongoDB index 1,024 bytes for id, type and service path together.
MAX_ID_BYTES = 1024
MAX_INSTANCE_ID_BYTES = 2048


def too_long(text: str, limit: int) -> bool:
    """Whether `text` takes more than `limit` bytes in UTF-8 (the size PostgreSQL indexes)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def check_length(text: str, field: str, limit: int = MAX_ID_BYTES, attribute: str | None = None) -> str:
    """`text`, or BadRequestData naming `field` and the limit when it is too long to be stored."""
    if too_long(text, limit):
        raise BadRequestData(
            (f"attribute {attribute!r}: " if attribute else "")
            + f"{field} is {len(text.encode())} bytes long, at most {limit} bytes (UTF-8) are allowed",
            title="Too long", attribute=attribute,
        )
    return text


def is_uri(text: object) -> bool:
    """Whether `text` is an absolute URI (what entity ids, relationship objects and datasetIds must be)."""
    return isinstance(text, str) and bool(_URI.match(text))


def is_geojson_geometry(value: object) -> bool:
    """Whether a value looks like a GeoJSON geometry (so a concise attribute holding it is a GeoProperty)."""
    if not _is_object(value) or value.get("type") not in GEOJSON_GEOMETRY_TYPES:
        return False
    return "coordinates" in value or "geometries" in value


def _is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    # Parsed JSON objects are dicts: test that first, the Mapping ABC check costs several times more.
    return isinstance(value, dict) or (not isinstance(value, _JSON_NON_OBJECTS) and isinstance(value, Mapping))


_JSON_NON_OBJECTS = (str, int, float, list, type(None))


def _bad(attribute: str | None, problem: str) -> BadRequestData:
    where = f"attribute {attribute!r}: " if attribute else ""
    return BadRequestData(where + problem, attribute=attribute)


# ---- validation ----------------------------------------------------------------------------------------


def check_attribute_name(name: object) -> str:
    """Reject names that are not valid NGSI-LD attribute names (GS CIM 009 4.6.2)."""
    if not isinstance(name, str) or not name:
        raise _bad(None, f"attribute names must be non-empty strings, not {name!r}")
    if name in RESERVED_ATTRIBUTE_NAMES:
        raise _bad(name, "is a reserved NGSI-LD name and cannot be used as an attribute name")
    if _FORBIDDEN_NAME_CHARS.search(name):
        raise _bad(name, "the name contains a forbidden character (whitespace, control or <>\"'=;()\\)")
    return check_length(name, "the attribute name")


def check_type_name(name: object) -> str:
    """Reject entity type names that are not valid terms or IRIs."""
    if not isinstance(name, str) or not name:
        raise BadRequestData(f"entity type must be a non-empty string, not {name!r}")
    if _FORBIDDEN_NAME_CHARS.search(name):
        raise BadRequestData(f"entity type {name!r} contains a forbidden character")
    return check_length(name, "the entity type")


def check_geometry(value: object, attribute: str) -> dict[str, Any]:
    """A GeoProperty value must be a valid GeoJSON geometry with lon/lat in range (RFC 7946, GS CIM 009 4.7)."""
    if not is_geojson_geometry(value):
        raise _bad(attribute, "a GeoProperty value must be a GeoJSON geometry with 'type' and 'coordinates'")
    assert isinstance(value, Mapping)
    if value["type"] == "Point" and _is_valid_position(value.get("coordinates")):
        return dict(value)  # the common case, decided without building a shapely geometry
    try:
        geometry = shapely.geometry.shape(value)
    except (GEOSException, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        raise _bad(attribute, f"invalid GeoJSON {value.get('type')}: {error}") from error
    if geometry.is_empty:
        raise _bad(attribute, f"GeoJSON {value.get('type')} has no coordinates")
    _check_positions(value, attribute)
    return dict(value)


def _check_positions(geometry: Mapping[str, Any], attribute: str) -> None:
    if geometry["type"] == "GeometryCollection":
        for member in geometry.get("geometries") or []:
            if not is_geojson_geometry(member):
                raise _bad(attribute, "GeometryCollection members must be GeoJSON geometries")
            _check_positions(member, attribute)
        return
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}
    positions = _flatten_positions(geometry["coordinates"], depth[geometry["type"]], attribute)
    for position in positions:
        if len(position) < 2 or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in position):
            raise _bad(attribute, f"GeoJSON position {position!r} must be [longitude, latitude]")
        lon, lat = position[0], position[1]
        if not (math.isfinite(lon) and math.isfinite(lat)) or not -180 <= lon <= 180 or not -90 <= lat <= 90:
            raise _bad(attribute, f"GeoJSON position {position!r} is out of range (longitude ±180, latitude ±90)")
    if geometry["type"] in ("Polygon", "MultiPolygon"):
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        for polygon in polygons:
            for ring in polygon:
                if len(ring) < 4 or list(ring[0]) != list(ring[-1]):
                    raise _bad(attribute, "polygon rings must be closed and have at least 4 positions")


def _is_valid_position(position: object) -> bool:
    """A [lon, lat] or [lon, lat, alt] of finite numbers within range: what every valid Point holds."""
    if not isinstance(position, list) or not 2 <= len(position) <= 3:
        return False
    for coordinate in position:
        if type(coordinate) is not float and type(coordinate) is not int:
            return False
    lon, lat = position[0], position[1]
    return math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90 and (
        len(position) == 2 or math.isfinite(position[2]))


def _flatten_positions(coordinates: Any, depth: int, attribute: str) -> list[Sequence[Any]]:
    if depth == 0:
        if not isinstance(coordinates, list):
            raise _bad(attribute, f"GeoJSON position {coordinates!r} must be an array")
        return [coordinates]
    if not isinstance(coordinates, list):
        raise _bad(attribute, f"GeoJSON coordinates {coordinates!r} are not nested arrays")
    positions: list[Sequence[Any]] = []
    for item in coordinates:
        positions.extend(_flatten_positions(item, depth - 1, attribute))
    return positions


def _check_timestamp(value: object, attribute: str, member: str) -> str:
    try:
        return normalize_timestamp(value)
    except (ValueError, TypeError) as error:
        raise _bad(attribute, f"{member} {value!r} is not an ISO 8601 date-time") from error


def _check_object(value: object, attribute: str, member: str = "object") -> None:
    targets = value if isinstance(value, list) else [value]
    if not targets or not all(is_uri(target) for target in targets):
        raise _bad(attribute, f"a Relationship needs '{member}' to be a URI (or URIs), not {value!r}")


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects in `value` nest more than `limit` levels deep (`value` itself is level 1)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        members = item.values() if type(item) is dict else item
        for member in members:
            if type(member) is dict or type(member) is list:
                if level >= limit:
                    return True
                stack.append((member, level + 1))
    return False


def _null_outside_fragment(name: str, member: str) -> BadRequestData:
    return _bad(name, f"its {member} is the NGSI-LD Null ({NGSI_LD_NULL}), which only merge and partial updates"
                      " accept, to remove what it stands for")


def _shallow(kind: str, value: dict[str, Any] | list[Any]) -> bool:
    """Values whose nesting is bounded by what is checked about them anyway (no depth walk needed): a
    GeoJSON geometry other than a collection (check_geometry reads its exact shape), a DateTime."""
    if type(value) is not dict:
        return False
    if kind == "GeoProperty":
        return value.get("type") != "GeometryCollection"
    return len(value) == 2 and value.get("@type") == "DateTime" and type(value.get("@value")) is str


def _check_instance(name: str, instance: dict[str, Any], fragment: bool = False) -> None:
    """Validate a normalized instance. In a `fragment` (merge, partial update) NGSI-LD Nulls may stand for
    members to remove, and an instance without `type` changes members of an existing attribute only."""
    if not fragment and NGSI_LD_NULL in instance.values():
        key = next(key for key, member in instance.items() if member == NGSI_LD_NULL)
        raise _null_outside_fragment(name, key)
    kind = instance.get("type")
    if kind is None:
        _check_members(name, instance, fragment)
        return
    member = VALUE_MEMBER_BY_TYPE[kind]
    if member not in instance or instance[member] is None:
        raise _bad(name, f"a {kind} needs a non-null '{member}'")
    value = instance[member]
    if fragment and value == NGSI_LD_NULL:  # the whole attribute removed
        return
    if (type(value) is dict or type(value) is list) and not _shallow(kind, value) \
            and nests_deeper(value, MAX_VALUE_DEPTH):
        raise _bad(name, f"its {member} nests arrays and objects deeper than {MAX_VALUE_DEPTH} levels")
    if kind == "Relationship":
        _check_object(value, name)
    elif kind == "ListRelationship":
        if not isinstance(value, list) or not value:
            raise _bad(name, "a ListRelationship needs 'objectList' to be a non-empty array")
        for item in value:
            _check_object(item.get("object") if isinstance(item, Mapping) else item, name, "objectList")
    elif kind == "GeoProperty":
        instance["value"] = check_geometry(value, name)
    elif kind == "ListProperty" and not isinstance(value, list):
        raise _bad(name, "a ListProperty needs 'valueList' to be an array")
    elif kind == "LanguageProperty":
        if not isinstance(value, Mapping) or not value:
            raise _bad(name, "a LanguageProperty needs 'languageMap' to be an object of language → text")
        for lang, text in value.items():
            if text == NGSI_LD_NULL:
                if fragment:
                    continue
                raise _null_outside_fragment(name, f"languageMap entry {lang!r}")
            texts = text if isinstance(text, list) else [text]
            if not isinstance(lang, str) or not all(isinstance(t, str) for t in texts):
                raise _bad(name, f"languageMap entry {lang!r} must map a language tag to text")
    elif kind == "VocabularyProperty":
        vocab = value if isinstance(value, list) else [value]
        if not vocab or not all(isinstance(v, str) and v for v in vocab):
            raise _bad(name, "a VocabularyProperty needs 'vocab' to be a term or an array of terms")
    elif kind == "JsonProperty" and not isinstance(value, dict | list):
        raise _bad(name, "a JsonProperty needs 'json' to be a JSON object or array")
    _check_members(name, instance, fragment)


def _check_members(name: str, instance: dict[str, Any], fragment: bool) -> None:
    """The members every attribute type may have: observedAt, unitCode, datasetId, instanceId."""
    given = instance
    if fragment and NGSI_LD_NULL in instance.values():  # members to remove: nothing to check
        given = {key: member for key, member in instance.items() if member != NGSI_LD_NULL}
    if "observedAt" in given:
        instance["observedAt"] = _check_timestamp(given["observedAt"], name, "observedAt")
    if "unitCode" in given and not isinstance(given["unitCode"], str):
        raise _bad(name, f"unitCode must be a string, not {given['unitCode']!r}")
    if "datasetId" in given:
        if not is_uri(given["datasetId"]):
            raise _bad(name, f"datasetId {given['datasetId']!r} is not a URI")
        check_length(given["datasetId"], "datasetId", attribute=name)
    if "instanceId" in given:
        if not isinstance(given["instanceId"], str) or not given["instanceId"]:
            raise _bad(name, f"instanceId must be a non-empty string, not {given['instanceId']!r}")
        check_length(given["instanceId"], "instanceId", MAX_INSTANCE_ID_BYTES, attribute=name)


# ---- normalization -------------------------------------------------------------------------------------


def _looks_like_instance(value: object) -> bool:
    if not _is_object(value):
        return False
    return value.get("type") in ATTRIBUTE_TYPES or not _VALUE_MEMBERS.isdisjoint(value)


_VALUE_MEMBERS = frozenset(TYPE_BY_VALUE_MEMBER)


def normalize_attribute(name: str, raw: Any, terms: TermMap | None = None, *, depth: int = 0,
                        fragment: bool = False) -> list[dict[str, Any]]:
    """One attribute in any form → its normalized instances (GS CIM 009 4.5.x concise rules).

    An array of attribute instances is a multi-attribute; any other array is a Property value.
    With `terms`, the instances come out in the stored shape at once (expanded sub-attribute names,
    sub-attributes as arrays of instances, vocab terms expanded), without a second pass.
    `depth` is how many attributes enclose this one (it is a sub-attribute when > 0).

    A `fragment` is part of a merge or partial update (GS CIM 009 5.4): an object with neither `type` nor a
    value member (`{"unitCode": "FAR"}`, `{"accuracy": {...}}`) comes out without `type`, as the members to
    change in an existing attribute, and NGSI-LD Nulls are kept as members to remove.
    """
    if depth > MAX_SUB_ATTRIBUTE_DEPTH:
        raise _bad(name, f"sub-attributes nest deeper than {MAX_SUB_ATTRIBUTE_DEPTH} levels")
    if isinstance(raw, list) and raw and all(
            _looks_like_instance(item) or (fragment and type(item) is dict and "datasetId" in item) for item in raw):
        instances = [_normalize_instance(name, item, terms, depth, fragment) for item in raw]
        dataset_ids = [instance.get("datasetId") for instance in instances]
        if dataset_ids.count(None) > 1 or len({d for d in dataset_ids if d}) != len([d for d in dataset_ids if d]):
            raise _bad(name, "instances of a multi-attribute need distinct datasetIds (at most one without)")
        return instances
    return [_normalize_instance(name, raw, terms, depth, fragment)]


def _normalize_instance(name: str, raw: Any, terms: TermMap | None, depth: int, fragment: bool) -> dict[str, Any]:
    if raw is None:
        raise _bad(name, "a Property value cannot be null")
    typed = type(raw) is dict and raw.get("type") in ATTRIBUTE_TYPES  # normalized payloads: no guessing
    partial = fragment and type(raw) is dict and "type" not in raw and _VALUE_MEMBERS.isdisjoint(raw)
    if not typed and not partial and is_geojson_geometry(raw):
        instance: dict[str, Any] = {"type": "GeoProperty", "value": raw}
    elif not typed and not partial and not _looks_like_instance(raw):
        instance = {"type": "Property", "value": raw}
    else:
        instance = {}
        kind = raw.get("type")
        if partial:
            pass  # the members of an existing attribute to change (see normalize_attribute)
        elif kind is None:
            kind = next(TYPE_BY_VALUE_MEMBER[m] for m in TYPE_BY_VALUE_MEMBER if m in raw)
            if kind == "Property" and is_geojson_geometry(raw.get("value")):
                kind = "GeoProperty"
        elif kind not in ATTRIBUTE_TYPES:
            raise _bad(name, f"unknown attribute type {kind!r}")
        else:
            kind = TYPE_ALIASES.get(kind, kind)
        if kind is not None:
            instance["type"] = kind
        own_value = VALUE_MEMBER_BY_TYPE.get(kind) if kind is not None else None  # _check_instance checks it
        for key, member in raw.items():
            if key == "type" or key in SYSTEM_TIMESTAMPS:
                continue  # system timestamps are set by the broker, never taken from a payload
            if key in ATTRIBUTE_KEYWORDS:
                if key != own_value and (type(member) is dict or type(member) is list) \
                        and nests_deeper(member, MAX_VALUE_DEPTH):
                    raise _bad(name, f"its {key} nests arrays and objects deeper than {MAX_VALUE_DEPTH} levels")
                instance[key] = member
            else:
                check_attribute_name(key)
                sub_instances = normalize_attribute(f"{name}.{key}", member, terms, depth=depth + 1,
                                                    fragment=fragment)
                if terms is not None:
                    instance[terms.expand(key)] = sub_instances
                else:
                    instance[key] = sub_instances[0] if len(sub_instances) == 1 else sub_instances
    _check_instance(name, instance, fragment)
    if terms is not None and "vocab" in instance and instance["vocab"] != NGSI_LD_NULL:
        # GS CIM 009 4.5.x: vocab values are terms, expanded like types.
        vocab = instance["vocab"]
        instance["vocab"] = [terms.expand(v) for v in vocab] if isinstance(vocab, list) else terms.expand(vocab)
    return instance


def normalize_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes of any form (as in PATCH/POST .../attrs bodies) → normalized; `@context` is left out."""
    if not isinstance(attributes, Mapping):
        raise BadRequestData("the attributes payload must be a JSON object")
    normalized: dict[str, Any] = {}
    for name, raw in attributes.items():
        if name == "@context":
            continue
        check_attribute_name(name)
        instances = normalize_attribute(name, raw)
        normalized[name] = instances[0] if len(instances) == 1 else instances
    return normalized


def normalize_entity(entity: Mapping[str, Any], *, require_id: bool = True) -> dict[str, Any]:
    """An entity in concise, keyValues or normalized form → normalized form, validated (short names kept)."""
    entity_id, types, scope = _check_entity_members(entity, require_id=require_id)
    normalized: dict[str, Any] = {}
    if entity_id is not None:
        normalized["id"] = entity_id
    normalized["type"] = types
    if scope is not None:
        normalized["scope"] = scope
    for name, raw in entity.items():
        # System timestamps are the broker's to set (GS CIM 009 4.8); like Orion-LD, a payload's
        # own createdAt/modifiedAt (the Smart Data Models KPI examples carry one) is ignored.
        if name in ENTITY_MEMBERS or name in SYSTEM_TIMESTAMPS:
            continue
        check_attribute_name(name)
        instances = normalize_attribute(name, raw)
        normalized[name] = instances[0] if len(instances) == 1 else instances
    if "@context" in entity:
        normalized["@context"] = entity["@context"]
    return normalized


def _check_entity_members(
    entity: Mapping[str, Any], *, require_id: bool
) -> tuple[str | None, str | list[str], str | list[str] | None]:
    """The validated (id, type, scope) of an entity payload; id None when absent and not required."""
    if not isinstance(entity, Mapping):
        raise BadRequestData("an entity must be a JSON object")
    entity_id = None
    if "id" in entity or require_id:
        entity_id = entity.get("id")
        if entity_id is None:
            raise BadRequestData("the entity has no 'id'")
        if not is_uri(entity_id):
            raise BadRequestData(f"entity id {entity_id!r} is not a URI")
        check_length(entity_id, "the entity id")
    types = entity.get("type")
    if types is None:
        raise BadRequestData("the entity has no 'type'")
    if isinstance(types, list):
        if not types:
            raise BadRequestData("entity 'type' cannot be an empty array")
        types = [check_type_name(t) for t in types]
    else:
        types = check_type_name(types)
    scope = check_scope(entity["scope"]) if "scope" in entity else None
    return entity_id, types, scope


def validate_entity_payload(entity: Mapping[str, Any]) -> None:
    """Raise `BadRequestData` naming the attribute and the problem if `entity` is not a valid NGSI-LD entity."""
    normalize_entity(entity)


def check_scope(scope: object) -> str | list[str]:
    # GS CIM 009 4.18: scopes are "/"-separated paths.
    scopes = scope if isinstance(scope, list) else [scope]
    for item in scopes:
        if not isinstance(item, str) or not item.startswith("/") or _FORBIDDEN_NAME_CHARS.search(item):
            raise BadRequestData(f"scope {item!r} must be a path such as '/Madrid/Centro'")
    return scope  # type: ignore[return-value]


# ---- concise and keyValues (short names) -----------------------------------------------------------------


def to_concise(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A normalized (compacted) entity → concise form (GS CIM 009 4.5.x): redundant `type`s dropped."""
    result: dict[str, Any] = {}
    for name, raw in entity.items():
        if name in ENTITY_MEMBERS or name in SYSTEM_TIMESTAMPS or not isinstance(raw, Mapping | list):
            result[name] = raw
        else:
            result[name] = _map_instances(raw, _concise_instance)
    return result


def _map_instances(raw: Any, convert: Any) -> Any:
    if isinstance(raw, list) and raw and all(_looks_like_instance(item) for item in raw):
        # Instances of a multi-attribute stay objects, or the array would read as a Property value.
        return [convert(item, in_array=True) for item in raw]
    return convert(raw) if _looks_like_instance(raw) else raw


def _concise_instance(instance: Mapping[str, Any], in_array: bool = False) -> Any:
    kind = instance.get("type")
    concise: dict[str, Any] = {}
    for key, member in instance.items():
        if key == "type" and kind in ATTRIBUTE_TYPES:
            continue
        if key in ATTRIBUTE_KEYWORDS:
            concise[key] = member
        else:
            concise[key] = _map_instances(member, _concise_instance)
    # With nothing but its value, a Property is just the value (scalars) and a GeoProperty just the geometry.
    if set(concise) == {"value"} and not in_array:
        value = concise["value"]
        if kind == "GeoProperty" or (not isinstance(value, dict | list) and value is not None):
            return value
    return concise


def to_key_values(entity: Mapping[str, Any], *, lang: str | None = None) -> dict[str, Any]:
    """Any-form entity → keyValues (simplified): every attribute reduced to its value (GS CIM 009 4.5.4)."""
    normalized = entity if _is_normalized(entity) else normalize_entity(entity, require_id=False)
    result: dict[str, Any] = {}
    for name, raw in normalized.items():
        if name in ENTITY_MEMBERS or name in SYSTEM_TIMESTAMPS or not isinstance(raw, Mapping | list):
            result[name] = raw
            continue
        instances = raw if isinstance(raw, list) else [raw]
        chosen = next((i for i in instances if "datasetId" not in i), instances[0])
        result[name] = _key_value(chosen, lang)
    return result


def _is_normalized(entity: Mapping[str, Any]) -> bool:
    for name, raw in entity.items():
        if name in ENTITY_MEMBERS or name in SYSTEM_TIMESTAMPS:
            continue
        instances = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(i, Mapping) and i.get("type") in ATTRIBUTE_TYPES for i in instances):
            return False
    return True


# Attribute types whose simplified form keeps its value member, so that it reads back as that type and not
# as a Property with an object value (GS CIM 009 4.5.4; the FIWARE tutorials show languageMap and vocab).
_WRAPPED_IN_SIMPLIFIED = frozenset({"LanguageProperty", "VocabularyProperty", "JsonProperty"})


def _key_value(instance: Mapping[str, Any], lang: str | None) -> Any:
    kind = TYPE_ALIASES.get(instance.get("type", "Property"), instance.get("type", "Property"))
    if kind == "LanguageProperty" and lang is not None:
        return pick_language(instance.get("languageMap") or {}, lang)[1]
    member = VALUE_MEMBER_BY_TYPE.get(kind, "value")
    if kind in _WRAPPED_IN_SIMPLIFIED:
        return {member: instance.get(member)}
    return instance.get(member)


def pick_language(language_map: Mapping[str, Any], lang: str) -> tuple[str, Any]:
    """GS CIM 009 4.15: the (tag, text) a `lang` query (`fr`, `fr,en;q=0.8`, `*`) selects from a languageMap."""
    preferences: list[tuple[float, str]] = []
    for position, part in enumerate(lang.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if quality > 0:  # RFC 9110 12.4.2: q=0 means "not acceptable"
            preferences.append((-quality + position * 1e-6, tag.strip()))
    for _, tag in sorted(preferences):
        if tag == "*" and language_map:
            first = next(iter(language_map))
            return first, language_map[first]
        for key in language_map:
            if key.lower() == tag.lower() or key.lower().split("-")[0] == tag.lower():
                return key, language_map[key]
    if "@none" in language_map:
        return "@none", language_map["@none"]
    first = next(iter(language_map), "@none")
    return first, language_map.get(first)


# ---- expansion to the stored shape ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExpandedEntity:
    """An entity as the broker stores it: expanded type and attribute IRIs, arrays of instances."""

    id: str
    types: list[str]
    scope: list[str] | None
    doc: dict[str, list[dict[str, Any]]]
    location: dict[str, Any] | None


def _now_text(now: str | datetime) -> str:
    return format_timestamp(now) if isinstance(now, datetime) else now


def expand_entity(entity: Mapping[str, Any], terms: TermMap, *, now: str | datetime,
                  fragment: bool = False) -> ExpandedEntity:
    """Validate and expand an entity of any form with `terms`; every instance gets createdAt/modifiedAt = now.

    `fragment`: the entity is the fragment of a merge (see normalize_attribute)."""
    entity_id, types, scope = _check_entity_members(entity, require_id=True)
    assert entity_id is not None
    type_list = types if isinstance(types, list) else [types]
    expanded_types = list(dict.fromkeys(terms.expand_type(t) for t in type_list))
    for expanded_type in expanded_types:
        check_length(expanded_type, "the entity type expanded by the @context")
    attributes = (
        (name, raw) for name, raw in entity.items() if name not in ENTITY_MEMBERS and name not in SYSTEM_TIMESTAMPS
    )
    doc = _expand_attribute_items(attributes, terms, _now_text(now), fragment)
    return ExpandedEntity(
        id=entity_id,
        types=expanded_types,
        scope=None if scope is None else (scope if isinstance(scope, list) else [scope]),
        doc=doc,
        location=location_of(doc),
    )


def expand_attributes(
    attributes: Mapping[str, Any], terms: TermMap, now: str | datetime, *, fragment: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Validate and expand the attributes of a PATCH/POST .../attrs body into `doc` entries
    (`fragment`: of a merge or partial update, see normalize_attribute)."""
    if not isinstance(attributes, Mapping):
        raise BadRequestData("the attributes payload must be a JSON object")
    items = ((name, raw) for name, raw in attributes.items() if name != "@context")
    return _expand_attribute_items(items, terms, _now_text(now), fragment)


def _expand_attribute_items(
    attributes: Iterable[tuple[str, Any]], terms: TermMap, now: str, fragment: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Validate, normalize and expand attributes in one pass; every top-level instance is stamped `now`."""
    doc: dict[str, list[dict[str, Any]]] = {}
    duplicate: tuple[str, str] | None = None
    for name, raw in attributes:
        check_attribute_name(name)
        instances = normalize_attribute(name, raw, terms, fragment=fragment)
        for instance in instances:
            instance["createdAt"] = now
            instance["modifiedAt"] = now
        iri = terms.expand(name)
        if too_long(iri, MAX_ID_BYTES):  # an @context may map a short term to a long IRI
            check_length(iri, "the attribute name expanded by the @context", attribute=name)
        if iri in doc:
            duplicate = duplicate or (name, iri)  # reported after every attribute is validated
            continue
        doc[iri] = instances
    if duplicate is not None:
        raise _bad(duplicate[0], f"names the same attribute ({duplicate[1]}) as another member of the payload")
    return doc


def location_of(doc: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The GeoJSON of the `location` GeoProperty (its default instance), used for the geo bounding box."""
    instances = doc.get(LOCATION_IRI) or []
    chosen = next((i for i in instances if "datasetId" not in i), instances[0] if instances else None)
    if chosen is None or chosen.get("type") != "GeoProperty":
        return None
    value = chosen.get("value")
    return dict(value) if isinstance(value, Mapping) else None


# ---- compaction to API output --------------------------------------------------------------------------


def compact_entity(
    stored: ExpandedEntity | Mapping[str, Any],
    terms: TermMap,
    *,
    form: Form = "normalized",
    sys_attrs: bool = False,
    attrs: Iterable[str] | None = None,
    pick: Iterable[str] | None = None,
    omit: Iterable[str] | None = None,
    lang: str | None = None,
    dataset_id: str | None = None,
) -> dict[str, Any]:
    """A stored entity → what the API returns in `form` under `terms` (the request's @context).

    `stored` is an `ExpandedEntity` or a mapping with `id`, `types`, `doc` and optionally `scope`,
    `createdAt`/`modifiedAt` (str or datetime). `attrs`, `pick` and `omit` take short names or IRIs;
    `pick`/`omit` may also name `id` and `type` (GS CIM 009 4.21 projection). With `lang`,
    LanguageProperties become Properties in the chosen language (GS CIM 009 4.15).
    """
    if isinstance(stored, ExpandedEntity):
        entity_id, types, scope, doc = stored.id, stored.types, stored.scope, stored.doc
        created_at = modified_at = None
    else:
        entity_id = stored["id"]
        types = list(stored.get("types") or ([stored["type"]] if "type" in stored else []))
        scope, doc = stored.get("scope"), stored.get("doc") or {}
        created_at, modified_at = stored.get("createdAt"), stored.get("modifiedAt")
    wanted = _expanded_names(attrs, terms)
    picked = set(pick) if pick is not None else None
    omitted = set(omit) if omit is not None else set()
    picked_iris = _expanded_names(picked - {"id", "type"}, terms) if picked is not None else None
    omitted_iris = _expanded_names(omitted - {"id", "type"}, terms) or set()

    result: dict[str, Any] = {}
    if (picked is None or "id" in picked) and "id" not in omitted:
        result["id"] = entity_id
    if (picked is None or "type" in picked) and "type" not in omitted:
        compact_types = [terms.compact_type(t) for t in types]
        result["type"] = compact_types[0] if len(compact_types) == 1 else compact_types
    if scope:
        result["scope"] = scope[0] if len(scope) == 1 else list(scope)
    for iri, instances in doc.items():
        if wanted is not None and iri not in wanted:
            continue
        if (picked_iris is not None and iri not in picked_iris) or iri in omitted_iris:
            continue
        if dataset_id is not None:  # "@none": the default instances (without a datasetId)
            wanted_dataset = None if dataset_id == "@none" else dataset_id
            instances = [i for i in instances if i.get("datasetId") == wanted_dataset]
        if not instances:
            continue
        if len(instances) == 1:
            result[terms.compact(iri)] = _compact_instance(instances[0], terms, sys_attrs, lang)
        else:
            result[terms.compact(iri)] = [_compact_instance(i, terms, sys_attrs, lang) for i in instances]
    if sys_attrs:
        if created_at is not None:
            result["createdAt"] = _now_text(created_at)
        if modified_at is not None:
            result["modifiedAt"] = _now_text(modified_at)
    if form == "concise":
        return to_concise(result)
    if form == "keyValues":
        return to_key_values(result, lang=lang)
    return result


def _expanded_names(names: Iterable[str] | None, terms: TermMap) -> set[str] | None:
    return None if names is None else {terms.expand(name) for name in names}


_PLAIN_KEYWORDS = ATTRIBUTE_KEYWORDS - {"vocab"}  # members compaction copies as they are


def _compact_instance(
    instance: Mapping[str, Any], terms: TermMap, sys_attrs: bool, lang: str | None
) -> dict[str, Any]:
    if _PLAIN_KEYWORDS.issuperset(instance) and (lang is None or instance.get("type") != "LanguageProperty"):
        # The common case: keyword members only, nothing to compact but the system timestamps to drop.
        if sys_attrs:
            return dict(instance)
        return {key: member for key, member in instance.items() if key not in SYSTEM_TIMESTAMPS}
    compacted: dict[str, Any] = {}
    for key, member in instance.items():
        if key in SYSTEM_TIMESTAMPS and not sys_attrs:
            continue
        if key == "vocab":
            compacted[key] = [terms.compact(v) for v in member] if isinstance(member, list) else terms.compact(member)
        elif key in ATTRIBUTE_KEYWORDS:
            compacted[key] = member
        else:
            subs = [_compact_instance(sub, terms, sys_attrs, lang) for sub in member]
            compacted[terms.compact(key)] = subs[0] if len(subs) == 1 else subs
    if lang is not None and compacted.get("type") == "LanguageProperty":
        # GS CIM 009 4.15: with `lang`, a LanguageProperty is returned as a Property in that language.
        tag, text = pick_language(compacted.pop("languageMap", {}) or {}, lang)
        compacted = {"type": "Property", "value": text, "lang": tag, **compacted}
        compacted["type"] = "Property"
    return compacted


# ---- GeoJSON representation ----------------------------------------------------------------------------


def to_geojson_feature(entity: Mapping[str, Any], geoproperty: str = "location", *,
                       geometry_of: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A compacted entity (any form) → a GeoJSON Feature (GS CIM 009 4.5.16, 6.3.15).

    The geometry is the `geoproperty` attribute's value (null if absent), taken from `geometry_of` if given
    (the entity rendered with that attribute, when the projection left it out); every other member
    except `id` and `@context` goes to `properties`.
    """
    raw = (geometry_of if geometry_of is not None else entity).get(geoproperty)
    instance = raw[0] if isinstance(raw, list) and raw else raw
    geometry: Any = None
    if is_geojson_geometry(instance):
        geometry = instance
    elif isinstance(instance, Mapping) and is_geojson_geometry(instance.get("value")):
        geometry = instance["value"]
    properties = {k: v for k, v in entity.items() if k not in ("id", "@context")}
    feature: dict[str, Any] = {"id": entity.get("id"), "type": "Feature", "geometry": geometry,
                               "properties": properties}
    if "@context" in entity:
        feature["@context"] = entity["@context"]
    return feature


def to_geojson_feature_collection(
    entities: Iterable[Mapping[str, Any]], geoproperty: str = "location", *,
    geometries_of: Iterable[Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Compacted entities → a GeoJSON FeatureCollection (GS CIM 009 6.3.15); `geometries_of` as
    `geometry_of` of to_geojson_feature, one per entity."""
    entities = list(entities)
    sources = list(geometries_of) if geometries_of is not None else [None] * len(entities)
    return {"type": "FeatureCollection",
            "features": [to_geojson_feature(entity, geoproperty, geometry_of=source)
                         for entity, source in zip(entities, sources, strict=True)]}

"""Entity payloads in and out of the stored (expanded) shape: validation, expansion, compaction, GeoJSON.

TODO(ngsi-core): delegate to `ngsi.forms.expand_entity` / `compact_entity` once they land; this is
the minimal emergency adapter the broker needed to run before them.
"""

from __future__ import annotations

import re
from typing import Any

from broker.entities.stored import Doc
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData

ATTRIBUTE_TYPES = frozenset(
    {"Property", "Relationship", "GeoProperty", "LanguageProperty", "VocabProperty", "JsonProperty",
     "ListProperty", "ListRelationship"}
)  # fmt: skip
GEOJSON_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
GEO_ATTRIBUTES = frozenset({"location", "observationSpace", "operationSpace"})
ENTITY_MEMBERS = frozenset({"id", "type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt"})
SYSTEM_MEMBERS = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId"})
INSTANCE_KEYWORDS = frozenset(
    {"type", "value", "object", "objectList", "languageMap", "vocab", "json", "valueList", "observedAt",
     "unitCode", "datasetId", "createdAt", "modifiedAt", "deletedAt", "instanceId", "lang"}
)  # fmt: skip
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+$")
FORBIDDEN_NAME_CHARS = re.compile(r"[\s<>\"'=;()\\]")


def check_uri(value: Any, what: str) -> str:
    if not isinstance(value, str) or not URI.match(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}", title="Invalid entity id")
    return value


def check_name(name: str, what: str = "attribute name") -> None:
    if not name or FORBIDDEN_NAME_CHARS.search(name):
        raise BadRequestData(f"Invalid {what} {name!r}", attribute=name)


def entity_types(value: Any) -> list[str]:
    types = value if isinstance(value, list) else [value]
    if not types or not all(isinstance(t, str) and t for t in types):
        raise BadRequestData(f"Entity type must be a non-empty string or list of strings, got {value!r}")
    for entity_type in types:
        check_name(entity_type, "entity type")
    return types


def normalize_instance(name: str, value: Any) -> dict[str, Any]:
    """An attribute in any input form (normalized or concise, GS CIM 009 4.5) as a normalized instance."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ATTRIBUTE_TYPES:
            instance = dict(value)
        elif (kind in GEOJSON_TYPES and "coordinates" in value) or kind == "GeometryCollection":
            return {"type": "GeoProperty", "value": value}
        elif "object" in value or "objectList" in value:
            instance = {"type": "Relationship", **value}
        elif "languageMap" in value:
            instance = {"type": "LanguageProperty", **value}
        elif "vocab" in value:
            instance = {"type": "VocabProperty", **value}
        elif "json" in value:
            instance = {"type": "JsonProperty", **value}
        elif "value" in value:
            instance = {"type": "Property", **value}
        elif kind is not None:
            raise BadRequestData(f"Attribute {name!r} has an invalid type {kind!r}", attribute=name)
        else:
            return {"type": "Property", "value": value}
        check_instance(name, instance)
        return instance
    if value is None:
        raise BadRequestData(f"Attribute {name!r} has a null value", attribute=name)
    return {"type": "Property", "value": value}


def check_instance(name: str, instance: dict[str, Any]) -> None:
    kind = instance["type"]
    if kind == "Relationship":
        target = instance.get("object", instance.get("objectList"))
        targets = target if isinstance(target, list) else [target]
        for item in targets:
            check_uri(item.get("object") if isinstance(item, dict) else item, f"Relationship {name!r} object")
    elif kind == "Property" and "value" not in instance:
        raise BadRequestData(f"Property {name!r} has no value", attribute=name)
    elif kind == "GeoProperty":
        geometry = instance.get("value")
        if not isinstance(geometry, dict) or geometry.get("type") not in GEOJSON_TYPES:
            raise BadRequestData(f"GeoProperty {name!r} needs a GeoJSON geometry value", attribute=name)
    elif kind == "LanguageProperty" and not isinstance(instance.get("languageMap"), dict):
        raise BadRequestData(f"LanguageProperty {name!r} needs a languageMap object", attribute=name)
    if "datasetId" in instance:
        check_uri(instance["datasetId"], f"datasetId of {name!r}")


def expand_instance(name: str, value: Any, terms: TermMap) -> dict[str, Any]:
    instance = normalize_instance(name, value)
    expanded: dict[str, Any] = {}
    for key, member in instance.items():
        if key in SYSTEM_MEMBERS:
            continue
        if key in INSTANCE_KEYWORDS:
            expanded[key] = member
        else:
            check_name(key, "sub-attribute name")
            members = member if isinstance(member, list) else [member]
            expanded[terms.expand(key)] = [expand_instance(key, m, terms) for m in members]
    return expanded


def expand_attributes(fragment: dict[str, Any], terms: TermMap) -> Doc:
    """Attributes of a payload (term → value or instances) as a stored `doc` fragment."""
    doc: Doc = {}
    for name, value in fragment.items():
        if name in ENTITY_MEMBERS:
            continue
        check_name(name)
        values = value if isinstance(value, list) and value and all(
            isinstance(v, dict) and ("type" in v or "value" in v or "object" in v) for v in value
        ) else [value]
        doc[terms.expand(name)] = [expand_instance(name, v, terms) for v in values]
    return doc


def expand_entity(entity: Any, terms: TermMap) -> tuple[str, list[str], list[str] | None, Doc]:
    """A whole payload entity → (id, expanded types, scope, doc)."""
    if not isinstance(entity, dict):
        raise BadRequestData("An entity must be a JSON object")
    if "id" not in entity:
        raise BadRequestData("The entity has no 'id'", title="Invalid entity id")
    entity_id = check_uri(entity["id"], "Entity id")
    if "type" not in entity:
        raise BadRequestData(f"Entity {entity_id!r} has no 'type'")
    types = [terms.expand_type(t) for t in entity_types(entity["type"])]
    scope = entity.get("scope")
    if scope is not None:
        scope = scope if isinstance(scope, list) else [scope]
        if not all(isinstance(s, str) and s.startswith("/") for s in scope):
            raise BadRequestData(f"Invalid scope {entity['scope']!r}")
    return entity_id, types, scope, expand_attributes(entity, terms)


def compact_instance(instance: dict[str, Any], terms: TermMap, *, form: str, sys_attrs: bool,
                     lang: str | None) -> Any:
    kind = instance.get("type")
    if form == "keyValues":
        if kind == "Relationship":
            return instance.get("object", instance.get("objectList"))
        if kind == "LanguageProperty":
            return pick_language(instance.get("languageMap"), lang) if lang else instance.get("languageMap")
        if kind == "VocabProperty":
            return instance.get("vocab")
        if kind == "JsonProperty":
            return instance.get("json")
        return instance.get("value")
    out: dict[str, Any] = {}
    for key, member in instance.items():
        if key in SYSTEM_MEMBERS and not sys_attrs:
            continue
        if key in INSTANCE_KEYWORDS:
            out[key] = member
        elif isinstance(member, list):
            compacted = [compact_instance(m, terms, form=form, sys_attrs=sys_attrs, lang=lang) for m in member]
            out[terms.compact(key)] = compacted[0] if len(compacted) == 1 else compacted
    if kind == "LanguageProperty" and lang:
        out = {"type": "Property", "value": pick_language(out.pop("languageMap", None), lang),
               "lang": lang, **{k: v for k, v in out.items() if k != "type"}}
    if form == "concise" and out.get("type") in {"Property", "Relationship", "GeoProperty",
                                                 "LanguageProperty", "VocabProperty", "JsonProperty"}:
        out.pop("type")
        if set(out) == {"value"}:
            return out["value"]
    return out


def pick_language(language_map: Any, lang: str) -> Any:
    if not isinstance(language_map, dict):
        return language_map
    for candidate in (lang, "@none"):
        if candidate in language_map:
            return language_map[candidate]
    return next(iter(language_map.values()), None)


def compact_entity(
    entity_id: str, types: list[str], scope: list[str] | None, doc: Doc, terms: TermMap, *,
    form: str = "normalized", sys_attrs: bool = False, attrs: set[str] | None = None,
    omit: set[str] | None = None, lang: str | None = None, created_at: str | None = None,
    modified_at: str | None = None,
) -> dict[str, Any]:
    """A stored entity as the API returns it, compacted with the request's @context.

    `attrs` and `omit` hold expanded names; `id`/`type` are always kept (GS CIM 009 4.21 pick/omit).
    """
    compact_types = [terms.compact_type(t) for t in types]
    out: dict[str, Any] = {"id": entity_id, "type": compact_types[0] if len(compact_types) == 1 else compact_types}
    if scope:
        out["scope"] = scope[0] if len(scope) == 1 else scope
    if sys_attrs and form != "keyValues" and created_at:
        out["createdAt"] = created_at
        out["modifiedAt"] = modified_at
    for name, instances in doc.items():
        if attrs is not None and name not in attrs:
            continue
        if omit and name in omit:
            continue
        compacted = [compact_instance(i, terms, form=form, sys_attrs=sys_attrs, lang=lang) for i in instances]
        out[terms.compact(name)] = compacted[0] if len(compacted) == 1 else compacted
    return out


def to_geojson_feature(entity: dict[str, Any], geometry_property: str, form: str) -> dict[str, Any]:
    """GS CIM 009 4.5.16: an entity as a GeoJSON Feature, geometry from `geometry_property`."""
    geo = entity.get(geometry_property)
    if isinstance(geo, dict) and form != "keyValues" and "value" in geo:
        geometry = geo["value"]
    else:
        geometry = geo if isinstance(geo, dict) else None
    properties = {k: v for k, v in entity.items() if k != "id"}
    return {"id": entity["id"], "type": "Feature", "geometry": geometry, "properties": properties}

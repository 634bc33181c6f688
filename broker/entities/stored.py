"""Pure rules over the stored (expanded) entity shape: timestamps, attribute merges, location bounding box."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shapely.geometry import shape

from ngsi.errors import BadRequestData
from ngsi.forms import ATTRIBUTE_KEYWORDS, NGSI_LD_NULL
from ngsi.timestamps import format_timestamp

LOCATION = "https://uri.etsi.org/ngsi-ld/location"

Doc = dict[str, list[dict[str, Any]]]


def iso_ms(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, the timestamp form of docs/internals.md."""
    return format_timestamp(moment)


@dataclass
class StoredEntity:
    """One row of `current_entities`."""

    id: str
    types: list[str]
    scope: list[str] | None
    doc: Doc
    created_at: datetime
    modified_at: datetime
    touched: set[str] = field(default_factory=set)

    def copy(self) -> StoredEntity:
        """A copy to change: its own type list, doc and attribute lists (the instances are replaced, never
        changed in place, by the rules below), nothing touched yet."""
        return StoredEntity(self.id, list(self.types), self.scope, {k: list(v) for k, v in self.doc.items()},
                            self.created_at, self.modified_at)

    def as_change_state(self) -> dict[str, Any]:
        """The `before`/`after` dict of `broker.changes.EntityChange`."""
        return {
            "id": self.id,
            "types": list(self.types),
            "scope": list(self.scope) if self.scope is not None else None,
            "doc": self.doc,
            "createdAt": iso_ms(self.created_at),
            "modifiedAt": iso_ms(self.modified_at),
        }


def stamp_instances(instances: list[dict[str, Any]], now: str, previous: list[dict[str, Any]] | None) -> None:
    """Set createdAt/modifiedAt (GS CIM 009 4.8 system attributes), keeping createdAt of replaced ones."""
    created = {inst.get("datasetId"): inst.get("createdAt") for inst in previous or []}
    for instance in instances:
        instance["createdAt"] = created.get(instance.get("datasetId")) or now
        instance["modifiedAt"] = now


def stamp_doc(doc: Doc, now: str) -> None:
    for instances in doc.values():
        stamp_instances(instances, now, None)


def check_single_default_instance(name: str, instances: list[dict[str, Any]]) -> None:
    dataset_ids = [inst.get("datasetId") for inst in instances]
    if len(dataset_ids) != len(set(dataset_ids)):
        raise BadRequestData(f"Attribute {name!r} has two instances with the same datasetId", attribute=name)


def merge_instances(current: list[dict[str, Any]], incoming: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """Replace the instances with the same datasetId, add the others (GS CIM 009 5.6.3)."""
    by_dataset = {inst.get("datasetId"): inst for inst in current}
    stamp_instances(incoming, now, current)
    for instance in incoming:
        by_dataset[instance.get("datasetId")] = instance
    return list(by_dataset.values())


def append_attributes(entity: StoredEntity, fragment: Doc, now: str, *, overwrite: bool) -> list[str]:
    """GS CIM 009 5.6.3 Append: add attributes, overwrite existing ones unless noOverwrite.

    Returns the names not updated (existing ones under noOverwrite).
    """
    not_updated = []
    for name, instances in fragment.items():
        check_single_default_instance(name, instances)
        current = entity.doc.get(name)
        if current is not None and not overwrite:
            existing = {inst.get("datasetId") for inst in current}
            fresh = [inst for inst in instances if inst.get("datasetId") not in existing]
            if len(fresh) < len(instances):
                not_updated.append(name)
            if not fresh:
                continue
            instances = fresh
        entity.doc[name] = merge_instances(current or [], instances, now)
        entity.touched.add(name)
    return not_updated


def update_attributes(entity: StoredEntity, fragment: Doc, now: str) -> list[str]:
    """GS CIM 009 5.6.2 Update: change existing attributes only; returns the names not found."""
    not_found = []
    for name, instances in fragment.items():
        current = entity.doc.get(name)
        existing = {inst.get("datasetId") for inst in current or []}
        matching = [inst for inst in instances if inst.get("datasetId") in existing]
        if not matching:
            not_found.append(name)
            continue
        assert current is not None
        entity.doc[name] = merge_instances(current, matching, now)
        entity.touched.add(name)
    return not_found


def is_null_instance(instance: dict[str, Any]) -> bool:
    """Whether a fragment's instance removes the whole attribute (its value is the NGSI-LD Null)."""
    if any(instance.get(key) == NGSI_LD_NULL for key in ("value", "object", "languageMap", "vocab", "json",
                                                          "valueList", "objectList")):
        return True
    texts = instance.get("languageMap")  # GS CIM 009 4.6.5: {"@none": "urn:ngsi-ld:null"}
    return type(texts) is dict and texts.get("@none") == NGSI_LD_NULL and len(texts) == 1


def merge_patch_attributes(entity: StoredEntity, fragment: Doc, now: str) -> None:
    """GS CIM 009 5.6.17 Merge: patch attributes and sub-attributes; `urn:ngsi-ld:null` deletes."""
    for name, instances in fragment.items():
        current = {inst.get("datasetId"): inst for inst in entity.doc.get(name, [])}
        for instance in instances:
            key = instance.get("datasetId")
            if is_null_instance(instance):
                current.pop(key, None)
                continue
            old = current.get(key)
            if old is None:
                current[key] = new_instance(name, instance, now)
                continue
            current[key] = merge_instance(name, old, instance, deep=True)
            current[key]["modifiedAt"] = now
        entity.touched.add(name)
        if current:
            entity.doc[name] = list(current.values())
        else:
            entity.doc.pop(name, None)


def new_instance(name: str, instance: dict[str, Any], now: str) -> dict[str, Any]:
    """A fragment's instance for an attribute (or dataset) the entity does not have yet."""
    if "type" not in instance:
        raise BadRequestData(f"Attribute {name!r} does not exist: a new attribute needs its value", attribute=name)
    added = drop_nulls(instance)
    stamp_instances([added], now, None)
    return added


def drop_nulls(instance: dict[str, Any]) -> dict[str, Any]:
    """A fragment's instance without the members it removes (there is nothing to remove them from)."""
    kept = {}
    for member, value in instance.items():
        sub_attribute = is_sub_attribute(member, value)
        if value == NGSI_LD_NULL or (sub_attribute and value and is_null_instance(value[0])):
            continue
        if member == "languageMap" and type(value) is dict:
            value = {lang: text for lang, text in value.items() if text != NGSI_LD_NULL}
        kept[member] = [drop_nulls(sub) for sub in value] if sub_attribute else value
    return kept


def is_sub_attribute(member: str, value: Any) -> bool:
    return member not in ATTRIBUTE_KEYWORDS and type(value) is list


def merge_instance(name: str, old: dict[str, Any], fragment: dict[str, Any], *, deep: bool) -> dict[str, Any]:
    """`old` with the members of `fragment` (GS CIM 009 5.4): NGSI-LD Nulls remove members, sub-attributes
    merge into the ones there, an attribute's type never changes (BadRequestData).

    `deep` (Merge Entity, 5.5.12): JSON object values and languageMaps merge key by key too; otherwise
    (Partial Attribute Update, 5.6.4) a value given replaces the value there.
    """
    kind = fragment.get("type")
    if kind is not None and kind != old.get("type"):
        raise BadRequestData(f"Attribute {name!r} is a {old.get('type')}: its type cannot change to {kind}",
                             attribute=name)
    merged = dict(old)
    for member, value in fragment.items():
        if member in ("type", "createdAt", "modifiedAt"):
            continue
        if value == NGSI_LD_NULL:
            merged.pop(member, None)
        elif is_sub_attribute(member, value):
            sub, there = value[0], merged.get(member)
            if is_null_instance(sub):
                merged.pop(member, None)
            elif type(there) is list and there:
                merged[member] = [merge_instance(f"{name}.{member}", there[0], sub, deep=deep)]
            elif "type" not in sub:
                raise BadRequestData(f"Sub-attribute {name}.{member} does not exist: a new one needs its value",
                                     attribute=name)
            else:
                merged[member] = [drop_nulls(sub)]
        elif deep and member == "value" and type(value) is dict and type(there := merged.get(member)) is dict \
                and merged.get("type") == "Property":
            merged[member] = merge_json(there, value)
        elif member == "languageMap" and type(value) is dict and type(there := merged.get(member)) is dict \
                and (deep or NGSI_LD_NULL in value.values()):
            merged[member] = merge_json(there, value)
        else:
            merged[member] = value
    return merged


def merge_json(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 merge of JSON objects, with the NGSI-LD Null (not JSON null) removing a key."""
    merged = dict(old)
    for key, value in patch.items():
        if value == NGSI_LD_NULL:
            merged.pop(key, None)
        elif type(value) is dict and type(merged.get(key)) is dict:
            merged[key] = merge_json(merged[key], value)
        else:
            merged[key] = value
    return merged


ENTITY_LEVEL = frozenset({"type", "scope"})
"""Names in `StoredEntity.touched` for the entity's types and scopes (no attributes)."""


def replaced_members(entity: StoredEntity, types: list[str], scope: list[str] | None) -> set[str]:
    """The entity-level names a replace changes: an entity without attributes is changed by them alone."""
    return ({"type"} if types != entity.types else set()) | ({"scope"} if scope != entity.scope else set())


def change_scope(entity: StoredEntity, scope: list[str] | str | None, *, replace: bool) -> None:
    """GS CIM 009 4.18: a write's scopes are added to the entity's (append, batch update) or take their
    place (merge, update); the NGSI-LD Null removes them. None: the write gives none."""
    if scope is None:
        return
    if scope == NGSI_LD_NULL:
        changed: list[str] | None = None
    else:
        given = scope if isinstance(scope, list) else [scope]
        changed = list(dict.fromkeys(given if replace else [*(entity.scope or []), *given]))
    if changed != entity.scope:
        entity.scope = changed
        entity.touched.add("scope")


def delete_attribute(entity: StoredEntity, name: str, dataset_id: str | None, delete_all: bool) -> bool:
    """GS CIM 009 5.6.5: remove the default instance, the one with `dataset_id`, or all of them."""
    current = entity.doc.get(name)
    if current is None:
        return False
    if delete_all:
        del entity.doc[name]
    else:
        kept = [inst for inst in current if inst.get("datasetId") != dataset_id]
        if len(kept) == len(current):
            return False
        if kept:
            entity.doc[name] = kept
        else:
            del entity.doc[name]
    entity.touched.add(name)
    return True


def location_bbox(doc: Doc) -> str | None:
    """The `box` literal of the `location` GeoProperty's bounding box (lon,lat), None without one."""
    instances = doc.get(LOCATION)
    if not instances:
        return None
    value = instances[0].get("value")
    if not isinstance(value, dict):
        return None
    coordinates = value.get("coordinates")
    if value.get("type") == "Point" and isinstance(coordinates, list) and len(coordinates) >= 2:
        x, y = coordinates[0], coordinates[1]  # the common case, without building a shapely geometry
        return f"(({x},{y}),({x},{y}))"
    try:
        min_x, min_y, max_x, max_y = shape(value).bounds
    except Exception as error:  # shapely raises several types for broken GeoJSON
        raise BadRequestData(f"Invalid GeoJSON in 'location': {error}", attribute="location") from None
    return f"(({min_x},{min_y}),({max_x},{max_y}))"

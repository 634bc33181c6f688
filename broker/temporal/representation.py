"""Builds the temporal representations of entities from history rows (pure).

GS CIM 009 4.5.7 (normalized temporal), 4.5.8 (simplified, `temporalValues`), 4.5.19 (aggregated).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ngsi.contexts import TermMap

_GEO_VALUE_TYPES = {"GeoPoint", "GeoPolygon", "GeoMultiPolygon", "GeoLineString", "GeoMultiLineString"}
_MAX_EXACT_FLOAT_INT = 2**53


def attribute_type(value_type: str | None) -> str:
    """The NGSI-LD attribute type a TRoE `valueType` stands for."""
    if value_type == "Relationship":
        return "Relationship"
    if value_type in _GEO_VALUE_TYPES:
        return "GeoProperty"
    if value_type == "LanguageMap":
        return "LanguageProperty"
    return "Property"


def _number(value: float | None) -> float | int | None:
    if value is not None and value.is_integer() and abs(value) < _MAX_EXACT_FLOAT_INT:
        return int(value)
    return value


def stored_value(row: dict[str, Any]) -> tuple[str, Any]:
    """(member, value) of a history row by its valueType: `value`, `object` or `languageMap`."""
    value_type = row["value_type"]
    if value_type == "Number":
        return "value", _number(row["number"])
    if value_type == "String":
        return "value", row["text"]
    if value_type == "Boolean":
        return "value", row["boolean"]
    if value_type == "DateTime":
        return "value", {"@type": "DateTime", "@value": row["datetime"]}
    if value_type == "Relationship":
        return "object", row["text"] if row["text"] is not None else row["compound"]
    if value_type == "LanguageMap":
        return "languageMap", row["compound"]
    return "value", row["compound"]


def _sub_attribute(row: dict[str, Any]) -> dict[str, Any]:
    member, value = stored_value(row)
    sub: dict[str, Any] = {"type": attribute_type(row["value_type"]), member: value}
    if row.get("observed_at"):
        sub["observedAt"] = row["observed_at"]
    if row.get("unit_code"):
        sub["unitCode"] = row["unit_code"]
    return sub


def instance_of(
    row: dict[str, Any], terms: TermMap, subs: Sequence[dict[str, Any]], *, concise: bool, sys_attrs: bool
) -> dict[str, Any]:
    """One attribute instance in the normalized (or concise) temporal representation."""
    member, value = stored_value(row)
    instance: dict[str, Any] = {} if concise else {"type": attribute_type(row["value_type"])}
    instance[member] = value
    if row["observed_at"]:
        instance["observedAt"] = row["observed_at"]
    if row["unit_code"]:
        instance["unitCode"] = row["unit_code"]
    if row["dataset_id"]:
        instance["datasetId"] = row["dataset_id"]
    instance["instanceId"] = row["instance_id"]
    if sys_attrs:
        instance["modifiedAt"] = row["modified_at"]
    for sub in subs:
        name = terms.compact(sub["name"])
        rendered = _sub_attribute(sub)
        if concise:
            rendered.pop("type")
        instance[name] = rendered
    return instance


def simplified_attribute(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """GS CIM 009 4.5.8: `{type, values: [[value, time], ...]}` per datasetId (objects/languageMaps)."""
    by_dataset: dict[str | None, dict[str, Any]] = {}
    for row in rows:
        member, value = stored_value(row)
        dataset = row["dataset_id"]
        attribute = by_dataset.get(dataset)
        if attribute is None:
            kind = attribute_type(row["value_type"])
            key = {"object": "objects", "languageMap": "languageMaps"}.get(member, "values")
            attribute = {"type": kind, key: []}
            if dataset:
                attribute["datasetId"] = dataset
            by_dataset[dataset] = attribute
        values_key = next(k for k in attribute if k in ("values", "objects", "languageMaps"))
        attribute[values_key].append([value, row["t_text"]])
    return list(by_dataset.values())


def temporal_entity(
    entity_id: str,
    entity_type: str,
    rows: Iterable[dict[str, Any]],
    subs_by_instance: dict[str, list[dict[str, Any]]],
    terms: TermMap,
    *,
    form: str,
    sys_attrs: bool = False,
) -> dict[str, Any]:
    """One entity in the normalized, concise or simplified temporal representation."""
    entity: dict[str, Any] = {"id": entity_id, "type": terms.compact_type(entity_type)}
    by_attribute: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_attribute.setdefault(row["attr"], []).append(row)
    for attr, attr_rows in by_attribute.items():
        name = terms.compact(attr)
        if form == "temporalValues":
            simplified = simplified_attribute(attr_rows)
            entity[name] = simplified[0] if len(simplified) == 1 else simplified
        else:
            entity[name] = [
                instance_of(row, terms, subs_by_instance.get(row["instance_id"], ()),
                            concise=form == "concise", sys_attrs=sys_attrs)
                for row in attr_rows
            ]  # fmt: skip
    return entity


def aggregated_entity(
    entity_id: str,
    entity_type: str,
    rows: Iterable[Sequence[Any]],
    methods: Sequence[str],
    terms: TermMap,
) -> dict[str, Any]:
    """GS CIM 009 4.5.19: `{type, <method>: [[value, start, end], ...]}` per attribute.

    `rows` are `(entity, attribute, *series)`, each series the JSON of one method's periods
    (`store.series_json`); they are spliced into the answer as they are.
    """
    entity: dict[str, Any] = {"id": entity_id, "type": terms.compact_type(entity_type)}
    for row in rows:
        series = {method: orjson.Fragment(text) for method, text in zip(methods, row[2:], strict=True)}
        entity[terms.compact(row[1])] = {"type": "Property", **series}
    return entity

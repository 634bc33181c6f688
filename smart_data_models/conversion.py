"""Conversion between Smart Data Model objects and NGSI-LD entities (normalized, concise, keyValues)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal

from pydantic import ValidationError

from ngsi.errors import BadRequestData
from smart_data_models.ids import as_urn
from smart_data_models.models import MODEL_TYPES, SmartDataModel, format_timestamp

Form = Literal["normalized", "keyValues"]

GEO_ATTRIBUTES = frozenset({"location", "observationSpace", "operationSpace"})
"""GS CIM 009 4.7: the GeoProperties with core names."""

NGSI_LD_ATTRIBUTE_TYPES = frozenset(
    {"Property", "GeoProperty", "Relationship", "LanguageProperty", "VocabProperty", "VocabularyProperty",
     "JsonProperty", "ListProperty", "ListRelationship"}
)

SYSTEM_ATTRIBUTES = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId", "scope", "@context"})
"""GS CIM 009 4.8: set by the broker, never part of the model (the KPI examples misuse `modifiedAt`)."""

_SMART_DATA_MODEL_IRI_MARKERS = ("smartdatamodels.org/dataModel.", "/terms.jsonld#/definitions/")

DEFAULT_CONTEXT: Any = object()
"""Sentinel for `to_ngsi_ld(context=...)`: use the model's own Smart Data Models @context."""


class InvalidSmartDataModel(BadRequestData):
    """An entity that does not follow its Smart Data Model (its schema or the NGSI-LD forms)."""

    title = "Invalid Smart Data Model entity"
    type = BadRequestData.type  # GS CIM 009 5.5.2: reported as the ETSI BadRequestData error


def to_ngsi_ld(
    model: SmartDataModel,
    form: Form = "normalized",
    context: Any = DEFAULT_CONTEXT,
) -> dict[str, Any]:
    """The model as an NGSI-LD entity.

    `normalized`: every attribute typed (Property/GeoProperty/Relationship), measured properties
    with `observedAt` and their `unitCode`. `keyValues`: plain values. The id becomes a URN if it
    is not a URI already. `context`: the @context to put in the body (default: the model's Smart
    Data Models context); `None` leaves `@context` out, for sending with a `Link` header.
    """
    entity_type = model.entity_type
    entity: dict[str, Any] = {"id": as_urn(entity_type, model.id), "type": entity_type}
    observed_at = model.observed_at()
    for name, value in model.key_values().items():
        if name in ("id", "type"):
            continue
        if form == "keyValues":
            entity[name] = _key_value(model, name, value)
        else:
            entity[name] = _normalized_attribute(model, name, value, observed_at)
    if context is DEFAULT_CONTEXT:
        context = [model.subject_context]
    if context is not None:
        entity["@context"] = context
    return entity


def _key_value(model: SmartDataModel, name: str, value: Any) -> Any:
    if name in model.relationship_targets and isinstance(value, str):
        return as_urn(model.relationship_targets[name], value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _normalized_attribute(
    model: SmartDataModel, name: str, value: Any, observed_at: datetime | None
) -> dict[str, Any]:
    if name in GEO_ATTRIBUTES:
        return {"type": "GeoProperty", "value": value}
    if name in model.relationship_targets and isinstance(value, str):
        return {"type": "Relationship", "object": as_urn(model.relationship_targets[name], value)}
    attribute: dict[str, Any] = {"type": "Property", "value": _typed_value(value)}
    if name in model.measured_attributes or _is_number(value):
        unit = model.unit_code(name)
        if unit is not None and _is_number(value):
            attribute["unitCode"] = unit
        if observed_at is not None:
            attribute["observedAt"] = format_timestamp(observed_at)
    return attribute


def _typed_value(value: Any) -> Any:
    # GS CIM 009 4.6.3: temporal values are JSON-LD value objects with @type DateTime/Date.
    if isinstance(value, datetime):
        return {"@type": "DateTime", "@value": format_timestamp(value)}
    if isinstance(value, date):
        return {"@type": "Date", "@value": value.isoformat()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def from_ngsi_ld(entity: Mapping[str, Any]) -> SmartDataModel:
    """The model of an entity in any form: NGSI-LD normalized, concise or keyValues, or NGSI-v2 normalized.

    Attribute names may be compact terms or Smart Data Models IRIs. Units that differ from the
    defaults are kept on the model. Raises `InvalidSmartDataModel` (a 400 `BadRequestData`) naming
    the attribute when the entity breaks its schema or its type is not a known model.
    """
    if not isinstance(entity, Mapping):
        raise InvalidSmartDataModel(f"an entity is a JSON object, not {type(entity).__name__}")
    entity_type = _compact_name(str(entity.get("type", "")))
    model_class = MODEL_TYPES.get(entity_type)
    if model_class is None:
        known = ", ".join(sorted(MODEL_TYPES))
        raise InvalidSmartDataModel(
            f"type {entity.get('type')!r} is not a supported Smart Data Model ({known})", attribute="type"
        )
    key_values: dict[str, Any] = {"type": entity_type}
    unit_codes: dict[str, str] = {}
    for raw_name, raw_value in entity.items():
        name = _compact_name(raw_name)
        if name in SYSTEM_ATTRIBUTES or name == "type":
            continue
        if name == "id":
            key_values["id"] = raw_value
            continue
        value, unit = _plain_value(raw_value)
        key_values[name] = value
        if unit is not None:
            unit_codes[name] = unit
    try:
        model = model_class.model_validate(key_values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidSmartDataModel(
            "; ".join(_describe(problem) for problem in error.errors()), attribute=field
        ) from error
    return model.with_unit_codes(unit_codes)


def _describe(problem: Mapping[str, Any]) -> str:
    message = str(problem["msg"]).removeprefix("Value error, ")
    location = ".".join(str(part) for part in problem["loc"])
    return f"{location}: {message}" if location else message


def _compact_name(name: str) -> str:
    # Entities read with another @context come back with Smart Data Models IRIs as names.
    if name.startswith(("http://", "https://")) and any(m in name for m in _SMART_DATA_MODEL_IRI_MARKERS):
        return name.rstrip("/").rsplit("/", 1)[-1]
    if name.startswith("https://uri.etsi.org/ngsi-ld/"):
        return name.rsplit("/", 1)[-1]
    return name


def _plain_value(attribute: Any) -> tuple[Any, str | None]:
    """The keyValues value of one attribute in any form, and its unitCode if it states one."""
    if not isinstance(attribute, Mapping):
        return attribute, None
    if attribute.get("type") in NGSI_LD_ATTRIBUTE_TYPES or "value" in attribute or "object" in attribute:
        if "object" in attribute:
            return attribute["object"], None
        for member in ("languageMap", "vocab", "json"):
            if member in attribute:
                return attribute[member], None
        unit = attribute.get("unitCode")
        if unit is None:  # NGSI-v2 normalized: {"type": "Number", "value": 1, "metadata": {"unitCode": {...}}}
            unit = (attribute.get("metadata") or {}).get("unitCode", {}).get("value")
        return _untyped_value(attribute.get("value")), unit
    return _untyped_value(attribute), None


def _untyped_value(value: Any) -> Any:
    if isinstance(value, Mapping) and "@value" in value:
        return value["@value"]
    return value

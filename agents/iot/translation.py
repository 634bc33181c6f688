"""Measures of a device into normalized NGSI-LD entity fragments with Smart Data Models names (pure core)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.iot.expressions import ExpressionError, evaluate_expression
from agents.iot.payloads import Measure
from agents.iot.provisioning import (
    DEFAULT_ENTITY_TYPE,
    NGSI_LD_NAME,
    AttributeMapping,
    ConfigGroup,
    Device,
    StaticAttribute,
)
from smart_data_models import as_urn, default_unit_code, entity_id, format_timestamp

_NUMBER_TYPES = frozenset({"Number", "Float", "Integer", "Int", "Double", "Decimal"})
_TEXT_TYPES = frozenset({"Text", "String", "TextUnrestricted"})
_BOOLEAN_TYPES = frozenset({"Boolean", "Bool"})
_GEO_TYPES = frozenset({"GeoProperty", "geo:json", "geo:point", "Point"})


class MappingError(ValueError):
    """A measure that cannot become an entity (unknown value type, failing expression, bad name)."""


@dataclass(frozen=True)
class DeviceProfile:
    """Everything needed to map one device's measures: its entity, attribute mappings and static attributes."""

    device_id: str
    entity_id: str
    entity_type: str
    attributes: Mapping[str, AttributeMapping]
    static_attributes: tuple[StaticAttribute, ...]
    explicit_attrs: bool


def device_profile(device_id: str, group: ConfigGroup | None, device: Device | None, city: str) -> DeviceProfile:
    """Merge a device's provisioning over its group's (device wins); unprovisioned devices get the SDM id.

    The entity id is the device's `entity_name` (as a URN if it is not a URI), else
    `urn:ngsi-ld:<Type>:<city>:<device_id>` as ARCHITECTURE.md fixes for Smart Data Models.
    """
    entity_type = (device.entity_type if device else None) or (group.entity_type if group else None)
    entity_type = entity_type or DEFAULT_ENTITY_TYPE
    if device is not None and device.entity_name:
        identifier = as_urn(entity_type, device.entity_name)
    else:
        identifier = entity_id(entity_type, city, device_id)
    attributes: dict[str, AttributeMapping] = {}
    statics: dict[str, StaticAttribute] = {}
    for source in (group, device):
        if source is None:
            continue
        for mapping in source.attributes:
            attributes[mapping.source] = mapping
        for static in source.static_attributes:
            statics[static.name] = static
    explicit = next((s.explicitAttrs for s in (device, group) if s is not None and s.explicitAttrs is not None), False)
    return DeviceProfile(device_id, identifier, entity_type, attributes, tuple(statics.values()), bool(explicit))


def _auto_typed(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


def _geo_point(raw: Any, name: str) -> dict[str, Any]:
    if isinstance(raw, dict) and "type" in raw and "coordinates" in raw:
        return raw
    if isinstance(raw, str) and "," in raw:
        latitude, longitude = raw.split(",", 1)
        try:
            # FIWARE `geo:point` is "latitude, longitude"; GeoJSON is [longitude, latitude].
            return {"type": "Point", "coordinates": [float(longitude), float(latitude)]}
        except ValueError:
            pass
    raise MappingError(f"attribute {name!r}: {raw!r} is not a 'latitude,longitude' point or GeoJSON geometry")


def _typed(raw: Any, declared: str, name: str) -> Any:
    if declared in _NUMBER_TYPES:
        value = _auto_typed(raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MappingError(f"attribute {name!r} is declared {declared} but the device sent {raw!r}")
        return value
    if declared in _BOOLEAN_TYPES:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise MappingError(f"attribute {name!r} is declared {declared} but the device sent {raw!r}")
    if declared in _TEXT_TYPES:
        return raw if isinstance(raw, str) else str(raw)
    return _auto_typed(raw)


def _variables(measure: Measure, profile: DeviceProfile) -> dict[str, Any]:
    variables = {key: _auto_typed(value) for key, value in measure.values.items()}
    for source, mapping in profile.attributes.items():
        if source in variables:
            variables.setdefault(mapping.name, variables[source])
    return variables


def instance_id(entity_id: str, name: str, observed_at: str, value: Any) -> str:
    """The history instance id of an observed value: a measure delivered twice gets the same id both times.

    MQTT QoS 1 is at least once: a message the agent handed over but could not acknowledge (it
    stopped, it crashed) comes again, and a batch upsert left in flight at shutdown is resent
    from the outbox. The broker writes no second history row for an instanceId it holds already
    (docs/internals.md), so such a measure stays one observation. Two different values observed
    at the same instant stay two instances.
    """
    key = f"{entity_id}\0{name}\0{observed_at}\0{value!r}".encode()
    return f"urn:ngsi-ld:attribute:instance:{hashlib.blake2b(key, digest_size=16).hexdigest()}"


def _attribute(
    entity_id: str, name: str, declared: str, value: Any, observed_at: str, unit: str | None
) -> dict[str, Any]:
    if declared in _GEO_TYPES:
        point = _geo_point(value, name)
        return {"type": "GeoProperty", "value": point, "observedAt": observed_at,
                "instanceId": instance_id(entity_id, name, observed_at, point)}  # fmt: skip
    if declared == "Relationship":
        target = str(value)
        return {"type": "Relationship", "object": target, "observedAt": observed_at,
                "instanceId": instance_id(entity_id, name, observed_at, target)}  # fmt: skip
    attribute: dict[str, Any] = {
        "type": "Property", "value": value, "observedAt": observed_at,
        "instanceId": instance_id(entity_id, name, observed_at, value),
    }  # fmt: skip
    if isinstance(value, int | float) and not isinstance(value, bool):
        unit = unit or default_unit_code(name)
        if unit:
            attribute["unitCode"] = unit
    return attribute


def _static(static: StaticAttribute) -> dict[str, Any]:
    if static.type in _GEO_TYPES:
        return {"type": "GeoProperty", "value": _geo_point(static.value, static.name)}
    if static.type == "Relationship":
        return {"type": "Relationship", "object": str(static.value)}
    return {"type": "Property", "value": static.value}


def _utc_text(moment: datetime) -> str:
    # Measure times are UTC already (payloads.parse_timestamp, the receive clock): isoformat is the cheap way.
    if moment.tzinfo is UTC:
        return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    return format_timestamp(moment)


def translate_measure(measure: Measure, profile: DeviceProfile, received_at: datetime) -> dict[str, Any]:
    """One measure as a normalized NGSI-LD entity fragment, ready for a batch upsert (update mode).

    Every measured attribute gets `observedAt` (the measure's own time, else the time it was
    received), its `unitCode` (provisioned, else the Smart Data Models default) and an
    `instanceId` derived from what was observed (`instance_id`); `dateObserved` is always set to
    that time. Raises MappingError when nothing can be mapped or a value is wrong.
    """
    observed = _utc_text(measure.observed_at or received_at)
    variables: dict[str, Any] | None = None
    entity: dict[str, Any] = {"id": profile.entity_id, "type": profile.entity_type}
    for source, raw in measure.values.items():
        mapping = profile.attributes.get(source)
        if mapping is None:
            if profile.explicit_attrs:
                continue
            if not NGSI_LD_NAME.match(source):
                raise MappingError(f"measure {source!r} is not a valid NGSI-LD attribute name and is not provisioned")
            mapping = AttributeMapping(object_id=source, name=source)
        value = _typed(raw, mapping.type, mapping.name)
        if mapping.expression:
            if variables is None:
                variables = _variables(measure, profile)
            try:
                value = evaluate_expression(mapping.expression, variables)
            except ExpressionError as error:
                raise MappingError(f"attribute {mapping.name!r}: {error}") from error
        entity[mapping.name] = _attribute(
            profile.entity_id, mapping.name, mapping.type, value, observed, mapping.unit_code()
        )
    if len(entity) == 2:
        raise MappingError(
            f"no attribute of the measure {sorted(measure.values)} is provisioned for device {profile.device_id!r}"
        )
    for static in profile.static_attributes:
        entity.setdefault(static.name, _static(static))
    # Smart Data Models: `dateObserved` is always set, to the observation time of the measure.
    entity["dateObserved"] = {
        "type": "Property", "value": {"@type": "DateTime", "@value": observed},
        "instanceId": instance_id(profile.entity_id, "dateObserved", observed, observed),
    }  # fmt: skip
    return entity

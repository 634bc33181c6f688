"""Provisioning data of FIWARE IoT Agents (config groups and devices), with the same JSON field names."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

NGSI_LD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_ENTITY_TYPE = "Thing"


class AttributeMapping(BaseModel):
    """One active attribute: the measure `object_id` becomes the entity attribute `name` of `type`."""

    model_config = ConfigDict(extra="allow")

    object_id: str | None = None
    name: str
    type: str = "Property"
    expression: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        """The measure name this attribute reads (its object_id, or its name when there is none)."""
        return self.object_id or self.name

    def unit_code(self) -> str | None:
        """`metadata.unitCode` as IoT Agents accept it: a string, or `{"type": "Text", "value": "CEL"}`."""
        unit = (self.metadata or {}).get("unitCode")
        if isinstance(unit, dict):
            unit = unit.get("value")
        return unit if isinstance(unit, str) and unit else None


class StaticAttribute(BaseModel):
    """An attribute every measure of the group or device carries with a fixed value (e.g. `location`)."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: str = "Property"
    value: Any
    metadata: dict[str, Any] | None = None


class _Provisioned(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    entity_type: str | None = None
    attributes: list[AttributeMapping] = Field(default_factory=list)
    static_attributes: list[StaticAttribute] = Field(default_factory=list)
    explicitAttrs: bool | None = None  # FIWARE IoT Agent field name
    timestamp: bool | None = None
    protocol: str | None = None
    transport: str | None = None

    @field_validator("attributes")
    @classmethod
    def _names_are_ngsi_ld(cls, attributes: list[AttributeMapping]) -> list[AttributeMapping]:
        for attribute in attributes:
            if not NGSI_LD_NAME.match(attribute.name):
                raise ValueError(f"attribute name {attribute.name!r} is not a valid NGSI-LD attribute name")
        return attributes


class ConfigGroup(_Provisioned):
    """A config group (`/iot/groups`, older `/iot/services`): what devices sharing an API key have in common."""

    apikey: str
    resource: str = ""
    autoprovision: bool = True
    cbroker: str | None = None
    description: str | None = None


class Device(_Provisioned):
    """A provisioned device (`/iot/devices`): its entity and its own attribute mappings."""

    device_id: str
    entity_name: str | None = None
    apikey: str | None = None
    timezone: str | None = None

    @field_validator("device_id")
    @classmethod
    def _device_id_is_usable(cls, device_id: str) -> str:
        if not device_id or "/" in device_id or "#" in device_id or "+" in device_id:
            raise ValueError(f"device_id {device_id!r} must be non-empty and hold no '/', '#' or '+'")
        return device_id


def public_document(model: BaseModel, *, service: str, subservice: str) -> dict[str, Any]:
    """How the provisioning API shows a group or device: its fields plus `service` and `subservice`."""
    document = model.model_dump(exclude_none=True)
    document["service"] = service
    document["subservice"] = subservice
    return document

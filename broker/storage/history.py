"""Writes TRoE-shaped history rows (entities, attributes, subAttributes) with COPY, Orion-LD's value routing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from psycopg import AsyncConnection

OpMode = Literal["Create", "Append", "Update", "Replace", "Delete"]

ATTRIBUTE_KEYWORDS = frozenset(
    {
        "type", "value", "object", "objectList", "languageMap", "vocab", "json", "observedAt",
        "unitCode", "datasetId", "createdAt", "modifiedAt", "deletedAt", "instanceId",
        "previousValue", "previousObject", "previousLanguageMap", "previousVocab", "previousJson",
        "lang",
    }
)  # fmt: skip

GEO_VALUE_TYPES = {
    "Point": "GeoPoint",
    "Polygon": "GeoPolygon",
    "MultiPolygon": "GeoMultiPolygon",
    "LineString": "GeoLineString",
    "MultiLineString": "GeoMultiLineString",
}


def new_instance_id() -> str:
    """A fresh TRoE instanceId, a URN as Orion-LD writes them."""
    return f"urn:ngsi-ld:attribute:instance:{uuid.uuid4()}"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as naive UTC (TRoE columns are `timestamp`), None if absent or invalid."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def route_value(instance: dict[str, Any]) -> tuple[str | None, str | None, bool | None, float | None,
                                                     datetime | None, str | None]:
    """Orion-LD TRoE value routing: (valueType, text, boolean, number, datetime, compound JSON)."""
    kind = instance.get("type")
    if kind == "Relationship":
        target = instance.get("object")
        if isinstance(target, str):
            return "Relationship", target, None, None, None, None
        return "Relationship", None, None, None, None, orjson.dumps(target).decode()
    if kind == "LanguageProperty":
        return "LanguageMap", None, None, None, None, orjson.dumps(instance.get("languageMap")).decode()
    if kind == "VocabProperty":
        vocab = instance.get("vocab")
        if isinstance(vocab, str):
            return "String", vocab, None, None, None, None
        return "Compound", None, None, None, None, orjson.dumps(vocab).decode()
    if kind == "JsonProperty":
        return "Compound", None, None, None, None, orjson.dumps(instance.get("json")).decode()
    value = instance.get("value")
    if kind == "GeoProperty" and isinstance(value, dict):
        # Without PostGIS the geometry goes to `compound` as GeoJSON (docs/internals.md "History").
        value_type = GEO_VALUE_TYPES.get(str(value.get("type")), "Compound")
        return value_type, None, None, None, None, orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "Boolean", None, value, None, None, None
    if isinstance(value, int | float):
        return "Number", None, None, float(value), None, None
    if isinstance(value, str):
        return "String", value, None, None, None, None
    if isinstance(value, dict) and value.get("@type") == "DateTime":
        moment = parse_time(value.get("@value"))
        if moment is not None:
            return "DateTime", None, None, None, moment, None
    if value is None:
        return None, None, None, None, None, None
    return "Compound", None, None, None, None, orjson.dumps(value).decode()


def sub_attribute_names(instance: dict[str, Any]) -> list[str]:
    return [key for key in instance if key not in ATTRIBUTE_KEYWORDS and isinstance(instance[key], list)]


@dataclass
class HistoryRows:
    """The history rows of one transaction, collected first and written with one COPY per table."""

    entities: list[tuple[Any, ...]] = field(default_factory=list)
    attributes: list[tuple[Any, ...]] = field(default_factory=list)
    sub_attributes: list[tuple[Any, ...]] = field(default_factory=list)

    def add_entity(self, op: OpMode, entity_id: str, types: list[str], at: datetime) -> None:
        ts = at.astimezone(UTC).replace(tzinfo=None)
        self.entities.append((new_instance_id(), ts, op, entity_id, types[0] if types else ""))

    def add_attributes(self, op: OpMode, entity_id: str, doc: dict[str, Any], at: datetime) -> None:
        """One row per attribute instance of `doc` (expanded attribute name → instances)."""
        for name, instances in doc.items():
            for instance in instances:
                self.add_attribute(op, entity_id, name, instance, at)

    def add_attribute(self, op: OpMode, entity_id: str, name: str, instance: dict[str, Any],
                      at: datetime) -> None:
        ts = at.astimezone(UTC).replace(tzinfo=None)
        instance_id = new_instance_id()
        subs = sub_attribute_names(instance)
        value_type, text, boolean, number, moment, compound = route_value(instance)
        self.attributes.append((
            instance_id, name, op, entity_id, parse_time(instance.get("observedAt")), bool(subs),
            instance.get("unitCode"), instance.get("datasetId"), value_type, text, boolean, number,
            moment, compound, ts,
        ))  # fmt: skip
        for sub_name in subs:
            for sub in instance[sub_name]:
                if not isinstance(sub, dict):
                    continue
                s_type, s_text, s_bool, s_number, s_moment, s_compound = route_value(sub)
                self.sub_attributes.append((
                    new_instance_id(), sub_name, entity_id, instance_id,
                    parse_time(sub.get("observedAt")), sub.get("unitCode"), s_type, s_text, s_bool,
                    s_number, s_moment, s_compound, ts,
                ))  # fmt: skip

    def add_attribute_deletion(self, entity_id: str, name: str, dataset_id: str | None,
                               at: datetime) -> None:
        ts = at.astimezone(UTC).replace(tzinfo=None)
        self.attributes.append((
            new_instance_id(), name, "Delete", entity_id, None, False, None, dataset_id, None, None,
            None, None, None, None, ts,
        ))  # fmt: skip

    def add_entity_deletion(self, entity_id: str, types: list[str], at: datetime) -> None:
        self.add_entity("Delete", entity_id, types, at)


ENTITY_COLUMNS = "(instanceId, ts, opMode, id, type)"
ATTRIBUTE_COLUMNS = (
    "(instanceId, id, opMode, entityId, observedAt, subProperties, unitCode, datasetId, valueType,"
    " text, boolean, number, datetime, compound, ts)"
)
SUB_ATTRIBUTE_COLUMNS = (
    "(instanceId, id, entityId, attrInstanceId, observedAt, unitCode, valueType, text, boolean,"
    " number, datetime, compound, ts)"
)


async def write_history(conn: AsyncConnection, rows: HistoryRows) -> None:
    """COPY the collected rows, inside the caller's transaction."""
    for table, columns, data in (
        ("entities", ENTITY_COLUMNS, rows.entities),
        ("attributes", ATTRIBUTE_COLUMNS, rows.attributes),
        ("subAttributes", SUB_ATTRIBUTE_COLUMNS, rows.sub_attributes),
    ):
        if not data:
            continue
        async with conn.cursor() as cur, cur.copy(f"COPY {table} {columns} FROM STDIN") as copy:
            for row in data:
                await copy.write_row(row)

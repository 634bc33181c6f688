"""Writes TRoE-shaped history rows (entities, attributes, subAttributes) with Orion-LD's value routing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
    # Orion-LD's ValueType has no member for the v1.8 attribute types below: their values go where a
    # Property's would (text, or JSON in `compound`), so that the history keeps them (it kept none).
    if kind == "VocabularyProperty":
        vocab = instance.get("vocab")
        if isinstance(vocab, str):
            return "String", vocab, None, None, None, None
        return "Compound", None, None, None, None, orjson.dumps(vocab).decode()
    if kind == "JsonProperty":
        return "Compound", None, None, None, None, orjson.dumps(instance.get("json")).decode()
    if kind == "ListProperty":
        return "Compound", None, None, None, None, orjson.dumps(instance.get("valueList")).decode()
    if kind == "ListRelationship":
        return "Compound", None, None, None, None, orjson.dumps(instance.get("objectList")).decode()
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
    if ATTRIBUTE_KEYWORDS.issuperset(instance):
        return []  # the common case: keyword members only
    return [key for key in instance if key not in ATTRIBUTE_KEYWORDS and isinstance(instance[key], list)]


class HistoryRows:
    """The history rows of one transaction, collected first and written with one statement per table.

    Instance ids are `urn:ngsi-ld:attribute:instance:<uuid of this batch>-<n>`: unique like a
    UUID per row, without paying for one per row on the bulk path.
    """

    def __init__(self) -> None:
        self.entities: list[tuple[Any, ...]] = []
        self.attributes: list[tuple[Any, ...]] = []
        self.sub_attributes: list[tuple[Any, ...]] = []
        self.given: dict[tuple[str, str, str], tuple[int, int, int]] = {}
        """(instanceId, entity id, attribute) of instances whose client gave the id — they replace history
        rows — and where their rows are (attribute row, first and end sub-attribute row): the same instance
        twice in one transaction (a batch holding a device's resend) keeps the later one only."""
        self._dropped_subs = False
        self._prefix = f"urn:ngsi-ld:attribute:instance:{uuid.uuid4()}-"
        self._counter = 0
        self._times: dict[Any, datetime | None] = {}

    def _instance_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    def _ts(self, at: datetime) -> datetime:
        ts = self._times.get(at)
        if ts is None:
            ts = self._times[at] = at.astimezone(UTC).replace(tzinfo=None)
        return ts

    def _observed(self, value: Any) -> datetime | None:
        # Attributes of one entity usually share observedAt: parse each text once.
        if value is None:
            return None
        if value in self._times:
            return self._times[value]
        parsed = self._times[value] = parse_time(value)
        return parsed

    def add_entity(self, op: OpMode, entity_id: str, types: list[str], at: datetime) -> None:
        self.entities.append((self._instance_id(), self._ts(at), op, entity_id, types[0] if types else ""))

    def add_attributes(self, op: OpMode, entity_id: str, doc: dict[str, Any], at: datetime) -> None:
        """One row per attribute instance of `doc` (expanded attribute name → instances)."""
        for name, instances in doc.items():
            for instance in instances:
                self.add_attribute(op, entity_id, name, instance, at)

    def add_attribute(self, op: OpMode, entity_id: str, name: str, instance: dict[str, Any],
                      at: datetime) -> None:
        ts = self._ts(at)
        own = instance.get("instanceId")  # a client's own instanceId is kept: a resend replaces, never duplicates
        instance_id = own if isinstance(own, str) else self._instance_id()
        subs = sub_attribute_names(instance)
        value_type, text, boolean, number, moment, compound = route_value(instance)
        row = (
            instance_id, name, op, entity_id, self._observed(instance.get("observedAt")), bool(subs),
            instance.get("unitCode"), instance.get("datasetId"), value_type, text, boolean, number,
            moment, compound, ts,
        )  # fmt: skip
        given = (instance_id, entity_id, name) if isinstance(own, str) else None
        earlier = self.given.get(given) if given is not None else None
        if earlier is None:
            position = len(self.attributes)
            self.attributes.append(row)
        else:
            position = earlier[0]
            self.attributes[position] = row
            for index in range(earlier[1], earlier[2]):
                self.sub_attributes[index] = None  # type: ignore[call-overload]
                self._dropped_subs = True
        first_sub = len(self.sub_attributes)
        for sub_name in subs:
            for sub in instance[sub_name]:
                if not isinstance(sub, dict):
                    continue
                s_type, s_text, s_bool, s_number, s_moment, s_compound = route_value(sub)
                self.sub_attributes.append((
                    self._instance_id(), sub_name, entity_id, instance_id,
                    self._observed(sub.get("observedAt")), sub.get("unitCode"), s_type, s_text, s_bool,
                    s_number, s_moment, s_compound, ts,
                ))  # fmt: skip
        if given is not None:
            self.given[given] = (position, first_sub, len(self.sub_attributes))

    def compact(self) -> None:
        """Drop the sub-attribute rows of given instances replaced within this transaction."""
        if self._dropped_subs:
            self.sub_attributes = [row for row in self.sub_attributes if row is not None]
            self._dropped_subs = False

    def add_attribute_deletion(self, entity_id: str, name: str, dataset_id: str | None,
                               at: datetime) -> None:
        self.attributes.append((
            self._instance_id(), name, "Delete", entity_id, None, False, None, dataset_id, None, None,
            None, None, None, None, self._ts(at),
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


# Every table's rows go in as one JSON array of arrays per statement: orjson writes it in C (psycopg's
# COPY row formatter cost ~5 us per row, its array and multi-row parameter paths are Python), the
# statement text is constant, so it is parsed and prepared once, and it can travel in a pipeline with
# the rest of the transaction (COPY cannot). Large writes are cut into statements of this many rows.
INSERT_CHUNK_ROWS = 5000
# Column types of each table, in the order of its columns above.
ENTITY_COLUMN_TYPES = ("text", "timestamp", "operationmode", "text", "text")
ATTRIBUTE_COLUMN_TYPES = ("text", "text", "operationmode", "text", "timestamp", "bool", "text", "text", "valuetype",
                          "text", "bool", "float8", "timestamp", "jsonb", "timestamp")
SUB_ATTRIBUTE_COLUMN_TYPES = ("text", "text", "text", "text", "timestamp", "text", "valuetype", "text", "bool",
                              "float8", "timestamp", "jsonb", "timestamp")


def insert_statement(table: str, columns: str, types: tuple[str, ...]) -> str:
    fields = ", ".join(f"(row->>{i})::{column_type}" for i, column_type in enumerate(types))
    return f"INSERT INTO {table} {columns} SELECT {fields} FROM jsonb_array_elements(%s::jsonb) AS row"


ENTITY_INSERT = insert_statement("entities", ENTITY_COLUMNS, ENTITY_COLUMN_TYPES)
ATTRIBUTE_INSERT = insert_statement("attributes", ATTRIBUTE_COLUMNS, ATTRIBUTE_COLUMN_TYPES)
SUB_ATTRIBUTE_INSERT = insert_statement("subAttributes", SUB_ATTRIBUTE_COLUMNS, SUB_ATTRIBUTE_COLUMN_TYPES)


# One statement for a write and its history: the caller's statement, then every table's rows (an empty
# JSON array when a table gets none, so the text is constant and prepared once per connection).
WITH_HISTORY = (
    "WITH written AS ({statement}), history_entities AS (" + ENTITY_INSERT + "),"
    " history_attributes AS (" + ATTRIBUTE_INSERT + ") " + SUB_ATTRIBUTE_INSERT
)


# Instances that bring their own instanceId replace the history rows of the same entity and attribute
# with that id (and their sub-attribute rows): a client's resend, or a value it recomputed, is one row.
# Another entity's instance with that id is never touched. The rows are found by instanceId alone
# (the primary key): given the entity and attribute too, the planner picks the (entity, attribute,
# time) index and walks the attribute's whole history, which grows with every write.
REPLACED_INSTANCES_DELETE = (
    "WITH given AS MATERIALIZED (SELECT g->>0 AS i, g->>1 AS e, g->>2 AS n FROM jsonb_array_elements(%s::jsonb) AS g),"
    " held AS MATERIALIZED (SELECT ctid AS row, instanceId, entityId, id FROM attributes"
    " WHERE instanceId = ANY(ARRAY(SELECT i FROM given))),"
    " gone AS (DELETE FROM attributes a WHERE a.ctid = ANY(ARRAY(SELECT h.row FROM held h"
    " JOIN given g ON h.instanceId = g.i AND h.entityId = g.e AND h.id = g.n)) RETURNING a.instanceId)"
    " DELETE FROM subAttributes s WHERE s.attrInstanceId = ANY(ARRAY(SELECT instanceId FROM gone))"
)


async def write_history(conn: AsyncConnection, rows: HistoryRows, *, chunk_rows: int = INSERT_CHUNK_ROWS,
                        along_with: tuple[str, Sequence[Any]] | None = None) -> None:
    """Write the collected rows inside the caller's transaction (pipelined or not), one INSERT per table and chunk.

    `along_with` is a statement and its parameters (without RETURNING) that runs first: when the rows
    fit one chunk per table, it and the history travel as one statement, one message to the server.
    Rows with a client-given instanceId first remove what the history holds under that id for the
    same entity and attribute (the caller holds the entities' locks, so no other write interleaves).
    """
    rows.compact()
    if rows.given:
        # (instanceId, entityId, attribute) triples as one JSON array: orjson writes it in C.
        await conn.execute(REPLACED_INSTANCES_DELETE, (orjson.dumps(list(rows.given)).decode(),))
    tables = (
        (rows.entities, ENTITY_INSERT),
        (rows.attributes, ATTRIBUTE_INSERT),
        (rows.sub_attributes, SUB_ATTRIBUTE_INSERT),
    )
    if along_with is not None:
        statement, params = along_with
        if all(len(data) <= chunk_rows for data, _ in tables):
            history = tuple(orjson.dumps(data).decode() for data, _ in tables)
            await conn.execute(WITH_HISTORY.format(statement=statement), (*params, *history))
            return
        await conn.execute(statement, params)
    for data, statement in tables:
        for first in range(0, len(data), chunk_rows):
            # Compound values are JSON text already: `->>` hands them to the jsonb cast as they are.
            await conn.execute(statement, (orjson.dumps(data[first:first + chunk_rows]).decode(),))


async def held_instance_ids(conn: AsyncConnection, entity_id: str, instance_ids: list[str]) -> set[str]:
    """Which of `instance_ids` the history already holds, for writes that bring their own instanceIds.

    Locks the entity's history for the rest of the transaction first (an advisory lock), so two
    transactions resending the same instances one after the other cannot both write them.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"troe:{entity_id}",))
    cur = await conn.execute("SELECT instanceId FROM attributes WHERE instanceId = ANY(%s)", (instance_ids,))
    return {row[0] for row in await cur.fetchall()}

"""Declarative mapping files (YAML): loaded and checked once, with errors that name the file, the field and the reason.

A mapping says how one kind of source file becomes Smart Data Model entities:

    source:     format (csv | json | ndjson | xml | fixed-width), encoding, delimiter, decimal mark,
                missing-value markers, where the records are (json/xml) and the fields of a record
    timestamp:  the columns it is built from, their format and time zone
    city:       the city part of entity ids (`urn:ngsi-ld:<Type>:<city>:<source-id>`)
    locations:  a static point, longitude/latitude columns, or a table keyed by a column (stations)
    entities:   one or more entity types per record, each with its id template, static properties,
                relationships and measured attributes (column, unit, scale, offset, conversion,
                safe expression), or a `long` block for long-format files (entity, attribute, time,
                value, unit)

`load_mapping(path)` returns a `Mapping`; every problem raises `MappingError`, a 400
`BadRequestData` whose detail reads `<file>: <field>: <reason>`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agents.files.timestamps import time_zone_of
from agents.iot.expressions import ExpressionError, compile_expression
from ngsi.contexts import CORE_CONTEXT_URL
from ngsi.errors import BadRequestData
from smart_data_models import MODEL_TYPES, default_unit_code

Format = Literal["csv", "json", "ndjson", "xml", "fixed-width"]
FORMATS: tuple[Format, ...] = ("csv", "json", "ndjson", "xml", "fixed-width")
Kind = Literal["number", "integer", "text", "boolean"]
KINDS: tuple[Kind, ...] = ("number", "integer", "text", "boolean")
Conversion = Literal["compass", "epoch", "epoch_ms", "iso8601"]
CONVERSIONS: tuple[Conversion, ...] = ("compass", "epoch", "epoch_ms", "iso8601")

UNIT_SYMBOLS: dict[str, str] = {
    # Symbols a person types in a hand-filled file → UN/CEFACT common codes.
    "µg/m3": "GQ", "µg/m³": "GQ", "ug/m3": "GQ", "ug/m³": "GQ", "mg/m3": "GP", "mg/m³": "GP",
    "°c": "CEL", "c": "CEL", "degc": "CEL", "hpa": "HPA", "m/s": "MTS", "%": "P1", "percent": "P1",
    "mm": "MMT", "°": "DD", "deg": "DD", "degree": "DD", "lux": "LUX", "lx": "LUX", "w/m2": "D54", "w/m²": "D54",
    "cm": "CMT", "ppb": "61", "ppm": "59", "m": "MTR", "km": "KMT", "h": "HUR", "s": "SEC", "k": "KEL",
}  # fmt: skip
"""Lower-cased unit symbols accepted where a UN/CEFACT code is expected."""

_UNIT_CODE = re.compile(r"^[A-Z0-9]{2,3}$")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class MappingError(BadRequestData):
    """A mapping file that cannot be used: the detail names the file, the field and the reason."""

    title = "Invalid mapping"

    def __init__(self, file: str, where: str, reason: str) -> None:
        super().__init__(f"{file}: {where}: {reason}", file=file, field=where)
        self.file = file
        self.field = where
        self.reason = reason


def unit_code(text: str) -> str | None:
    """A UN/CEFACT code from a code or a common symbol (`µg/m3` → `GQ`); None when it is neither."""
    cleaned = text.strip()
    if _UNIT_CODE.match(cleaned):
        return cleaned
    return UNIT_SYMBOLS.get(cleaned.lower())


def placeholders(template: str) -> list[str]:
    """The column names a `{column}` template refers to."""
    return _PLACEHOLDER.findall(template)


@dataclass(frozen=True)
class SourceSpec:
    """How records are read from the file."""

    format: Format
    encoding: str = "utf-8"
    delimiter: str = ","
    quote: str = '"'
    decimal: str = "."
    missing_text: frozenset[str] = frozenset({""})
    missing_numbers: frozenset[float] = frozenset()
    header: bool = True
    column_names: tuple[str, ...] = ()
    skip_lines: int = 0
    records: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class TimestampSpec:
    """The observation time: columns joined by one space, parsed with `format`, read in `time_zone`."""

    columns: tuple[str, ...]
    format: str = "iso8601"
    time_zone: str = "UTC"


@dataclass(frozen=True)
class LocationSpec:
    """Where a record was observed: a static point, lon/lat columns, or a table keyed by a column."""

    static: tuple[float, float] | None = None
    longitude_column: str | None = None
    latitude_column: str | None = None
    key_column: str | None = None
    table: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributeSpec:
    """One measured attribute: where its value comes from and how it is turned into the model's unit."""

    name: str
    column: str | None
    kind: Kind = "number"
    unit: str | None = None
    scale: float | None = None
    offset: float | None = None
    convert: Conversion | None = None
    expression: str | None = None
    observed: bool = True


@dataclass(frozen=True)
class LongFormatSpec:
    """Long-format files: one row per (entity, attribute, time, value, unit)."""

    entity_column: str
    attribute_column: str
    value_column: str
    unit_column: str | None = None


@dataclass(frozen=True)
class EntitySpec:
    """One entity a record yields."""

    type: str | None
    id_template: str
    context: str
    properties: dict[str, Any] = field(default_factory=dict)
    relationships: dict[str, tuple[str, str]] = field(default_factory=dict)
    attributes: tuple[AttributeSpec, ...] = ()
    long: LongFormatSpec | None = None
    location: tuple[float, float] | None = None


@dataclass(frozen=True)
class Mapping:
    """A checked mapping file."""

    name: str
    path: str
    source: SourceSpec
    timestamp: TimestampSpec
    city: str
    location: LocationSpec | None
    entities: tuple[EntitySpec, ...]
    description: str = ""
    text: str = ""

    def columns(self) -> list[str]:
        """Every column the mapping reads, in a stable order (readers deliver values in this order)."""
        names: list[str] = []

        def add(name: str | None) -> None:
            if name and name not in names:
                names.append(name)

        for column in self.timestamp.columns:
            add(column)
        for name in placeholders(self.city):
            add(name)
        if self.location is not None:
            for located_by in (self.location.longitude_column, self.location.latitude_column, self.location.key_column):
                add(located_by)
        for entity in self.entities:
            for name in placeholders(entity.id_template):
                add(name)
            for value in entity.properties.values():
                if isinstance(value, str):
                    for name in placeholders(value):
                        add(name)
            for _, template in entity.relationships.values():
                for name in placeholders(template):
                    add(name)
            for attribute in entity.attributes:
                add(attribute.column)
                for variable in expression_variables(attribute.expression):
                    if variable != "value":
                        add(variable)
            if entity.long is not None:
                long = entity.long
                for long_column in (long.entity_column, long.attribute_column, long.value_column, long.unit_column):
                    add(long_column)
        return names


def expression_variables(expression: str | None) -> list[str]:
    """The names an attribute's expression reads (`value` is the attribute's own column)."""
    if not expression:
        return []
    tree = compile_expression(expression)
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id not in called]


class _Checker:
    """Reads a YAML document field by field and raises MappingError with the field's path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, reason: str) -> MappingError:
        return MappingError(self.file, where, reason)

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping of keys to values, got {_shown(value)}")
        return value

    def known_keys(self, value: dict[str, Any], where: str, allowed: set[str]) -> None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown field (expected one of: {', '.join(sorted(allowed))})")  # fmt: skip

    def text(self, value: Any, where: str, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise self.fail(where, f"must be a non-empty text, got {_shown(value)}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"must be a number, got {_shown(value)}")
        return float(value)

    def point(self, value: Any, where: str) -> tuple[float, float]:
        if isinstance(value, dict):
            value = [value.get("longitude", value.get("lon")), value.get("latitude", value.get("lat"))]
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise self.fail(where, f"must be [longitude, latitude], got {_shown(value)}")
        longitude = self.number(value[0], f"{where}[0]")
        latitude = self.number(value[1], f"{where}[1]")
        if not -180 <= longitude <= 180:
            raise self.fail(f"{where}[0]", f"longitude {longitude} is outside -180..180")
        if not -90 <= latitude <= 90:
            raise self.fail(f"{where}[1]", f"latitude {latitude} is outside -90..90")
        return longitude, latitude

    def choice(self, value: Any, where: str, choices: tuple[str, ...]) -> Any:
        if value not in choices:
            raise self.fail(where, f"must be one of {', '.join(choices)}, got {_shown(value)}")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_mapping(path: Path | str) -> Mapping:
    """Read and check a mapping file; MappingError names the field that is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MappingError(str(path), "(file)", f"cannot be read: {error.strerror or error}") from error
    return parse_mapping(text, str(path))


def parse_mapping(text: str, file: str = "<mapping>") -> Mapping:
    """Check a mapping given as YAML text (`file` names it in errors)."""
    check = _Checker(file)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise MappingError(file, where, f"is not valid YAML: {getattr(error, 'problem', error)}") from error
    document = check.table(document, "(top level)")
    check.known_keys(document, "", {"name", "description", "source", "timestamp", "city", "locations", "entities"})
    source = _source(check, document.get("source"))
    timestamp = _timestamp(check, document.get("timestamp"))
    city = check.text(document.get("city"), "city")
    location = _location(check, document.get("locations"))
    raw_entities = document.get("entities")
    if not isinstance(raw_entities, list) or not raw_entities:
        raise check.fail("entities", f"must be a non-empty list of entity descriptions, got {_shown(raw_entities)}")
    entities = tuple(_entity(check, raw, f"entities[{index}]") for index, raw in enumerate(raw_entities))
    mapping = Mapping(
        name=check.text(document.get("name", Path(file).stem), "name"),
        path=file,
        source=source,
        timestamp=timestamp,
        city=city,
        location=location,
        entities=entities,
        description=str(document.get("description", "")),
        text=text,
    )
    _check_columns(check, mapping)
    return mapping


def _source(check: _Checker, raw: Any) -> SourceSpec:
    raw = check.table(raw, "source")
    check.known_keys(raw, "source", {"format", "encoding", "delimiter", "quote", "decimal", "missing", "header",
                                     "columns", "skip_lines", "records", "fields"})  # fmt: skip
    format_ = check.choice(raw.get("format"), "source.format", FORMATS)
    encoding = check.text(raw.get("encoding", "utf-8"), "source.encoding")
    try:
        "".encode(encoding)
    except LookupError as error:
        raise check.fail("source.encoding", f"{encoding!r} is not an encoding Python knows") from error
    delimiter = raw.get("delimiter", ",")
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise check.fail("source.delimiter", f"must be one character, got {_shown(delimiter)}")
    quote = raw.get("quote", '"')
    if not isinstance(quote, str) or len(quote) != 1:
        raise check.fail("source.quote", f"must be one character, got {_shown(quote)}")
    decimal = check.choice(raw.get("decimal", "."), "source.decimal", (".", ","))
    if decimal == delimiter:
        raise check.fail("source.decimal", "cannot be the same character as source.delimiter")
    missing = raw.get("missing", [""])
    if not isinstance(missing, list):
        missing = [missing]
    missing_text: set[str] = set()
    missing_numbers: set[float] = set()
    for index, marker in enumerate(missing):
        if isinstance(marker, bool) or not isinstance(marker, str | int | float):
            raise check.fail(f"source.missing[{index}]", f"must be a text or a number, got {_shown(marker)}")
        if isinstance(marker, str):
            missing_text.add(marker)
        else:
            missing_numbers.add(float(marker))
            missing_text.add(str(marker))
    header = raw.get("header", True)
    if not isinstance(header, bool):
        raise check.fail("source.header", f"must be true or false, got {_shown(header)}")
    skip_lines = raw.get("skip_lines", 0)
    if isinstance(skip_lines, bool) or not isinstance(skip_lines, int) or skip_lines < 0:
        raise check.fail("source.skip_lines", f"must be a whole number ≥ 0, got {_shown(skip_lines)}")
    column_names: tuple[str, ...] = ()
    widths: dict[str, tuple[int, int]] = {}
    columns = raw.get("columns")
    if format_ == "fixed-width":
        columns = check.table(columns, "source.columns")
        if not columns:
            raise check.fail("source.columns", "a fixed-width source needs at least one column: name: [start, end]")
        for name, span in columns.items():
            where = f"source.columns.{name}"
            if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)):
                raise check.fail(where, f"must be [start, end] character positions, got {_shown(span)}")
            start, end = span
            if start < 0 or end <= start:
                raise check.fail(where, f"needs 0 ≤ start < end, got [{start}, {end}]")
            widths[str(name)] = (start, end)
    elif columns is not None:
        if format_ != "csv" or not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise check.fail("source.columns", "is a list of column names, only for csv files without a header")
        column_names = tuple(columns)
    if format_ == "csv" and not header and not column_names:
        raise check.fail("source.columns", "a csv source with header: false must list its column names")
    records = raw.get("records", "")
    if format_ in ("json", "xml"):
        records = check.text(records, "source.records")
    fields = raw.get("fields", {}) or {}
    fields = check.table(fields, "source.fields")
    for name, value in fields.items():
        check.text(value, f"source.fields.{name}")
    return SourceSpec(
        format=format_, encoding=encoding, delimiter=delimiter, quote=quote, decimal=decimal,
        missing_text=frozenset(missing_text), missing_numbers=frozenset(missing_numbers), header=header,
        column_names=column_names, skip_lines=skip_lines, records=str(records),
        fields={str(k): str(v) for k, v in fields.items()}, widths=widths,
    )  # fmt: skip


def _timestamp(check: _Checker, raw: Any) -> TimestampSpec:
    raw = check.table(raw, "timestamp")
    check.known_keys(raw, "timestamp", {"column", "columns", "format", "time_zone"})
    if "column" in raw and "columns" in raw:
        raise check.fail("timestamp", "give either column or columns, not both")
    columns = raw.get("columns", [raw.get("column")] if "column" in raw else None)
    if not isinstance(columns, list) or not columns:
        raise check.fail("timestamp.columns", f"must list the column(s) the time is built from, got {_shown(columns)}")
    for index, column in enumerate(columns):
        check.text(column, f"timestamp.columns[{index}]")
    format_ = check.text(raw.get("format", "iso8601"), "timestamp.format")
    if format_ not in ("iso8601", "epoch", "epoch_ms") and "%" not in format_:
        raise check.fail("timestamp.format", f"must be iso8601, epoch, epoch_ms or a strftime pattern, got {format_!r}")
    time_zone = check.text(raw.get("time_zone", "UTC"), "timestamp.time_zone")
    try:
        time_zone_of(time_zone)
    except ValueError as error:
        raise check.fail("timestamp.time_zone", str(error)) from error
    return TimestampSpec(columns=tuple(columns), format=format_, time_zone=time_zone)


def _location(check: _Checker, raw: Any) -> LocationSpec | None:
    if raw is None:
        return None
    raw = check.table(raw, "locations")
    check.known_keys(raw, "locations", {"static", "longitude", "latitude", "column", "table"})
    if "static" in raw:
        return LocationSpec(static=check.point(raw["static"], "locations.static"))
    if "longitude" in raw or "latitude" in raw:
        return LocationSpec(
            longitude_column=check.text(raw.get("longitude"), "locations.longitude"),
            latitude_column=check.text(raw.get("latitude"), "locations.latitude"),
        )
    key = check.text(raw.get("column"), "locations.column")
    table = check.table(raw.get("table"), "locations.table")
    if not table:
        raise check.fail("locations.table", "must list at least one key: [longitude, latitude]")
    points = {str(name): check.point(point, f"locations.table.{name}") for name, point in table.items()}
    return LocationSpec(key_column=key, table=points)


def context_for(entity_type: str | None) -> str:
    """The @context of a Smart Data Model type (the NGSI-LD core context for other types)."""
    model = MODEL_TYPES.get(entity_type or "")
    return model.subject_context if model is not None else CORE_CONTEXT_URL


def _entity(check: _Checker, raw: Any, where: str) -> EntitySpec:
    raw = check.table(raw, where)
    check.known_keys(raw, where, {"type", "id", "context", "location", "properties", "relationships", "attributes",
                                  "long"})  # fmt: skip
    location = check.point(raw["location"], f"{where}.location") if "location" in raw else None
    long_raw = raw.get("long")
    entity_type = raw.get("type")
    if entity_type is not None or long_raw is None:
        entity_type = check.text(entity_type, f"{where}.type")
        if not _TYPE_NAME.match(entity_type):
            raise check.fail(f"{where}.type", f"{entity_type!r} is not a plain type name")
    context = check.text(raw.get("context", context_for(entity_type)), f"{where}.context")
    properties = check.table(raw.get("properties", {}) or {}, f"{where}.properties")
    for name, value in properties.items():
        if not ATTRIBUTE_NAME.match(str(name)) or name in ("id", "type", "location", "dateObserved"):
            raise check.fail(f"{where}.properties.{name}", "is not a name a static property can have")
        if not isinstance(value, str | int | float | bool | list | dict):
            raise check.fail(f"{where}.properties.{name}", f"must be a value, got {_shown(value)}")
    relationships: dict[str, tuple[str, str]] = {}
    for name, target in (check.table(raw.get("relationships", {}) or {}, f"{where}.relationships")).items():
        target = check.table(target, f"{where}.relationships.{name}")
        check.known_keys(target, f"{where}.relationships.{name}", {"type", "id"})
        relationships[str(name)] = (
            check.text(target.get("type"), f"{where}.relationships.{name}.type"),
            check.text(target.get("id"), f"{where}.relationships.{name}.id"),
        )
    long = None
    attributes: tuple[AttributeSpec, ...] = ()
    if long_raw is not None:
        long_raw = check.table(long_raw, f"{where}.long")
        check.known_keys(long_raw, f"{where}.long", {"entity", "attribute", "value", "unit"})
        long = LongFormatSpec(
            entity_column=check.text(long_raw.get("entity"), f"{where}.long.entity"),
            attribute_column=check.text(long_raw.get("attribute"), f"{where}.long.attribute"),
            value_column=check.text(long_raw.get("value"), f"{where}.long.value"),
            unit_column=check.text(long_raw["unit"], f"{where}.long.unit") if "unit" in long_raw else None,
        )
        id_template = str(raw.get("id", "{" + long.entity_column + "}"))
    else:
        id_template = check.text(raw.get("id"), f"{where}.id")
        raw_attributes = check.table(raw.get("attributes"), f"{where}.attributes")
        if not raw_attributes:
            raise check.fail(f"{where}.attributes", "must map at least one attribute")
        attributes = tuple(
            _attribute(check, str(name), spec, f"{where}.attributes.{name}") for name, spec in raw_attributes.items()
        )
    return EntitySpec(
        type=entity_type, id_template=id_template, context=context, properties=dict(properties),
        relationships=relationships, attributes=attributes, long=long, location=location,
    )  # fmt: skip


def _attribute(check: _Checker, name: str, raw: Any, where: str) -> AttributeSpec:
    if not ATTRIBUTE_NAME.match(name) or name in ("id", "type", "location", "dateObserved"):
        raise check.fail(where, "is not a name a measured attribute can have")
    if isinstance(raw, str):
        raw = {"column": raw}
    raw = check.table(raw, where)
    check.known_keys(raw, where, {"column", "kind", "unit", "scale", "offset", "convert", "expression", "observed"})
    column = raw.get("column")
    expression = raw.get("expression")
    if column is None and expression is None:
        raise check.fail(where, "needs a column, an expression, or both")
    if column is not None:
        check.text(column, f"{where}.column")
    if expression is not None:
        check.text(expression, f"{where}.expression")
        try:
            compile_expression(expression)
        except ExpressionError as error:
            raise check.fail(f"{where}.expression", str(error)) from error
    kind = check.choice(raw.get("kind", "number"), f"{where}.kind", KINDS)
    convert = raw.get("convert")
    if convert is not None:
        check.choice(convert, f"{where}.convert", CONVERSIONS)
    unit = raw.get("unit", default_unit_code(name) if kind in ("number", "integer") and convert is None else None)
    if convert == "compass" and unit is None:
        unit = "DD"
    if unit is not None:
        code = unit_code(check.text(unit, f"{where}.unit"))
        if code is None:
            raise check.fail(f"{where}.unit", f"{unit!r} is neither a UN/CEFACT code (e.g. GQ) nor a known symbol")
        unit = code
    scale = check.number(raw["scale"], f"{where}.scale") if "scale" in raw else None
    offset = check.number(raw["offset"], f"{where}.offset") if "offset" in raw else None
    if (scale is not None or offset is not None) and (kind not in ("number", "integer") or convert is not None):
        raise check.fail(where, "scale and offset apply to numbers only")
    observed = raw.get("observed", True)
    if not isinstance(observed, bool):
        raise check.fail(f"{where}.observed", f"must be true or false, got {_shown(observed)}")
    return AttributeSpec(name=name, column=column, kind=kind, unit=unit, scale=scale, offset=offset,
                         convert=convert, expression=expression, observed=observed)  # fmt: skip


def _check_columns(check: _Checker, mapping: Mapping) -> None:
    """Fixed-width sources know their columns up front: every column the mapping reads must be one."""
    source = mapping.source
    known: set[str] | None = None
    if source.format == "fixed-width":
        known = set(source.widths)
    elif source.format == "csv" and not source.header:
        known = set(source.column_names)
    if known is None:
        return
    for column in mapping.columns():
        if column not in known:
            raise check.fail("source.columns", f"column {column!r} is used by the mapping but not declared here")

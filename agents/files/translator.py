"""Pure translation of one source record into NGSI-LD entities (normalized, Smart Data Models), compiled from a mapping.

`compile_translator(mapping)` returns a `Translator`: called with the record's values (in the
order of `mapping.columns()`) it returns the entities the record yields, each a normalized
NGSI-LD entity with its own `@context`, `dateObserved`, `location` (when the mapping gives one)
and `observedAt` + `unitCode` on every measured property. A record that cannot be mapped raises
`UnmappableRecord` naming the column and the reason. Everything that does not depend on the
record (static properties, locations per station, id templates) is built once and shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agents.files.mapping import (
    ATTRIBUTE_NAME,
    AttributeSpec,
    EntitySpec,
    LongFormatSpec,
    context_for,
    expression_variables,
    placeholders,
    unit_code,
)
from agents.files.mapping import Mapping as FileMapping
from agents.files.timestamps import BadTimestamp, columns_parser, timestamp_parser
from agents.iot.expressions import ExpressionError, evaluate_expression
from smart_data_models import entity_id as sdm_entity_id

COMPASS_DEGREES: dict[str, float] = {
    point: index * 22.5
    for index, point in enumerate(
        ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"]
    )
}
"""The 16 points of the compass, clockwise from north, 22.5° apart."""
CALM = frozenset({"cv", "calm", "c", "var", "vrb", "variable"})
"""Wind direction words that mean "no direction" (calm or variable): the attribute is left out."""

_MISSING = object()
_CACHE_LIMIT = 100_000

Values = Sequence[Any]
Entity = dict[str, Any]


class UnmappableRecord(ValueError):
    """A record the mapping cannot turn into entities; the message names the column and the reason."""


def _date_time(text: str) -> dict[str, str]:
    return {"@type": "DateTime", "@value": text}


class _Cells:
    """Reads typed cells of a record: missing markers, decimal mark, numbers, text."""

    def __init__(self, mapping: FileMapping) -> None:
        self.missing_text = mapping.source.missing_text
        self.missing_numbers = mapping.source.missing_numbers
        self.decimal_comma = mapping.source.decimal == ","

    def is_missing(self, raw: Any) -> bool:
        if raw is None:
            return True
        if isinstance(raw, str):
            return raw in self.missing_text or raw.strip() in self.missing_text
        return False

    def number(self, raw: Any, column: str) -> Any:
        """A float, or `_MISSING`; UnmappableRecord when the cell is neither a number nor a missing marker."""
        if isinstance(raw, str):
            if raw in self.missing_text:
                return _MISSING
            try:
                value = float(raw.replace(",", ".") if self.decimal_comma else raw)
            except ValueError:
                if raw.strip() in self.missing_text:
                    return _MISSING
                raise UnmappableRecord(f"column {column!r}: {raw!r} is not a number") from None
        elif raw is None:
            return _MISSING
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            raise UnmappableRecord(f"column {column!r}: {raw!r} is not a number")
        else:
            value = float(raw)
        if value in self.missing_numbers:
            return _MISSING
        if not math.isfinite(value):
            raise UnmappableRecord(f"column {column!r}: {raw!r} is not a finite number")
        return value

    def text(self, raw: Any) -> Any:
        if self.is_missing(raw):
            return _MISSING
        return raw.strip() if isinstance(raw, str) else str(raw)


class _Template:
    """A `{column}` template rendered from a record, cached per distinct set of cell values."""

    def __init__(self, template: str, index: Mapping[str, int]) -> None:
        self.template = template
        self.names = placeholders(template)
        self.positions = [index[name] for name in self.names]

    @property
    def constant(self) -> bool:
        return not self.names

    def render(self, values: Values) -> str:
        text = self.template
        for name, position in zip(self.names, self.positions, strict=True):
            cell = values[position]
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                raise UnmappableRecord(f"column {name!r} is empty but the template {self.template!r} needs it")
            text = text.replace("{" + name + "}", str(cell).strip())
        return text


def _number_attribute(spec: AttributeSpec, cells: _Cells, position: int | None,
                      variables: list[tuple[str, int]]) -> Callable[[Values], Any]:  # fmt: skip
    column = spec.column or ""
    scale, offset, expression = spec.scale, spec.offset, spec.expression
    integer = spec.kind == "integer"

    def read(values: Values) -> Any:
        value: Any = _MISSING if position is None else cells.number(values[position], column)
        if position is not None and value is _MISSING:
            return _MISSING
        if expression is not None:
            scope: dict[str, Any] = {} if position is None else {"value": value}
            for name, where in variables:
                cell = cells.number(values[where], name)
                if cell is _MISSING:
                    return _MISSING
                scope[name] = cell
            try:
                value = evaluate_expression(expression, scope)
            except ExpressionError as error:
                raise UnmappableRecord(f"attribute {spec.name!r}: {error}") from error
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UnmappableRecord(f"attribute {spec.name!r}: expression gave {value!r}, not a number")
        if scale is not None:
            value *= scale
        if offset is not None:
            value += offset
        if integer:
            return round(value)
        return value

    return read


def _other_attribute(spec: AttributeSpec, cells: _Cells, position: int) -> Callable[[Values], Any]:
    column = spec.column or ""
    if spec.convert == "compass":

        def compass(values: Values) -> Any:
            text = cells.text(values[position])
            if text is _MISSING or text.lower() in CALM:
                return _MISSING
            degrees = COMPASS_DEGREES.get(text.upper())
            if degrees is None:
                raise UnmappableRecord(f"column {column!r}: {text!r} is not a compass point (N, NNE, ... NNW)")
            return degrees

        return compass
    if spec.convert in ("epoch", "epoch_ms", "iso8601"):
        parse = timestamp_parser(spec.convert, "UTC")

        def moment(values: Values) -> Any:
            raw = values[position]
            if cells.is_missing(raw):
                return _MISSING
            try:
                return _date_time(parse(str(raw)))
            except BadTimestamp as error:
                raise UnmappableRecord(f"column {column!r}: {error}") from error

        return moment
    if spec.kind == "boolean":

        def boolean(values: Values) -> Any:
            raw = values[position]
            if isinstance(raw, bool):
                return raw
            text = cells.text(raw)
            if text is _MISSING:
                return _MISSING
            if text.lower() in ("true", "1", "yes", "y"):
                return True
            if text.lower() in ("false", "0", "no", "n"):
                return False
            raise UnmappableRecord(f"column {column!r}: {text!r} is not true or false")

        return boolean

    def text(values: Values) -> Any:
        return cells.text(values[position])

    return text


class _EntityBuilder:
    """Builds one entity of a wide record (one column per attribute)."""

    def __init__(self, spec: EntitySpec, mapping: FileMapping, index: Mapping[str, int], cells: _Cells) -> None:
        assert spec.type is not None
        self.type = spec.type
        self.context = [spec.context]
        self.city = _Template(mapping.city, index)
        self.cells = cells
        self.location = _geo_point(spec.location) if spec.location is not None else None
        self.id_template = _Template(spec.id_template, index)
        self.constant: dict[str, Any] = {}
        self.templated: list[tuple[str, _Template]] = []
        for name, value in spec.properties.items():
            if isinstance(value, str) and placeholders(value):
                self.templated.append((name, _Template(value, index)))
            else:
                self.constant[name] = {"type": "Property", "value": value}
        self.relationships: list[tuple[str, str, _Template]] = [
            (name, target_type, _Template(template, index))
            for name, (target_type, template) in spec.relationships.items()
        ]
        templates = [self.id_template, self.city, *(t for _, t in self.templated)]
        templates += [t for _, _, t in self.relationships]
        self.key_positions = sorted({position for template in templates for position in template.positions})
        self._heads: dict[Any, tuple[str, dict[str, Any]]] = {}
        # Plain numbers are read inline (the hot path): (name, position, column, scale, offset, unit, observed).
        self.plain: list[tuple[str, int, str, float | None, float | None, str | None, bool]] = []
        # The commonest case, unscaled measured numbers with a unit, in a loop of its own: (name, position,
        # column, unit).
        self.fast: list[tuple[str, int, str, str]] = []
        # Everything else through its reader: (name, reader, unit, observed).
        self.other: list[tuple[str, Callable[[Values], Any], str | None, bool]] = []
        for attribute in spec.attributes:
            position = index[attribute.column] if attribute.column else None
            if attribute.kind in ("number", "integer") and attribute.convert is None:
                variables = [(name, index[name]) for name in expression_variables(attribute.expression)
                             if name != "value"]  # fmt: skip
                reader = _number_attribute(attribute, cells, position, variables)
            else:
                assert position is not None
                reader = _other_attribute(attribute, cells, position)
            plain = (
                attribute.kind == "number" and attribute.convert is None and attribute.expression is None
                and position is not None
            )  # fmt: skip
            if plain and attribute.scale is None and attribute.offset is None and attribute.unit and attribute.observed:
                assert position is not None
                self.fast.append((attribute.name, position, attribute.column or "", attribute.unit))
            elif plain:
                assert position is not None
                self.plain.append((attribute.name, position, attribute.column or "", attribute.scale, attribute.offset,
                                   attribute.unit, attribute.observed))  # fmt: skip
            else:
                self.other.append((attribute.name, reader, attribute.unit, attribute.observed))

    def _head(self, values: Values, key: Any) -> tuple[str, dict[str, Any]]:
        """The entity id and the properties/relationships that depend only on the template cells."""
        source_id = self.id_template.render(values)
        city = self.city.render(values)
        if source_id.startswith("urn:"):
            identifier = source_id
        else:
            try:
                identifier = sdm_entity_id(self.type, city, source_id)
            except ValueError as error:
                raise UnmappableRecord(f"entity id: {error}") from error
        fixed = dict(self.constant)
        for name, template in self.templated:
            fixed[name] = {"type": "Property", "value": template.render(values)}
        for name, target_type, template in self.relationships:
            text = template.render(values)
            try:
                target = text if text.startswith("urn:") else sdm_entity_id(target_type, city, text)
            except ValueError as error:
                raise UnmappableRecord(f"relationship {name!r}: {error}") from error
            fixed[name] = {"type": "Relationship", "object": target}
        if len(self._heads) > _CACHE_LIMIT:
            self._heads.clear()
        head = (identifier, fixed)
        self._heads[key] = head
        return head

    def build(self, values: Values, observed_at: str, date_observed: dict[str, Any],
              location: dict[str, Any] | None) -> Entity | None:  # fmt: skip
        cells = self.cells
        missing_text = cells.missing_text
        missing_numbers = cells.missing_numbers
        comma = cells.decimal_comma
        measured: dict[str, Any] = {}
        for name, position, column, fast_unit in self.fast:
            raw = values[position]
            if raw is None or raw in missing_text:
                continue
            try:
                value = float(raw.replace(",", ".") if comma else raw)
            except (ValueError, TypeError, AttributeError):
                value = cells.number(raw, column)
                if value is _MISSING:
                    continue
            if missing_numbers and value in missing_numbers:
                continue
            if value - value != 0.0:  # inf or nan
                raise UnmappableRecord(f"column {column!r}: {raw!r} is not a finite number")
            measured[name] = {"type": "Property", "value": value, "unitCode": fast_unit, "observedAt": observed_at}
        for name, position, column, scale, offset, unit, observed in self.plain:
            raw = values[position]
            if raw is None or raw in missing_text:
                continue
            try:
                value = float(raw.replace(",", ".") if comma else raw)
            except (ValueError, TypeError, AttributeError):
                value = cells.number(raw, column)
                if value is _MISSING:
                    continue
            if missing_numbers and value in missing_numbers:
                continue
            if value - value != 0.0:  # inf or nan
                raise UnmappableRecord(f"column {column!r}: {raw!r} is not a finite number")
            if scale is not None:
                value *= scale
            if offset is not None:
                value += offset
            if unit is None:
                measured[name] = (
                    {"type": "Property", "value": value, "observedAt": observed_at}
                    if observed
                    else {"type": "Property", "value": value}
                )
            elif observed:
                measured[name] = {"type": "Property", "value": value, "unitCode": unit, "observedAt": observed_at}
            else:
                measured[name] = {"type": "Property", "value": value, "unitCode": unit}
        for name, read, unit, observed in self.other:
            value = read(values)
            if value is _MISSING:
                continue
            attribute: dict[str, Any] = {"type": "Property", "value": value}
            if unit is not None:
                attribute["unitCode"] = unit
            if observed:
                attribute["observedAt"] = observed_at
            measured[name] = attribute
        if not measured:
            return None
        key_positions = self.key_positions
        key: Any = values[key_positions[0]] if len(key_positions) == 1 else tuple([values[p] for p in key_positions])
        head = self._heads.get(key)
        identifier, fixed = head if head is not None else self._head(values, key)
        location = self.location or location
        if location is None:
            return {"id": identifier, "type": self.type, "dateObserved": date_observed, **fixed, **measured,
                    "@context": self.context}  # fmt: skip
        return {"id": identifier, "type": self.type, "dateObserved": date_observed, "location": location, **fixed,
                **measured, "@context": self.context}  # fmt: skip


class _LongBuilder:
    """Builds one entity fragment from a long-format row (entity, attribute, time, value, unit)."""

    def __init__(self, spec: EntitySpec, long: LongFormatSpec, mapping: FileMapping, index: Mapping[str, int],
                 cells: _Cells) -> None:  # fmt: skip
        self.type = spec.type
        self.explicit_context = spec.context if spec.type is not None else None
        self.city = _Template(mapping.city, index)
        self.cells = cells
        self.entity = index[long.entity_column]
        self.attribute = index[long.attribute_column]
        self.value = index[long.value_column]
        self.unit = index[long.unit_column] if long.unit_column else None
        self.columns = long

    def build(self, values: Values, observed_at: str, date_observed: dict[str, Any],
              location: dict[str, Any] | None) -> Entity | None:  # fmt: skip
        raw_id = self.cells.text(values[self.entity])
        if raw_id is _MISSING:
            raise UnmappableRecord(f"column {self.columns.entity_column!r} is empty")
        entity_type = self.type
        if raw_id.startswith("urn:ngsi-ld:"):
            parts = raw_id.split(":")
            if len(parts) < 4 or not parts[2]:
                raise UnmappableRecord(f"entity {raw_id!r} is not urn:ngsi-ld:<Type>:<id>")
            entity_type = entity_type or parts[2]
            identifier = raw_id
        elif entity_type is None:
            raise UnmappableRecord(f"entity {raw_id!r} is not urn:ngsi-ld:<Type>:... and the mapping gives no type")
        else:
            try:
                identifier = sdm_entity_id(entity_type, self.city.render(values), raw_id)
            except ValueError as error:
                raise UnmappableRecord(f"entity id: {error}") from error
        name = self.cells.text(values[self.attribute])
        if name is _MISSING or not ATTRIBUTE_NAME.match(name):
            raise UnmappableRecord(f"column {self.columns.attribute_column!r}: {values[self.attribute]!r} is not an "
                                   "attribute name")  # fmt: skip
        context = [self.explicit_context or context_for(entity_type)]
        raw_value = values[self.value]
        if self.cells.is_missing(raw_value):
            return None
        entity: Entity = {"id": identifier, "type": entity_type}
        if name == "location":
            entity["location"] = {"type": "GeoProperty", "value": _point(str(raw_value), self.columns.value_column)}
            entity["@context"] = context
            return entity
        try:
            value: Any = self.cells.number(raw_value, self.columns.value_column)
        except UnmappableRecord:
            value = self.cells.text(raw_value)
        attribute: dict[str, Any] = {"type": "Property", "value": value, "observedAt": observed_at}
        if self.unit is not None:
            unit_text = self.cells.text(values[self.unit])
            if unit_text is not _MISSING:
                code = unit_code(unit_text)
                if code is None:
                    raise UnmappableRecord(f"column {self.columns.unit_column!r}: {unit_text!r} is neither a "
                                           "UN/CEFACT code nor a known unit symbol")  # fmt: skip
                attribute["unitCode"] = code
        entity["dateObserved"] = date_observed
        if location is not None:
            entity["location"] = location
        entity[name] = attribute
        entity["@context"] = context
        return entity


def _point(text: str, column: str) -> dict[str, Any]:
    parts = text.replace(";", ",").replace(" ", ",").split(",")
    numbers = [p for p in parts if p]
    try:
        longitude, latitude = (float(p) for p in numbers)
    except ValueError:
        raise UnmappableRecord(f"column {column!r}: location {text!r} is not 'longitude,latitude'") from None
    if not (-180 <= longitude <= 180 and -90 <= latitude <= 90):
        raise UnmappableRecord(f"column {column!r}: location {text!r} is outside longitude/latitude ranges")
    return {"type": "Point", "coordinates": [longitude, latitude]}


class Translator:
    """Record values (in `columns` order) → the NGSI-LD entities they yield."""

    def __init__(self, mapping: FileMapping) -> None:
        self.mapping = mapping
        self.columns = mapping.columns()
        index = {name: position for position, name in enumerate(self.columns)}
        self.cells = _Cells(mapping)
        timestamp = mapping.timestamp
        self.time_positions = [index[name] for name in timestamp.columns]
        self.parse_time = timestamp_parser(timestamp.format, timestamp.time_zone)
        self.parse_columns = columns_parser(timestamp.format, timestamp.time_zone, len(self.time_positions))
        self.builders: list[_EntityBuilder | _LongBuilder] = [
            _LongBuilder(spec, spec.long, mapping, index, self.cells)
            if spec.long is not None
            else _EntityBuilder(spec, mapping, index, self.cells)
            for spec in mapping.entities
        ]
        location = mapping.location
        self.static_location: dict[str, Any] | None = None
        self.location_key: int | None = None
        self.location_table: dict[str, dict[str, Any]] = {}
        self.location_columns: tuple[int, int] | None = None
        if location is not None:
            if location.static is not None:
                self.static_location = _geo_point(location.static)
            elif location.key_column is not None:
                self.location_key = index[location.key_column]
                self.location_table = {key: _geo_point(point) for key, point in location.table.items()}
            elif location.longitude_column and location.latitude_column:
                self.location_columns = (index[location.longitude_column], index[location.latitude_column])

    def observed_at(self, values: Values) -> str:
        """The record's observation time as NGSI-LD UTC text."""
        if self.parse_columns is not None:
            try:
                return self.parse_columns([values[position] for position in self.time_positions])
            except BadTimestamp as error:
                columns = ", ".join(self.mapping.timestamp.columns)
                raise UnmappableRecord(f"timestamp from {columns}: {error}") from error
        if len(self.time_positions) == 1:
            raw = values[self.time_positions[0]]
            if self.cells.is_missing(raw):
                raise UnmappableRecord(f"column {self.mapping.timestamp.columns[0]!r}: no time")
            text = str(raw)
        else:
            text = " ".join(str(values[position]).strip() for position in self.time_positions)
        try:
            return self.parse_time(text)
        except BadTimestamp as error:
            raise UnmappableRecord(f"timestamp from {', '.join(self.mapping.timestamp.columns)}: {error}") from error

    def location(self, values: Values) -> dict[str, Any] | None:
        """The record's GeoProperty `location`, or None when the mapping gives none."""
        if self.static_location is not None:
            return self.static_location
        if self.location_key is not None:
            column = self.mapping.location.key_column if self.mapping.location else ""
            key = "" if values[self.location_key] is None else str(values[self.location_key]).strip()
            if not key:
                raise UnmappableRecord(f"column {column!r} is empty but locations.table is keyed by it")
            found = self.location_table.get(key)
            if found is None:
                raise UnmappableRecord(f"column {column!r}: {key!r} is not in locations.table")
            return found
        if self.location_columns is not None:
            longitude = self.cells.number(values[self.location_columns[0]], "longitude")
            latitude = self.cells.number(values[self.location_columns[1]], "latitude")
            if longitude is _MISSING or latitude is _MISSING:
                return None
            if not (-180 <= longitude <= 180 and -90 <= latitude <= 90):
                raise UnmappableRecord(f"location ({longitude}, {latitude}) is outside longitude/latitude ranges")
            return _geo_point((longitude, latitude))
        return None

    def is_blank(self, values: Values) -> bool:
        """A record whose every cell is empty (e.g. the `;;;;` trailer lines of the UCI Italy file)."""
        return all(value is None or (isinstance(value, str) and not value.strip()) for value in values)

    def __call__(self, values: Values) -> list[Entity]:
        observed_at = self.observed_at(values)
        date_observed = {"type": "Property", "value": _date_time(observed_at)}
        location = self.location(values)
        entities = []
        for builder in self.builders:
            entity = builder.build(values, observed_at, date_observed, location)
            if entity is not None:
                entities.append(entity)
        return entities

    def translate_record(self, record: Mapping[str, Any]) -> list[Entity]:
        """Translate a record given as a dict (column name → value), e.g. one flat JSON object."""
        from agents.files.readers import record_values

        return self(record_values(record, self.columns, self.mapping.source.fields))


def _geo_point(point: tuple[float, float]) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [point[0], point[1]]}}


def compile_translator(mapping: FileMapping) -> Translator:
    """The translator of a mapping (compiled once, then called per record)."""
    return Translator(mapping)

"""Validation of keyValues entities against the official Smart Data Models JSON schemas, fully offline."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

SCHEMA_FILES: Mapping[str, str] = {
    "AirQualityObserved": "AirQualityObserved.schema.json",
    "WeatherObserved": "WeatherObserved.schema.json",
    "KeyPerformanceIndicator": "KeyPerformanceIndicator.schema.json",
}
"""Entity type → its official schema file in `smart_data_models/schemas/`."""

REMOTE_SCHEMA_FILES: Mapping[str, str] = {
    "https://smart-data-models.github.io/data-models/common-schema.json": "common-schema.json",
    "https://smart-data-models.github.io/dataModel.Environment/Environment-schema.json": (
        "Environment-schema.json"
    ),
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/Environment-schema.json": (
        "Environment-schema.json"
    ),
    "https://smart-data-models.github.io/dataModel.Weather/weather-schema.json": "weather-schema.json",
}
"""`$ref` URL → local copy; anything else is refused instead of fetched."""


@dataclass(frozen=True)
class Erratum:
    """One widening of an official schema property that an official example file needs."""

    entity_type: str
    attribute: str
    replacement: Mapping[str, Any]
    example: str
    reason: str


UPSTREAM_ERRATA: tuple[Erratum, ...] = (
    Erratum(
        "AirQualityObserved",
        "tsp",
        {"type": "number", "minimum": 0},
        "AirQualityObserved/example.json",
        "schema says integer, every official example has tsp 73.3 (a concentration, not a count)",
    ),
    Erratum(
        "AirQualityObserved",
        "windDirection",
        {"type": "number", "minimum": -180, "maximum": 360},
        "AirQualityObserved/example-normalized.jsonld",
        "schema says -180..180, the example has 186; Weather-Commons uses 0..360 for the same attribute",
    ),
    Erratum(
        "AirQualityObserved",
        "precipitation",
        {"anyOf": [{"type": "number", "minimum": 0}, {"type": "boolean"}]},
        "AirQualityObserved/example-normalized.json",
        "the NGSI-v2 example gives precipitation as Boolean false (its keyValues twin has 0)",
    ),
    Erratum(
        "KeyPerformanceIndicator",
        "dateNextCalculation",
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]},
        "KeyPerformanceIndicator/example-normalized.jsonld",
        "schema says date, the NGSI-LD example gives a DateTime",
    ),
)
"""The complete list of deviations from the verbatim official schemas."""


@dataclass(frozen=True)
class SchemaViolation:
    """A place where an entity breaks its schema: the attribute path and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _is_iso_datetime(value: object) -> bool:
    # The schemas say "date-time"; the official examples use ISO 8601 without a zone
    # ("2016-03-15T11:00:00"), which RFC 3339 would refuse, so any ISO 8601 date and time passes.
    if not isinstance(value, str):
        return True
    if "T" not in value and " " not in value:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def _is_uri(value: object) -> bool:
    return not isinstance(value, str) or _URI.match(value) is not None


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(_is_iso_datetime)
    checker.checks("uri")(_is_uri)
    return checker


@functools.cache
def load_schema_file(name: str) -> dict[str, Any]:
    """Return one schema file of the package data, parsed (cached: the files never change)."""
    text = resources.files("smart_data_models.schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _retrieve(uri: str) -> Resource[Any]:
    name = REMOTE_SCHEMA_FILES.get(uri.rstrip("#"))
    if name is None:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
    return Resource.from_contents(load_schema_file(name))


def _with_errata(schema: dict[str, Any], errata: Iterable[Erratum]) -> dict[str, Any]:
    patched = copy.deepcopy(schema)
    for erratum in errata:
        for part in patched.get("allOf", []):
            properties = part.get("properties", {})
            if erratum.attribute in properties:
                description = properties[erratum.attribute].get("description")
                properties[erratum.attribute] = {**erratum.replacement, "description": description}
    return patched


class SchemaValidator:
    """Validates keyValues entities of the known types against their official schemas."""

    def __init__(self, *, errata: Iterable[Erratum] = UPSTREAM_ERRATA) -> None:
        registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
        chosen = tuple(errata)
        self._validators = {
            entity_type: jsonschema.Draft202012Validator(
                _with_errata(load_schema_file(name), (e for e in chosen if e.entity_type == entity_type)),
                registry=registry,
                format_checker=_format_checker(),
            )
            for entity_type, name in SCHEMA_FILES.items()
        }

    @property
    def entity_types(self) -> frozenset[str]:
        """The entity types this validator has schemas for."""
        return frozenset(self._validators)

    def violations(self, entity_type: str, key_values: Mapping[str, Any]) -> list[SchemaViolation]:
        """Every place where `key_values` breaks the schema of `entity_type`, most precise first."""
        validator = self._validators.get(entity_type)
        if validator is None:
            return [SchemaViolation("type", f"no Smart Data Model schema for type {entity_type!r}")]
        found = []
        for error in validator.iter_errors(dict(key_values)):
            best = _precise(error)
            path = ".".join(str(p) for p in best.absolute_path) or _missing_field(best) or "(entity)"
            found.append(SchemaViolation(path, best.message))
        return sorted(found, key=lambda v: v.field)


def _precise(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a oneOf/anyOf failure, the sub-error of the branch the instance meant (GeoJSON by its `type`)."""
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return error
    meant = error.instance.get("type") if isinstance(error.instance, dict) else None
    for index, branch in enumerate(error.validator_value):
        enum = branch.get("properties", {}).get("type", {}).get("enum", []) if isinstance(branch, dict) else []
        if meant is not None and meant in enum:
            in_branch = [sub for sub in error.context if sub.schema_path and sub.schema_path[0] == index]
            if in_branch:
                return _precise(in_branch[0])
    best = jsonschema.exceptions.best_match(error.context)
    return best if best is not None and best.absolute_path != error.absolute_path else error


def _missing_field(error: jsonschema.ValidationError) -> str | None:
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value:
            if name not in error.instance:
                return str(name)
    return None


@functools.cache
def official_validator() -> SchemaValidator:
    """The validator with the official schemas and `UPSTREAM_ERRATA` (built once: it is immutable)."""
    return SchemaValidator()

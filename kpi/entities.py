"""KeyPerformanceIndicator entities (Smart Data Model, NGSI-LD normalized) from a definition, a window and a result.

Ids are deterministic, `urn:ngsi-ld:KeyPerformanceIndicator:<city>:<kpi>:<station>:<period>`:
`<period>` names the window (`2016`, `2016-03`) for monthly, yearly and custom windows; for the
short sliding windows (hour, rolling 8 h, day) it is the frequency (`hourly`, `daily`) and the
entity's history holds one `kpiValue` per window, stamped with the window's start. Nothing in
an entity depends on the clock, so recomputing a window yields the same entity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from kpi.catalogue import Calculator, KpiResult, Observations, latest_observation
from kpi.definitions import KpiDefinition
from kpi.windows import SERIES_KINDS, Window
from smart_data_models import format_timestamp, sanitise_id_part
from smart_data_models.models import KPI_CONTEXT

KPI_TYPE = "KeyPerformanceIndicator"
CALCULATED_BY = "climaborough KPI engine"
NO_VALUE = "insufficientData"
"""`kpiValue` when there is no data, or not enough by the coverage rule, to give a number."""

DYNAMIC_ATTRIBUTES = (
    "kpiValue", "currentStanding", "calculationPeriod", "dateNextCalculation", "updatedAt",
    "coverage", "provenance", "kpiDetails",
)  # fmt: skip
"""Attributes that change from one calculation to the next (the rest is written once)."""


@functools.lru_cache(maxsize=65536)
def station_name(source_id: str) -> str:
    """The last segment of a source entity id (`urn:ngsi-ld:AirQualityObserved:beijing:Dongsi` → `Dongsi`)."""
    return sanitise_id_part(source_id.rsplit(":", 1)[-1]) or "station"


def period_label(definition: KpiDefinition, window: Window) -> str:
    return definition.frequency if window.kind in SERIES_KINDS else window.label


def kpi_entity_id(definition: KpiDefinition, source_id: str, window: Window) -> str:
    return _entity_id(definition.city, definition.id, station_name(source_id), period_label(definition, window))


@functools.lru_cache(maxsize=65536)
def _entity_id(*parts: str) -> str:
    # Cached: a live engine builds the same few thousand ids (definition × station × period) over and over.
    return f"urn:ngsi-ld:{KPI_TYPE}:" + ":".join(sanitise_id_part(part) for part in parts)


def value_time(window: Window) -> datetime:
    """`observedAt` of a KPI value: the window's start for series, its end for period entities."""
    return window.start if window.kind in SERIES_KINDS else window.end


def _utc(moment: datetime) -> str:
    return _utc_text(moment.astimezone(UTC))


@functools.lru_cache(maxsize=4096)
def _utc_text(moment: datetime) -> str:
    # Keyed by the UTC time: local times equal on the wall but not in time (a DST fold) must not meet here.
    return format_timestamp(moment)


def _prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


@dataclass(frozen=True)
class KpiEntity:
    """A KPI entity to write: its id, the full entity and the part that changes per calculation."""

    id: str
    entity: dict[str, Any]

    @functools.cached_property
    def encoded(self) -> dict[str, bytes]:
        """Each dynamic attribute the entity has as JSON with sorted keys (made once: the writer compares
        them with what it sent and fingerprints windows with them several times per write)."""
        return {
            name: orjson.dumps(self.entity[name], option=orjson.OPT_SORT_KEYS)
            for name in DYNAMIC_ATTRIBUTES if name in self.entity
        }  # fmt: skip

    def dynamic(self) -> dict[str, Any]:
        """The entity with only the attributes that change between calculations."""
        keep = {"id", "type", "@context", *DYNAMIC_ATTRIBUTES}
        return {k: v for k, v in self.entity.items() if k in keep}


@dataclass(frozen=True, slots=True)
class WindowParts:
    """What the entities of every definition and station share for one window (computed once per window).

    The dicts are shared between entities: nothing may change them (writers copy what they amend).
    """

    observed_at: str
    calculation_period: dict[str, Any]
    date_next_calculation: dict[str, Any]
    provenance_window: dict[str, Any]


_WINDOW_PARTS: dict[tuple[str, float, float, tzinfo | None], WindowParts] = {}
WINDOW_PARTS_KEPT = 4096


def window_parts(window: Window) -> WindowParts:
    """The window's `observedAt`, `calculationPeriod`, `dateNextCalculation` and provenance `window`."""
    # Keyed by instants, not by the window: two local times equal on the wall (the hour a DST change
    # repeats) compare and hash alike.
    key = (window.kind, window.start.timestamp(), window.end.timestamp(), window.start.tzinfo)
    found = _WINDOW_PARTS.get(key)
    if found is None:
        if len(_WINDOW_PARTS) >= WINDOW_PARTS_KEPT:
            _WINDOW_PARTS.clear()
        found = _WINDOW_PARTS[key] = _window_parts(window)
    return found


def _window_parts(window: Window) -> WindowParts:
    next_window = window.following()
    return WindowParts(
        _utc(value_time(window)),
        _prop({"from": window.first_day.isoformat(), "to": window.last_day.isoformat()}),
        _prop({"@type": "Date", "@value": next_window.first_day.isoformat()}),
        {"kind": window.kind, "start": window.start.isoformat(), "end": window.end.isoformat(), "label": window.label},
    )


def measured_attributes(definition: KpiDefinition, window: Window, result: KpiResult) -> dict[str, Any]:
    """`kpiValue` and, where they apply, `currentStanding`, `coverage`, `kpiDetails`: all at the window's time.

    These are what a window adds to a series entity's history (the backfill writes only them).
    """
    observed_at = window_parts(window).observed_at
    # NGSI-LD has no null Property value: a KPI without a value says why in words.
    value = result.value if result.value is not None else NO_VALUE
    kpi_value: dict[str, Any] = {"type": "Property", "value": value, "observedAt": observed_at}
    if definition.unit and isinstance(result.value, int | float) and not isinstance(result.value, bool):
        kpi_value["unitCode"] = definition.unit
    measured = {"kpiValue": kpi_value}
    standing = definition.standing(result.value)
    if standing is not None:
        measured["currentStanding"] = {"type": "Property", "value": standing, "observedAt": observed_at}
    if result.coverage is not None:
        measured["coverage"] = {"type": "Property", "value": result.coverage.as_value(), "observedAt": observed_at}
    if result.details:
        measured["kpiDetails"] = {"type": "Property", "value": result.details, "observedAt": observed_at}
    return measured


@dataclass(frozen=True, slots=True)
class PreparedDefinition:
    """What every entity of one definition shares, read once: the definition's properties are slow to
    reach (pydantic private attributes) and the live engine builds thousands of entities a second."""

    definition: KpiDefinition
    calculator: Calculator
    params: Any
    tz: tzinfo
    static: dict[str, Any]
    """The attributes that never change, but for the station-specific ones."""
    provenance: dict[str, Any]
    """`provenance` without the window and the sources."""


_PREPARED: dict[int, PreparedDefinition] = {}


def prepared(definition: KpiDefinition) -> PreparedDefinition:
    """The definition's shared parts (cached per definition object)."""
    found = _PREPARED.get(id(definition))
    if found is not None and found.definition is definition:
        return found
    static: dict[str, Any] = {
        "type": KPI_TYPE,
        "description": _prop(definition.description or definition.name),
        "category": _prop(list(definition.category)),
        "organization": _prop(definition.organization),
        "process": _prop(definition.process or definition.name),
        "calculatedBy": _prop(CALCULATED_BY),
        "calculationMethod": _prop("automatic"),
        "calculationFrequency": _prop(definition.frequency),
        "calculationFormula": _prop(definition.formula),
        "aggregatedData": _prop([{"entityType": definition.source.type, "attrs": list(definition.source.attributes)}]),
    }
    provenance = {
        "definition": definition.id,
        "version": str(definition.version),
        "calculator": definition.calculator,
        "parameters": definition.parameters_json,
    }
    found = PreparedDefinition(
        definition, definition.calculator_impl, definition.params, definition.tz, static, provenance
    )  # fmt: skip
    _PREPARED[id(definition)] = found
    return found


def kpi_entity(
    definition: KpiDefinition,
    source_id: str,
    window: Window,
    result: KpiResult,
    *,
    latest_observation: datetime | None,
) -> KpiEntity:
    """The KeyPerformanceIndicator entity of one definition, source entity and window."""
    shared = prepared(definition)
    entity_id = kpi_entity_id(definition, source_id, window)
    station = station_name(source_id)
    parts = window_parts(window)
    measured = measured_attributes(definition, window, result)
    entity: dict[str, Any] = {
        "id": entity_id,
        **shared.static,
        "name": _prop(f"{definition.name} — {station}"),
        "area": _prop(station),
        "refSourceEntity": {"type": "Relationship", "object": source_id},
        "kpiValue": measured["kpiValue"],
        "calculationPeriod": parts.calculation_period,
        "dateNextCalculation": parts.date_next_calculation,
        "provenance": _prop({**shared.provenance, "window": parts.provenance_window, "sources": [source_id]}),
        "@context": [KPI_CONTEXT],
    }
    if latest_observation is not None:
        entity["updatedAt"] = _prop({"@type": "DateTime", "@value": _utc(latest_observation)})
    entity.update(measured)
    if definition.theme:
        entity["theme"] = _prop(definition.theme)
    return KpiEntity(entity_id, entity)


def calculate_kpi(
    definition: KpiDefinition, source_id: str, observations: Observations, window: Window
) -> KpiEntity:
    """Evaluate `definition` on one source entity's observations over `window` and build its entity."""
    shared = prepared(definition)
    result = shared.calculator.evaluate(shared.params, observations, window, shared.tz)
    latest = latest_observation(observations, window.start, window.end)
    return kpi_entity(definition, source_id, window, result, latest_observation=latest)

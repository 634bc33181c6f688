"""Backfill: compute every window of every definition over a past period (`climaborough kpi run --since --until`).

Reading: per source entity the history is read once for the whole period (plus what the
calculators look back): straight from the broker's TRoE tables when `kpi_database_url` is set
(several times cheaper for broker and PostgreSQL), else from the temporal API.

Evaluating: a definition with a vectorised form (`kpi.vectorised`: the air-quality indices,
daily means, yearly limits and means) computes all its windows at once over hourly arrays,
with exactly the scalar calculators' results; any other definition evaluates each window with
its scalar calculator (`evaluate_windows`). The newest window of a series is always a whole
entity from the scalar calculator.

Writing: period entities (month, year, custom) by batch upsert. A series entity (hour,
rolling 8 h, day) gets its newest window by batch upsert and every older window appended to its
history, a few large requests in flight. An older window carries `kpiValue` (with `unitCode`)
and, where the calculator has a coverage rule, `coverage`: what a user of the history needs.
`currentStanding` follows from `kpiValue` and the definition's thresholds, and `kpiDetails` (band,
dominant pollutant, concentrations) from the source's own history; the entity's current value
carries both. Each appended instance has the instanceId the live writer gives that window
(`kpi.writer.history_instance_id` of entity, attribute and observedAt), so either one finds
and replaces what the other wrote. A window already in the history with the same value is not
sent again; one stored with another value is replaced (its stored instances at that time are
deleted, then the new ones appended), so running a backfill twice leaves the same history and a
recomputed window never leaves two values at one time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from kpi.definitions import KpiDefinition
from kpi.engine import KpiEngine
from kpi.entities import (
    NO_VALUE,
    SERIES_KINDS,
    KpiEntity,
    calculate_kpi,
    kpi_entity,
    value_time,
)
from kpi.history import (
    HistoryArrays,
    history_arrays,
    read_history,
    read_history_troe,
    read_instances,
    tenant_database_url,
)
from kpi.observations import SourceObservations, from_micros, to_micros
from kpi.vectorised import SeriesValues, hour_windows, period_results, series_values, vectorised
from kpi.windows import Window, window_at, windows_between
from kpi.writer import history_instance_id
from ngsi.client import AsyncBrokerClient
from ngsi.errors import ResourceNotFound
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

APPEND_CHUNK = 20_000
"""Older windows per temporal append (each one or two instances)."""
APPENDS_IN_FLIGHT = 2
"""Temporal appends of one series entity sent at once."""
READ_SLICE_HOURS = 999
"""Hours of history per temporal request: hourly data fits the broker's 1000 instances per attribute
(a broker that still cuts an answer is followed where it stopped; slices the broker would cut cost
it more than the extra requests)."""
STORED_ATTRIBUTES = ("kpiValue", "coverage", "currentStanding", "kpiDetails")
"""What a replaced window loses from the history (the live engine writes all four)."""


@dataclass
class BackfillReport:
    """What a backfill did."""

    sources: int = 0
    windows: int = 0
    entities_written: int = 0
    history_instances: int = 0
    replaced: int = 0


Progress = Callable[[int, int], None]
"""`progress(done, total)`, called after each (source entity, definition) pair."""


@dataclass(frozen=True)
class SeriesOutcome:
    """A series KPI of one source over a period: the newest window as a whole entity, the older ones' values."""

    entity_id: str
    latest: KpiEntity
    older: SeriesValues

    @property
    def windows(self) -> int:
        return len(self.older.values) + 1


class SourceHistory:
    """One source's history for a backfill: arrays for the vectorised calculators, observations for the scalar ones."""

    def __init__(self, arrays: HistoryArrays, covered_from: datetime) -> None:
        self.arrays = arrays
        self.covered_from = covered_from
        self._whole: SourceObservations | None = None

    def observations(self, start: datetime | None = None, end: datetime | None = None) -> SourceObservations:
        """The observations in `[start, end)` (all of them without bounds) as the scalar calculators take them."""
        if start is None and end is None and self._whole is not None:
            return self._whole
        lo, hi = to_micros(start) if start else None, to_micros(end) if end else None
        series = {}
        for name, (times, values) in self.arrays.items():
            first = 0 if lo is None else int(np.searchsorted(times, lo))
            last = len(times) if hi is None else int(np.searchsorted(times, hi))
            series[name] = [(from_micros(t), v) for t, v in zip(times[first:last].tolist(), values[first:last].tolist(),
                                                                 strict=True)]  # fmt: skip
        observations = SourceObservations()
        observations.seed(series, self.covered_from, keep_datetimes=True)
        if start is None and end is None:
            self._whole = observations
        return observations


def evaluate_windows(
    definition: KpiDefinition, source_id: str, observations: SourceObservations, since: datetime, until: datetime
) -> list[tuple[Window, KpiEntity]]:
    """Every window of `definition` overlapping `[since, until)` as whole entities, window by window (the reference)."""
    windows = windows_between(definition.window.kind, since, until, definition.tz, custom=definition.custom_bounds)
    return [(window, _scalar_entity(definition, source_id, observations, window)) for window in windows]


def _scalar_entity(
    definition: KpiDefinition, source_id: str, observations: SourceObservations, window: Window
) -> KpiEntity:
    start, end = definition.calculator_impl.span(definition.params, window, definition.tz)
    return calculate_kpi(definition, source_id, observations.observations(definition.source.attributes, start, end),
                         window)  # fmt: skip


def _series_windows(definition: KpiDefinition, since: datetime, until: datetime) -> Iterator[Window]:
    return windows_between(definition.window.kind, since, until, definition.tz, custom=definition.custom_bounds)


def _scalar_series(
    definition: KpiDefinition, observations: SourceObservations, windows: list[Window]
) -> SeriesValues:
    calculator, params, tz = definition.calculator_impl, definition.params, definition.tz
    stamps, values, coverages = [], [], []
    for window in windows:
        start, end = calculator.span(params, window, tz)
        result = calculator.evaluate(params, observations.observations(definition.source.attributes, start, end),
                                     window, tz)  # fmt: skip
        stamps.append(format_timestamp(value_time(window).astimezone(UTC)))
        values.append(result.value)
        coverages.append(result.coverage)
    return SeriesValues(stamps, values, coverages)


def evaluate_series(
    definition: KpiDefinition, source_id: str, history: SourceHistory, since: datetime, until: datetime
) -> SeriesOutcome | None:
    """A series definition (hour, rolling 8 h, day) over `[since, until)` for one source (pure, CPU only)."""
    every = series_values(definition, history.arrays, since, until)
    if every is not None:  # vectorised: every window, the newest one included
        if not every.values:
            return None
        older = SeriesValues(every.observed_at[:-1], every.values[:-1], every.coverages[:-1])
        newest = datetime.fromisoformat(every.observed_at[-1])
        last = window_at(definition.window.kind, newest, definition.tz)
        span = definition.calculator_impl.span(definition.params, last, definition.tz)
        observations = history.observations(*span)
    else:
        windows = list(_series_windows(definition, since, until))
        if not windows:
            return None
        observations = history.observations()
        older, last = _scalar_series(definition, observations, windows[:-1]), windows[-1]
    latest = _scalar_entity(definition, source_id, observations, last)
    return SeriesOutcome(latest.id, latest, older)


def evaluate_periods(
    definition: KpiDefinition, source_id: str, history: SourceHistory, since: datetime, until: datetime
) -> list[KpiEntity]:
    """A period definition (month, year, custom) over `[since, until)` for one source: one entity per window."""
    windows = list(_series_windows(definition, since, until))
    results = period_results(definition, history.arrays, windows) if vectorised(definition) else None
    if results is None:
        observations = history.observations()
        return [_scalar_entity(definition, source_id, observations, window) for window in windows]
    return [
        kpi_entity(definition, source_id, window, result, latest_observation=latest)
        for window, (result, latest) in zip(windows, results, strict=True)
    ]


def _data_span(definition: KpiDefinition, since: datetime, until: datetime) -> tuple[datetime, datetime]:
    windows = list(_series_windows(definition, since, until)) if definition.window.kind != "hour" else []
    if definition.window.kind == "hour":
        first, count = hour_windows(since, until, definition.tz)
        windows = [first, window_at("hour", first.start + max(0, count - 1) * timedelta(hours=1), definition.tz)]
    if not windows:
        return since, since
    calculator = definition.calculator_impl
    first_span = calculator.span(definition.params, windows[0], definition.tz)
    last_span = calculator.span(definition.params, windows[-1], definition.tz)
    return min(first_span[0], last_span[0]), max(first_span[1], last_span[1])


async def backfill(
    engine: KpiEngine, since: datetime, until: datetime, *, progress: Progress | None = None, concurrency: int = 4
) -> BackfillReport:
    """Compute and write every KPI of `engine.definitions` for the windows overlapping `[since, until)`."""
    report = BackfillReport()
    database_url = engine.settings.kpi_database_url
    if database_url is not None:
        database_url = tenant_database_url(database_url, engine.settings.tenant)
    by_source: dict[str, list[KpiDefinition]] = {}
    for definition in engine.definitions:
        for source_id in await engine.sources_of(definition):
            by_source.setdefault(source_id, []).append(definition)
    pairs = sorted(by_source.items())
    total = sum(len(definitions) for _, definitions in pairs)
    done = 0
    report.sources = len(pairs)
    semaphore = asyncio.Semaphore(concurrency)

    async def one_source(source_id: str, definitions: list[KpiDefinition]) -> None:
        nonlocal done
        async with semaphore:
            groups: dict[tuple[str, str | None], list[KpiDefinition]] = {}
            for definition in definitions:
                groups.setdefault((definition.source.type, definition.source.ld_context), []).append(definition)
            for (entity_type, context), group in groups.items():
                spans = [_data_span(d, since, until) for d in group]
                attributes = sorted({a for d in group for a in d.source.attributes})
                start, end = min(s for s, _ in spans), max(e for _, e in spans)
                if database_url is not None:
                    arrays = await read_history_troe(database_url, source_id, attributes, start, end)
                else:
                    read = await read_history(
                        engine.client_for(context), entity_type=entity_type, attributes=attributes,
                        start=start, end=end, entity_ids=[source_id], slice_hours=READ_SLICE_HOURS,
                    )  # fmt: skip
                    arrays = history_arrays(read.get(source_id, {}))
                    del read  # the tuples would make every garbage collection of the evaluation slow
                history = SourceHistory(arrays, since)
                for definition in group:
                    if definition.window.kind in SERIES_KINDS:
                        series = await asyncio.to_thread(evaluate_series, definition, source_id, history, since, until)
                        if series is not None:
                            report.windows += series.windows
                            await _write_series(engine, definition, series, report)
                    else:
                        entities = await asyncio.to_thread(
                            evaluate_periods, definition, source_id, history, since, until
                        )
                        report.windows += len(entities)
                        if entities:
                            report.entities_written += await engine.writer.write(entities)
                    done += 1
                    if progress is not None:
                        progress(done, total)

    if progress is not None:
        progress(0, total)
    await asyncio.gather(*(one_source(source_id, definitions) for source_id, definitions in pairs))
    return report


def history_instances(definition: KpiDefinition, entity_id: str, older: SeriesValues) -> dict[str, list[Any]]:
    """The temporal-append body (without @context) of the older windows: attribute → instances."""
    unit = definition.unit
    kpi_values: list[dict[str, Any]] = []
    coverages: list[dict[str, Any]] = []
    for stamp, value, coverage in zip(older.observed_at, older.values, older.coverages, strict=True):
        instance: dict[str, Any] = {
            "type": "Property", "value": NO_VALUE if value is None else value, "observedAt": stamp,
            "instanceId": history_instance_id(entity_id, "kpiValue", stamp),
        }  # fmt: skip
        if unit and isinstance(value, int | float) and not isinstance(value, bool):
            instance["unitCode"] = unit
        kpi_values.append(instance)
        if coverage is not None:
            coverages.append({
                "type": "Property", "value": coverage.as_value(), "observedAt": stamp,
                "instanceId": history_instance_id(entity_id, "coverage", stamp),
            })  # fmt: skip
    body: dict[str, list[Any]] = {"kpiValue": kpi_values}
    if coverages:
        body["coverage"] = coverages
    return body


async def _write_series(
    engine: KpiEngine, definition: KpiDefinition, series: SeriesOutcome, report: BackfillReport
) -> None:
    client = engine.writer.client
    older = series.older
    stored: dict[str, tuple[Any, list[tuple[str, str]]]] = {}
    if older.observed_at:
        stored = await _stored_series(client, series.entity_id, older.observed_at[0], older.observed_at[-1])
    # The newest window first: it creates the entity (or goes to its history if the broker has newer).
    report.entities_written += await engine.writer.write([series.latest])
    keep: list[int] = []
    replaced: list[tuple[str, str]] = []
    for index, (stamp, value) in enumerate(zip(older.observed_at, older.values, strict=True)):
        wanted = NO_VALUE if value is None else value
        known = stored.get(stamp)
        if known is None:
            keep.append(index)
        elif known[0] != wanted:
            keep.append(index)
            replaced.extend(known[1])
    if not keep:
        return
    if replaced:
        await _delete_instances(client, series.entity_id, replaced)
        report.replaced += sum(1 for i in keep if older.observed_at[i] in stored)
    selected = SeriesValues([older.observed_at[i] for i in keep], [older.values[i] for i in keep],
                            [older.coverages[i] for i in keep])  # fmt: skip
    limit = asyncio.Semaphore(APPENDS_IN_FLIGHT)

    async def append(first: int) -> None:
        chunk = SeriesValues(selected.observed_at[first : first + APPEND_CHUNK],
                             selected.values[first : first + APPEND_CHUNK],
                             selected.coverages[first : first + APPEND_CHUNK])  # fmt: skip
        body: dict[str, Any] = await asyncio.to_thread(history_instances, definition, series.entity_id, chunk)
        body["@context"] = [KPI_CONTEXT]
        async with limit:
            await client.temporal_append(series.entity_id, body)

    await asyncio.gather(*(append(first) for first in range(0, len(keep), APPEND_CHUNK)))
    report.history_instances += len(keep)


async def _stored_series(
    client: AsyncBrokerClient, entity_id: str, first: str, last: str
) -> dict[str, tuple[Any, list[tuple[str, str]]]]:
    """observedAt (as written) → (kpiValue, the (attribute, instanceId) of every history instance at that time)."""
    start = datetime.fromisoformat(first.replace("Z", "+00:00"))
    end = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(milliseconds=1)
    instances = await read_instances(client, entity_id, STORED_ATTRIBUTES, start, end, slice_hours=READ_SLICE_HOURS)
    stored: dict[str, tuple[Any, list[tuple[str, str]]]] = {}
    for attribute, rows in instances.items():
        for stamp, value, instance_id in rows:
            current = stored.setdefault(stamp, (None, []))
            if attribute == "kpiValue":
                current = stored[stamp] = (value, current[1])
            current[1].append((attribute, instance_id))
    return stored


async def _delete_instances(client: AsyncBrokerClient, entity_id: str, instances: list[tuple[str, str]]) -> None:
    """Delete history instances (GS CIM 009 5.6.15), a few at a time; one already gone is fine."""
    limit = asyncio.Semaphore(8)

    async def delete(attribute: str, instance_id: str) -> None:
        async with limit:
            try:
                await client.delete_temporal_instance(entity_id, attribute, instance_id)
            except ResourceNotFound:
                pass

    await asyncio.gather(*(delete(attribute, instance_id) for attribute, instance_id in instances))

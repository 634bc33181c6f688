"""Backfill: compute every window of every definition over a past period (`climaborough kpi run --since --until`).

Per source entity the history is read once for the whole period (plus what the calculators
look back), each window is evaluated on its own slice, and the results are written:
period entities (month, year, custom) by batch upsert; series entities (hour, rolling 8 h, day)
as one current-state upsert plus their past values appended to the entity's history. Values
already in that history (same window, same value) are not written again, so running a backfill
twice leaves the same history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kpi.definitions import KpiDefinition
from kpi.engine import KpiEngine
from kpi.entities import KPI_TYPE, SERIES_KINDS, KpiEntity, calculate_kpi, kpi_entity_id, measured_attributes
from kpi.history import read_history
from kpi.observations import SourceObservations
from kpi.windows import Window, windows_between
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

APPEND_CHUNK = 5000
READ_SLICE_HOURS = 24 * 366
"""History is read a year per request (a broker that cuts an answer is followed where it stopped)."""
_ABSENT = object()


@dataclass
class BackfillReport:
    """What a backfill did."""

    sources: int = 0
    windows: int = 0
    entities_written: int = 0
    history_instances: int = 0


Progress = Callable[[int, int], None]
"""`progress(done, total)`, called after each (source entity, definition) pair."""


def evaluate_windows(
    definition: KpiDefinition, source_id: str, observations: SourceObservations, since: datetime, until: datetime
) -> list[tuple[Window, KpiEntity]]:
    """Every window of `definition` overlapping `[since, until)` for one source entity (pure, CPU only).

    For series KPIs (hour, rolling 8 h, day) only the last window is a whole entity; the older ones
    carry just the attributes their window adds to the entity's history (`measured_attributes`).
    """
    calculator = definition.calculator_impl
    params, tz, attributes = definition.params, definition.tz, definition.source.attributes
    windows = list(windows_between(definition.window.kind, since, until, tz, custom=definition.custom_bounds))
    series_id = kpi_entity_id(definition, source_id, windows[0]) if windows and definition.window.kind in SERIES_KINDS \
        else None  # fmt: skip
    results = []
    last = len(windows) - 1
    for index, window in enumerate(windows):
        start, end = calculator.span(params, window, tz)
        window_observations = observations.observations(attributes, start, end)
        if series_id is not None and index < last:
            result = calculator.evaluate(params, window_observations, window, tz)
            results.append((window, KpiEntity(series_id, measured_attributes(definition, window, result))))
        else:
            results.append((window, calculate_kpi(definition, source_id, window_observations, window)))
    return results


def _data_span(definition: KpiDefinition, since: datetime, until: datetime) -> tuple[datetime, datetime]:
    windows = list(windows_between(definition.window.kind, since, until, definition.tz,
                                   custom=definition.custom_bounds))  # fmt: skip
    if not windows:
        return since, since
    calculator = definition.calculator_impl
    first = calculator.span(definition.params, windows[0], definition.tz)
    last = calculator.span(definition.params, windows[-1], definition.tz)
    return min(first[0], last[0]), max(first[1], last[1])


async def backfill(
    engine: KpiEngine, since: datetime, until: datetime, *, progress: Progress | None = None, concurrency: int = 4
) -> BackfillReport:
    """Compute and write every KPI of `engine.definitions` for the windows overlapping `[since, until)`."""
    report = BackfillReport()
    pairs: list[tuple[str, list[KpiDefinition]]] = []
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
                history = await read_history(
                    engine.client_for(context), entity_type=entity_type, attributes=attributes,
                    start=min(s for s, _ in spans), end=max(e for _, e in spans), entity_ids=[source_id],
                    slice_hours=READ_SLICE_HOURS,
                )  # fmt: skip
                observations = SourceObservations()
                observations.seed(history.get(source_id, {}), since, keep_datetimes=True)
                del history  # the tuples would make every garbage collection of the evaluation slow
                for definition in group:
                    results = await asyncio.to_thread(
                        evaluate_windows, definition, source_id, observations, since, until
                    )
                    report.windows += len(results)
                    await _write(engine, definition, results, report)
                    done += 1
                    if progress is not None:
                        progress(done, total)

    if progress is not None:
        progress(0, total)
    await asyncio.gather(*(one_source(source_id, definitions) for source_id, definitions in pairs))
    return report


async def _write(
    engine: KpiEngine, definition: KpiDefinition, results: list[tuple[Window, KpiEntity]], report: BackfillReport
) -> None:
    if not results:
        return
    if definition.window.kind not in SERIES_KINDS:
        report.entities_written += await engine.writer.write([kpi for _, kpi in results])
        return
    latest_window, latest = results[-1]
    existing = await _stored_series(engine, latest.id, results[0][0].start, latest_window.end)
    # The newest window first: it creates the entity (or goes to its history if the broker has newer).
    report.entities_written += await engine.writer.write([latest])
    older = [kpi for _, kpi in results[:-1] if existing.get(kpi.entity["kpiValue"]["observedAt"], _ABSENT)
             != kpi.entity["kpiValue"]["value"]]  # fmt: skip
    for start in range(0, len(older), APPEND_CHUNK):
        await engine.writer.append_history(latest.id, older[start : start + APPEND_CHUNK])
    report.history_instances += len(older)


async def _stored_series(engine: KpiEngine, entity_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """observedAt (as written) → value of the kpiValue instances already in the entity's history."""
    history = await read_history(
        engine.client_for(KPI_CONTEXT), entity_type=KPI_TYPE, attributes=["kpiValue"], start=start, end=end,
        entity_ids=[entity_id], numeric_only=False,
    )  # fmt: skip
    series = history.get(entity_id, {}).get("kpiValue", [])
    return {format_timestamp(moment): value for moment, value in series}

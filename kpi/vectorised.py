"""Every window of a definition at once: a source's hourly values as numpy arrays and vectorised calculators.

The backfill evaluates tens of thousands of windows per source; calling the scalar calculator
per window costs hundreds of microseconds each. Here the source's observations become one array
per attribute on a grid of whole UTC hours (NaN = no value) and each calculator runs over all
windows with array operations that perform the same floating-point operations in the same order
as the scalar calculators (sums left to right, Python's `round` where the scalar rounds), so
every window gets exactly the scalar value (tests/kpi/test_backfill_vectorised.py checks it on
real data).

Vectorised: `eea_index`, `caqi`, `us_aqi` (hour windows), `daily_mean` (day windows),
`limit_exceedances` and `annual_mean` (year windows). Everything else — the generic calculators,
rolling 8-hour, month and custom windows, sources whose values are not on whole hours, and time
zones whose UTC offset changes in the period (daylight saving: the scalar calculators do local
wall-clock arithmetic there) — returns None and the backfill uses the scalar loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any

import numpy as np

from kpi.calculators.averaging import hours_in_year, sequential_sums, trailing_8h_means
from kpi.calculators.caqi import caqi_indices
from kpi.calculators.eaqi import eea_index_levels
from kpi.calculators.us_aqi import MOLAR_VOLUME_25C, MOLECULAR_WEIGHTS, nowcasts, sub_indices
from kpi.catalogue import (
    COVERAGE_RULE,
    MICROGRAMS_PER_CUBIC_METRE_FACTOR,
    Coverage,
    KpiResult,
)
from kpi.definitions import KpiDefinition
from kpi.history import HistoryArrays
from kpi.observations import from_micros, to_micros
from kpi.windows import HOUR, Window, window_at, windows_between
from smart_data_models import default_unit_code

HOUR_MICROS = 3_600_000_000
US_AQI_METRICS = ("pm25_24h", "pm10_24h", "o3_1h", "o3_8h", "no2_1h", "so2_1h", "co_8h")
"""In the order `UsAqiCalculator.evaluate` builds them (a tie goes to the first)."""


@dataclass(frozen=True)
class HourlyGrid:
    """One array per attribute over consecutive whole UTC hours from `start` (µs since the epoch)."""

    start: int
    length: int
    values: dict[str, np.ndarray]

    def index(self, moment: datetime) -> int | None:
        """The element of the hour starting at `moment`, None when `moment` is not a grid hour."""
        offset = to_micros(moment) - self.start
        return offset // HOUR_MICROS if offset % HOUR_MICROS == 0 else None

    def moment(self, index: int) -> datetime:
        return from_micros(self.start + index * HOUR_MICROS)


@lru_cache(maxsize=64)
def steady_offset(tz: tzinfo, start: datetime, end: datetime) -> bool:
    """True when `tz` keeps one whole-hour UTC offset over `[start, end]` (checked every 6 hours)."""
    offsets = set()
    moment = start
    while moment < end:
        offsets.add(moment.astimezone(tz).utcoffset())
        moment += timedelta(hours=6)
    offsets.add(end.astimezone(tz).utcoffset())
    if len(offsets) != 1:
        return False
    offset = offsets.pop()
    return offset is not None and offset % HOUR == timedelta(0)


def hourly_grid(history: HistoryArrays, attributes: Sequence[str], start: datetime, end: datetime) -> HourlyGrid | None:
    """The attributes' values in `[start, end)` on an hour grid; None if `start` or a value is not on a whole hour."""
    first, stop = to_micros(start), to_micros(end)
    if first % HOUR_MICROS:
        return None
    length = max(0, -(-(stop - first) // HOUR_MICROS))
    values: dict[str, np.ndarray] = {}
    for name in attributes:
        grid = np.full(length, np.nan)
        if name in history:
            times, numbers = history[name]
            lo, hi = np.searchsorted(times, [first, stop], side="left")
            offsets = times[lo:hi] - first
            if np.any(offsets % HOUR_MICROS):
                return None
            grid[offsets // HOUR_MICROS] = numbers[lo:hi]
        values[name] = grid
    return HourlyGrid(first, length, values)


def utc_stamps(micros: np.ndarray) -> list[str]:
    """`format_timestamp` of many instants (µs since the epoch): ISO 8601 UTC with milliseconds and `Z`."""
    text = np.datetime_as_string(micros.astype("datetime64[us]").astype("datetime64[ms]"), unit="ms")
    return [stamp + "Z" for stamp in text.tolist()]


def exact_round(values: np.ndarray, digits: int) -> np.ndarray:
    """Python's `round(x, digits)` of every element (NaN stays NaN).

    np.round scales, rounds to an integer k and divides: k / 10**digits is the double nearest
    to the decimal, which is what Python's correctly rounded `round` gives, unless the scaled
    value sits within a hair of a half (a tie, or a double-rounding victim) or is huge; those
    few go to Python's `round`.
    """
    scale = 10.0**digits
    scaled = values * scale
    result = np.round(values, digits)
    with np.errstate(invalid="ignore"):
        doubtful = (np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-6) | (np.abs(scaled) > 1e9)
    for index in np.flatnonzero(doubtful):
        result[index] = round(float(values[index]), digits)
    return result


def _listed(values: np.ndarray) -> list[Any]:
    """Plain Python numbers, None for NaN."""
    return [None if v != v else v for v in values.tolist()]


def _factor(attribute: str, units: dict[str, str]) -> float:
    code = units.get(attribute) or default_unit_code(attribute) or "GQ"
    return MICROGRAMS_PER_CUBIC_METRE_FACTOR[code]


def _scaled_factor(attribute: str, units: dict[str, str]) -> float | None:
    """The factor `kpi.catalogue._scaled` applies (None: the value is taken as it is)."""
    code = units.get(attribute) or default_unit_code(attribute)
    return MICROGRAMS_PER_CUBIC_METRE_FACTOR.get(code) if code else None


# -- hour windows: indices ----------------------------------------------------------------------


def _index_concentrations(params: Any, grid: HourlyGrid, first: int, count: int) -> dict[str, np.ndarray]:
    """`_HourlyIndex.concentrations` of every hour: negatives dropped, in µg/m³, rounded to 6 digits."""
    result = {}
    for pollutant in params.pollutants:
        hourly = grid.values[pollutant][first : first + count]
        hourly = np.where(hourly >= 0, hourly * _factor(pollutant, params.units), np.nan)
        result[pollutant] = exact_round(hourly, 6)
    return result


def _eea_values(params: Any, grid: HourlyGrid, first: int, count: int) -> list[Any]:
    levels = eea_index_levels(_index_concentrations(params, grid, first, count)).tolist()
    return [level or None for level in levels]


def _caqi_values(params: Any, grid: HourlyGrid, first: int, count: int) -> list[Any]:
    return _listed(exact_round(caqi_indices(_index_concentrations(params, grid, first, count)), 1))


def _ppm(pollutant: str, micrograms: np.ndarray) -> np.ndarray:
    # ugm3_to_ppb(pollutant, c) / 1000, with the same operations.
    return micrograms * MOLAR_VOLUME_25C / MOLECULAR_WEIGHTS[pollutant] / 1000


def _us_aqi_values(params: Any, grid: HourlyGrid, first: int, count: int) -> list[Any]:
    hourly = {}
    for pollutant in params.pollutants:
        raw = grid.values[pollutant]
        hourly[pollutant] = np.where(raw >= 0, raw * _factor(pollutant, params.units), np.nan)
    metrics: dict[str, np.ndarray] = {}
    if "pm25" in hourly:
        metrics["pm25_24h"] = nowcasts(hourly["pm25"], "pm25_24h")
    if "pm10" in hourly:
        metrics["pm10_24h"] = nowcasts(hourly["pm10"], "pm10_24h")
    if "o3" in hourly:
        ppm = _ppm("o3", hourly["o3"])
        metrics["o3_1h"] = ppm
        metrics["o3_8h"] = trailing_8h_means(ppm)[0]
    for gas in ("no2", "so2"):
        if gas in hourly:
            metrics[f"{gas}_1h"] = hourly[gas] * MOLAR_VOLUME_25C / MOLECULAR_WEIGHTS[gas]
    if "co" in hourly:
        metrics["co_8h"] = trailing_8h_means(_ppm("co", hourly["co"]))[0]
    best = np.full(count, np.nan)
    beyond = np.zeros(count, dtype=bool)
    for metric in US_AQI_METRICS:
        if metric not in metrics:
            continue
        used = exact_round(metrics[metric][first : first + count], 4)
        aqi, over = sub_indices(metric, used)
        best = np.fmax(best, aqi)
        beyond |= over
    return [None if over or value != value else int(value) for value, over in zip(best.tolist(), beyond.tolist(),
                                                                                  strict=True)]  # fmt: skip


HOURLY: dict[str, Callable[[Any, HourlyGrid, int, int], list[Any]]] = {
    "eea_index": _eea_values,
    "caqi": _caqi_values,
    "us_aqi": _us_aqi_values,
}


# -- day windows ----------------------------------------------------------------------------------


def _day_rows(grid: HourlyGrid, attribute: str, windows: Sequence[Window]) -> np.ndarray | None:
    """One row per window with its hours' values (NaN-padded); None when a bound is off the grid."""
    bounds = [(grid.index(w.start), grid.index(w.end)) for w in windows]
    if any(lo is None or hi is None for lo, hi in bounds):
        return None
    width = max((hi - lo for lo, hi in bounds), default=0)  # type: ignore[operator]
    rows = np.full((len(windows), max(width, 1)), np.nan)
    series = grid.values[attribute]
    for row, (lo, hi) in enumerate(bounds):
        rows[row, : hi - lo] = series[lo:hi]  # type: ignore[operator]
    return rows


def _daily_mean_results(params: Any, grid: HourlyGrid, windows: Sequence[Window]) -> list[KpiResult] | None:
    rows = _day_rows(grid, params.attribute, windows)
    if rows is None:
        return None
    factor = _scaled_factor(params.attribute, params.units)
    if factor is not None:
        rows = rows * factor
    valid = np.sum(~np.isnan(rows), axis=1).tolist()
    sums = sequential_sums(rows).tolist()
    rule = f"{params.min_hours} of 24 hours"
    results = []
    for count, total in zip(valid, sums, strict=True):
        if count == 0:
            results.append(KpiResult(None, Coverage(0, 24, False, rule)))
            continue
        mean = total / count if count >= params.min_hours else None
        results.append(KpiResult(None if mean is None else round(mean, 2), Coverage(count, 24, mean is not None, rule)))
    return results


# -- year windows ---------------------------------------------------------------------------------


def _year_values(grid: HourlyGrid, attribute: str, window: Window, factor: float | None) -> list[float] | None:
    lo, hi = grid.index(window.start), grid.index(window.end)
    if lo is None or hi is None:
        return None
    hourly = grid.values[attribute][lo:hi]
    present = hourly[~np.isnan(hourly)]
    return (present * factor if factor is not None else present).tolist()


def _annual_mean_result(params: Any, grid: HourlyGrid, window: Window) -> KpiResult | None:
    values = _year_values(grid, params.attribute, window, _scaled_factor(params.attribute, params.units))
    if values is None:
        return None
    expected = hours_in_year(window.start.year)
    mean = sum(values) / len(values) if values and len(values) >= params.min_coverage * expected else None
    coverage = Coverage(len(values), expected, mean is not None, f"{params.min_coverage:.0%} of the hours of the year")
    return KpiResult(None if mean is None else round(mean, 2), coverage)


def _daily_periods(params: Any, grid: HourlyGrid, window: Window, factor: float) -> list[float] | None:
    """The valid period values of the year for `day` and `max_daily_8h_mean` limits (as `count_exceedances`)."""
    lo, hi = grid.index(window.start), grid.index(window.end)
    if lo is None or hi is None or (hi - lo) % 24:
        return None
    days = (hi - lo) // 24
    if params.averaging == "day":
        rows = grid.values[params.pollutant][lo:hi].reshape(days, 24) * factor
        counts = np.sum(~np.isnan(rows), axis=1)
        means = sequential_sums(rows) / np.maximum(counts, 1)
        return means[counts >= 18].tolist()
    # Running 8-hour means over the span (the year and the 7 hours before it), only between the
    # first and the last hour with a value, as `running_8h_means` computes them.
    start = lo - 7
    if start < 0:
        return None
    hourly = grid.values[params.pollutant][start:hi] * factor
    means, _ = trailing_8h_means(hourly)
    present = np.flatnonzero(~np.isnan(hourly))
    if not len(present):
        return []
    outside = np.ones(len(hourly), dtype=bool)
    outside[present[0] : present[-1] + 1] = False
    means[outside] = np.nan
    per_day = means[7:].reshape(days, 24)
    valid = np.sum(~np.isnan(per_day), axis=1)
    best = np.fmax.reduce(per_day, axis=1)
    return best[valid >= 18].tolist()


def _limit_result(params: Any, grid: HourlyGrid, window: Window) -> KpiResult | None:
    limit = params.limit
    year = window.start.year
    factor = _factor(params.pollutant, params.units)
    value: Any
    if params.averaging == "year":
        values = _year_values(grid, params.pollutant, window, factor)
        if values is None:
            return None
        expected = hours_in_year(year)
        mean = sum(values) / len(values) if values and len(values) >= params.min_coverage * expected else None
        sufficient = mean is not None
        over = int(mean is not None and mean > limit.value)
        valid, compliant = len(values), ((not over) if sufficient else None)
        value = None if mean is None else round(mean, 2)
    else:
        if params.averaging == "hour":
            periods = _year_values(grid, params.pollutant, window, factor)
            expected = hours_in_year(year)
        else:
            periods = _daily_periods(params, grid, window, factor)
            expected = hours_in_year(year) // 24
        if periods is None:
            return None
        over = sum(1 for v in periods if v > limit.value)
        valid = len(periods)
        sufficient = valid >= params.min_coverage * expected
        compliant = False if over > (limit.allowed_exceedances or 0) else (True if sufficient else None)
        value = over
    coverage = Coverage(valid, expected, sufficient, COVERAGE_RULE)
    return KpiResult(value, coverage, {
        "standard": limit.standard, "pollutant": params.pollutant, "averaging": params.averaging,
        "limitValue": limit.value, "allowedExceedances": limit.allowed_exceedances,
        "exceedances": over, "compliant": compliant,
    })  # fmt: skip


YEARLY: dict[str, Callable[[Any, HourlyGrid, Window], KpiResult | None]] = {
    "annual_mean": _annual_mean_result,
    "limit_exceedances": _limit_result,
}


# -- entry points ---------------------------------------------------------------------------------


def vectorised(definition: KpiDefinition) -> bool:
    """Whether `definition` has a vectorised form (its calculator and window kind)."""
    kind, name = definition.window.kind, definition.calculator
    return (kind == "hour" and name in HOURLY) or (kind == "day" and name == "daily_mean") or (
        kind == "year" and name in YEARLY
    )


def _grid_for(definition: KpiDefinition, history: HistoryArrays, windows: Sequence[Window]) -> HourlyGrid | None:
    calculator, tz = definition.calculator_impl, definition.tz
    start = calculator.span(definition.params, windows[0], tz)[0]
    end = max(calculator.span(definition.params, windows[-1], tz)[1], windows[-1].end)
    if not steady_offset(tz, start, end):
        return None
    return hourly_grid(history, definition.source.attributes, start, end)


@dataclass(frozen=True)
class SeriesValues:
    """The value (None: no value) and coverage of the windows of a series KPI, by `observedAt` (the window start)."""

    observed_at: list[str]
    values: list[Any]
    coverages: list[Coverage | None]


def hour_windows(since: datetime, until: datetime, tz: tzinfo) -> tuple[Window, int]:
    """The first hour window overlapping `[since, until)` and how many there are (UTC hours follow each other)."""
    first = window_at("hour", since, tz)
    return first, max(0, -(-(until - first.start) // HOUR))


def series_values(
    definition: KpiDefinition, history: HistoryArrays, since: datetime, until: datetime
) -> SeriesValues | None:
    """Every hour or day window's value overlapping `[since, until)`; None when there is no vectorised form."""
    if not vectorised(definition) or definition.window.kind not in ("hour", "day"):
        return None
    tz = definition.tz
    if definition.window.kind == "hour":
        first, count = hour_windows(since, until, tz)
        if count == 0:
            return SeriesValues([], [], [])
        last = Window("hour", first.start + (count - 1) * HOUR, first.start + count * HOUR)
        grid = _grid_for(definition, history, [first, last])
        if grid is None:
            return None
        start = grid.index(first.start)
        if start is None:
            return None
        values = HOURLY[definition.calculator](definition.params, grid, start, count)
        starts = grid.start + (start + np.arange(count, dtype=np.int64)) * HOUR_MICROS
        return SeriesValues(utc_stamps(starts), values, [None] * count)
    windows = list(windows_between("day", since, until, tz))
    if not windows:
        return SeriesValues([], [], [])
    grid = _grid_for(definition, history, windows)
    results = None if grid is None else _daily_mean_results(definition.params, grid, windows)
    if results is None:
        return None
    starts = np.array([to_micros(w.start) for w in windows], dtype=np.int64)
    return SeriesValues(utc_stamps(starts), [r.value for r in results], [r.coverage for r in results])


def period_results(
    definition: KpiDefinition, history: HistoryArrays, windows: Sequence[Window]
) -> list[tuple[KpiResult, datetime | None]] | None:
    """The result and latest observation of each year window; None when there is no vectorised form."""
    if not windows or not vectorised(definition) or definition.window.kind != "year":
        return None
    grid = _grid_for(definition, history, windows)
    if grid is None:
        return None
    evaluate = YEARLY[definition.calculator]
    measured = np.zeros(grid.length, dtype=bool)
    for name in definition.source.attributes:
        measured |= ~np.isnan(grid.values[name])
    results = []
    for window in windows:
        result = evaluate(definition.params, grid, window)
        lo, hi = grid.index(window.start), grid.index(window.end)
        if result is None or lo is None or hi is None:
            return None
        inside = np.flatnonzero(measured[lo:hi])
        results.append((result, grid.moment(lo + int(inside[-1])) if len(inside) else None))
    return results

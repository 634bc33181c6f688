"""The calculators a KPI definition can name: parameters, the data each needs, and its evaluation over one window.

Each entry wraps a pure function of `kpi.calculators` and adds what the engine needs: which
source attributes it reads, how much history around the window (NowCast needs 12 hours, a
baseline the previous period), and the conversion from observations (timestamped values per
attribute, in the attribute's Smart Data Models unit) to the function's input. Evaluation is
pure: the same observations and window always give the same result.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kpi.calculators import (
    common_air_quality_index,
    count_exceedances,
    eea_air_quality_index,
    find_limit,
    nowcast,
    ugm3_to_ppb,
    us_air_quality_index,
)
from kpi.calculators.averaging import annual_mean, daily_means
from kpi.calculators.generic import (
    WindowResult,
    change_against_baseline,
    count_above,
    count_below,
    percentile,
    ratio,
    window_max,
    window_mean,
    window_min,
    window_sum,
)
from kpi.calculators.limit_values import STANDARDS, Averaging, LimitValue
from kpi.windows import HOUR, Window, WindowKind, previous_window
from smart_data_models import default_unit_code

Series = list[tuple[datetime, float]]
"""Timestamped values of one attribute (aware datetimes, time order)."""
Observations = Mapping[str, Series]
"""Attribute name → its series."""

# UN/CEFACT code → factor to µg/m³ (the unit every air-quality calculator takes).
MICROGRAMS_PER_CUBIC_METRE_FACTOR: dict[str, float] = {"GQ": 1.0, "GP": 1000.0}


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the data a rule asks for was there (`sufficient` is the rule's verdict)."""

    valid: int
    expected: int
    sufficient: bool
    rule: str

    @property
    def ratio(self) -> float:
        return round(self.valid / self.expected, 4) if self.expected else 0.0

    def as_value(self) -> dict[str, Any]:
        return {
            "valid": self.valid, "expected": self.expected, "ratio": self.ratio,
            "sufficient": self.sufficient, "rule": self.rule,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class KpiResult:
    """A KPI value over one window: None when there is no data or not enough to say."""

    value: Any
    coverage: Coverage | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Parameters(BaseModel):
    """Parameters of a calculator; unknown keys are an error so that typos are caught at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Calculator:
    """One calculator usable in definitions (subclasses set the class attributes and `evaluate`)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    input_shape: ClassVar[str]
    """What `climaborough kpi calc NAME` expects in `series` (and `parameters`)."""
    windows: ClassVar[tuple[WindowKind, ...]] = ("hour", "rolling_8h", "day", "month", "year", "custom")
    default_window: ClassVar[WindowKind] = "hour"
    Params: ClassVar[type[Parameters]] = Parameters

    def parameters(self, raw: Mapping[str, Any]) -> Parameters:
        return self.Params.model_validate(dict(raw))

    def attributes(self, params: Any) -> tuple[str, ...]:
        raise NotImplementedError

    def span(self, params: Any, window: Window, tz: tzinfo) -> tuple[datetime, datetime]:
        """The time range of observations the window's value depends on."""
        return window.start, window.end

    def affected_windows(self, params: Any, window: Window, tz: tzinfo) -> int:
        """How many consecutive windows from `window` on an observation in `window` changes (NowCast: 12)."""
        return 1

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        raise NotImplementedError


# -- inputs ----------------------------------------------------------------------------------------


def in_window(series: Series, start: datetime, end: datetime) -> list[float]:
    # Bounds in UTC like the observations: comparing datetimes of one tzinfo skips utcoffset() per pair.
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    return [value for stamp, value in series if start <= stamp < end]


def hour_mean(series: Series, hour_start: datetime) -> float | None:
    """Mean of the values observed in the hour starting at `hour_start` (one value for hourly data)."""
    values = in_window(series, hour_start, hour_start + HOUR)
    return sum(values) / len(values) if values else None


def _hour_buckets(series: Series, bounds: list[tuple[datetime, datetime]]) -> list[list[float]]:
    """The values of each hour `[start, end)` in `bounds`, in series order.

    One pass with a bisect when the hours follow each other without gap or overlap (always, but
    for a daylight-saving oddity); otherwise one scan per hour, which gives the same buckets.
    """
    contiguous = all(bounds[k + 1][1] == bounds[k][0] for k in range(len(bounds) - 1))
    if not contiguous:
        return [[v for stamp, v in series if start <= stamp < end] for start, end in bounds]
    buckets: list[list[float]] = [[] for _ in bounds]
    starts = [start for start, _ in reversed(bounds)]  # ascending
    last = len(bounds) - 1
    first_start, final_end = bounds[last][0], bounds[0][1]
    for stamp, value in series:
        if first_start <= stamp < final_end:
            buckets[last - (bisect_right(starts, stamp) - 1)].append(value)
    return buckets


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def to_micrograms(pollutant: str, value: float, units: Mapping[str, str]) -> float:
    code = units.get(pollutant) or default_unit_code(pollutant) or "GQ"
    return value * MICROGRAMS_PER_CUBIC_METRE_FACTOR[code]


def latest_observation(observations: Observations, start: datetime, end: datetime) -> datetime | None:
    """The last observation time inside the window (the KPI value's `observedAt`)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    stamps = [stamp for series in observations.values() for stamp, _ in series if start <= stamp < end]
    return max(stamps) if stamps else None


class PollutantParams(Parameters):
    pollutants: tuple[str, ...] = ()
    units: dict[str, str] = Field(default_factory=dict)
    """Unit code per pollutant when it differs from the Smart Data Models default (co: GP)."""

    @field_validator("units")
    @classmethod
    def _known_units(cls, units: dict[str, str]) -> dict[str, str]:
        for pollutant, code in units.items():
            if code not in MICROGRAMS_PER_CUBIC_METRE_FACTOR:
                raise ValueError(f"unit {code!r} of {pollutant} is not a concentration (GQ µg/m³ or GP mg/m³)")
        return units


class _HourlyIndex(Calculator):
    """Index calculators over the hourly concentrations of one hour (mean of the hour's values)."""

    all_pollutants: ClassVar[tuple[str, ...]]
    windows = ("hour",)
    Params = PollutantParams

    def parameters(self, raw: Mapping[str, Any]) -> Parameters:
        params = PollutantParams.model_validate(dict(raw))
        unknown = set(params.pollutants) - set(self.all_pollutants)
        if unknown:
            raise ValueError(f"{self.name} has no pollutant(s) {sorted(unknown)}; it knows {list(self.all_pollutants)}")
        return params if params.pollutants else params.model_copy(update={"pollutants": self.all_pollutants})

    def attributes(self, params: Any) -> tuple[str, ...]:
        return tuple(params.pollutants)

    def concentrations(self, params: PollutantParams, observations: Observations, window: Window) -> dict[str, float]:
        result = {}
        for pollutant in params.pollutants:
            mean = hour_mean(observations.get(pollutant, []), window.start)
            if mean is not None and mean >= 0:
                result[pollutant] = round(to_micrograms(pollutant, mean, params.units), 6)
        return result


class EeaIndexCalculator(_HourlyIndex):
    name = "eea_index"
    summary = "European Air Quality Index (EEA 2024 bands): level 1 Good … 6 Extremely poor, worst pollutant"
    input_shape = "hourly concentrations of pm25, pm10, no2, o3, so2 (µg/m³) in the hour"
    all_pollutants = ("pm25", "pm10", "no2", "o3", "so2")

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        concentrations = self.concentrations(params, observations, window)
        index = eea_air_quality_index(concentrations)
        if index is None:
            return KpiResult(None, details={"reason": "no index pollutant measured in the hour"})
        return KpiResult(index.level, details={
            "band": index.band, "dominantPollutant": index.dominant_pollutant,
            "pollutantLevels": index.pollutant_levels, "concentrations": concentrations,
        })  # fmt: skip


class CaqiCalculator(_HourlyIndex):
    name = "caqi"
    summary = "Common Air Quality Index (CiteAir II hourly grid): 0 to >100, largest sub-index"
    input_shape = "hourly concentrations of no2, pm10, o3, pm25, so2 (µg/m³) in the hour"
    # CO is left out: the grid asks for its 8-hour mean, which the hourly index does not have.
    all_pollutants = ("no2", "pm10", "o3", "pm25", "so2")

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        concentrations = self.concentrations(params, observations, window)
        caqi = common_air_quality_index(concentrations)
        if caqi is None:
            return KpiResult(None, details={"reason": "no core pollutant (no2, pm10, o3) measured in the hour"})
        return KpiResult(caqi.index, details={
            "class": caqi.caqi_class, "dominantPollutant": caqi.dominant_pollutant,
            "subIndices": caqi.sub_indices, "concentrations": concentrations,
        })  # fmt: skip


class UsAqiCalculator(_HourlyIndex):
    name = "us_aqi"
    summary = "US EPA AQI (2024 breakpoints): NowCast PM2.5/PM10, 1-h and 8-h O3, 1-h NO2/SO2, 8-h CO"
    input_shape = "hourly concentrations (µg/m³; co in mg/m³) of the 12 hours up to and including the hour"
    all_pollutants = ("pm25", "pm10", "o3", "no2", "so2", "co")

    def span(self, params: Any, window: Window, tz: tzinfo) -> tuple[datetime, datetime]:
        return window.end - 12 * HOUR, window.end

    def affected_windows(self, params: Any, window: Window, tz: tzinfo) -> int:
        return 12

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        # Most recent hour first, as NowCast takes them.
        hours = [window.start - k * HOUR for k in range(12)]
        # The hours' bounds in UTC once for every pollutant (as `hour_mean` computes them).
        bounds = [(hour.astimezone(UTC), (hour + HOUR).astimezone(UTC)) for hour in hours]
        hourly: dict[str, list[float | None]] = {}
        for pollutant in params.pollutants:
            values = [_mean(bucket) for bucket in _hour_buckets(observations.get(pollutant, []), bounds)]
            hourly[pollutant] = [
                None if v is None or v < 0 else to_micrograms(pollutant, v, params.units) for v in values
            ]
        metrics: dict[str, float | None] = {}
        if "pm25" in hourly:
            metrics["pm25_24h"] = nowcast(hourly["pm25"], "pm25_24h")
        if "pm10" in hourly:
            metrics["pm10_24h"] = nowcast(hourly["pm10"], "pm10_24h")
        if "o3" in hourly:
            ppm = [None if v is None else ugm3_to_ppb("o3", v) / 1000 for v in hourly["o3"]]
            metrics["o3_1h"] = ppm[0]
            metrics["o3_8h"] = _eight_hour_mean(ppm)
        for gas in ("no2", "so2"):
            if gas in hourly and hourly[gas][0] is not None:
                metrics[f"{gas}_1h"] = ugm3_to_ppb(gas, hourly[gas][0])  # type: ignore[arg-type]
        if "co" in hourly:
            co_ppm = [None if v is None else ugm3_to_ppb("co", v) / 1000 for v in hourly["co"]]
            metrics["co_8h"] = _eight_hour_mean(co_ppm)
        used = {metric: round(value, 4) for metric, value in metrics.items() if value is not None}
        aqi = us_air_quality_index(used)
        if aqi is None:
            return KpiResult(None, details={"reason": "no AQI metric available for the hour", "metrics": used})
        return KpiResult(aqi.aqi, details={"category": aqi.category, "pollutant": aqi.pollutant, "metrics": used})


def _eight_hour_mean(most_recent_first: Sequence[float | None]) -> float | None:
    """Mean of the last 8 hours with at least 6 valid (2008/50/EC Annex VII's 75 %, used by the EPA too)."""
    values = [v for v in most_recent_first[:8] if v is not None]
    return sum(values) / len(values) if len(values) >= 6 else None


class LimitParams(Parameters):
    standard: str
    pollutant: str
    averaging: Averaging
    min_coverage: float = Field(0.9, gt=0, le=1)
    units: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_limit(self) -> LimitParams:
        if self.standard not in STANDARDS:
            raise ValueError(f"unknown standard {self.standard!r}; known: {sorted(STANDARDS)}")
        find_limit(self.standard, self.pollutant, self.averaging)
        return self

    @property
    def limit(self) -> LimitValue:
        return find_limit(self.standard, self.pollutant, self.averaging)


COVERAGE_RULE = "2008/50/EC Annex VII/XI: day 18 of 24 h, 8-h mean 6 of 8 h, year 90 % of periods"


class LimitExceedancesCalculator(Calculator):
    name = "limit_exceedances"
    summary = "Exceedances of an EU 2008/50/EC, EU 2024/2881 (2030) or WHO 2021 limit in a calendar year"
    input_shape = "hourly concentrations of the pollutant over the year (µg/m³; co in mg/m³)"
    windows = ("year",)
    default_window = "year"
    Params = LimitParams

    def attributes(self, params: Any) -> tuple[str, ...]:
        return (params.pollutant,)

    def span(self, params: Any, window: Window, tz: tzinfo) -> tuple[datetime, datetime]:
        # The first 8-hour means of 1 January reach back into 31 December.
        extra = 7 * HOUR if params.averaging == "max_daily_8h_mean" else timedelta(0)
        return window.start - extra, window.end

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        series = [
            (stamp, to_micrograms(params.pollutant, value, params.units))
            for stamp, value in observations.get(params.pollutant, [])
        ]
        outcome = count_exceedances(params.limit, series, window.start.year, tz, min_coverage=params.min_coverage)
        value: Any = outcome.exceedances
        if params.averaging == "year":
            value = None if outcome.value is None else round(outcome.value, 2)
        coverage = Coverage(outcome.valid_periods, outcome.expected_periods, outcome.sufficient, COVERAGE_RULE)
        return KpiResult(value, coverage, {
            "standard": params.limit.standard, "pollutant": params.pollutant, "averaging": params.averaging,
            "limitValue": params.limit.value, "allowedExceedances": params.limit.allowed_exceedances,
            "exceedances": outcome.exceedances, "compliant": outcome.compliant,
        })  # fmt: skip


class AttributeParams(Parameters):
    attribute: str
    units: dict[str, str] = Field(default_factory=dict)
    min_coverage: float = Field(0.9, gt=0, le=1)


class AnnualMeanCalculator(Calculator):
    name = "annual_mean"
    summary = "Calendar-year mean of hourly values, reported only with ≥ 90 % data capture"
    input_shape = "hourly values of the attribute over the year"
    windows = ("year",)
    default_window = "year"
    Params = AttributeParams

    def attributes(self, params: Any) -> tuple[str, ...]:
        return (params.attribute,)

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        series = [(s, _scaled(params, v)) for s, v in observations.get(params.attribute, [])]
        mean = annual_mean(series, window.start.year, tz, min_coverage=params.min_coverage)
        coverage = Coverage(mean.valid, mean.expected, mean.value is not None,
                            f"{params.min_coverage:.0%} of the hours of the year")
        return KpiResult(None if mean.value is None else round(mean.value, 2), coverage)


def _scaled(params: Any, value: float) -> float:
    attribute = params.attribute
    code = params.units.get(attribute) or default_unit_code(attribute)
    return value * MICROGRAMS_PER_CUBIC_METRE_FACTOR[code] if code in MICROGRAMS_PER_CUBIC_METRE_FACTOR else value


class DailyMeanParams(AttributeParams):
    min_hours: int = Field(18, ge=1, le=24)


class DailyMeanCalculator(Calculator):
    name = "daily_mean"
    summary = "Calendar-day mean of hourly values, reported only with ≥ 18 valid hours"
    input_shape = "hourly values of the attribute over the day"
    windows = ("day",)
    default_window = "day"
    Params = DailyMeanParams

    def attributes(self, params: Any) -> tuple[str, ...]:
        return (params.attribute,)

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        series = [(s, _scaled(params, v)) for s, v in in_window_series(observations, params.attribute, window)]
        means = daily_means(series, tz, min_hours=params.min_hours)
        day = means.get(window.first_day)
        if day is None:
            return KpiResult(None, Coverage(0, 24, False, f"{params.min_hours} of 24 hours"))
        coverage = Coverage(day.valid, day.expected, day.value is not None, f"{params.min_hours} of 24 hours")
        return KpiResult(None if day.value is None else round(day.value, 2), coverage)


def in_window_series(observations: Observations, attribute: str, window: Window) -> Series:
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    return [(s, v) for s, v in observations.get(attribute, []) if start <= s < end]


# -- generic ---------------------------------------------------------------------------------------


class GenericParams(Parameters):
    attribute: str
    expected_interval_s: float | None = Field(None, gt=0)
    """One value is expected every this many seconds: gives the KPI a coverage attribute."""
    min_coverage: float = Field(0.75, gt=0, le=1)


def _generic_coverage(params: Any, result: WindowResult, window: Window) -> Coverage | None:
    if params.expected_interval_s is None:
        return None
    expected = max(1, math.floor((window.end - window.start).total_seconds() / params.expected_interval_s))
    return Coverage(result.valid, expected, result.valid >= params.min_coverage * expected,
                    f"{params.min_coverage:.0%} of one value every {params.expected_interval_s:g} s")


class _Generic(Calculator):
    Params: ClassVar[type[Parameters]] = GenericParams
    input_shape = "the attribute's values in the window"
    default_window: ClassVar[WindowKind] = "day"

    def attributes(self, params: Any) -> tuple[str, ...]:
        return (params.attribute,)

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        raise NotImplementedError

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        values: list[float | None] = [v for _, v in in_window_series(observations, params.attribute, window)]
        result = self.compute(params, values)
        value = None if result.value is None else round(result.value, 6)
        return KpiResult(value, _generic_coverage(params, result, window), {"values": result.valid})


class MeanCalculator(_Generic):
    name = "mean"
    summary = "Mean of the values in the window"

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return window_mean(values)


class MinCalculator(_Generic):
    name = "min"
    summary = "Smallest value in the window"

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return window_min(values)


class MaxCalculator(_Generic):
    name = "max"
    summary = "Largest value in the window"

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return window_max(values)


class SumCalculator(_Generic):
    name = "sum"
    summary = "Sum of the values in the window (e.g. vehicles counted per day)"

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return window_sum(values)


class PercentileParams(GenericParams):
    q: float = Field(ge=0, le=100)


class PercentileCalculator(_Generic):
    name = "percentile"
    summary = "q-th percentile (0–100, linear interpolation) of the values in the window"
    Params = PercentileParams

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return percentile(values, params.q)


class ThresholdParams(GenericParams):
    threshold: float


class CountAboveCalculator(_Generic):
    name = "count_above"
    summary = "How many values in the window are strictly above `threshold`"
    Params = ThresholdParams

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return count_above(values, params.threshold)


class CountBelowCalculator(_Generic):
    name = "count_below"
    summary = "How many values in the window are strictly below `threshold`"
    Params = ThresholdParams

    def compute(self, params: Any, values: list[float | None]) -> WindowResult:
        return count_below(values, params.threshold)


class RatioParams(Parameters):
    numerator: str
    denominator: str
    percent: bool = True
    """Report 100 × the ratio (a share in %)."""


class RatioCalculator(Calculator):
    name = "ratio"
    summary = "Sum of one attribute over the sum of another in the window, paired by time (e.g. renewable share)"
    input_shape = "two attributes observed at the same times: `numerator` and `denominator`"
    default_window = "month"
    Params = RatioParams

    def attributes(self, params: Any) -> tuple[str, ...]:
        return (params.numerator, params.denominator)

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        top = dict(in_window_series(observations, params.numerator, window))
        bottom = dict(in_window_series(observations, params.denominator, window))
        stamps = sorted(top.keys() | bottom.keys())
        result = ratio([top.get(s) for s in stamps], [bottom.get(s) for s in stamps])
        value = None
        if result.value is not None:
            value = round(result.value * (100 if params.percent else 1), 6)
        return KpiResult(value, details={"pairedValues": result.valid, "times": result.expected})


class BaselineParams(GenericParams):
    periods_back: int = Field(1, ge=1)
    """The baseline is the window this many periods earlier (1 = the previous day/month/year)."""


class ChangeAgainstBaselineCalculator(_Generic):
    name = "change_against_baseline"
    summary = "Change of the window's mean against the mean of an earlier period, in %"
    input_shape = "the attribute's values in the window and in the baseline window"
    default_window = "year"
    Params = BaselineParams

    def span(self, params: Any, window: Window, tz: tzinfo) -> tuple[datetime, datetime]:
        return previous_window(window, params.periods_back, tz).start, window.end

    def evaluate(self, params: Any, observations: Observations, window: Window, tz: tzinfo) -> KpiResult:
        baseline = previous_window(window, params.periods_back, tz)
        current: list[float | None] = [v for _, v in in_window_series(observations, params.attribute, window)]
        before: list[float | None] = [v for _, v in in_window_series(observations, params.attribute, baseline)]
        result = change_against_baseline(current, before)
        value = None if result.value is None else round(result.value, 4)
        return KpiResult(value, _generic_coverage(params, result, window), {
            "baseline": {"start": baseline.start.isoformat(), "end": baseline.end.isoformat(),
                         "values": len([v for v in before if v is not None])},
        })  # fmt: skip


CALCULATORS: dict[str, Calculator] = {
    calculator.name: calculator
    for calculator in (
        EeaIndexCalculator(), CaqiCalculator(), UsAqiCalculator(), LimitExceedancesCalculator(),
        AnnualMeanCalculator(), DailyMeanCalculator(), MeanCalculator(), MinCalculator(), MaxCalculator(),
        SumCalculator(), PercentileCalculator(), CountAboveCalculator(), CountBelowCalculator(),
        RatioCalculator(), ChangeAgainstBaselineCalculator(),
    )
}  # fmt: skip
"""Calculator name (as written in a definition's `calculator:`) → the calculator."""


def find_calculator(name: str) -> Calculator:
    try:
        return CALCULATORS[name]
    except KeyError:
        raise ValueError(f"unknown calculator {name!r}; known: {', '.join(sorted(CALCULATORS))}") from None


"""What-if scenarios: change input features over a time range, forecast again, compare.

A scenario is a list of feature changes (scale, add or set a value) over hours relative to the
forecast origin: hours -lookback+1..0 are the observed window the model looks at ("NO2 20 %
lower over the last two days"), hours 1..horizon the weather expected ahead ("a calmer, warmer
day tomorrow"). A change to a feature the model does not use, over hours it does not look at,
or that pushes a feature outside the range seen in training is refused with the reason — the
twin never extrapolates silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kpi.calculators.eaqi import EEA_BANDS, EEA_UPPER_LIMITS_2024, eea_pollutant_level
from twin.model import Forecaster

Operation = Literal["scale", "add", "set"]

# Per-hour thresholds used for "hours above": EU 2024/2881 daily limit values and WHO 2021
# 24-hour guideline levels (µg/m³), applied to hourly forecasts as a planning indicator.
EU_THRESHOLDS: dict[str, float] = {"pm25": 25, "pm10": 45, "no2": 50, "so2": 50, "o3": 120}
WHO_THRESHOLDS: dict[str, float] = {"pm25": 15, "pm10": 45, "no2": 25, "so2": 40, "o3": 100}

# Derived features follow their sources: wind vector components scale with wind speed.
DERIVED_FROM: dict[str, tuple[str, ...]] = {"windSpeed": ("wind_u", "wind_v")}


RANGE_TOLERANCE = 0.05


class ScenarioError(ValueError):
    """A scenario the model cannot answer honestly; the message says why."""


@dataclass(frozen=True)
class FeatureChange:
    """Change `feature` over hours `start_hour`..`end_hour` relative to the origin (0 = the
    last observed hour, -23 = a day before), both inclusive."""

    feature: str
    operation: Operation
    value: float
    start_hour: int
    end_hour: int = 0


@dataclass(frozen=True)
class TrainingRange:
    """Observed minimum and maximum of each raw feature in the training data."""

    minimum: dict[str, float]
    maximum: dict[str, float]

    @classmethod
    def of(cls, features: Sequence[str], inputs: np.ndarray) -> TrainingRange:
        flat = inputs.reshape(-1, inputs.shape[-1])
        return cls(
            {f: float(np.nanmin(flat[:, i])) for i, f in enumerate(features)},
            {f: float(np.nanmax(flat[:, i])) for i, f in enumerate(features)},
        )

    def to_json(self) -> dict[str, dict[str, float]]:
        return {"min": self.minimum, "max": self.maximum}


def _change_rows(values: np.ndarray, features: Sequence[str], rows: slice, change: FeatureChange) -> None:
    """Apply one change in place to `rows` of a (hours × features) block, derived columns too."""
    i = features.index(change.feature)
    old = values[rows, i].copy()
    if change.operation == "scale":
        new = old * change.value
    elif change.operation == "add":
        new = old + change.value
    else:
        new = np.full_like(old, change.value)
    values[rows, i] = new
    # Derived columns (the wind vector) follow their source's relative change.
    ratio = np.divide(new, old, out=np.ones_like(old), where=old != 0)
    for derived in DERIVED_FROM.get(change.feature, ()):
        if derived in features:
            values[rows, features.index(derived)] *= ratio


def _check_range(block: np.ndarray, features: Sequence[str], rows: slice, feature: str, bounds: TrainingRange) -> None:
    values = block[rows, features.index(feature)]
    lo, hi = bounds.minimum[feature], bounds.maximum[feature]
    # A tolerance of 5 % of the trained span on each side: the edge of the data is not a cliff.
    margin = RANGE_TOLERANCE * (hi - lo)
    lo, hi = lo - margin, hi + margin
    if values.size and (np.nanmin(values) < lo or np.nanmax(values) > hi):
        raise ScenarioError(
            f"{feature} would reach {np.nanmin(values):.4g}..{np.nanmax(values):.4g}, outside the range the "
            f"model was trained on ({lo:.4g}..{hi:.4g}); the twin does not extrapolate"
        )


def apply_scenario(
    forecaster: Forecaster,
    window: np.ndarray,
    future: np.ndarray,
    changes: Sequence[FeatureChange],
    bounds: TrainingRange,
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of one input window (lookback × features) and its covariates (horizon × future
    features) with the changes applied."""
    lookback, horizon = forecaster.config.lookback, forecaster.config.horizon
    past, ahead = window.astype("float64").copy(), future.astype("float64").copy()
    for change in changes:
        if change.operation not in ("scale", "add", "set"):
            raise ScenarioError(f"unknown operation {change.operation!r}: use scale, add or set")
        if change.feature not in forecaster.features:
            raise ScenarioError(f"the model does not use {change.feature!r}; it uses: {', '.join(forecaster.features)}")
        if change.start_hour > change.end_hour:
            raise ScenarioError(f"{change.feature}: start hour {change.start_hour} is after end hour {change.end_hour}")
        if change.start_hour < -(lookback - 1) or change.end_hour > horizon:
            raise ScenarioError(
                f"{change.feature}: hours {change.start_hour}..{change.end_hour} are outside what the model "
                f"looks at: {-(lookback - 1)}..0 observed and 1..{horizon} ahead"
            )
        if change.start_hour <= 0:
            rows = slice(lookback - 1 + change.start_hour, lookback + min(change.end_hour, 0))
            _change_rows(past, forecaster.features, rows, change)
            _check_range(past, forecaster.features, rows, change.feature, bounds)
        if change.end_hour >= 1:
            if change.feature not in forecaster.future_features:
                raise ScenarioError(
                    f"{change.feature} is only observed, not forecast: changes after the origin apply to "
                    f"{', '.join(forecaster.future_features)}"
                )
            rows = slice(max(change.start_hour, 1) - 1, change.end_hour)
            _change_rows(ahead, forecaster.future_features, rows, change)
            _check_range(ahead, forecaster.future_features, rows, change.feature, bounds)
    return past, ahead


@dataclass(frozen=True)
class ForecastSummary:
    """KPIs of one forecast path."""

    mean: float
    maximum: float
    hours_above_eu: int | None
    hours_above_who: int | None
    eea_bands: list[str] | None

    def to_json(self) -> dict[str, object]:
        return {
            "mean": round(self.mean, 2),
            "max": round(self.maximum, 2),
            "hoursAboveEU": self.hours_above_eu,
            "hoursAboveWHO": self.hours_above_who,
            "eeaBands": self.eea_bands,
        }


def summarize(target: str, path: np.ndarray) -> ForecastSummary:
    clipped = np.clip(path, 0, None)
    eu, who = EU_THRESHOLDS.get(target), WHO_THRESHOLDS.get(target)
    bands = (
        [EEA_BANDS[eea_pollutant_level(target, float(v)) - 1] for v in clipped]
        if target in EEA_UPPER_LIMITS_2024
        else None
    )
    return ForecastSummary(
        float(clipped.mean()),
        float(clipped.max()),
        int((clipped > eu).sum()) if eu is not None else None,
        int((clipped > who).sum()) if who is not None else None,
        bands,
    )


@dataclass(frozen=True)
class WhatIfResult:
    """Baseline and scenario forecasts with their uncertainty bands and the KPI deltas."""

    baseline: np.ndarray
    scenario: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    baseline_summary: ForecastSummary
    scenario_summary: ForecastSummary

    def deltas(self) -> dict[str, object]:
        b, s = self.baseline_summary, self.scenario_summary
        changed_bands = (
            sum(1 for x, y in zip(b.eea_bands, s.eea_bands, strict=True) if x != y)
            if b.eea_bands is not None and s.eea_bands is not None
            else None
        )
        return {
            "mean": round(s.mean - b.mean, 2),
            "max": round(s.maximum - b.maximum, 2),
            "hoursAboveEU": None if b.hours_above_eu is None else (s.hours_above_eu or 0) - b.hours_above_eu,
            "hoursAboveWHO": None if b.hours_above_who is None else (s.hours_above_who or 0) - b.hours_above_who,
            "eeaBandChanges": changed_bands,
        }


def what_if(
    forecaster: Forecaster,
    window: np.ndarray,
    future: np.ndarray,
    changes: Sequence[FeatureChange],
    bounds: TrainingRange,
    residual_q10: Sequence[float],
    residual_q90: Sequence[float],
) -> WhatIfResult:
    """Forecast the baseline and the scenario from one window in a single model call."""
    scenario_window, scenario_future = apply_scenario(forecaster, window, future, changes, bounds)
    both = forecaster.predict(
        np.stack([window, scenario_window]).astype("float32"), np.stack([future, scenario_future]).astype("float32")
    )
    baseline, scenario = np.clip(both[0], 0, None), np.clip(both[1], 0, None)
    low, high = np.asarray(residual_q10), np.asarray(residual_q90)
    return WhatIfResult(
        baseline,
        scenario,
        np.clip(scenario + low, 0, None),
        np.clip(scenario + high, 0, None),
        summarize(forecaster.target, baseline),
        summarize(forecaster.target, scenario),
    )

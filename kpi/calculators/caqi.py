"""Common Air Quality Index (CAQI, CiteAir II revised hourly grid, city background).

Source: CITEAIR / CiteAir II "Common Information to European Air", airqualitynow.eu,
"Indices definition" (revised grid 2012). Five classes over 0 to >100: Very low 0–25,
Low 25–50, Medium 50–75, High 75–100, Very high >100. Within a class the sub-index is linear
between the class limits; the CAQI is the largest sub-index. Concentrations in µg/m³; CO is
the 8-hour mean, the others hourly values.

Conventions chosen here (the grid leaves them open): a concentration equal to a grid limit
belongs to the lower class (so NO2 = 50 gives sub-index 25.0, class "Very low"); above the
top limit the sub-index continues on the slope of the "High" class, so it exceeds 100 and the
class is "Very high".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

CAQI_CLASSES: tuple[str, ...] = ("Very low", "Low", "Medium", "High", "Very high")

# Concentration at index 0, 25, 50, 75, 100 for each pollutant of the hourly grid.
CAQI_HOURLY_GRID: dict[str, tuple[float, float, float, float, float]] = {
    "no2": (0, 50, 100, 200, 400),
    "pm10": (0, 25, 50, 90, 180),
    "o3": (0, 60, 120, 180, 240),
    "pm25": (0, 15, 30, 55, 110),
    "co": (0, 5000, 7500, 10000, 20000),
    "so2": (0, 50, 100, 350, 500),
}
_INDEX_POINTS = (0.0, 25.0, 50.0, 75.0, 100.0)


@dataclass(frozen=True, slots=True)
class Caqi:
    """The CAQI: its value, class and the pollutant that gave it, with every sub-index."""

    index: float
    caqi_class: str
    dominant_pollutant: str
    sub_indices: dict[str, float]


def caqi_class(index: float) -> str:
    """Class name of a CAQI value (upper limits included in the lower class)."""
    for name, upper in zip(CAQI_CLASSES, _INDEX_POINTS[1:], strict=False):
        if index <= upper:
            return name
    return CAQI_CLASSES[-1]


def caqi_sub_index(pollutant: str, concentration: float) -> float:
    """Sub-index of one concentration by linear interpolation in the hourly grid."""
    try:
        grid = CAQI_HOURLY_GRID[pollutant]
    except KeyError:
        raise ValueError(f"the CAQI grid has no pollutant {pollutant!r}") from None
    if concentration < 0:
        raise ValueError(f"a concentration cannot be negative: {pollutant}={concentration}")
    for i in range(1, len(grid)):
        if concentration <= grid[i]:
            c_lo, c_hi = grid[i - 1], grid[i]
            i_lo, i_hi = _INDEX_POINTS[i - 1], _INDEX_POINTS[i]
            return i_lo + (i_hi - i_lo) * (concentration - c_lo) / (c_hi - c_lo)
    c_lo, c_hi = grid[-2], grid[-1]
    return 100.0 + 25.0 * (concentration - c_hi) / (c_hi - c_lo)


def common_air_quality_index(concentrations: Mapping[str, float | None]) -> Caqi | None:
    """The CAQI over the pollutants that have a value; None when none has.

    The CAQI needs at least one core pollutant (NO2, PM10 or O3); with only auxiliary ones it
    is None as well.
    """
    subs = {
        pollutant: caqi_sub_index(pollutant, value)
        for pollutant in CAQI_HOURLY_GRID
        if (value := concentrations.get(pollutant)) is not None
    }
    if not subs or not {"no2", "pm10", "o3"} & subs.keys():
        return None
    dominant = max(subs, key=lambda p: subs[p])
    index = subs[dominant]
    return Caqi(round(index, 1), caqi_class(index), dominant, {p: round(v, 1) for p, v in subs.items()})


def caqi_sub_indices(pollutant: str, concentrations: np.ndarray) -> np.ndarray:
    """`caqi_sub_index` of every element, with the same floating-point operations (NaN stays NaN)."""
    grid = np.asarray(CAQI_HOURLY_GRID[pollutant], dtype=np.float64)
    points = np.asarray(_INDEX_POINTS)
    # A value equal to a grid limit belongs to the lower class: the first limit ≥ the value.
    segment = np.searchsorted(grid[1:], concentrations, side="left")
    inside = np.minimum(segment, len(grid) - 2)
    c_lo, c_hi = grid[inside], grid[inside + 1]
    i_lo, i_hi = points[inside], points[inside + 1]
    with np.errstate(invalid="ignore"):
        sub = i_lo + (i_hi - i_lo) * (concentrations - c_lo) / (c_hi - c_lo)
        above = 100.0 + 25.0 * (concentrations - grid[-1]) / (grid[-1] - grid[-2])
    return np.where(segment > len(grid) - 2, above, sub)


def caqi_indices(concentrations: Mapping[str, np.ndarray]) -> np.ndarray:
    """The unrounded CAQI (largest sub-index) of every hour; NaN where no core pollutant (no2, pm10, o3) has a value."""
    subs = [caqi_sub_indices(p, concentrations[p]) for p in CAQI_HOURLY_GRID if p in concentrations]
    if not subs:
        raise ValueError("no CAQI pollutant given")
    stacked = np.vstack(subs)
    measured = ~np.isnan(stacked)
    best = np.max(np.where(measured, stacked, -np.inf), axis=0)
    core = [~np.isnan(concentrations[p]) for p in ("no2", "pm10", "o3") if p in concentrations]
    has_core = np.logical_or.reduce(core) if core else np.zeros(stacked.shape[1], dtype=bool)
    return np.where(has_core, best, np.nan)

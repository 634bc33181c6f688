"""European Air Quality Index (EEA, bands revised in 2024): band per pollutant and station index.

Source: EEA European Air Quality Index, "About the index" (airindex.eea.europa.eu), revised
bands documented in ETC HE Report 2024/17. All five pollutants use hourly concentrations in
µg/m³. The station index is the worst band over the pollutants measured.

Boundary convention (the EEA does not state one; it writes ranges as "5–15"): a value equal
to a band's upper limit belongs to that band, i.e. bands are half-open on the left,
``lower < value <= upper``, and the first band includes 0. So PM2.5 = 5.0 is "Good" and
5.1 is "Fair".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

EEA_BANDS: tuple[str, ...] = ("Good", "Fair", "Moderate", "Poor", "Very poor", "Extremely poor")

# Upper limits of the first five bands; above the last limit is "Extremely poor".
EEA_UPPER_LIMITS_2024: dict[str, tuple[float, float, float, float, float]] = {
    "pm25": (5, 15, 50, 90, 140),
    "pm10": (15, 45, 120, 195, 270),
    "no2": (10, 25, 60, 100, 150),
    "o3": (60, 100, 120, 160, 180),
    "so2": (20, 40, 125, 190, 275),
}


@dataclass(frozen=True, slots=True)
class EeaIndex:
    """A station's EEA index: the band name, its level (1 Good … 6 Extremely poor), the
    pollutant that decided it and the band of every pollutant that was measured."""

    band: str
    level: int
    dominant_pollutant: str
    pollutant_levels: dict[str, int]


def eea_pollutant_level(pollutant: str, concentration: float) -> int:
    """Level 1–6 of one hourly concentration (µg/m³) of `pm25`, `pm10`, `no2`, `o3` or `so2`."""
    try:
        limits = EEA_UPPER_LIMITS_2024[pollutant]
    except KeyError:
        raise ValueError(f"the EEA index has no band for pollutant {pollutant!r}") from None
    if concentration < 0:
        raise ValueError(f"a concentration cannot be negative: {pollutant}={concentration}")
    for level, upper in enumerate(limits, start=1):
        if concentration <= upper:
            return level
    return len(limits) + 1


def eea_air_quality_index(concentrations: Mapping[str, float | None]) -> EeaIndex | None:
    """The station index from hourly concentrations; pollutants without a value are ignored.

    Returns None when none of the five index pollutants has a value. Ties go to the pollutant
    listed first in `EEA_UPPER_LIMITS_2024` (PM2.5, PM10, NO2, O3, SO2).
    """
    levels = {
        pollutant: eea_pollutant_level(pollutant, value)
        for pollutant in EEA_UPPER_LIMITS_2024
        if (value := concentrations.get(pollutant)) is not None
    }
    if not levels:
        return None
    dominant = max(levels, key=lambda p: levels[p])
    level = levels[dominant]
    return EeaIndex(EEA_BANDS[level - 1], level, dominant, levels)


def eea_levels(pollutant: str, concentrations: np.ndarray) -> np.ndarray:
    """`eea_pollutant_level` of every element (int8): 0 where the concentration is NaN (not measured).

    np.searchsorted with side="left" gives the first upper limit ≥ the value, the same
    `lower < value <= upper` convention as the scalar function.
    """
    limits = np.asarray(EEA_UPPER_LIMITS_2024[pollutant], dtype=np.float64)
    levels = (np.searchsorted(limits, concentrations, side="left") + 1).astype(np.int8)
    levels[np.isnan(concentrations)] = 0
    return levels


def eea_index_levels(concentrations: Mapping[str, np.ndarray]) -> np.ndarray:
    """The station level (`eea_air_quality_index(...).level`) of every hour; 0 where no pollutant has a value."""
    arrays = [eea_levels(p, concentrations[p]) for p in EEA_UPPER_LIMITS_2024 if p in concentrations]
    if not arrays:
        raise ValueError("no EEA index pollutant given")
    return np.maximum.reduce(arrays) if len(arrays) > 1 else arrays[0]

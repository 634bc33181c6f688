"""US EPA Air Quality Index with the 2024 breakpoints, truncation and rounding, and NowCast.

Source: EPA "Technical Assistance Document for the Reporting of Daily Air Quality – the AQI"
(EPA-454/B-24-002, May 2024), Table 6 and Equation 1; PM NAAQS final rule of 7 Feb 2024.
Ip = (IHi − ILo)/(BPHi − BPLo) × (Cp − BPLo) + ILo, rounded to the nearest integer (halves
up), after truncating Cp: O3 to 3 decimals (ppm), PM2.5 to 1 decimal (µg/m³), PM10 to an
integer (µg/m³), CO to 1 decimal (ppm), SO2 and NO2 to integers (ppb).

Gas conversions use 25 °C and 1 atm (molar volume 24.45 L), as the EPA does:
ppb = µg/m³ × 24.45 / MW.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

import numpy as np

AQI_CATEGORIES: tuple[tuple[int, str], ...] = (
    (50, "Good"),
    (100, "Moderate"),
    (150, "Unhealthy for Sensitive Groups"),
    (200, "Unhealthy"),
    (300, "Very Unhealthy"),
    (500, "Hazardous"),
)
BEYOND_THE_AQI = "Beyond the AQI"

_Row = tuple[str, str, int, int]
# (BPLo, BPHi, ILo, IHi); breakpoints as strings so that they are exact decimals.
AQI_BREAKPOINTS_2024: dict[str, tuple[_Row, ...]] = {
    "o3_8h": (
        ("0.000", "0.054", 0, 50), ("0.055", "0.070", 51, 100), ("0.071", "0.085", 101, 150),
        ("0.086", "0.105", 151, 200), ("0.106", "0.200", 201, 300),
    ),
    "o3_1h": (
        ("0.125", "0.164", 101, 150), ("0.165", "0.204", 151, 200), ("0.205", "0.404", 201, 300),
        ("0.405", "0.604", 301, 500),
    ),
    "pm25_24h": (
        ("0.0", "9.0", 0, 50), ("9.1", "35.4", 51, 100), ("35.5", "55.4", 101, 150),
        ("55.5", "125.4", 151, 200), ("125.5", "225.4", 201, 300), ("225.5", "325.4", 301, 500),
    ),
    "pm10_24h": (
        ("0", "54", 0, 50), ("55", "154", 51, 100), ("155", "254", 101, 150), ("255", "354", 151, 200),
        ("355", "424", 201, 300), ("425", "604", 301, 500),
    ),
    "co_8h": (
        ("0.0", "4.4", 0, 50), ("4.5", "9.4", 51, 100), ("9.5", "12.4", 101, 150), ("12.5", "15.4", 151, 200),
        ("15.5", "30.4", 201, 300), ("30.5", "50.4", 301, 500),
    ),
    "so2_1h": (("0", "35", 0, 50), ("36", "75", 51, 100), ("76", "185", 101, 150), ("186", "304", 151, 200)),
    # 1-hour SO2 does not define AQI values of 200 or more; the 24-hour concentration does.
    "so2_24h": (("305", "604", 201, 300), ("605", "1004", 301, 500)),
    "no2_1h": (
        ("0", "53", 0, 50), ("54", "100", 51, 100), ("101", "360", 101, 150), ("361", "649", 151, 200),
        ("650", "1249", 201, 300), ("1250", "2049", 301, 500),
    ),
}
AQI_TRUNCATION: dict[str, str] = {
    "o3_8h": "0.001", "o3_1h": "0.001", "pm25_24h": "0.1", "pm10_24h": "1", "co_8h": "0.1",
    "so2_1h": "1", "so2_24h": "1", "no2_1h": "1",
}
MOLECULAR_WEIGHTS: dict[str, float] = {"no2": 46.0055, "o3": 47.9982, "so2": 64.066, "co": 28.010}
MOLAR_VOLUME_25C = 24.45


@dataclass(frozen=True, slots=True)
class UsAqi:
    """An AQI value (None beyond the top breakpoint), its category and responsible pollutant."""

    aqi: int | None
    category: str
    pollutant: str


def ugm3_to_ppb(pollutant: str, concentration_ugm3: float) -> float:
    """Convert a gas concentration from µg/m³ to ppb at 25 °C and 1 atm."""
    return concentration_ugm3 * MOLAR_VOLUME_25C / MOLECULAR_WEIGHTS[pollutant]


def aqi_category(aqi: int) -> str:
    """Category name of an AQI value."""
    for upper, name in AQI_CATEGORIES:
        if aqi <= upper:
            return name
    return BEYOND_THE_AQI


def truncate_concentration(metric: str, concentration: float) -> Decimal:
    """Truncate a concentration to the precision the TAD prescribes for `metric`."""
    quantum = Decimal(AQI_TRUNCATION[metric])
    return Decimal(repr(float(concentration))).quantize(quantum, rounding=ROUND_DOWN)


@functools.lru_cache(maxsize=65536)
def aqi_sub_index(metric: str, concentration: float) -> UsAqi | None:
    """Sub-index of one metric (`pm25_24h`, `o3_8h`, `no2_1h` … in the TAD's units).

    None when the metric has no AQI at that level (1-hour O3 below 0.125 ppm, 8-hour O3 above
    0.200 ppm where the 1-hour value must be used, 1-hour SO2 above 304 ppb where the 24-hour
    value must be used). Above the top breakpoint the category is "Beyond the AQI".
    """
    # Cached (pure, and the result is immutable): a live engine sees the same rounded values again and again.
    if concentration < 0:
        raise ValueError(f"a concentration cannot be negative: {metric}={concentration}")
    rows = AQI_BREAKPOINTS_2024[metric]
    pollutant = metric.split("_")[0]
    cp = truncate_concentration(metric, concentration)
    for lo, hi, i_lo, i_hi in rows:
        bp_lo, bp_hi = Decimal(lo), Decimal(hi)
        if bp_lo <= cp <= bp_hi:
            value = (Decimal(i_hi - i_lo) / (bp_hi - bp_lo)) * (cp - bp_lo) + i_lo
            aqi = int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))
            return UsAqi(aqi, aqi_category(aqi), pollutant)
    if cp < Decimal(rows[0][0]) or metric in ("o3_8h", "so2_1h"):
        return None
    return UsAqi(None, BEYOND_THE_AQI, pollutant)


def us_air_quality_index(metrics: Mapping[str, float | None]) -> UsAqi | None:
    """The overall AQI: the largest sub-index over the metrics given (TAD units).

    For O3 both the 8-hour and the 1-hour index are computed where given and the higher one
    counts, as the TAD allows. A metric beyond the AQI makes the whole index beyond it.
    """
    results = [
        sub
        for metric, value in metrics.items()
        if value is not None and (sub := aqi_sub_index(metric, value)) is not None
    ]
    if not results:
        return None
    beyond = [r for r in results if r.aqi is None]
    if beyond:
        return beyond[0]
    return max(results, key=lambda r: r.aqi or 0)


def nowcast(hourly: Sequence[float | None], metric: str = "pm25_24h") -> float | None:
    """NowCast of PM from the last 12 hourly values, most recent first (EPA/AirNow).

    Needs at least two of the three most recent hours. w* = min/max over the available values,
    w = max(w*, 0.5), NowCast = Σ w^(i−1)·c_i / Σ w^(i−1); the result is truncated like the
    24-hour metric it stands in for.
    """
    last12 = list(hourly[:12])
    if sum(v is not None for v in last12[:3]) < 2:
        return None
    values = [(i, v) for i, v in enumerate(last12) if v is not None]
    highest = max(v for _, v in values)
    lowest = min(v for _, v in values)
    weight = 1.0 if highest == 0 else max(lowest / highest, 0.5)
    numerator = sum(weight**i * v for i, v in values)
    denominator = sum(weight**i for i, _ in values)
    return float(truncate_concentration(metric, numerator / denominator))


# -- vectorised forms (every hour of a series at once; equal to the scalar functions above) -------


def lagged(hourly: np.ndarray, hours: int) -> np.ndarray:
    """The series `hours` hours earlier: element t holds `hourly[t - hours]` (NaN before the start)."""
    if hours == 0:
        return hourly
    shifted = np.full_like(hourly, np.nan)
    if hours < len(hourly):
        shifted[hours:] = hourly[:-hours]
    return shifted


def truncate_concentrations(metric: str, concentrations: np.ndarray) -> np.ndarray:
    """`float(truncate_concentration(metric, c))` of every element (NaN stays NaN).

    The quantum is a power of ten; floor(c / quantum) in binary floating point agrees with the
    decimal truncation except within a hair of a multiple of the quantum, where the scalar
    function decides.
    """
    quantum = float(AQI_TRUNCATION[metric])
    scale = 1.0 / quantum  # 1, 10 or 1000: exact
    scaled = concentrations * scale
    result = np.floor(scaled) / scale
    near = np.abs(scaled - np.rint(scaled)) < 1e-6
    for index in np.flatnonzero(near & ~np.isnan(concentrations)):
        result[index] = float(truncate_concentration(metric, float(concentrations[index])))
    return result


def nowcasts(hourly: np.ndarray, metric: str = "pm25_24h") -> np.ndarray:
    """`nowcast` at every hour of a time-ordered hourly series (NaN = no value); NaN where it gives None.

    Element t is the NowCast of hours t, t-1, …, t-11, with the scalar function's weights,
    summation order and truncation.
    """
    lags = [lagged(hourly, k) for k in range(12)]
    valid = [~np.isnan(lag) for lag in lags]
    recent = valid[0].astype(np.int8) + valid[1] + valid[2]
    stacked = np.vstack(lags)
    with np.errstate(invalid="ignore", divide="ignore"):
        highest = np.fmax.reduce(stacked, axis=0)
        lowest = np.fmin.reduce(stacked, axis=0)
        weight = np.where(highest == 0, 1.0, np.maximum(lowest / highest, 0.5))
    numerator = np.zeros_like(hourly)
    denominator = np.zeros_like(hourly)
    for k in range(12):
        # An exponent array makes numpy call pow() like Python's float ** int (a scalar 2 would square).
        factor = np.power(weight, np.full_like(weight, float(k))) if k else np.ones_like(weight)
        numerator += np.where(valid[k], factor * np.where(valid[k], lags[k], 0.0), 0.0)
        denominator += np.where(valid[k], factor, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(recent >= 2, numerator / denominator, np.nan)
    return truncate_concentrations(metric, raw)


def sub_indices(metric: str, concentrations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`aqi_sub_index` of every element as (AQI, beyond): AQI NaN where there is none (or beyond the AQI).

    The scalar function is called once per distinct concentration (they repeat: values are rounded).
    """
    aqi = np.full(concentrations.shape, np.nan)
    beyond = np.zeros(concentrations.shape, dtype=bool)
    present = ~np.isnan(concentrations)
    if not present.any():
        return aqi, beyond
    distinct, inverse = np.unique(concentrations[present], return_inverse=True)
    lookup_aqi = np.full(len(distinct), np.nan)
    lookup_beyond = np.zeros(len(distinct), dtype=bool)
    for index, value in enumerate(distinct.tolist()):
        sub = aqi_sub_index(metric, value)
        if sub is not None:
            if sub.aqi is None:
                lookup_beyond[index] = True
            else:
                lookup_aqi[index] = sub.aqi
    aqi[present] = lookup_aqi[inverse]
    beyond[present] = lookup_beyond[inverse]
    return aqi, beyond

"""Hourly training frames for the twin: resampling, honest gap handling, features and splits.

The twin speaks the Smart Data Models' attribute names (`pm25`, `no2`, `temperature`,
`windSpeed` …) whatever the source: history read from a broker or a station file mapped to
those names. Short gaps (up to `max_gap_hours`) are interpolated in time; longer gaps stay
missing, and every window that touches a missing value is left out of training and
evaluation rather than filled with made-up values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

POLLUTANTS: tuple[str, ...] = ("pm25", "pm10", "so2", "no2", "co", "o3")
WEATHER: tuple[str, ...] = (
    "temperature", "atmosphericPressure", "dewPoint", "precipitation", "windSpeed", "windDirection",
)
CALENDAR: tuple[str, ...] = ("hour_sin", "hour_cos", "doy_sin", "doy_cos", "dow_sin", "dow_cos")

COMPASS_DEGREES: dict[str, float] = {
    name: i * 22.5
    for i, name in enumerate(
        ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"]
    )
}


def hourly_frame(observations: pd.DataFrame, *, max_gap_hours: int = 3) -> pd.DataFrame:
    """Resample observations (a DatetimeIndex in UTC, one column per attribute) to a regular
    hourly grid: hourly means, then time interpolation of gaps of at most `max_gap_hours`."""
    if not isinstance(observations.index, pd.DatetimeIndex):
        raise ValueError("observations need a DatetimeIndex")
    index = observations.index
    if index.tz is None:
        raise ValueError("observation times must carry a time zone")
    numeric = observations.apply(pd.to_numeric, errors="coerce").astype("float64")
    hourly = numeric.resample("1h").mean()
    filled = hourly.interpolate(method="time", limit_area="inside")
    # pandas' `limit` would fill the first hours of a long gap too: fill only whole short gaps.
    for column in hourly.columns:
        missing = hourly[column].isna()
        run_id = (missing != missing.shift()).cumsum()
        run_length = missing.groupby(run_id).transform("sum")
        filled.loc[missing & (run_length > max_gap_hours), column] = np.nan
    return filled


SEASONAL_HISTORY = pd.Timedelta(days=730)
"""History a model needs before the day-of-year cycle is one of its features (see add_features)."""


def add_features(hourly: pd.DataFrame, *, local_tz: str | None = None, seasonal: bool | None = None) -> pd.DataFrame:
    """Model features: wind direction as a vector, calendar cycles in local time.

    The day-of-year cycle is only a feature when the training part of the history (its first
    60 %) covers a full year, i.e. the history spans two years (`seasonal` None decides from the
    data): on less, the months ahead would be extrapolated, not learned.
    """
    frame = hourly.copy()
    if "windDirection" in frame:
        radians = np.deg2rad(frame.pop("windDirection"))
        speed = frame["windSpeed"] if "windSpeed" in frame else 1.0
        frame["wind_u"] = -np.sin(radians) * speed
        frame["wind_v"] = -np.cos(radians) * speed
    assert isinstance(frame.index, pd.DatetimeIndex)
    local = frame.index.tz_convert(local_tz) if local_tz else frame.index
    hour = local.hour.to_numpy()
    doy = local.day_of_year.to_numpy()
    dow = local.day_of_week.to_numpy()
    frame["hour_sin"], frame["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    if seasonal is None:
        seasonal = len(frame) > 0 and bool(frame.index[-1] - frame.index[0] >= SEASONAL_HISTORY)
    if seasonal:
        frame["doy_sin"], frame["doy_cos"] = np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)
    frame["dow_sin"], frame["dow_cos"] = np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)
    return frame


@dataclass(frozen=True)
class Split:
    """A chronological split of an hourly frame: train, validation and test in time order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def chronological_split(frame: pd.DataFrame, *, validation: float = 0.1, test: float = 0.2) -> Split:
    """The last `test` share is the test set, the `validation` share before it validates."""
    n = len(frame)
    test_start = round(n * (1 - test))
    val_start = round(n * (1 - test - validation))
    return Split(frame.iloc[:val_start], frame.iloc[val_start:test_start], frame.iloc[test_start:])


@dataclass(frozen=True)
class Windows:
    """Supervised samples: `inputs[i]` holds `lookback` hours of features ending at origin
    `origins[i]`; `future[i]` the known covariates (weather forecast, calendar) for origin + 1
    … origin + horizon; `targets[i]` the target over those hours."""

    inputs: np.ndarray
    future: np.ndarray
    targets: np.ndarray
    origins: pd.DatetimeIndex


def make_windows(
    frame: pd.DataFrame,
    features: Sequence[str],
    target: str,
    *,
    lookback: int,
    horizon: int,
    future_features: Sequence[str] = (),
    future_frame: pd.DataFrame | None = None,
    require_targets: bool = True,
) -> Windows:
    """Sliding windows over an hourly frame; windows with any missing input, covariate or
    (when `require_targets`) target are dropped.

    Covariates come from `future_frame` when given (e.g. a weather forecast aligned on the
    same index), else from `frame` itself (observed weather standing in for a perfect forecast).
    """
    values = frame[list(features)].to_numpy(dtype="float32")
    target_values = frame[target].to_numpy(dtype="float32")
    source = frame if future_frame is None else future_frame
    covariates = source[list(future_features)].to_numpy(dtype="float32")
    n = len(frame)
    last_origin = n - 1 - (horizon if require_targets or future_features else 0)
    if last_origin < lookback - 1:
        return Windows(
            np.empty((0, lookback, len(features)), dtype="float32"),
            np.empty((0, horizon, len(future_features)), dtype="float32"),
            np.empty((0, horizon), dtype="float32"),
            pd.DatetimeIndex([], tz="UTC"),
        )
    origins = np.arange(lookback - 1, last_origin + 1)
    clean = _clean_spans(np.isnan(values).any(axis=1), origins - lookback + 1, origins + 1)
    ahead = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    if future_features:
        clean &= _clean_spans(np.isnan(covariates).any(axis=1), origins + 1, origins + horizon + 1)
    if require_targets:
        clean &= ~np.isnan(target_values[ahead]).any(axis=1)
    origins, ahead = origins[clean], ahead[clean]
    inputs = values[origins[:, None] + np.arange(-lookback + 1, 1)[None, :]]
    future = covariates[ahead] if future_features else np.empty((len(origins), horizon, 0), dtype="float32")
    targets = target_values[ahead] if require_targets else np.full((len(origins), horizon), np.nan, "float32")
    index = frame.index[origins]
    assert isinstance(index, pd.DatetimeIndex)
    return Windows(inputs, future, targets, index)


def _clean_spans(bad: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """For each [start, stop) row span, whether no row in it is bad."""
    cumulative = np.concatenate([[0], np.cumsum(bad.astype("int32"))])
    return np.asarray(cumulative[stops] - cumulative[starts] == 0)

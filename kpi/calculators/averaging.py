"""Averaging periods with data-coverage rules: daily means, 8-hour running means, annual means.

Rules of Directive 2008/50/EC Annex VII and XI (kept in 2024/2881): a daily mean needs 75 % of
the hourly values (18 of 24), an 8-hour mean 75 % (6 of 8), the maximum daily 8-hour mean 75 %
of the day's running means (18 of 24), an annual value 90 % data capture.

Time convention: each hourly value is stamped with the START of its hour, in any time zone
(aware datetimes); `tz` says which local calendar days are meant. An 8-hour running mean is
assigned to the day on which it ends: the first window of a day covers 17:00 of the previous
day to 01:00, the last 16:00 to 24:00 (Annex VII), i.e. a window belongs to the day of its
last hour's start.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

import numpy as np

HourlyValue = tuple[datetime, float | None]

HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Averaged:
    """A mean over a period with the share of the expected values it was computed from.

    `value` is None when coverage is below the rule, so no wrong number is ever reported.
    """

    value: float | None
    valid: int
    expected: int

    @property
    def coverage(self) -> float:
        return self.valid / self.expected if self.expected else 0.0


def _by_hour(series: Iterable[HourlyValue], tz: tzinfo) -> dict[datetime, float]:
    """Valid values keyed by their local hour start; a later duplicate replaces an earlier one."""
    hours: dict[datetime, float] = {}
    for stamp, value in series:
        if stamp.tzinfo is None:
            raise ValueError(f"timestamps must carry a time zone: {stamp.isoformat()}")
        if value is None:
            continue
        local = stamp.astimezone(tz).replace(minute=0, second=0, microsecond=0)
        hours[local] = float(value)
    return hours


def daily_means(series: Iterable[HourlyValue], tz: tzinfo, *, min_hours: int = 18) -> dict[date, Averaged]:
    """Calendar-day means in `tz`; days with fewer than `min_hours` valid hours have no value."""
    per_day: dict[date, list[float]] = defaultdict(list)
    for local, value in _by_hour(series, tz).items():
        per_day[local.date()].append(value)
    return {
        day: Averaged(sum(values) / len(values) if len(values) >= min_hours else None, len(values), 24)
        for day, values in sorted(per_day.items())
    }


def running_8h_means(series: Iterable[HourlyValue], tz: tzinfo, *, min_hours: int = 6) -> dict[datetime, Averaged]:
    """8-hour running means keyed by the start of the window's LAST hour (local time)."""
    hours = _by_hour(series, tz)
    if not hours:
        return {}
    first, last = min(hours), max(hours)
    means: dict[datetime, Averaged] = {}
    end = first
    while end <= last:
        window = [hours[h] for k in range(8) if (h := end - k * HOUR) in hours]
        if window:
            means[end] = Averaged(sum(window) / len(window) if len(window) >= min_hours else None, len(window), 8)
        end += HOUR
    return means


def max_daily_8h_means(series: Iterable[HourlyValue], tz: tzinfo, *, min_windows: int = 18) -> dict[date, Averaged]:
    """Maximum daily 8-hour mean per local day (O3, CO), valid with ≥ `min_windows` valid means."""
    per_day: dict[date, list[float]] = defaultdict(list)
    seen_days: set[date] = set()
    for end, mean in running_8h_means(series, tz).items():
        seen_days.add(end.date())
        if mean.value is not None:
            per_day[end.date()].append(mean.value)
    return {
        day: Averaged(
            max(per_day[day]) if len(per_day[day]) >= min_windows else None, len(per_day[day]), 24
        )
        for day in sorted(seen_days)
    }


def hours_in_year(year: int) -> int:
    return (366 if calendar.isleap(year) else 365) * 24


def annual_mean(series: Iterable[HourlyValue], year: int, tz: tzinfo, *, min_coverage: float = 0.9) -> Averaged:
    """Calendar-year mean of the hourly values in `tz`; None below `min_coverage` data capture."""
    values = [v for local, v in _by_hour(series, tz).items() if local.year == year]
    expected = hours_in_year(year)
    ok = values and len(values) >= min_coverage * expected
    return Averaged(sum(values) / len(values) if ok else None, len(values), expected)


def hourly_values(series: Iterable[HourlyValue], tz: tzinfo) -> dict[datetime, float]:
    """The valid hourly values keyed by local hour start (for hourly limit values)."""
    return _by_hour(series, tz)


# -- vectorised forms (equal to the scalar functions above, element by element) ------------------


def sequential_sums(rows: np.ndarray) -> np.ndarray:
    """Sum of each row, NaN skipped, adding left to right like Python's `sum` (numpy's pairwise sum differs)."""
    total = np.zeros(rows.shape[0])
    for column in range(rows.shape[1]):
        values = rows[:, column]
        total += np.where(np.isnan(values), 0.0, values)
    return total


def trailing_8h_means(hourly: np.ndarray, *, min_hours: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(mean, count) of the valid values of the 8 hours ending at each hour of a time-ordered hourly series.

    The mean is NaN below `min_hours` valid hours; values are added most recent first, like
    `running_8h_means` and the US AQI's 8-hour means.
    """
    lags = np.full((len(hourly), 8), np.nan)
    for k in range(8):
        lags[k:, k] = hourly[: len(hourly) - k]
    counts = np.sum(~np.isnan(lags), axis=1)
    sums = sequential_sums(lags)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts >= min_hours, sums / counts, np.nan)
    return means, counts

"""Limit-value exceedances: EU Directive 2008/50/EC, the 2030 limits of 2024/2881, WHO 2021.

Sources: Directive 2008/50/EC Annex XI (limit values) and Annex VII (ozone target value);
Directive (EU) 2024/2881 Annex I Section 1 Table 1 (values to be attained by 1 January 2030);
WHO global air quality guidelines 2021, Executive summary Table 0.1 (AQG levels).
All values in µg/m³ (CO in mg/m³ in the texts, µg/m³ here: 10 mg/m³ = 10,000 µg/m³).

An exceedance is a value strictly greater than the limit; a year complies when the number of
exceedances is at most the number allowed. Daily values follow the coverage rules of
`kpi.calculators.averaging`; a result whose coverage is below the rule is flagged
insufficient rather than reported as compliant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Literal

from kpi.calculators.averaging import (
    HourlyValue,
    annual_mean,
    daily_means,
    hourly_values,
    hours_in_year,
    max_daily_8h_means,
)

Averaging = Literal["hour", "day", "max_daily_8h_mean", "year"]


@dataclass(frozen=True, slots=True)
class LimitValue:
    """One limit of a standard: pollutant, averaging period, value and allowed exceedances."""

    standard: str
    pollutant: str
    averaging: Averaging
    value: float
    allowed_exceedances: int | None


EU_2008_50: tuple[LimitValue, ...] = (
    LimitValue("EU 2008/50/EC", "pm10", "day", 50, 35),
    LimitValue("EU 2008/50/EC", "pm10", "year", 40, None),
    LimitValue("EU 2008/50/EC", "pm25", "year", 25, None),
    LimitValue("EU 2008/50/EC", "no2", "hour", 200, 18),
    LimitValue("EU 2008/50/EC", "no2", "year", 40, None),
    LimitValue("EU 2008/50/EC", "so2", "hour", 350, 24),
    LimitValue("EU 2008/50/EC", "so2", "day", 125, 3),
    LimitValue("EU 2008/50/EC", "co", "max_daily_8h_mean", 10_000, None),
    # Target value: 25 days per year averaged over three years; counted here per year.
    LimitValue("EU 2008/50/EC", "o3", "max_daily_8h_mean", 120, 25),
)
EU_2024_2881: tuple[LimitValue, ...] = (
    LimitValue("EU 2024/2881 (2030)", "pm25", "day", 25, 18),
    LimitValue("EU 2024/2881 (2030)", "pm25", "year", 10, None),
    LimitValue("EU 2024/2881 (2030)", "pm10", "day", 45, 18),
    LimitValue("EU 2024/2881 (2030)", "pm10", "year", 20, None),
    LimitValue("EU 2024/2881 (2030)", "no2", "hour", 200, 3),
    LimitValue("EU 2024/2881 (2030)", "no2", "day", 50, 18),
    LimitValue("EU 2024/2881 (2030)", "no2", "year", 20, None),
    LimitValue("EU 2024/2881 (2030)", "so2", "hour", 350, 3),
    LimitValue("EU 2024/2881 (2030)", "so2", "day", 50, 18),
    LimitValue("EU 2024/2881 (2030)", "so2", "year", 20, None),
    LimitValue("EU 2024/2881 (2030)", "co", "max_daily_8h_mean", 10_000, None),
    LimitValue("EU 2024/2881 (2030)", "co", "day", 4_000, 18),
    LimitValue("EU 2024/2881 (2030)", "o3", "max_daily_8h_mean", 120, 18),
)
# WHO 2021: a 24-hour AQG is the 99th percentile of daily values, i.e. 3–4 exceedance days a year.
WHO_2021: tuple[LimitValue, ...] = (
    LimitValue("WHO 2021 AQG", "pm25", "year", 5, None),
    LimitValue("WHO 2021 AQG", "pm25", "day", 15, 4),
    LimitValue("WHO 2021 AQG", "pm10", "year", 15, None),
    LimitValue("WHO 2021 AQG", "pm10", "day", 45, 4),
    LimitValue("WHO 2021 AQG", "o3", "max_daily_8h_mean", 100, 4),
    LimitValue("WHO 2021 AQG", "no2", "year", 10, None),
    LimitValue("WHO 2021 AQG", "no2", "day", 25, 4),
    LimitValue("WHO 2021 AQG", "so2", "day", 40, 4),
    LimitValue("WHO 2021 AQG", "co", "day", 4_000, 4),
)
STANDARDS: dict[str, tuple[LimitValue, ...]] = {
    "eu-2008-50": EU_2008_50,
    "eu-2024-2881": EU_2024_2881,
    "who-2021": WHO_2021,
}


@dataclass(frozen=True, slots=True)
class Exceedances:
    """Outcome of checking one limit over one calendar year.

    `exceedances` counts the valid periods above the limit (for an annual limit: 1 if the
    annual mean is above it). `value` is the annual mean for annual limits. `sufficient` is
    False when coverage is below the rule (the year needs 90 % valid periods); then
    `compliant` is None: not enough data to say.
    """

    limit: LimitValue
    year: int
    exceedances: int
    valid_periods: int
    expected_periods: int
    value: float | None
    sufficient: bool
    compliant: bool | None

    @property
    def coverage(self) -> float:
        return self.valid_periods / self.expected_periods if self.expected_periods else 0.0


def find_limit(standard: str, pollutant: str, averaging: Averaging) -> LimitValue:
    """The limit of `standard` for a pollutant and averaging period, or ValueError."""
    for limit in STANDARDS[standard]:
        if limit.pollutant == pollutant and limit.averaging == averaging:
            return limit
    raise ValueError(f"{standard} has no {averaging} limit for {pollutant}")


def count_exceedances(
    limit: LimitValue,
    series: Iterable[HourlyValue],
    year: int,
    tz: tzinfo,
    *,
    min_coverage: float = 0.9,
) -> Exceedances:
    """Check `limit` on an hourly series for one calendar year in local time `tz`."""
    values = list(series)
    days_in_year = hours_in_year(year) // 24
    if limit.averaging == "year":
        mean = annual_mean(values, year, tz, min_coverage=min_coverage)
        sufficient = mean.value is not None
        over = int(mean.value is not None and mean.value > limit.value)
        return Exceedances(
            limit, year, over, mean.valid, mean.expected, mean.value, sufficient,
            (not over) if sufficient else None,
        )
    if limit.averaging == "hour":
        period_values = [v for t, v in hourly_values(values, tz).items() if t.year == year]
        expected = hours_in_year(year)
    else:
        per_day = daily_means(values, tz) if limit.averaging == "day" else max_daily_8h_means(values, tz)
        period_values = [a.value for d, a in per_day.items() if d.year == year and a.value is not None]
        expected = days_in_year
    over = sum(1 for v in period_values if v > limit.value)
    sufficient = len(period_values) >= min_coverage * expected
    allowed = limit.allowed_exceedances or 0
    # More exceedances than allowed is non-compliance whatever the coverage.
    if over > allowed:
        compliant: bool | None = False
    else:
        compliant = True if sufficient else None
    return Exceedances(limit, year, over, len(period_values), expected, None, sufficient, compliant)

"""ISO 8601 durations as `aggrPeriodDuration` uses them: calendar months apart from fixed time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

_DURATION = re.compile(
    r"^P(?!$)"
    r"(?:(?P<years>\d+)Y)?"
    r"(?:(?P<months>\d+)M)?"
    r"(?:(?P<weeks>\d+)W)?"
    r"(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)"
    r"(?:(?P<hours>\d+)H)?"
    r"(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?"
    r")?$"
)


@dataclass(frozen=True, slots=True)
class Period:
    """A duration split the way calendars need it: whole months, plus a fixed time span."""

    months: int
    fixed: timedelta

    @property
    def is_zero(self) -> bool:
        """`P0D`: GS CIM 009 4.5.19 says the whole requested interval is one period."""
        return self.months == 0 and self.fixed == timedelta(0)

    @property
    def is_calendar(self) -> bool:
        """Months or years: buckets follow the calendar, not a fixed number of seconds."""
        return self.months > 0


MAX_SPAN_MONTHS = 12 * 1000
MAX_SPAN = timedelta(days=366 * 1000)


def parse_duration(text: str) -> Period:
    """Parse an ISO 8601 duration (`P1D`, `PT1H`, `P1M`, `P1Y2M`, `PT0.5S`); ValueError if malformed."""
    match = _DURATION.match(text.strip().upper())
    if match is None:
        raise ValueError(f"'{text}' is not an ISO 8601 duration such as P1D, PT1H or P1M")
    parts = match.groupdict()
    months = int(parts["years"] or 0) * 12 + int(parts["months"] or 0)
    try:
        fixed = timedelta(
            weeks=int(parts["weeks"] or 0),
            days=int(parts["days"] or 0),
            hours=int(parts["hours"] or 0),
            minutes=int(parts["minutes"] or 0),
            seconds=float((parts["seconds"] or "0").replace(",", ".")),
        )
    except OverflowError:
        fixed = MAX_SPAN * 2
    if months > MAX_SPAN_MONTHS or fixed > MAX_SPAN:  # PostgreSQL's timestamps end in year 294276
        raise ValueError(f"'{text}' is longer than {MAX_SPAN_MONTHS // 12} years")
    if months and fixed:
        raise ValueError(f"'{text}' mixes calendar months with days or hours; use either months/years or a fixed span")
    return Period(months=months, fixed=fixed)

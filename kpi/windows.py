"""Calculation windows of KPIs (hour, rolling 8 hours, day, month, calendar year, custom) in a city's local time.

A window is half-open, `[start, end)`, with aware local datetimes. Hourly values are stamped
with the start of their hour (as `kpi.calculators.averaging` expects), so the hour window
`[11:00, 12:00)` holds the value observed at 11:00. A rolling 8-hour window is named after its
last hour: the window of 11:00 covers 04:00 to 12:00 (Directive 2008/50/EC Annex VII assigns an
8-hour mean to the hour it ends in).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WindowKind = Literal["hour", "rolling_8h", "day", "month", "year", "custom"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("hour", "rolling_8h", "day", "month", "year", "custom")

HOUR = timedelta(hours=1)

CALCULATION_FREQUENCY: dict[WindowKind, str] = {
    "hour": "hourly",
    "rolling_8h": "hourly",
    "day": "daily",
    "month": "monthly",
    "year": "yearly",
}
"""Smart Data Model `calculationFrequency` of each window kind (custom windows name their own)."""

SERIES_KINDS: frozenset[WindowKind] = frozenset({"hour", "rolling_8h", "day"})
"""Short windows: one KPI entity per station whose history holds one value per window.
Longer windows get one entity per period."""


def parse_timezone(name: str) -> tzinfo:
    """An IANA zone name (`Europe/Madrid`), `UTC`, or a fixed offset (`+08:00`)."""
    text = name.strip()
    if text.upper() in ("UTC", "Z"):
        return UTC
    if text[:1] in "+-" and len(text) == 6 and text[3] == ":":
        sign = 1 if text[0] == "+" else -1
        try:
            offset = timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))
        except ValueError:
            raise ValueError(f"{name!r} is not a UTC offset such as +08:00") from None
        return timezone(sign * offset, text)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is neither an IANA time zone nor an offset such as +08:00") from None


@dataclass(frozen=True, slots=True)
class Window:
    """One calculation window `[start, end)` in local time."""

    kind: WindowKind
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        """The window's name in entity ids: `2016-03-15T11`, `2016-03-15`, `2016-03`, `2016`, `20160101-20161231`."""
        if self.kind == "hour":
            return self.start.strftime("%Y-%m-%dT%H")
        if self.kind == "rolling_8h":
            return (self.end - HOUR).strftime("%Y-%m-%dT%H")
        if self.kind == "day":
            return self.start.strftime("%Y-%m-%d")
        if self.kind == "month":
            return self.start.strftime("%Y-%m")
        if self.kind == "year":
            return self.start.strftime("%Y")
        return f"{self.start:%Y%m%d}-{self.last_day:%Y%m%d}"

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        """The last local calendar day the window touches (SDM `calculationPeriod.to`)."""
        return (self.end - timedelta(microseconds=1)).date()

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def following(self) -> Window:
        """The next window of the same kind (for custom windows: the same length, right after)."""
        if self.kind == "custom":
            return Window("custom", self.end, self.end + (self.end - self.start))
        return window_at(self.kind, self.end, self.start.tzinfo or UTC)


def _local(moment: datetime, tz: tzinfo) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"a moment must carry a time zone: {moment.isoformat()}")
    return moment.astimezone(tz)


def _add_months(day: datetime, months: int) -> datetime:
    index = day.year * 12 + day.month - 1 + months
    return day.replace(year=index // 12, month=index % 12 + 1)


def window_at(
    kind: WindowKind, moment: datetime, tz: tzinfo, *, custom: tuple[datetime, datetime] | None = None
) -> Window:
    """The window of `kind` that contains `moment` (a rolling 8-hour window: the one ending in its hour)."""
    local = _local(moment, tz)
    hour = local.replace(minute=0, second=0, microsecond=0)
    if kind == "hour":
        return Window(kind, hour, _next_hour(hour, tz))
    if kind == "rolling_8h":
        return Window(kind, _shift_hours(hour, -7, tz), _next_hour(hour, tz))
    if kind == "day":
        start = hour.replace(hour=0)
        return Window(kind, start, _midnight(start.date() + timedelta(days=1), tz))
    if kind == "month":
        start = hour.replace(day=1, hour=0)
        return Window(kind, start, _add_months(start, 1).replace(tzinfo=tz))
    if kind == "year":
        start = hour.replace(month=1, day=1, hour=0)
        return Window(kind, start, start.replace(year=start.year + 1))
    if custom is None:
        raise ValueError("a custom window needs its start and end")
    return Window("custom", custom[0].astimezone(tz), custom[1].astimezone(tz))


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _next_hour(hour: datetime, tz: tzinfo) -> datetime:
    # Arithmetic in UTC, so that an hour is an hour also across a daylight-saving change.
    return (hour.astimezone(UTC) + HOUR).astimezone(tz)


def _shift_hours(hour: datetime, hours: int, tz: tzinfo) -> datetime:
    return (hour.astimezone(UTC) + hours * HOUR).astimezone(tz)


def windows_between(
    kind: WindowKind,
    since: datetime,
    until: datetime,
    tz: tzinfo,
    *,
    custom: tuple[datetime, datetime] | None = None,
) -> Iterator[Window]:
    """Every window of `kind` that overlaps `[since, until)`, in time order."""
    if kind == "custom":
        window = window_at(kind, since, tz, custom=custom)
        if window.start < until and window.end > since:
            yield window
        return
    if kind == "rolling_8h":
        # Windows are named by their last hour: every hour from `since` on ends one.
        moment = _local(since, tz).replace(minute=0, second=0, microsecond=0)
        while moment < until:
            yield window_at(kind, moment, tz)
            moment = _next_hour(moment, tz)
        return
    window = window_at(kind, since, tz)
    while window.start < until:
        yield window
        window = window_at(kind, window.end, tz)


def previous_window(window: Window, count: int, tz: tzinfo) -> Window:
    """The window `count` periods before `window` (same kind): the baseline of a comparison."""
    if window.kind == "custom":
        length = window.end - window.start
        return Window("custom", window.start - count * length, window.end - count * length)
    if window.kind in ("hour", "rolling_8h"):
        return window_at(window.kind, _shift_hours(window.end - HOUR, -count, tz), tz)
    if window.kind == "day":
        return window_at("day", window.start - timedelta(days=count), tz)
    if window.kind == "month":
        return window_at("month", _add_months(window.start, -count), tz)
    return window_at("year", window.start.replace(year=window.start.year - count), tz)

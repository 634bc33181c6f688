"""Observation times from file columns: parse with a format in a time zone, answer NGSI-LD UTC text (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$")
_DIRECTIVES = {
    "Y": r"(?P<Y>\d{4})",
    "m": r"(?P<m>\d{1,2})",
    "d": r"(?P<d>\d{1,2})",
    "H": r"(?P<H>\d{1,2})",
    "M": r"(?P<M>\d{1,2})",
    "S": r"(?P<S>\d{1,2})",
    "f": r"(?P<f>\d{1,6})",
}


class BadTimestamp(ValueError):
    """A time cell that does not follow the mapping's format."""


def time_zone_of(name: str) -> tzinfo:
    """`UTC`, a fixed offset (`+08:00`, `UTC+1`) or an IANA name (`Europe/Rome`); ValueError otherwise."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = _OFFSET.match(name.strip())
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > timedelta(hours=14):
            raise ValueError(f"offset {name!r} is larger than 14 hours")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"{name!r} is neither UTC, an offset like +08:00 nor an IANA time zone name") from error


def utc_text(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as NGSI-LD brokers write timestamps."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def _pattern(format_: str) -> re.Pattern[str] | None:
    """A regular expression for formats made only of numeric directives (much faster than strptime)."""
    parts: list[str] = []
    index = 0
    while index < len(format_):
        char = format_[index]
        if char == "%":
            directive = format_[index + 1 : index + 2]
            if directive not in _DIRECTIVES:
                return None
            parts.append(_DIRECTIVES[directive])
            index += 2
        else:
            parts.append(re.escape(char))
            index += 1
    return re.compile("".join(parts) + r"$")


def columns_parser(format_: str, time_zone: str, count: int) -> Callable[[list[Any]], str] | None:
    """A fast parser for times spread over `count` columns that each hold one number (`%Y %m %d %H`), else None."""
    tokens = format_.split(" ")
    order = ("Y", "m", "d", "H", "M", "S")
    if len(tokens) != count or any(len(t) != 2 or t[0] != "%" or t[1] not in order for t in tokens):
        return None
    directives = [t[1] for t in tokens]
    if len(set(directives)) != len(directives):
        return None
    slots = [directives.index(d) if d in directives else -1 for d in order]
    zone = time_zone_of(time_zone)
    fixed = zone.utcoffset(None) if not isinstance(zone, ZoneInfo) else None

    in_order = directives == list(order[: len(directives)]) and len(directives) >= 3
    # Hourly files repeat each day 24 times: the day's UTC start is computed once, then shifted.
    days: dict[tuple[Any, Any, Any], datetime] = {}
    hours = [timedelta(hours=hour) for hour in range(24)]

    def parse(cells: list[Any]) -> str:
        if in_order and fixed is not None and len(cells) == 4:
            day = (cells[0], cells[1], cells[2])
            start = days.get(day)
            try:
                if start is None:
                    if len(days) > 10_000:
                        days.clear()
                    start = days[day] = datetime(int(cells[0]), int(cells[1]), int(cells[2])) - fixed
                hour = int(cells[3])
                if not 0 <= hour < 24:
                    raise ValueError(f"hour {hour} is out of range")
                return (start + hours[hour]).isoformat(timespec="milliseconds") + "Z"
            except (ValueError, TypeError) as error:
                raise BadTimestamp(f"{' '.join(map(str, cells))!r} does not match the format {format_!r}") from error
        if in_order and fixed is not None:
            try:
                local = datetime(*map(int, cells))  # type: ignore[arg-type]
            except (ValueError, TypeError) as error:
                raise BadTimestamp(f"{' '.join(map(str, cells))!r} does not match the format {format_!r}") from error
            return (local - fixed).isoformat(timespec="milliseconds") + "Z"
        try:
            numbers = [int(cells[slot]) if slot >= 0 else (1 if index < 3 else 0) for index, slot in enumerate(slots)]
            local = datetime(numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[5])
        except (ValueError, TypeError) as error:
            raise BadTimestamp(f"{' '.join(map(str, cells))!r} does not match the format {format_!r}") from error
        if fixed is not None:
            return (local - fixed).isoformat(timespec="milliseconds") + "Z"
        return utc_text(local.replace(tzinfo=zone))

    return parse


def timestamp_parser(format_: str, time_zone: str) -> Callable[[str], str]:
    """A function from the time text (columns joined by one space) to NGSI-LD UTC text; BadTimestamp on failure.

    `format_`: `iso8601` (an offset in the text wins over `time_zone`), `epoch`, `epoch_ms`, or a
    strftime pattern. Local times that a daylight-saving change repeats take the first occurrence.
    """
    zone = time_zone_of(time_zone)
    fixed = zone.utcoffset(None) if not isinstance(zone, ZoneInfo) else None

    def to_utc(local: datetime) -> str:
        if local.tzinfo is not None:
            return utc_text(local.astimezone(UTC))
        if fixed is not None:
            return utc_text(local - fixed)
        return utc_text(local.replace(tzinfo=zone).astimezone(UTC))

    if format_ in ("epoch", "epoch_ms"):
        divisor = 1000.0 if format_ == "epoch_ms" else 1.0

        def parse_epoch(text: str) -> str:
            try:
                return utc_text(datetime.fromtimestamp(float(text) / divisor, UTC))
            except (ValueError, OverflowError, OSError) as error:
                raise BadTimestamp(f"{text!r} is not a {format_} timestamp") from error

        return parse_epoch
    if format_ == "iso8601":

        def parse_iso(text: str) -> str:
            try:
                return to_utc(datetime.fromisoformat(text.strip()))
            except ValueError as error:
                raise BadTimestamp(f"{text!r} is not an ISO 8601 date-time") from error

        return parse_iso
    pattern = _pattern(format_)
    if pattern is None:

        def parse_strptime(text: str) -> str:
            try:
                return to_utc(datetime.strptime(text.strip(), format_))
            except ValueError as error:
                raise BadTimestamp(f"{text!r} does not match the format {format_!r}") from error

        return parse_strptime

    def parse_numeric(text: str) -> str:
        match = pattern.match(text.strip())
        if match is None:
            raise BadTimestamp(f"{text!r} does not match the format {format_!r}")
        parts = match.groupdict()
        try:
            local = datetime(
                int(parts.get("Y") or 1970), int(parts.get("m") or 1), int(parts.get("d") or 1),
                int(parts.get("H") or 0), int(parts.get("M") or 0), int(parts.get("S") or 0),
                int((parts.get("f") or "0").ljust(6, "0")),
            )  # fmt: skip
        except ValueError as error:
            raise BadTimestamp(f"{text!r} is not a real date and time: {error}") from error
        return to_utc(local)

    return parse_numeric

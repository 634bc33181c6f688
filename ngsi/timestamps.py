"""NGSI-LD timestamps: ISO 8601 in UTC with milliseconds and `Z`, parsed strictly enough to reject garbage."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def format_timestamp(moment: datetime) -> str:
    """`2016-03-15T11:00:00.000Z`; naive datetimes are taken as UTC."""
    if moment.tzinfo is UTC:
        return _format_utc(moment)
    if moment.tzinfo is not None:
        # Converted before the cache: two local times of the hour that repeats when clocks go back
        # compare and hash equal (fold is ignored within one zone) but are different instants.
        moment = moment.astimezone(UTC)
    return _format_utc(moment.replace(tzinfo=UTC))


@lru_cache(maxsize=1024)
def _format_utc(moment: datetime) -> str:
    """Cached: a write formats the same `now` for every entity and change event it makes."""
    # isoformat is several times cheaper than strftime and always writes a 4-digit year.
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def utc_now_iso() -> str:
    """The current time as an NGSI-LD timestamp."""
    return format_timestamp(datetime.now(UTC))


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 date-time (with `Z`, an offset, or none meaning UTC) into an aware datetime.

    Raises ValueError when `text` is not a date-time (dates alone are not accepted).
    """
    if not isinstance(text, str) or "T" not in text.upper():
        raise ValueError(f"{text!r} is not an ISO 8601 date-time")
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@lru_cache(maxsize=4096)
def normalize_timestamp(text: str) -> str:
    """Re-format any ISO 8601 date-time as UTC with milliseconds and `Z`.

    Cached: the attributes of one entity (and of a batch) usually share one observedAt text.
    Raises ValueError (or TypeError for unhashable values) when `text` is not a date-time.
    """
    return format_timestamp(parse_timestamp(text))

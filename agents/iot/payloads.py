"""Southbound payloads, UltraLight 2.0 and JSON, parsed into measures (attribute values with an optional time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

TIME_INSTANT = "TimeInstant"
"""The measure name FIWARE IoT Agents read as the observation time of its group."""


class PayloadError(ValueError):
    """A payload that is not valid UltraLight 2.0 or JSON measures; the message says where."""


@dataclass(frozen=True)
class Measure:
    """One group of values a device observed together: `object_id → raw value`, and when, if it said so."""

    values: dict[str, Any]
    observed_at: datetime | None = None


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date-time as an aware UTC datetime (no offset means UTC); PayloadError when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise PayloadError(f"{text!r} is not an ISO 8601 date-time") from error
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _looks_like_timestamp(text: str) -> bool:
    # Cheap pre-check before fromisoformat: 'YYYY-MM-DD...'.
    return len(text) >= 10 and text[4] == "-" and text[7] == "-" and text[:4].isdigit()


def parse_ultralight(payload: bytes | str) -> list[Measure]:
    """UltraLight 2.0 measures: `t|21.5|h|40#t|22|h|41`.

    `#` separates measure groups, `|` separates name and value; a group may start with an ISO
    8601 time (`2016-06-13T00:35:30Z|t|21`) or carry a `TimeInstant|<time>` pair, which becomes
    its observation time. Values stay text; typing happens when they are mapped.
    """
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    measures: list[Measure] = []
    for number, group in enumerate(text.strip().split("#"), start=1):
        fields = [part.strip() for part in group.strip().split("|")]
        if fields == [""]:
            continue
        observed_at: datetime | None = None
        if len(fields) % 2 == 1:
            if not _looks_like_timestamp(fields[0]):
                raise PayloadError(
                    f"UltraLight group {number} ({group.strip()!r}) has an odd number of fields and does not start"
                    " with a timestamp"
                )
            observed_at = parse_timestamp(fields[0])
            fields = fields[1:]
        values: dict[str, Any] = {}
        for index in range(0, len(fields), 2):
            name, value = fields[index], fields[index + 1]
            if not name:
                raise PayloadError(f"UltraLight group {number} has an empty attribute name")
            if name == TIME_INSTANT:
                observed_at = parse_timestamp(value)
                continue
            values[name] = value
        measures.append(Measure(values, observed_at))
    if not measures:
        raise PayloadError("empty UltraLight payload")
    return measures


def parse_json_measures(payload: bytes | str | Any) -> list[Measure]:
    """JSON measures: one object (`{"t": 21.5, "h": 40}`) or an array of them, `TimeInstant` as the time."""
    document = payload
    if isinstance(payload, bytes | str):
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise PayloadError(f"not JSON: {error}") from error
    objects = document if isinstance(document, list) else [document]
    if not objects:
        raise PayloadError("empty JSON array of measures")
    measures: list[Measure] = []
    for number, item in enumerate(objects, start=1):
        if not isinstance(item, dict):
            raise PayloadError(f"JSON measure {number} is a {type(item).__name__}, not an object")
        values = dict(item)
        observed_at = None
        stamp = values.pop(TIME_INSTANT, None)
        if stamp is not None:
            if not isinstance(stamp, str):
                raise PayloadError(f"JSON measure {number}: TimeInstant {stamp!r} is not a date-time string")
            observed_at = parse_timestamp(stamp)
        measures.append(Measure(values, observed_at))
    return measures


def parse_single_value(payload: bytes, attribute: str, *, json: bool) -> list[Measure]:
    """The payload of a single-attribute topic (`/…/attrs/<attr>`): the raw value of that attribute."""
    text = payload.decode("utf-8").strip()
    value: Any = text
    if json:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
    return [Measure({attribute: value})]


def looks_like_json(payload: bytes) -> bool:
    """Whether a payload of unknown protocol (legacy topics) is JSON rather than UltraLight."""
    start = payload.lstrip()[:1]
    return start in (b"{", b"[")

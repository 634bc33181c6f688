"""`climaborough kpi calc NAME --input FILE`: one calculator on a JSON document's values, to check a KPI by hand.

Input (every key but `series` optional):

    {"parameters": {...},                       # the calculator's parameters, as in a definition
     "timezone": "Asia/Shanghai",               # local time of the windows (default UTC)
     "window": {"kind": "year", "at": "2016-06-01T00:00:00+08:00"},   # default: the calculator's
                                                 # usual window containing the latest value
     "series": {"pm25": [["2016-03-15T11:00:00+08:00", 12.0], ...], ...}}

A series may also be a plain list of numbers; they are then taken as consecutive hours ending
with the window's last hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kpi.catalogue import find_calculator
from kpi.windows import HOUR, WINDOW_KINDS, parse_timezone, window_at


class CalcInputError(ValueError):
    """The JSON document does not fit the calculator."""


def _moment(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise CalcInputError(f"{where}: expected an ISO 8601 date-time, got {text!r}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CalcInputError(f"{where}: {text!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def calculate_from_input(name: str, document: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate calculator `name` on `document`; the result as plain JSON data."""
    try:
        calculator = find_calculator(name)
    except ValueError as error:
        raise CalcInputError(str(error)) from None
    if not isinstance(document, Mapping):
        raise CalcInputError("the input must be a JSON object with a `series` member")
    try:
        params = calculator.parameters(document.get("parameters") or {})
        tz = parse_timezone(str(document.get("timezone", "UTC")))
    except ValueError as error:
        raise CalcInputError(str(error)) from None
    raw_series = document.get("series")
    if not isinstance(raw_series, Mapping) or not raw_series:
        raise CalcInputError("`series` must be an object: attribute → [[time, value], ...] or [value, ...]")
    window_spec = document.get("window") or {}
    kind = window_spec.get("kind", calculator.default_window)
    if kind not in WINDOW_KINDS or kind == "custom":
        raise CalcInputError(f"window.kind must be one of {[k for k in WINDOW_KINDS if k != 'custom']}")
    if kind not in calculator.windows:
        raise CalcInputError(f"{name} takes the windows {list(calculator.windows)}, not {kind!r}")
    stamped_times = [
        _moment(point[0], f"series.{attr}[{i}]")
        for attr, points in raw_series.items() if isinstance(points, list)
        for i, point in enumerate(points) if isinstance(point, list)
    ]  # fmt: skip
    at = _moment(window_spec["at"], "window.at") if "at" in window_spec else max(stamped_times, default=None)
    if at is None:
        at = datetime(2000, 1, 1, tzinfo=tz)
    window = window_at(kind, at, tz)
    observations: dict[str, list[tuple[datetime, float]]] = {}
    for attr, points in raw_series.items():
        if not isinstance(points, list):
            raise CalcInputError(f"series.{attr}: must be a list")
        series = []
        for i, point in enumerate(points):
            if isinstance(point, list) and len(point) == 2:
                stamp, value = _moment(point[0], f"series.{attr}[{i}]"), point[1]
            elif isinstance(point, int | float) or point is None:
                stamp, value = window.end - (len(points) - i) * HOUR, point
            else:
                raise CalcInputError(f"series.{attr}[{i}]: expected [time, value] or a number, got {point!r}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CalcInputError(f"series.{attr}[{i}]: the value must be a number, got {value!r}")
            series.append((stamp, float(value)))
        observations[attr] = sorted(series)
    result = calculator.evaluate(params, observations, window, tz)
    output: dict[str, Any] = {
        "calculator": name,
        "window": {"kind": window.kind, "start": window.start.isoformat(), "end": window.end.isoformat()},
        "value": result.value,
    }
    if result.coverage is not None:
        output["coverage"] = result.coverage.as_value()
    if result.details:
        output["details"] = result.details
    return output

"""Generic KPI calculators over a window of values: mean, min, max, sum, percentile, counts,
ratio of two series and change against a baseline. Missing values (None) are skipped and
counted, so that a result always says how much data it stands on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A KPI value with the number of valid and of expected values behind it."""

    value: float | None
    valid: int
    expected: int

    @property
    def coverage(self) -> float:
        return self.valid / self.expected if self.expected else 0.0


def _valid(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _result(values: Sequence[float | None], compute: Callable[[list[float]], float]) -> WindowResult:
    valid = _valid(values)
    value = compute(valid) if valid else None
    return WindowResult(value, len(valid), len(values))


def window_mean(values: Sequence[float | None]) -> WindowResult:
    return _result(values, lambda v: sum(v) / len(v))


def window_min(values: Sequence[float | None]) -> WindowResult:
    return _result(values, min)


def window_max(values: Sequence[float | None]) -> WindowResult:
    return _result(values, max)


def window_sum(values: Sequence[float | None]) -> WindowResult:
    return _result(values, sum)


def percentile(values: Sequence[float | None], q: float) -> WindowResult:
    """The q-th percentile (0–100) with linear interpolation between ranks (numpy's default,
    Hyndman & Fan type 7)."""
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile must be between 0 and 100, not {q}")

    def compute(valid: list[float]) -> float:
        ordered = sorted(valid)
        rank = (len(ordered) - 1) * q / 100
        lower = math.floor(rank)
        upper = min(lower + 1, len(ordered) - 1)
        return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)

    return _result(values, compute)


def count_above(values: Sequence[float | None], threshold: float) -> WindowResult:
    """How many values are strictly above `threshold`."""
    return _result(values, lambda v: float(sum(1 for x in v if x > threshold)))


def count_below(values: Sequence[float | None], threshold: float) -> WindowResult:
    """How many values are strictly below `threshold`."""
    return _result(values, lambda v: float(sum(1 for x in v if x < threshold)))


def ratio(numerator: Sequence[float | None], denominator: Sequence[float | None]) -> WindowResult:
    """Sum of one series over the sum of another (e.g. renewable over total energy), both over
    the same periods: a period counts only when both have a value. None when the denominator
    sums to zero."""
    if len(numerator) != len(denominator):
        raise ValueError("ratio needs two series over the same periods")
    pairs = [(a, b) for a, b in zip(numerator, denominator, strict=True) if a is not None and b is not None]
    total = sum(b for _, b in pairs)
    value = sum(a for a, _ in pairs) / total if pairs and total else None
    return WindowResult(value, len(pairs), len(numerator))


def change_against_baseline(current: Sequence[float | None], baseline: Sequence[float | None]) -> WindowResult:
    """Relative change of the mean in percent: 100 × (mean(current) − mean(baseline)) / mean(baseline)."""
    now, before = window_mean(current), window_mean(baseline)
    value = None
    if now.value is not None and before.value:
        value = 100.0 * (now.value - before.value) / before.value
    return WindowResult(value, now.valid, now.expected)

"""Each source entity's observations, kept in memory by the live engine: seeded once from history, fed by notifications.

Times are integer microseconds since the Unix epoch (exact, cheap to compare and bisect);
`between` turns a slice back into the `(aware UTC datetime, value)` series the calculators take.
A source's observations are complete from `covered_from` on: older windows are read from the
temporal API instead. When the same instant is recorded twice, the later record wins (a
corrected value), except that history read while seeding never replaces a notified value.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from kpi.catalogue import Series

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """An aware datetime as exact microseconds since the epoch."""
    return (moment - EPOCH) // _MICROSECOND


@functools.lru_cache(maxsize=1 << 16)
def from_micros(micros: int) -> datetime:
    # Cached: every station's windows slice the same hours again and again (a datetime is immutable).
    return EPOCH + timedelta(microseconds=micros)


class AttributeSeries:
    """One attribute's values in time order."""

    __slots__ = ("stamps", "times", "values")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[float] = []
        self.stamps: list[datetime] | None = None
        """The times as datetimes, when kept (`keep_datetimes`): a backfill slices the same series ~10^4 times."""

    def keep_datetimes(self) -> None:
        self.stamps = [from_micros(t) for t in self.times]

    def put(self, micros: int, value: float, *, replace: bool = True) -> None:
        self.stamps = None
        times = self.times
        if not times or micros > times[-1]:
            times.append(micros)
            self.values.append(value)
            return
        index = bisect_left(times, micros)
        if index < len(times) and times[index] == micros:
            if replace:
                self.values[index] = value
            return
        times.insert(index, micros)
        self.values.insert(index, value)

    def between(self, start: int, end: int) -> Series:
        lo, hi = bisect_left(self.times, start), bisect_left(self.times, end)
        if self.stamps is not None:
            return list(zip(self.stamps[lo:hi], self.values[lo:hi], strict=True))
        return [(from_micros(t), v) for t, v in zip(self.times[lo:hi], self.values[lo:hi], strict=True)]

    def drop_before(self, micros: int) -> None:
        index = bisect_left(self.times, micros)
        if index:
            del self.times[:index]
            del self.values[:index]
            if self.stamps is not None:
                del self.stamps[:index]

    def __len__(self) -> int:
        return len(self.times)


class SourceObservations:
    """Every attribute of one source entity; complete from `covered_from` on once seeded (None before)."""

    __slots__ = ("attributes", "covered_from", "latest")

    def __init__(self) -> None:
        self.attributes: dict[str, AttributeSeries] = {}
        self.covered_from: int | None = None
        self.latest: int | None = None

    @property
    def seeded(self) -> bool:
        return self.covered_from is not None

    def record(self, attribute: str, moment: datetime, value: float, *, replace: bool = True) -> None:
        micros = to_micros(moment)
        series = self.attributes.get(attribute)
        if series is None:
            series = self.attributes[attribute] = AttributeSeries()
        series.put(micros, value, replace=replace)
        if self.latest is None or micros > self.latest:
            self.latest = micros

    def seed(
        self, history: Mapping[str, Iterable[tuple[datetime, float]]], covered_from: datetime,
        *, keep_datetimes: bool = False,
    ) -> None:
        """Add the history read from the broker (notified values recorded meanwhile stay) and mark it complete.

        `keep_datetimes` keeps the times also as datetimes (faster slices, more memory: for a backfill).
        """
        for attribute, series in history.items():
            for moment, value in series:
                self.record(attribute, moment, value, replace=False)
        start = to_micros(covered_from)
        if keep_datetimes:
            for kept in self.attributes.values():
                kept.keep_datetimes()
        self.covered_from = start if self.covered_from is None else min(self.covered_from, start)

    def covers(self, start: datetime) -> bool:
        return self.covered_from is not None and to_micros(start) >= self.covered_from

    def observations(self, attributes: Iterable[str], start: datetime, end: datetime) -> dict[str, Series]:
        """The values of `attributes` observed in `[start, end)`."""
        lo, hi = to_micros(start), to_micros(end)
        return {name: self.attributes[name].between(lo, hi) for name in attributes if name in self.attributes}

    def forget_before(self, moment: datetime) -> None:
        """Drop what no window still needs (the state stays complete from `moment` on)."""
        micros = to_micros(moment)
        if self.covered_from is None or micros <= self.covered_from:
            return
        for series in self.attributes.values():
            series.drop_before(micros)
        self.covered_from = micros

"""Checks and parses the query parameters of the temporal API into a `TemporalQuery` (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from broker.temporal.durations import Period, parse_duration
from ngsi.errors import BadRequestData, InvalidRequest, TooManyResults

TimeRel = Literal["before", "after", "between"]
TimeProperty = Literal["observedAt", "createdAt", "modifiedAt"]
Form = Literal["normalized", "concise", "temporalValues", "aggregatedValues"]

# GS CIM 009 4.5.19: the aggregation functions of the aggregated temporal representation.
AGGREGATION_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")

_TIMERELS: tuple[TimeRel, ...] = ("before", "after", "between")
_TIMEPROPERTIES: tuple[TimeProperty, ...] = ("observedAt", "createdAt", "modifiedAt")
_KNOWN_OPTIONS = {
    "normalized",
    "concise",
    "keyValues",
    "simplified",
    "temporalValues",
    "aggregatedValues",
    "sysAttrs",
    "count",
}


@dataclass(frozen=True, slots=True)
class TimeFilter:
    """GS CIM 009 4.11: which instances count, by `timerel` over one temporal property."""

    timerel: TimeRel | None = None
    time_at: datetime | None = None
    end_time_at: datetime | None = None
    timeproperty: TimeProperty = "observedAt"


@dataclass(frozen=True, slots=True)
class Aggregation:
    """GS CIM 009 4.5.19: the methods asked for and the period each value covers."""

    methods: tuple[str, ...]
    period: Period


@dataclass(frozen=True, slots=True)
class TemporalQuery:
    """Everything a temporal retrieval or query asks for, checked; names are still compact terms."""

    time: TimeFilter = field(default_factory=TimeFilter)
    ids: tuple[str, ...] = ()
    id_pattern: str | None = None
    type_expression: str | None = None
    attrs: tuple[str, ...] = ()
    q: str | None = None
    geo: dict[str, str] = field(default_factory=dict)
    last_n: int | None = None
    aggregation: Aggregation | None = None
    form: Form = "normalized"
    limit: int = 20
    offset: int = 0
    count: bool = False
    sys_attrs: bool = False


def parse_timestamp(name: str, text: str) -> datetime:
    """An ISO 8601 date-time as a naive UTC datetime (TRoE stores `timestamp` in UTC)."""
    candidate = text.strip().replace(" ", "+")  # '+' in a query string often arrives as a space
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise BadRequestData(
            f"{name} '{text}' is not an ISO 8601 date-time such as 2016-03-15T11:00:00Z", parameter=name
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def parse_time_filter(params: Mapping[str, str]) -> TimeFilter:
    """GS CIM 009 6.18.3.2 / 4.11: `timerel`, `timeAt`, `endTimeAt`, `timeproperty`."""
    timeproperty = params.get("timeproperty", "observedAt")
    if timeproperty not in _TIMEPROPERTIES:
        raise BadRequestData(
            f"timeproperty '{timeproperty}' must be one of observedAt, createdAt, modifiedAt",
            parameter="timeproperty",
        )
    timerel = params.get("timerel")
    time_at_text = params.get("timeAt") or params.get("timeat")
    end_text = params.get("endTimeAt") or params.get("endtimeat")
    if timerel is None:
        if time_at_text is not None:
            raise BadRequestData("timeAt given without timerel (before, after or between)", parameter="timerel")
        if end_text is not None:
            raise BadRequestData("endTimeAt given without timerel=between", parameter="timerel")
        return TimeFilter(timeproperty=timeproperty)
    if timerel not in _TIMERELS:
        raise BadRequestData(f"timerel '{timerel}' must be one of before, after, between", parameter="timerel")
    if not time_at_text:
        raise BadRequestData(f"timerel={timerel} needs timeAt", parameter="timeAt")
    time_at = parse_timestamp("timeAt", time_at_text)
    end_time_at = None
    if timerel == "between":
        if not end_text:
            raise BadRequestData("timerel=between needs endTimeAt", parameter="endTimeAt")
        end_time_at = parse_timestamp("endTimeAt", end_text)
        if end_time_at <= time_at:
            raise BadRequestData("endTimeAt must be later than timeAt", parameter="endTimeAt")
    elif end_text:
        raise BadRequestData(f"endTimeAt is only allowed with timerel=between, not {timerel}", parameter="endTimeAt")
    return TimeFilter(timerel, time_at, end_time_at, timeproperty)


MAX_INTEGER = 2**63 - 1


def _positive_int(name: str, text: str, *, allow_zero: bool = False) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0 or (number == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise BadRequestData(f"{name} '{text}' must be {kind} integer", parameter=name)
    if number > MAX_INTEGER:  # PostgreSQL's LIMIT and OFFSET are bigints: larger values were a 500
        raise BadRequestData(f"{name} must be at most {MAX_INTEGER}", parameter=name)
    return number


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def parse_options(params: Mapping[str, str]) -> tuple[set[str], Form | None]:
    """`options` (and v1.8 `format`) into the set of flags and the representation they ask for."""
    flags = set(_split(params.get("options"))) | set(_split(params.get("format")))
    unknown = sorted(flags - _KNOWN_OPTIONS)
    if unknown:
        raise BadRequestData(f"unknown option '{unknown[0]}'", parameter="options")
    form: Form | None = None
    if "aggregatedValues" in flags:
        form = "aggregatedValues"
    elif flags & {"temporalValues", "simplified", "keyValues"}:
        # GS CIM 009 4.5.8: the simplified temporal representation (keyValues is its older name).
        form = "temporalValues"
    elif "concise" in flags:
        form = "concise"
    return flags, form


def parse_aggregation(params: Mapping[str, str], form: Form | None) -> Aggregation | None:
    """GS CIM 009 6.18.3.2: `aggrMethods` and `aggrPeriodDuration` (default P0D, the whole interval)."""
    methods_text = params.get("aggrMethods")
    duration_text = params.get("aggrPeriodDuration")
    if methods_text is None:
        if form == "aggregatedValues":
            raise BadRequestData("options=aggregatedValues needs aggrMethods", parameter="aggrMethods")
        if duration_text is not None:
            raise BadRequestData("aggrPeriodDuration given without aggrMethods", parameter="aggrMethods")
        return None
    methods = _split(methods_text)
    if not methods:
        raise BadRequestData("aggrMethods: no method given", parameter="aggrMethods")
    for method in methods:
        if method not in AGGREGATION_METHODS:
            raise BadRequestData(
                f"aggrMethods: unknown aggregation method '{method}'; known: {', '.join(AGGREGATION_METHODS)}",
                parameter="aggrMethods",
            )
    try:
        period = parse_duration(duration_text or "P0D")
    except ValueError as error:
        raise BadRequestData(f"aggrPeriodDuration: {error}", parameter="aggrPeriodDuration") from None
    return Aggregation(methods=tuple(dict.fromkeys(methods)), period=period)


def parse_temporal_query(params: Mapping[str, str], *, default_limit: int = 20, max_limit: int = 1000) -> TemporalQuery:
    """Check every temporal query parameter; a bad one is a 400 that names it."""
    time = parse_time_filter(params)
    flags, form = parse_options(params)
    aggregation = parse_aggregation(params, form)
    if aggregation is not None:
        form = "aggregatedValues"
    last_n = None
    if params.get("lastN") is not None:
        last_n = _positive_int("lastN", params["lastN"])
    limit = default_limit
    if params.get("limit") is not None:
        limit = _positive_int("limit", params["limit"], allow_zero=True)
        if limit > max_limit:
            # GS CIM 009 6.3.10, as on /entities: a limit above what the broker allows is TooManyResults (403).
            raise TooManyResults(f"limit {limit} is above the maximum {max_limit}", parameter="limit")
    offset = _positive_int("offset", params["offset"], allow_zero=True) if params.get("offset") else 0
    count_text = params.get("count")
    if count_text not in (None, "true", "false"):
        raise BadRequestData("count must be true or false", parameter="count")
    count = count_text == "true" or "count" in flags
    geo = {key: params[key] for key in ("georel", "geometry", "coordinates", "geoproperty") if key in params}
    if geo and not {"georel", "geometry", "coordinates"} <= geo.keys():
        missing = sorted({"georel", "geometry", "coordinates"} - geo.keys())
        raise BadRequestData(f"geo-query needs {', '.join(missing)}", parameter=missing[0])
    id_pattern = params.get("idPattern")
    if id_pattern is not None:
        try:
            re.compile(id_pattern)
        except re.error as error:
            raise BadRequestData(f"idPattern is not a regular expression: {error}", parameter="idPattern") from None
    q = params.get("q")
    if q is not None and not q.strip():
        raise InvalidRequest("q is empty", parameter="q")
    return TemporalQuery(
        time=time,
        ids=_split(params.get("id")),
        id_pattern=id_pattern,
        type_expression=params.get("type"),
        attrs=_split(params.get("attrs")),
        q=q,
        geo=geo,
        last_n=last_n,
        aggregation=aggregation,
        form=form or "normalized",
        limit=limit,
        offset=offset,
        count=count,
        sys_attrs="sysAttrs" in flags,
    )

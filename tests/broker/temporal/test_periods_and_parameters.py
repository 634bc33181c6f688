"""aggrPeriodDuration and the temporal query parameters, checked without a broker (pure rules)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from broker.temporal.durations import Period, parse_duration
from broker.temporal.parameters import parse_temporal_query
from ngsi.errors import BadRequestData, TooManyResults

DURATIONS = [
    ("P1D", Period(0, timedelta(days=1))),
    ("PT1H", Period(0, timedelta(hours=1))),
    ("PT15M", Period(0, timedelta(minutes=15))),
    ("PT0.5S", Period(0, timedelta(seconds=0.5))),
    ("P1W", Period(0, timedelta(weeks=1))),
    ("P1DT12H", Period(0, timedelta(days=1, hours=12))),
    ("P1M", Period(1, timedelta(0))),
    ("P3M", Period(3, timedelta(0))),
    ("P1Y", Period(12, timedelta(0))),
    ("P1Y6M", Period(18, timedelta(0))),
    ("P0D", Period(0, timedelta(0))),
]


@pytest.mark.parametrize("text,period", DURATIONS)
def test_iso_8601_durations_split_into_calendar_months_and_fixed_time(text: str, period: Period) -> None:
    assert parse_duration(text) == period


@pytest.mark.parametrize("text", ["", "P", "PT", "1D", "P1H", "PT1D", "P-1D", "P1.5M", "P1M1D", "daily"])
def test_malformed_or_mixed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_times_with_offsets_become_utc() -> None:
    query = parse_temporal_query({"timerel": "after", "timeAt": "2013-03-01T08:00:00+08:00"})
    assert query.time.time_at == datetime(2013, 3, 1, 0, 0)


def test_aggregation_defaults_to_one_period_for_the_whole_interval() -> None:
    query = parse_temporal_query({"aggrMethods": "avg,max,avg"})
    assert query.form == "aggregatedValues"
    assert query.aggregation is not None
    assert query.aggregation.methods == ("avg", "max") and query.aggregation.period.is_zero


def test_a_limit_above_the_maximum_is_too_many_results_as_for_entities() -> None:
    with pytest.raises(TooManyResults) as caught:
        parse_temporal_query({"limit": "100000"})
    assert caught.value.status == 403 and caught.value.extra["parameter"] == "limit"


@pytest.mark.parametrize(
    "params,parameter",
    [
        ({"limit": "-1"}, "limit"),
        ({"count": "maybe"}, "count"),
        ({"options": "fancy"}, "options"),
        ({"idPattern": "(unclosed"}, "idPattern"),
        ({"georel": "near;maxDistance==10", "coordinates": "[8.6,41.1]"}, "geometry"),
        # These three reached PostgreSQL and came back as 500s.
        ({"offset": "99999999999999999999"}, "offset"),
        ({"aggrMethods": "avg", "aggrPeriodDuration": "PT1000000000H"}, "aggrPeriodDuration"),
        ({"aggrMethods": "avg", "aggrPeriodDuration": "P9999999999999999999D"}, "aggrPeriodDuration"),
    ],
)
def test_each_bad_parameter_is_named(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(BadRequestData) as caught:
        parse_temporal_query(params)
    assert caught.value.extra["parameter"] == parameter

"""The vectorised backfill gives exactly what the scalar calculators give, window by window, on real data.

Data: the shipped UCI Beijing station (examples/beijing, CC BY 4.0), which has missing hours,
plus injected edge cases: values on band boundaries of every index (EEA, CAQI, US AQI), just
above them, negative values, and days with 17 and 18 valid hours (the daily-mean coverage rule).
Every shipped air-quality definition is checked: the hourly indices and the daily mean over two
months, the yearly limits and means over a whole year (coverage sufficient) and a short slice
(coverage failing).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kpi.backfill import SourceHistory, evaluate_periods, evaluate_series, evaluate_windows
from kpi.calculators.caqi import CAQI_HOURLY_GRID
from kpi.calculators.eaqi import EEA_UPPER_LIMITS_2024
from kpi.definitions import DefinitionSet, KpiDefinition, load_definitions, parse_definitions
from kpi.entities import NO_VALUE
from kpi.history import history_arrays
from kpi.vectorised import series_values, utc_stamps, vectorised
from smart_data_models import format_timestamp

REPO = Path(__file__).resolve().parents[2]
STATION_CSV = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
BEIJING = timezone(timedelta(hours=8))
SOURCE = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
COLUMNS = {"PM2.5": "pm25", "PM10": "pm10", "SO2": "so2", "NO2": "no2", "CO": "co", "O3": "o3"}


def station_history(first: datetime, end: datetime) -> dict[str, list[tuple[datetime, float]]]:
    """The station's hourly values in `[first, end)` (co in mg/m³, as the Smart Data Model has it)."""
    series: dict[str, list[tuple[datetime, float]]] = {attr: [] for attr in COLUMNS.values()}
    with open(STATION_CSV, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=BEIJING)
            if not first <= local < end:
                continue
            for column, attr in COLUMNS.items():
                if row[column] not in ("", "NA"):
                    series[attr].append((local.astimezone(UTC), float(row[column]) / (1000 if attr == "co" else 1)))
    return series


def with_edge_cases(series: dict[str, list[tuple[datetime, float]]], start: datetime) -> None:
    """Overwrite some hours from `start` on with boundary values, negatives and thinned-out days."""
    values = {attr: dict(points) for attr, points in series.items()}
    hour = start.astimezone(UTC)
    boundaries: list[tuple[str, float]] = []
    for pollutant, limits in EEA_UPPER_LIMITS_2024.items():
        boundaries += [(pollutant, float(limit)) for limit in limits] + [(pollutant, limit + 0.1) for limit in limits]
    for pollutant, grid in CAQI_HOURLY_GRID.items():
        if pollutant != "co":
            boundaries += [(pollutant, float(limit)) for limit in grid[1:]] + [(pollutant, grid[-1] * 1.5)]
    # US AQI: PM2.5 24-h breakpoints 9.0 / 9.1, 35.4 / 35.5 held for 12 hours (NowCast = the value);
    # 1-hour O3 at 0.125 ppm (≈ 245.4 µg/m³), NO2 at 53 / 54 ppb (≈ 99.7 / 101.6 µg/m³).
    for value in (9.0, 9.05, 9.1, 35.4, 35.45, 35.5, 500.0):
        boundaries += [("pm25", value)] * 12
    boundaries += [("o3", 245.4), ("o3", 245.5), ("no2", 99.7), ("no2", 101.6), ("so2", -3.0), ("pm10", -1.0)]
    for pollutant, value in boundaries:
        # Alone in its hour, so that the boundary value decides the index.
        for other in values:
            values[other].pop(hour, None)
        values[pollutant][hour] = value
        hour += timedelta(hours=1)
    # Two days with 18 and 17 valid PM2.5 hours (the 18-of-24 rule), one day with none.
    day = (start + timedelta(days=10)).astimezone(UTC)
    for kept, offset in ((18, 0), (17, 1), (0, 2)):
        first = day + timedelta(days=offset)
        for h in range(24):
            moment = first + timedelta(hours=h)
            if h >= kept:
                values["pm25"].pop(moment, None)
            else:
                values["pm25"][moment] = 20.0 + h
    for attr in series:
        series[attr] = sorted(values[attr].items())


def history_of(series: dict[str, list[tuple[datetime, float]]], since: datetime) -> SourceHistory:
    return SourceHistory(history_arrays(series), since)


def air_quality() -> DefinitionSet:
    return DefinitionSet(tuple(d for d in load_definitions() if d.source.type == "AirQualityObserved"))


def _expected(entity: dict[str, Any]) -> tuple[str, Any, Any]:
    value = entity["kpiValue"]["value"]
    coverage = entity.get("coverage", {}).get("value")
    return entity["kpiValue"]["observedAt"], None if value == NO_VALUE else value, coverage


def assert_series_equal(definition: KpiDefinition, history: SourceHistory, since: datetime, until: datetime) -> int:
    reference = evaluate_windows(definition, SOURCE, history.observations(), since, until)
    outcome = evaluate_series(definition, SOURCE, history, since, until)
    assert outcome is not None
    older = outcome.older
    got = [
        (stamp, value, None if coverage is None else coverage.as_value())
        for stamp, value, coverage in zip(older.observed_at, older.values, older.coverages, strict=True)
    ]
    expected = [_expected(entity.entity) for _, entity in reference[:-1]]
    assert len(got) == len(expected)
    mismatches = [(e, g) for e, g in zip(expected, got, strict=True) if e != g or type(e[1]) is not type(g[1])]
    assert not mismatches, f"{definition.id}: {len(mismatches)} windows differ, first {mismatches[:3]}"
    assert outcome.latest.entity == reference[-1][1].entity
    return len(expected)


SINCE = datetime(2016, 11, 20, tzinfo=BEIJING)
UNTIL = datetime(2017, 1, 20, tzinfo=BEIJING)


@pytest.fixture(scope="module")
def two_months() -> SourceHistory:
    series = station_history(SINCE - timedelta(days=2), UNTIL + timedelta(days=1))
    with_edge_cases(series, SINCE + timedelta(days=3))
    return history_of(series, SINCE - timedelta(days=2))


@pytest.mark.parametrize("kpi", ["eea-air-quality-index", "caqi", "us-aqi", "pm25-daily-mean"])
def test_series_kpis_equal_the_scalar_calculators_on_every_window(kpi: str, two_months: SourceHistory) -> None:
    definition = air_quality().get(kpi)
    assert vectorised(definition)
    assert series_values(definition, two_months.arrays, SINCE, UNTIL) is not None  # not the scalar fallback
    windows = assert_series_equal(definition, two_months, SINCE, UNTIL)
    assert windows == (24 * 61 - 1 if definition.window.kind == "hour" else 60)


def test_the_edge_cases_are_in_the_data(two_months: SourceHistory) -> None:
    """The injected hours give each band boundary and the coverage failures their windows."""
    daily = evaluate_series(air_quality().get("pm25-daily-mean"), SOURCE, two_months, SINCE, UNTIL)
    assert daily is not None
    coverages = [c.as_value() for c in daily.older.coverages if c is not None]
    assert {c["valid"] for c in coverages} >= {0, 17, 18, 24}
    assert any(c["valid"] == 17 and not c["sufficient"] for c in coverages)
    assert any(c["valid"] == 18 and c["sufficient"] for c in coverages)
    us_aqi = evaluate_series(air_quality().get("us-aqi"), SOURCE, two_months, SINCE, UNTIL)
    assert us_aqi is not None
    assert {50, 51, 100, 101}.issubset(set(us_aqi.older.values))
    eea = evaluate_series(air_quality().get("eea-air-quality-index"), SOURCE, two_months, SINCE, UNTIL)
    assert eea is not None
    assert set(eea.older.values) >= {1, 2, 3, 4, 5, 6}


YEARLY = [d.id for d in air_quality() if d.window.kind == "year"]


@pytest.fixture(scope="module")
def one_year() -> SourceHistory:
    series = station_history(datetime(2013, 12, 30, tzinfo=BEIJING), datetime(2015, 1, 2, tzinfo=BEIJING))
    with_edge_cases(series, datetime(2014, 7, 1, tzinfo=BEIJING))
    return history_of(series, datetime(2013, 12, 30, tzinfo=BEIJING))


@pytest.mark.parametrize("kpi", YEARLY)
def test_yearly_kpis_equal_the_scalar_calculators(
    kpi: str, one_year: SourceHistory, two_months: SourceHistory
) -> None:
    definition = air_quality().get(kpi)
    assert vectorised(definition)
    for history, since, until in (
        (one_year, datetime(2014, 1, 1, tzinfo=BEIJING), datetime(2015, 1, 1, tzinfo=BEIJING)),  # coverage met
        (two_months, SINCE, UNTIL),  # two partial years: coverage fails
    ):
        scalar = evaluate_windows(definition, SOURCE, history.observations(), since, until)
        reference = [entity.entity for _, entity in scalar]
        got = [entity.entity for entity in evaluate_periods(definition, SOURCE, history, since, until)]
        assert got == reference
    sufficient = evaluate_periods(definition, SOURCE, one_year, datetime(2014, 1, 1, tzinfo=BEIJING),
                                  datetime(2015, 1, 1, tzinfo=BEIJING))  # fmt: skip
    assert sufficient[0].entity["coverage"]["value"]["sufficient"] is True


def test_a_time_zone_with_daylight_saving_falls_back_to_the_scalar_loop(two_months: SourceHistory) -> None:
    document = {
        "city": "madrid", "organization": "test", "timezone": "Europe/Madrid",
        "kpis": [{
            "id": "eea-dst", "name": "EEA", "category": ["quantitative"],
            "source": {"type": "AirQualityObserved", "attributes": ["pm25", "no2"]},
            "calculator": "eea_index", "parameters": {"pollutants": ["pm25", "no2"]}, "window": "hour",
            "trigger": "change",
        }],
    }  # fmt: skip
    (definition,) = parse_definitions(document)
    # Across the end of daylight saving (30 October 2016) the scalar calculators use wall-clock hours.
    since, until = datetime(2016, 10, 29, tzinfo=UTC), datetime(2016, 11, 1, tzinfo=UTC)
    series = station_history(datetime(2016, 10, 28, tzinfo=BEIJING), datetime(2016, 11, 2, tzinfo=BEIJING))
    observations = history_of(series, datetime(2016, 10, 28, tzinfo=BEIJING))
    assert series_values(definition, observations.arrays, since, until) is None
    assert_series_equal(definition, observations, since, until)


def test_many_instants_format_like_format_timestamp() -> None:
    import numpy as np

    moments = [datetime(2016, 3, 15, 3, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, 123456, tzinfo=UTC)]
    micros = np.array([int(m.timestamp()) * 1_000_000 + m.microsecond for m in moments], dtype=np.int64)
    assert utc_stamps(micros) == [format_timestamp(m) for m in moments]

"""The air-quality calculators give the values the standards define, at and around every boundary.

Reference values are computed by hand from the cited tables (shown in each row's comment), so a
wrong breakpoint, a missing truncation or a wrong boundary convention fails a row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from kpi.calculators import (
    aqi_sub_index,
    common_air_quality_index,
    count_exceedances,
    eea_air_quality_index,
    eea_pollutant_level,
    find_limit,
    nowcast,
    ugm3_to_ppb,
    us_air_quality_index,
)
from kpi.calculators.averaging import daily_means, max_daily_8h_means, running_8h_means
from kpi.calculators.generic import (
    change_against_baseline,
    count_above,
    percentile,
    ratio,
    window_mean,
)

BEIJING = timezone(timedelta(hours=8))


# EEA EAQI 2024 bands (airindex.eea.europa.eu; ETC HE 2024/17). Convention: upper limit inclusive.
@pytest.mark.parametrize(
    ("pollutant", "value", "level"),
    [
        ("pm25", 0, 1), ("pm25", 5, 1), ("pm25", 5.1, 2), ("pm25", 15, 2), ("pm25", 50, 3),
        ("pm25", 90, 4), ("pm25", 140, 5), ("pm25", 140.1, 6),
        ("pm10", 15, 1), ("pm10", 45.5, 3), ("pm10", 270, 5), ("pm10", 271, 6),
        ("no2", 10, 1), ("no2", 25.01, 3), ("no2", 150, 5), ("no2", 151, 6),
        ("o3", 60, 1), ("o3", 100, 2), ("o3", 120, 3), ("o3", 181, 6),
        ("so2", 20, 1), ("so2", 125, 3), ("so2", 190, 4), ("so2", 276, 6),
    ],
)
def test_eea_band_of_each_pollutant_follows_the_2024_table(pollutant: str, value: float, level: int) -> None:
    assert eea_pollutant_level(pollutant, value) == level


def test_eea_station_index_is_the_worst_pollutant() -> None:
    index = eea_air_quality_index({"pm25": 12, "pm10": 20, "no2": 70, "o3": 50, "so2": None})
    assert index is not None
    assert (index.band, index.level, index.dominant_pollutant) == ("Poor", 4, "no2")
    assert index.pollutant_levels == {"pm25": 2, "pm10": 2, "no2": 4, "o3": 1}


def test_eea_index_without_any_measured_pollutant_is_none() -> None:
    assert eea_air_quality_index({"co": 300, "pm25": None}) is None


# CAQI hourly grid (CiteAir II): linear within a class, maximum over pollutants.
@pytest.mark.parametrize(
    ("concentrations", "index", "caqi_class", "dominant"),
    [
        ({"no2": 75}, 37.5, "Low", "no2"),  # 25 + 25 × (75−50)/(100−50)
        ({"no2": 50}, 25.0, "Very low", "no2"),  # boundary belongs to the lower class
        ({"pm10": 70, "no2": 20}, 62.5, "Medium", "pm10"),  # 50 + 25 × (70−50)/(90−50)
        ({"o3": 240}, 100.0, "High", "o3"),
        ({"pm10": 270}, 125.0, "Very high", "pm10"),  # 100 + 25 × (270−180)/(180−90)
        ({"no2": 10, "pm25": 40}, 60.0, "Medium", "pm25"),  # 50 + 25 × (40−30)/(55−30)
    ],
)
def test_caqi_follows_the_hourly_grid(concentrations: dict, index: float, caqi_class: str, dominant: str) -> None:
    result = common_air_quality_index(concentrations)
    assert result is not None
    assert (result.index, result.caqi_class, result.dominant_pollutant) == (index, caqi_class, dominant)


def test_caqi_needs_a_core_pollutant() -> None:
    assert common_air_quality_index({"pm25": 40}) is None


# US EPA AQI, TAD EPA-454/B-24-002 Table 6 (2024 PM2.5 breakpoints) and Equation 1.
@pytest.mark.parametrize(
    ("metric", "concentration", "aqi", "category"),
    [
        ("pm25_24h", 12.0, 56, "Moderate"),  # the 2024 change: was 50 before (standards note)
        ("pm25_24h", 9.0, 50, "Good"),
        ("pm25_24h", 9.09, 50, "Good"),  # truncated to 9.0 before the table
        ("pm25_24h", 35.4, 100, "Moderate"),
        ("pm25_24h", 35.5, 101, "Unhealthy for Sensitive Groups"),
        ("pm25_24h", 125.4, 200, "Unhealthy"),
        ("pm25_24h", 225.5, 301, "Hazardous"),
        ("pm10_24h", 154.9, 100, "Moderate"),  # truncated to 154
        ("pm10_24h", 155, 101, "Unhealthy for Sensitive Groups"),
        ("o3_8h", 0.0549, 50, "Good"),  # truncated to 0.054
        ("o3_8h", 0.070, 100, "Moderate"),
        ("o3_8h", 0.087, 154, "Unhealthy"),  # 151 + 49/0.019 × 0.001 = 153.58 → 154
        ("o3_1h", 0.125, 101, "Unhealthy for Sensitive Groups"),
        ("co_8h", 4.49, 50, "Good"),
        ("co_8h", 9.5, 101, "Unhealthy for Sensitive Groups"),
        ("so2_1h", 35.9, 50, "Good"),
        ("no2_1h", 100, 100, "Moderate"),
        ("no2_1h", 360, 150, "Unhealthy for Sensitive Groups"),
        ("no2_1h", 2049, 500, "Hazardous"),
    ],
)
def test_us_aqi_sub_index(metric: str, concentration: float, aqi: int, category: str) -> None:
    result = aqi_sub_index(metric, concentration)
    assert result is not None
    assert (result.aqi, result.category) == (aqi, category)


def test_us_aqi_truncation_avoids_binary_float_errors() -> None:
    # 0.29 × 100 is 28.999… in binary floating point; a float floor would drop to 0.28.
    assert aqi_sub_index("o3_8h", 0.29) is None  # above 0.200: the 1-hour value must be used
    assert aqi_sub_index("co_8h", 12.4) is not None
    result = aqi_sub_index("co_8h", 12.4)
    assert result is not None and result.aqi == 150


def test_us_aqi_where_the_tad_defines_no_value() -> None:
    assert aqi_sub_index("o3_1h", 0.100) is None  # 1-hour O3 starts at 0.125 ppm
    assert aqi_sub_index("so2_1h", 400) is None  # 24-hour SO2 is needed above 304 ppb
    beyond = aqi_sub_index("pm25_24h", 400)
    assert beyond is not None and (beyond.aqi, beyond.category) == (None, "Beyond the AQI")


def test_us_aqi_is_the_highest_sub_index() -> None:
    result = us_air_quality_index({"pm25_24h": 40.0, "o3_8h": 0.060, "no2_1h": None})
    assert result is not None
    assert (result.aqi, result.pollutant) == (112, "pm25")  # 101 + 49/19.9 × 4.5 = 112.08


def test_gas_conversion_uses_25_degrees() -> None:
    assert ugm3_to_ppb("no2", 188.2) == pytest.approx(100.0, abs=0.05)  # 1 ppb NO2 = 1.88 µg/m³


def test_nowcast_weights_recent_hours() -> None:
    assert nowcast([20.0] * 12) == 20.0
    # w* = 10/40 → w = 0.5: (40 + 0.5×10 + 0.25×10) / 1.75 = 27.14… → truncated 27.1
    assert nowcast([40.0, 10.0, 10.0]) == 27.1
    # Two of the three most recent hours are needed.
    assert nowcast([None, None, 30.0, 30.0]) is None
    assert nowcast([None, 30.0, 30.0]) == 30.0


def _hourly(start: datetime, values: list[float | None]) -> list[tuple[datetime, float | None]]:
    return [(start + timedelta(hours=i), v) for i, v in enumerate(values)]


def test_daily_mean_needs_18_valid_hours() -> None:
    day1 = _hourly(datetime(2016, 1, 1, tzinfo=BEIJING), [60.0] * 18 + [None] * 6)
    day2 = _hourly(datetime(2016, 1, 2, tzinfo=BEIJING), [60.0] * 17 + [None] * 7)
    means = daily_means(day1 + day2, BEIJING)
    assert means[datetime(2016, 1, 1).date()].value == 60.0
    assert means[datetime(2016, 1, 2).date()].value is None
    assert means[datetime(2016, 1, 2).date()].valid == 17


def test_days_are_local_calendar_days() -> None:
    # 16:00 UTC is midnight in Beijing: a value there belongs to the next local day.
    series = [(datetime(2016, 1, 1, 16, tzinfo=UTC), 10.0)]
    assert list(daily_means(series, BEIJING, min_hours=1)) == [datetime(2016, 1, 2).date()]


def test_eight_hour_windows_end_on_their_day() -> None:
    start = datetime(2016, 7, 1, 6, tzinfo=BEIJING)
    values: list[float | None] = [100.0] * 42
    values[24] = 260.0  # 2 July 06:00
    means = running_8h_means(_hourly(start, values), BEIJING)
    peak = means[datetime(2016, 7, 2, 6, tzinfo=BEIJING)]
    assert peak.value == pytest.approx(120.0)  # (7 × 100 + 260) / 8
    maxima = max_daily_8h_means(_hourly(start, values), BEIJING)
    assert maxima[datetime(2016, 7, 2).date()].value == pytest.approx(120.0)
    # Data start at 06:00: only the 13 windows ending 11:00–23:00 hold ≥ 6 hours, fewer than 18.
    assert maxima[datetime(2016, 7, 1).date()].value is None


def _year(value_for_day: dict[int, float], base: float, year: int = 2016) -> list[tuple[datetime, float | None]]:
    start = datetime(year, 1, 1, tzinfo=BEIJING)
    days = 366 if year % 4 == 0 else 365
    return [
        (start + timedelta(hours=h), value_for_day.get(h // 24, base))
        for h in range(days * 24)
    ]


def test_pm10_daily_exceedances_under_2008_50() -> None:
    limit = find_limit("eu-2008-50", "pm10", "day")
    hot_days = {d: 51.0 for d in range(36)}  # 36 days strictly above 50
    hot_days.update({d: 50.0 for d in range(36, 60)})  # equal to the limit is not an exceedance
    result = count_exceedances(limit, _year(hot_days, 20.0), 2016, BEIJING)
    assert (result.exceedances, result.sufficient, result.compliant) == (36, True, False)
    result = count_exceedances(limit, _year({d: 51.0 for d in range(35)}, 20.0), 2016, BEIJING)
    assert (result.exceedances, result.compliant) == (35, True)


def test_a_year_without_enough_data_does_not_claim_compliance() -> None:
    limit = find_limit("eu-2008-50", "no2", "year")
    series = [(t, v) for t, v in _year({}, 30.0) if t.month <= 10]  # ≈ 83 % coverage
    result = count_exceedances(limit, series, 2016, BEIJING)
    assert (result.value, result.sufficient, result.compliant) == (None, False, None)
    assert result.coverage == pytest.approx(7320 / 8784)


def test_no2_hourly_limit_counts_hours() -> None:
    limit = find_limit("eu-2008-50", "no2", "hour")
    series = _year({}, 30.0)
    series[100] = (series[100][0], 201.0)
    series[200] = (series[200][0], 200.0)
    result = count_exceedances(limit, series, 2016, BEIJING)
    assert (result.exceedances, result.compliant) == (1, True)


def test_2030_limits_are_stricter() -> None:
    series = _year({}, 15.0)
    assert count_exceedances(find_limit("eu-2008-50", "pm25", "year"), series, 2016, BEIJING).compliant is True
    assert count_exceedances(find_limit("eu-2024-2881", "pm25", "year"), series, 2016, BEIJING).compliant is False
    who = count_exceedances(find_limit("who-2021", "pm25", "year"), series, 2016, BEIJING)
    assert (who.value, who.compliant) == (15.0, False)


def test_generic_calculators() -> None:
    assert window_mean([1.0, None, 3.0]).value == 2.0
    assert window_mean([1.0, None, 3.0]).coverage == pytest.approx(2 / 3)
    assert window_mean([None, None]).value is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50).value == 2.5
    assert percentile([10.0, 20.0, 30.0], 90).value == pytest.approx(28.0)
    assert count_above([1.0, 5.0, 5.1, None], 5).value == 1
    assert ratio([30.0, 20.0, None], [100.0, 100.0, 50.0]).value == 0.25
    assert change_against_baseline([90.0, 110.0], [125.0, 75.0]).value == 0.0
    assert change_against_baseline([80.0], [100.0]).value == pytest.approx(-20.0)

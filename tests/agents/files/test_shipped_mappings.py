"""Each shipped mapping on a slice of its real file: the entities carry the file's values, in the model's units."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest

from agents.files import compile_translator, load_mapping, open_records

MAPPINGS = Path("broker_config/mappings")
EXAMPLES = Path("examples")
ROWS = 500


def first_entities(mapping_name: str, file: Path, rows: int = ROWS) -> list[list[dict]]:
    mapping = load_mapping(MAPPINGS / f"{mapping_name}.yaml")
    translate = compile_translator(mapping)
    with open_records(file, mapping) as records:
        return [translate(record.values) for record in islice(records, rows)]


def utc(year: str, month: str, day: str, hour: str, offset_hours: int) -> str:
    local = datetime(int(year), int(month), int(day), int(hour), tzinfo=UTC) - timedelta(hours=offset_hours)
    return local.strftime("%Y-%m-%dT%H:00:00.000Z")


def number(cell: str) -> float | None:
    return None if cell in ("NA", "") else float(cell)


def test_beijing_multisite_rows_become_air_quality_and_weather_of_the_station() -> None:
    file = EXAMPLES / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
    produced = first_entities("beijing_multisite", file)
    with open(file, newline="") as handle:
        rows = list(islice(csv.DictReader(handle), ROWS))
    compass = {"N": 0.0, "NNE": 22.5, "NE": 45.0, "ENE": 67.5, "E": 90.0, "ESE": 112.5, "SE": 135.0, "SSE": 157.5,
               "S": 180.0, "SSW": 202.5, "SW": 225.0, "WSW": 247.5, "W": 270.0, "WNW": 292.5, "NW": 315.0,
               "NNW": 337.5}  # fmt: skip
    checked_missing = 0
    for row, entities in zip(rows, produced, strict=True):
        by_type = {entity["type"]: entity for entity in entities}
        air, weather = by_type["AirQualityObserved"], by_type["WeatherObserved"]
        when = utc(row["year"], row["month"], row["day"], row["hour"], 8)
        assert air["id"] == "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
        assert air["location"]["value"]["coordinates"] == [116.397, 39.982]
        for column, name, scale in [("PM2.5", "pm25", 1), ("PM10", "pm10", 1), ("SO2", "so2", 1),
                                    ("NO2", "no2", 1), ("O3", "o3", 1), ("CO", "co", 0.001)]:  # fmt: skip
            expected = number(row[column])
            if expected is None:
                assert name not in air
                checked_missing += 1
                continue
            assert air[name]["value"] == pytest.approx(expected * scale)
            assert air[name]["observedAt"] == when
        assert air["co"]["unitCode"] == "GP" if "co" in air else True
        for column, name in [("TEMP", "temperature"), ("PRES", "atmosphericPressure"), ("DEWP", "dewPoint"),
                             ("RAIN", "precipitation"), ("WSPM", "windSpeed")]:  # fmt: skip
            expected = number(row[column])
            assert (weather[name]["value"] if expected is not None else None) == expected
        assert weather.get("windDirection", {}).get("value") == compass.get(row["wd"])
    assert checked_missing > 0  # the slice has NA cells, and they were left out


def test_all_twelve_beijing_stations_have_a_location() -> None:
    mapping = load_mapping(MAPPINGS / "beijing_multisite.yaml")
    assert mapping.location is not None
    assert len(mapping.location.table) == 12
    stations = {"Aotizhongxin", "Changping", "Dingling", "Dongsi", "Guanyuan", "Gucheng", "Huairou",
                "Nongzhanguan", "Shunyi", "Tiantan", "Wanliu", "Wanshouxigong"}  # fmt: skip
    assert set(mapping.location.table) == stations
    for longitude, latitude in mapping.location.table.values():  # all within Beijing municipality
        assert 115.4 < longitude < 117.5 and 39.4 < latitude < 41.1


def test_beijing_pm25_2010_rows_become_embassy_air_quality_and_airport_weather() -> None:
    file = EXAMPLES / "beijing_pm25_2010" / "PRSA_data_2010.1.1-2014.12.31.csv"
    produced = first_entities("beijing_pm25_2010", file, rows=100)
    with open(file, newline="") as handle:
        rows = list(islice(csv.DictReader(handle), 100))
    for row, entities in zip(rows, produced, strict=True):
        by_type = {entity["type"]: entity for entity in entities}
        pm25 = number(row["pm2.5"])
        if pm25 is None:
            assert "AirQualityObserved" not in by_type  # the first day has no PM2.5: no empty entity is sent
        else:
            assert by_type["AirQualityObserved"]["pm25"]["value"] == pm25
        weather = by_type["WeatherObserved"]
        assert weather["id"] == "urn:ngsi-ld:WeatherObserved:beijing:capital-airport"
        assert weather["temperature"]["value"] == float(row["TEMP"])
        assert weather["cumulatedWindSpeed"]["value"] == float(row["Iws"])
        assert weather["temperature"]["observedAt"] == utc(row["year"], row["month"], row["day"], row["hour"], 8)
        assert ("windDirection" in weather) is (row["cbwd"] != "cv")


def test_uci_italy_reads_semicolons_decimal_commas_and_minus_200() -> None:
    file = EXAMPLES / "uci_air_quality_italy" / "AirQualityUCI.csv"
    produced = first_entities("uci_air_quality_italy", file, rows=300)
    with open(file, newline="") as handle:
        rows = list(islice(csv.DictReader(handle, delimiter=";"), 300))
    minus_200 = 0
    for row, [entity] in zip(rows, produced, strict=True):
        day, month, year = row["Date"].split("/")
        assert entity["dateObserved"]["value"]["@value"] == utc(year, month, day, row["Time"][:2], 1)
        for column, name in [("CO(GT)", "co"), ("NO2(GT)", "no2"), ("NOx(GT)", "nox"), ("T", "temperature"),
                             ("RH", "relativeHumidity"), ("C6H6(GT)", "c6h6")]:  # fmt: skip
            cell = row[column]
            if cell == "-200":
                minus_200 += 1
                assert name not in entity
            else:
                assert entity[name]["value"] == float(cell.replace(",", "."))
        assert entity.get("nox", {}).get("unitCode", "61") == "61"
    assert minus_200 > 0


def test_the_oup_flat_json_becomes_air_quality_and_weather_of_the_city() -> None:
    file = EXAMPLES / "oup" / "oup_records_synthetic.json"
    records = json.loads(file.read_text())
    produced = first_entities("oup", file)
    assert len(produced) == len(records)
    for record, entities in zip(records, produced, strict=True):
        by_type = {entity["type"]: entity for entity in entities}
        air, weather = by_type["AirQualityObserved"], by_type["WeatherObserved"]
        city = record["cityName"].replace(" ", "-")
        assert air["id"] == f"urn:ngsi-ld:AirQualityObserved:{city}:oup"
        assert air["location"]["value"]["coordinates"] == [record["lon"], record["lat"]]
        assert air["pm25"]["value"] == record["pm25"]
        assert air["o3"]["value"] == record["ozone"]
        assert air["so2"]["value"] == record["sulphurDioxide"]
        assert air["co"] == {"type": "Property", "value": pytest.approx(record["co"] / 1000), "unitCode": "GP",
                             "observedAt": record["timeRecorded"].replace("Z", ".000Z")}  # fmt: skip
        assert air["dominantPollutant"]["value"] == record["dominentpol"]
        assert weather["relativeHumidity"]["value"] == record["humidity"]
        assert weather["windDirection"]["value"] == record["winddegree"]
        assert weather["gustSpeed"]["value"] == record["windgust"]
        assert weather["sunrise"]["value"]["@type"] == "DateTime"
        assert "observedAt" not in weather["sunrise"]


def test_the_long_format_example_yields_one_fragment_per_filled_row() -> None:
    file = EXAMPLES / "long_format" / "measurements_synthetic.csv"
    produced = first_entities("long_format", file)
    fragments = [entity for entities in produced for entity in entities]
    assert len(fragments) == 9  # ten rows, one with NA
    no2 = [f["no2"]["value"] for f in fragments if "no2" in f]
    assert no2 == [23.5, 27.0, 25.25]

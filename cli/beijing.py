"""Rows of the UCI Beijing Multi-Site Air-Quality CSV as AirQualityObserved and WeatherObserved models."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from smart_data_models import AirQualityObserved, WeatherObserved, entity_id

BEIJING_TIME = timezone(timedelta(hours=8), "CST")
"""The dataset's hours are Beijing local time (UTC+8, no daylight saving)."""

CITY = "beijing"
SOURCE = "https://archive.ics.uci.edu/dataset/501/beijing+multi+site+air+quality+data"
DATA_PROVIDER = "Beijing Municipal Environmental Monitoring Center (via UCI, CC BY 4.0)"

STATION_LOCATIONS: dict[str, tuple[float, float]] = {
    # (longitude, latitude). Approximate: the data set has no coordinates (examples/beijing/SOURCES.md).
    "Aotizhongxin": (116.397, 39.982),
}

# The 16 points of the compass, clockwise from north, 22.5° apart.
COMPASS_DEGREES: dict[str, float] = {
    point: index * 22.5
    for index, point in enumerate(
        ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"]
    )
}

# CSV column → AirQualityObserved attribute; all µg/m³ in the file.
POLLUTANT_COLUMNS = {"PM2.5": "pm25", "PM10": "pm10", "SO2": "so2", "NO2": "no2", "O3": "o3"}
# CSV column → WeatherObserved attribute, already in the Smart Data Models' default units.
WEATHER_COLUMNS = {
    "TEMP": "temperature",
    "PRES": "atmosphericPressure",
    "DEWP": "dewPoint",
    "RAIN": "precipitation",
    "WSPM": "windSpeed",
}


@dataclass(frozen=True)
class StationHour:
    """One hour of one station: its air-quality and its weather observation."""

    observed_at: datetime
    air_quality: AirQualityObserved
    weather: WeatherObserved


def observed_at(row: dict[str, str]) -> datetime:
    """The row's hour in UTC."""
    local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=BEIJING_TIME)
    return local.astimezone(UTC)


def _number(text: str) -> float | None:
    return None if text in ("", "NA") else float(text)


def station_hour(row: dict[str, str]) -> StationHour:
    """The Smart Data Models of one CSV row; `NA` cells leave their attribute out."""
    station = row["station"]
    longitude, latitude = STATION_LOCATIONS[station]
    when = observed_at(row)
    common: dict[str, Any] = {
        "dateObserved": when,
        "location": {"type": "Point", "coordinates": [longitude, latitude]},
        "name": f"{station} monitoring station",
        "source": SOURCE,
        "dataProvider": DATA_PROVIDER,
    }
    weather_id = entity_id("WeatherObserved", CITY, station)
    pollutants: dict[str, Any] = {
        attribute: value
        for column, attribute in POLLUTANT_COLUMNS.items()
        if (value := _number(row[column])) is not None
    }
    co = _number(row["CO"])
    if co is not None:
        pollutants["co"] = co / 1000  # the file gives µg/m³; the model's default unit is mg/m³ (GP)
    weather: dict[str, Any] = {
        attribute: value for column, attribute in WEATHER_COLUMNS.items() if (value := _number(row[column])) is not None
    }
    if row["wd"] in COMPASS_DEGREES:
        weather["windDirection"] = COMPASS_DEGREES[row["wd"]]
    air_quality = {
        "id": entity_id("AirQualityObserved", CITY, station),
        "refWeatherObserved": weather_id,
        **common,
        **pollutants,
    }
    return StationHour(
        observed_at=when,
        air_quality=AirQualityObserved.model_validate(air_quality),
        weather=WeatherObserved.model_validate({"id": weather_id, **common, **weather}),
    )


def station_hours(csv_path: Path, *, limit: int | None = None) -> Iterator[StationHour]:
    """The first `limit` hours of a station file, in time order."""
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        for index, row in enumerate(csv.DictReader(csv_file)):
            if limit is not None and index >= limit:
                return
            yield station_hour(row)

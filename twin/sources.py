"""Observations from the published Beijing multi-site files (UCI dataset 501), for offline
training and the accuracy benchmark; in operation the twin reads the broker's history."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twin.dataset import COMPASS_DEGREES

BEIJING_TZ = "Asia/Shanghai"
_COLUMNS = {
    "pm25": "PM2.5", "pm10": "PM10", "so2": "SO2", "no2": "NO2", "co": "CO", "o3": "O3",
    "temperature": "TEMP", "atmosphericPressure": "PRES", "dewPoint": "DEWP", "precipitation": "RAIN",
    "windSpeed": "WSPM",
}


def read_beijing_station(path: Path, *, nrows: int | None = None) -> pd.DataFrame:
    """One `PRSA_Data_<station>_*.csv` as observations with Smart Data Models names on a UTC
    index (the file is in Beijing local time). CO is converted from the file's µg/m³ to mg/m³
    (unit GP), as the shipped Beijing mapping writes it to the broker, so that a model trained
    from the file forecasts from broker data unchanged."""
    raw = pd.read_csv(path, na_values=["NA"], nrows=nrows)
    local = pd.to_datetime(raw[["year", "month", "day", "hour"]])
    index = pd.DatetimeIndex(local).tz_localize(BEIJING_TZ).tz_convert("UTC")
    frame = pd.DataFrame({name: raw[column].to_numpy() for name, column in _COLUMNS.items()}, index=index)
    frame["co"] = frame["co"] / 1000
    frame["windDirection"] = raw["wd"].map(COMPASS_DEGREES).to_numpy()
    return frame

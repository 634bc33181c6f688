"""A broker tenant holding 103 days of real Aotizhongxin history and a small twin model trained from
it through the temporal API, built once per test session and shared by the twin service and API tests.

History goes in the way any producer sends it: the hourly values of AirQualityObserved and the
WeatherObserved it references appended through the temporal API, then the newest hour as the
entities' current state. The model is trained from what the temporal API gives back.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp
from smart_data_models.models import ENVIRONMENT_CONTEXT, WEATHER_CONTEXT
from twin.model import TrainingConfig
from twin.service import StationReader
from twin.sources import BEIJING_TZ, read_beijing_station
from twin.store import ModelStore
from twin.training import train_station

REPO = Path(__file__).resolve().parents[2]
STATION_FILE = REPO / "examples/beijing/PRSA_Data_Aotizhongxin_20130301-20170228.csv"
STATION = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
WEATHER_STATION = "urn:ngsi-ld:WeatherObserved:beijing:Aotizhongxin"
LOCATION = {"type": "Point", "coordinates": [116.397, 39.982]}
HISTORY_HOURS = 2484
"""About 103 days (2013-03-01 to 2013-06-12), chosen so that the last three days and the two days
after them are complete: the real file has long CO gaps elsewhere, and an honest twin does not
forecast across them."""
# The same deliberately small model as tests/twin/test_twin.py: seconds, not minutes, to train.
SMALL = TrainingConfig(lookback=24, linear_hours=12, lstm_units=8, dense_units=8, epochs=2, batch_size=128)

AIR_UNITS: dict[str, str | None] = {"pm25": "GQ", "pm10": "GQ", "so2": "GQ", "no2": "GQ", "o3": "GQ", "co": "GP"}
WEATHER_UNITS: dict[str, str | None] = {
    "temperature": "CEL", "atmosphericPressure": "HPA", "dewPoint": "CEL", "precipitation": "MMT", "windSpeed": "MTS",
    "windDirection": None,
}  # fmt: skip
CHUNK_HOURS = 24 * 15


def observations(hours: int) -> pd.DataFrame:
    """The station file's first `hours` hours, CO in mg/m³ as the broker's Beijing mapping writes it."""
    return read_beijing_station(STATION_FILE, nrows=hours)


def _instances(series: pd.Series, unit: str | None) -> list[dict[str, Any]]:
    extra = {"unitCode": unit} if unit else {}
    return [
        {"type": "Property", "value": float(value), "observedAt": format_timestamp(moment.to_pydatetime()), **extra}
        for moment, value in series.dropna().items()
    ]


def current_state(row: pd.Series, moment: pd.Timestamp) -> list[dict[str, Any]]:
    """The station's AirQualityObserved and WeatherObserved of one hour (normalized, with @context)."""
    at = format_timestamp(moment.to_pydatetime())
    common = {
        "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": at}},
        "location": {"type": "GeoProperty", "value": LOCATION},
    }

    def measured(units: dict[str, str | None]) -> dict[str, Any]:
        return {
            name: {"type": "Property", "value": float(row[name]), "observedAt": at, **({"unitCode": u} if u else {})}
            for name, u in units.items()
            if pd.notna(row[name])
        }

    weather = {"id": WEATHER_STATION, "type": "WeatherObserved", **common, **measured(WEATHER_UNITS),
               "@context": [WEATHER_CONTEXT]}  # fmt: skip
    air = {"id": STATION, "type": "AirQualityObserved", **common, **measured(AIR_UNITS),
           "refWeatherObserved": {"type": "Relationship", "object": WEATHER_STATION},
           "@context": [ENVIRONMENT_CONTEXT]}  # fmt: skip
    return [weather, air]


async def send_hour(broker_url: str, tenant: str, row: pd.Series, moment: pd.Timestamp) -> None:
    """A new hour as a producer sends it: weather first, then air quality (what the twin listens to)."""
    async with AsyncBrokerClient(broker_url, tenant=tenant) as client:
        for entity in current_state(row, moment):
            result = await client.batch_upsert([entity], mode="update")
            assert result.ok, result.errors


async def load_history(broker_url: str, tenant: str, frame: pd.DataFrame) -> None:
    """Every hour of `frame` into the temporal API, then its last hour as the current state."""
    async with (
        AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT_CONTEXT) as air,
        AsyncBrokerClient(broker_url, tenant=tenant, context=WEATHER_CONTEXT) as weather,
    ):
        for start in range(0, len(frame), CHUNK_HOURS):
            chunk = frame.iloc[start : start + CHUNK_HOURS]
            await air.create_temporal_entity({
                "id": STATION, "type": "AirQualityObserved",
                **{name: _instances(chunk[name], unit) for name, unit in AIR_UNITS.items()},
            })  # fmt: skip
            await weather.create_temporal_entity({
                "id": WEATHER_STATION, "type": "WeatherObserved",
                **{name: _instances(chunk[name], unit) for name, unit in WEATHER_UNITS.items()},
            })  # fmt: skip
    await send_hour(broker_url, tenant, frame.iloc[-1], frame.index[-1])


@dataclass(frozen=True)
class TwinWorld:
    """A tenant with history, a model store with one trained model, and the data behind them."""

    tenant: str
    store: ModelStore
    data_dir: Path
    frame: pd.DataFrame
    next_hours: pd.DataFrame
    version: str


_worlds: dict[str, TwinWorld] = {}


async def twin_world(broker_url: str) -> TwinWorld:
    """Built once per session and broker (both test modules share the trained model)."""
    if broker_url not in _worlds:
        everything = observations(HISTORY_HOURS + 48)
        frame, next_hours = everything.iloc[:HISTORY_HOURS], everything.iloc[HISTORY_HOURS:]
        tenant = f"twin{uuid.uuid4().hex[:10]}"
        await load_history(broker_url, tenant, frame)
        reader = StationReader(broker_url, tenant=tenant)
        try:
            history = await reader.history(
                STATION, frame.index[0].to_pydatetime(), frame.index[-1].to_pydatetime() + timedelta(hours=1)
            )
        finally:
            await reader.aclose()
        data_dir = Path(tempfile.mkdtemp(prefix="twin-api-"))
        store = ModelStore(data_dir / "models")
        trained = train_station(history, STATION, config=SMALL, store=store, local_tz=BEIJING_TZ,
                                source=[STATION, WEATHER_STATION])  # fmt: skip
        assert trained.version is not None
        _worlds[broker_url] = TwinWorld(tenant, store, data_dir, frame, next_hours, trained.version)
    return _worlds[broker_url]

"""The forecast service turns every new observation of a station with a model into 24 hourly forecast
KPI entities in the broker, says which weather it assumed, and overwrites rather than duplicates.

Everything is real: our broker over HTTP (tests/conftest.py) with 103 days of Aotizhongxin history
appended through its temporal API, a small TensorFlow model trained from that history, the
broker's HTTP notifications to the service.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ngsi.client import AsyncBrokerClient
from ngsi.errors import ResourceNotFound
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT, WEATHER_CONTEXT
from tests.api.twin_world import SMALL, STATION, TwinWorld, observations, send_hour, twin_world
from twin.service import (
    COVARIATES_FORECAST,
    COVARIATES_YESTERDAY,
    ForecastService,
    ForecastSettings,
    subscription_id,
)
from twin.sources import BEIJING_TZ
from twin.store import ModelStore
from twin.training import train_station

FORECAST_IDS = "^urn:ngsi-ld:KeyPerformanceIndicator:beijing:twin-pm25-(eea-band-)?forecast:Aotizhongxin:h[0-9]+$"


@pytest.fixture
async def world(broker_url: str) -> TwinWorld:
    return await twin_world(broker_url)


@pytest.fixture
async def kpis(broker_url: str, world: TwinWorld) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=world.tenant, context=KPI_CONTEXT) as client:
        yield client


def settings(broker_url: str, world: TwinWorld) -> ForecastSettings:
    return ForecastSettings(
        broker_url=broker_url, tenant=world.tenant, data_dir=world.data_dir, twin_notify="http",
        twin_client_id=f"twin-{world.tenant}",
    )  # fmt: skip


async def forecast_entities(kpis: AsyncBrokerClient) -> list[dict[str, Any]]:
    found = await kpis.query_entities(type="KeyPerformanceIndicator", id_pattern=FORECAST_IDS, limit=1000, count=True)
    return found.items


async def eventually(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


def by_lead(entities: list[dict[str, Any]], series: str) -> dict[int, dict[str, Any]]:
    return {int(e["id"].rsplit(":h", 1)[1]): e for e in entities if f":twin-pm25-{series}:" in e["id"]}


async def test_a_new_observation_produces_24_hourly_forecast_kpis_in_the_broker(
    broker_url: str, world: TwinWorld, kpis: AsyncBrokerClient
) -> None:
    new_hour = world.next_hours.index[0]
    expected_first = format_timestamp((new_hour + pd.Timedelta(hours=1)).to_pydatetime())

    async def forecast_from_new_hour() -> list[dict[str, Any]] | None:
        entities = await forecast_entities(kpis)
        concentration = by_lead(entities, "forecast")
        if concentration.get(1, {}).get("kpiValue", {}).get("observedAt") == expected_first:
            return entities
        return None

    async with ForecastService(settings(broker_url, world)) as service:
        await send_hour(broker_url, world.tenant, world.next_hours.iloc[0], new_hour)
        entities = await eventually(forecast_from_new_hour, 90, "forecast KPI entities from the new hour")
        await service.drained()

    concentration, bands = by_lead(entities, "forecast"), by_lead(entities, "eea-band-forecast")
    assert sorted(concentration) == sorted(bands) == list(range(1, 25))
    for lead, entity in concentration.items():
        value = entity["kpiValue"]
        assert value["observedAt"] == format_timestamp((new_hour + pd.Timedelta(hours=lead)).to_pydatetime())
        assert value["unitCode"] == "GQ" and 0 <= value["value"] < 1000
        details = entity["kpiDetails"]["value"]
        assert 0 <= details["low"] <= details["high"]
        provenance = entity["provenance"]["value"]
        assert provenance["modelVersion"] == world.version
        assert provenance["origin"] == format_timestamp(new_hour.to_pydatetime())
        assert provenance["covariates"] == COVARIATES_YESTERDAY  # the broker has no WeatherForecast
        assert entity["refSourceEntity"]["object"] == STATION
        assert bands[lead]["kpiValue"]["value"] in ("Good", "Fair", "Moderate", "Poor", "Very poor", "Extremely poor")
        assert bands[lead]["kpiValue"]["observedAt"] == value["observedAt"]


async def test_forecasting_the_same_origin_again_overwrites_instead_of_duplicating(
    broker_url: str, world: TwinWorld, kpis: AsyncBrokerClient
) -> None:
    until = world.frame.index[-1].to_pydatetime()
    service = ForecastService(settings(broker_url, world))
    try:
        first = await service.forecast_station(STATION, until=until)
        again = await service.forecast_station(STATION, until=until)
        fresh = ForecastService(settings(broker_url, world))  # a restarted service recomputes and overwrites
        try:
            rewritten = await fresh.forecast_station(STATION, until=until)
        finally:
            await fresh.reader.aclose()
    finally:
        await service.reader.aclose()
    assert first is not None and again is None and rewritten is not None
    assert list(rewritten.values) == pytest.approx(list(first.values), rel=1e-5)
    entities = await forecast_entities(kpis)
    assert len(entities) == 48
    assert {e["provenance"]["value"]["origin"] for e in entities} == {format_timestamp(first.origin.to_pydatetime())}


async def test_weather_forecast_entities_of_the_station_become_the_covariates(
    broker_url: str, world: TwinWorld, kpis: AsyncBrokerClient
) -> None:
    origin = world.frame.index[-1]
    # A "forecast" that is in fact what was then observed (a perfect forecast), valid hour by hour.
    ahead = world.next_hours.iloc[:24]
    forecasts: list[dict[str, Any]] = [
        {
            "id": f"urn:ngsi-ld:WeatherForecast:beijing:Aotizhongxin:{i:02d}",
            "type": "WeatherForecast",
            "validFrom": {"type": "Property", "value": {"@type": "DateTime",
                                                        "@value": format_timestamp(moment.to_pydatetime())}},
            "validTo": {"type": "Property", "value": {"@type": "DateTime", "@value": format_timestamp(
                (moment + pd.Timedelta(hours=1)).to_pydatetime())}},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [116.397, 39.982]}},
            **{name: {"type": "Property", "value": float(row[name])}
               for name in ("temperature", "atmosphericPressure", "dewPoint", "precipitation", "windSpeed",
                            "windDirection")},
        }
        for i, (moment, row) in enumerate(ahead.iterrows(), start=1)
    ]  # fmt: skip
    async with AsyncBrokerClient(broker_url, tenant=world.tenant, context=WEATHER_CONTEXT) as weather:
        result = await weather.batch_upsert(forecasts)
        assert result.ok, result.errors
        service = ForecastService(settings(broker_url, world))
        try:
            with_forecast = await service.forecast_station(STATION, until=origin.to_pydatetime())
        finally:
            await service.reader.aclose()
            await weather.batch_delete([str(f["id"]) for f in forecasts])
    assert with_forecast is not None
    assert with_forecast.covariates == COVARIATES_FORECAST
    assert with_forecast.origin == origin
    entity = by_lead(await forecast_entities(kpis), "forecast")[1]
    assert entity["provenance"]["value"]["covariates"] == COVARIATES_FORECAST
    assert entity["kpiValue"]["observedAt"] == format_timestamp((origin + timedelta(hours=1)).to_pydatetime())


def copy_version(world: TwinWorld, store: ModelStore, number: int) -> str:
    """The session's trained model stored again as version `number` of another store (as training would)."""
    station, series, name = world.version.split("/")
    [source] = world.store.root.glob(f"*/{series}/{name}")
    shutil.copytree(source, store.root / source.parent.relative_to(world.store.root) / f"v{number}")
    return f"{station}/{series}/v{number}"


async def test_models_trained_or_rolled_back_while_running_are_picked_up_without_a_restart(
    broker_url: str, world: TwinWorld, kpis: AsyncBrokerClient, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")  # started before any model exists, as `climaborough up` does
    watching = settings(broker_url, world).model_copy(
        update={"data_dir": tmp_path, "twin_client_id": f"twin-{world.tenant}-watch", "twin_model_check_s": 0.2}
    )

    async def forecast_by(version: str) -> bool:
        lead1 = by_lead(await forecast_entities(kpis), "forecast").get(1, {})
        return lead1.get("provenance", {}).get("value", {}).get("modelVersion") == version

    async with ForecastService(watching) as service:
        assert service.stations() == []
        async with AsyncBrokerClient(broker_url, tenant=world.tenant) as client:
            with pytest.raises(ResourceNotFound):
                await client.get_subscription(subscription_id(watching.twin_client_id))

            first = copy_version(world, store, 2)
            store.activate(first)
            await eventually(lambda: forecast_by(first), 90, f"a forecast by the new model {first}")
            subscription = await client.get_subscription(subscription_id(watching.twin_client_id))
        assert [e["id"] for e in subscription["entities"]] == [STATION]  # the subscription now covers the station

        second = copy_version(world, store, 3)
        store.activate(second)
        await eventually(lambda: forecast_by(second), 90, f"a forecast by the newer model {second}")
        assert store.rollback(STATION, "pm25") == first
        await eventually(lambda: forecast_by(first), 90, f"a forecast by the rolled-back model {first}")
        await service.drained()
    assert service.stats.errors == 0, service.stats.last_error


async def test_a_model_trained_on_years_forecasts_from_the_brokers_recent_window(
    broker_url: str, world: TwinWorld, tmp_path: Path
) -> None:
    # Two years of history make the day-of-year cycle a feature; the forecast reads only the last
    # days from the broker, and must still build that feature rather than fail on a missing column.
    data_dir = tmp_path / "seasonal"
    trained = train_station(observations(24 * 740), STATION, config=SMALL, store=ModelStore(data_dir / "models"),
                            local_tz=BEIJING_TZ, source=[STATION])  # fmt: skip
    assert "doy_sin" in trained.forecaster.features
    seasonal = ForecastSettings(broker_url=broker_url, tenant=world.tenant, data_dir=data_dir, twin_notify="http",
                                twin_client_id=f"twin-seasonal-{world.tenant}")  # fmt: skip
    service = ForecastService(seasonal)
    try:
        forecast = await service.forecast_station(STATION, until=world.frame.index[-1].to_pydatetime())
    finally:
        await service.reader.aclose()
    assert forecast is not None and forecast.version == trained.version
    assert len(forecast.values) == 24 and all(0 <= v < 1000 for v in forecast.values)

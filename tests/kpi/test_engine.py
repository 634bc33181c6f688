"""The KPI engine keeps KeyPerformanceIndicator entities up to date as AirQualityObserved data arrives.

Everything is real: our broker over HTTP (tests/conftest.py), Mosquitto (or amqtt) carrying the
broker's notifications to the engine, the temporal API for windows and for the KPI history.
Expected values come from the calculators applied to the same data in the test.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kpi.calculators import count_exceedances, eea_air_quality_index, find_limit
from kpi.calculators.averaging import daily_means
from kpi.definitions import DefinitionSet, Trigger, load_definitions
from kpi.engine import KpiEngine, SourceQueue
from kpi.settings import KpiSettings
from ngsi.client import AsyncBrokerClient
from smart_data_models import AirQualityObserved, format_timestamp, to_ngsi_ld
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT

BEIJING = ZoneInfo("Asia/Shanghai")
START = datetime(2016, 3, 15, 0, tzinfo=BEIJING)
LIVE_KPIS = ("eea-air-quality-index", "caqi", "us-aqi", "pm25-daily-mean", "eu-no2-hourly-exceedances")


def hourly_values(hour: int) -> dict[str, float]:
    """Synthetic but plausible concentrations (µg/m³) for hour number `hour`."""
    return {
        "pm25": 8.0 + (hour * 7) % 40,
        "pm10": 20.0 + (hour * 11) % 70,
        "no2": 150.0 + (hour * 13) % 90,  # some hours above the 200 µg/m³ hourly limit
        "o3": 30.0 + (hour * 5) % 60,
        "so2": 5.0 + hour % 9,
    }


def observation(station_id: str, hour: int) -> dict[str, Any]:
    model = AirQualityObserved.model_validate({
        "id": station_id,
        "dateObserved": START + timedelta(hours=hour),
        "location": {"type": "Point", "coordinates": [116.4, 39.9]},
        **hourly_values(hour),
    })
    return to_ngsi_ld(model)


def definitions(*ids: str) -> DefinitionSet:
    chosen = load_definitions().select(ids)
    fast = Trigger.model_validate({"when": "change", "min_interval_s": 0.3})
    # The shipped long windows wait 30 s between recalculations; a test has no 30 s to spare.
    return DefinitionSet(tuple(d.model_copy(update={"trigger": fast}) for d in chosen))


@pytest.fixture
def station_id() -> str:
    return f"urn:ngsi-ld:AirQualityObserved:beijing:Test{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(broker_url: str, mqtt_url: str, tenant: str) -> KpiSettings:
    # The history of a current window catches up every 2 s (30 s by default): the tests read it.
    return KpiSettings(
        broker_url=broker_url, mqtt_url=mqtt_url, tenant=tenant, kpi_client_id=f"kpi-{tenant}", kpi_history_sync_s=2
    )


@pytest.fixture
async def producer(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant) as client:
        yield client


@pytest.fixture
async def kpi_reader(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as client:
        yield client


async def send_hours(producer: AsyncBrokerClient, station_id: str, hours: range) -> None:
    for hour in hours:
        result = await producer.batch_upsert([observation(station_id, hour)], mode="update")
        assert result.ok, result.errors


def kpi_id(kpi: str, station_id: str, period: str) -> str:
    return f"urn:ngsi-ld:KeyPerformanceIndicator:beijing:{kpi}:{station_id.rsplit(':', 1)[-1]}:{period}"


def utc(hour: int) -> str:
    return format_timestamp((START + timedelta(hours=hour)).astimezone(UTC))


async def kpi_value_at(reader: AsyncBrokerClient, entity_id: str, observed_at: str) -> Any:
    try:
        entity = await reader.get_entity(entity_id)
    except Exception:
        return None
    value = entity.get("kpiValue", {})
    return entity if value.get("observedAt") == observed_at else None


async def kpi_history(reader: AsyncBrokerClient, entity_id: str) -> list[tuple[str, Any]]:
    entity = await reader.get_temporal_entity(
        entity_id, attrs="kpiValue", timerel="after", time_at="2000-01-01T00:00:00Z", options="temporalValues"
    )
    attribute = entity.get("kpiValue", {"values": []})
    values = attribute["values"] if isinstance(attribute, dict) else attribute[0]["values"]
    return sorted(((stamp, value) for value, stamp in values), key=lambda pair: pair[0])


async def test_air_quality_updates_produce_kpi_entities_equal_to_the_calculators(
    settings: KpiSettings, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient, station_id: str,
    wait_for: Callable[..., Any],
) -> None:
    hours = range(0, 26)
    async with KpiEngine(settings, definitions(*LIVE_KPIS)):
        await send_hours(producer, station_id, hours)
        eea_id = kpi_id("eea-air-quality-index", station_id, "hourly")
        entity = await wait_for(lambda: kpi_value_at(kpi_reader, eea_id, utc(25)), what="the EEA index of hour 25")
        expected = eea_air_quality_index(hourly_values(25))
        assert expected is not None
        assert entity["kpiValue"]["value"] == expected.level
        assert entity["kpiDetails"]["value"]["band"] == expected.band
        assert entity["type"] == "KeyPerformanceIndicator"
        assert entity["calculationFrequency"]["value"] == "hourly"
        assert entity["refSourceEntity"]["object"] == station_id
        assert entity["provenance"]["value"]["definition"] == "eea-air-quality-index"

        # Every hour is one value in the KPI's history, equal to the calculator on that hour.
        async def full_history() -> list[tuple[str, Any]] | None:
            history = await kpi_history(kpi_reader, eea_id)
            return history if len(history) >= len(hours) else None

        history = await wait_for(full_history, what="26 hourly EEA values in the history")
        assert history == [(utc(h), eea_air_quality_index(hourly_values(h)).level) for h in hours]  # type: ignore[union-attr]

        # The daily mean of 15 March (24 valid hours) and the yearly NO2 exceedance count.
        day_id = kpi_id("pm25-daily-mean", station_id, "daily")
        series = [(START + timedelta(hours=h), hourly_values(h)["pm25"]) for h in hours]
        day_mean = daily_means(series, BEIJING)[START.date()]
        assert day_mean.value is not None

        async def day_done() -> dict[str, Any] | None:
            entity = await kpi_value_at(kpi_reader, day_id, utc(24))  # 16 March started: 1 hour only
            if entity is None:
                return None
            return entity

        today = await wait_for(day_done, what="the daily mean entity to reach 16 March")
        assert today["kpiValue"]["value"] == "insufficientData"
        assert today["coverage"]["value"]["sufficient"] is False

        # 15 March's final value may be computed after 16 March began (its last hours' job can run
        # after the next day's under load): it replaces the day's one history instance.
        final = round(day_mean.value, 2)

        async def day_final() -> list[tuple[str, Any]] | None:
            day_history = await kpi_history(kpi_reader, day_id)
            return day_history if (utc(0), final) in day_history else None

        day_history = await wait_for(day_final, what="15 March's mean over its 24 hours in the history")
        assert [stamp for stamp, _ in day_history] == [utc(0), utc(24)]  # one instance per day

        no2_id = kpi_id("eu-no2-hourly-exceedances", station_id, "2016")
        no2 = [(START + timedelta(hours=h), hourly_values(h)["no2"]) for h in hours]
        expected_count = count_exceedances(find_limit("eu-2008-50", "no2", "hour"), no2, 2016, BEIJING).exceedances
        assert expected_count > 0

        async def counted() -> dict[str, Any] | None:
            entity = await kpi_reader.get_entity(no2_id)
            return entity if entity["kpiValue"]["value"] == expected_count else None

        yearly = await wait_for(counted, what=f"{expected_count} NO2 exceedance hours")
        assert yearly["coverage"]["value"]["sufficient"] is False  # a day of data is not 90 % of a year
        assert yearly["kpiDetails"]["value"]["compliant"] is None or yearly["kpiDetails"]["value"]["compliant"] is False
        assert yearly["calculationPeriod"]["value"] == {"from": "2016-01-01", "to": "2016-12-31"}


async def test_restart_loses_nothing_and_counts_nothing_twice(
    settings: KpiSettings, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient, station_id: str,
    wait_for: Callable[..., Any],
) -> None:
    chosen = definitions("eea-air-quality-index", "eu-no2-hourly-exceedances")
    eea_id = kpi_id("eea-air-quality-index", station_id, "hourly")
    async with KpiEngine(settings, chosen):
        await send_hours(producer, station_id, range(0, 10))
        await wait_for(lambda: kpi_value_at(kpi_reader, eea_id, utc(9)), what="hour 9 before the restart")
    # The engine is down: these changes wait in its MQTT session.
    await send_hours(producer, station_id, range(10, 20))
    async with KpiEngine(settings, chosen) as engine:
        await wait_for(lambda: kpi_value_at(kpi_reader, eea_id, utc(19)), what="hour 19 after the restart")
        # The same windows computed again (a replayed change) write nothing new.
        engine.changed(station_id, "AirQualityObserved", observation(station_id, 5))
        await engine.drained()
    history = await kpi_history(kpi_reader, eea_id)
    assert [stamp for stamp, _ in history] == [utc(h) for h in range(20)]
    no2 = [(START + timedelta(hours=h), hourly_values(h)["no2"]) for h in range(20)]
    expected = count_exceedances(find_limit("eu-2008-50", "no2", "hour"), no2, 2016, BEIJING).exceedances
    stored = await kpi_reader.get_entity(kpi_id("eu-no2-hourly-exceedances", station_id, "2016"))
    assert stored["kpiValue"]["value"] == expected


async def test_http_notifications_are_the_alternative_to_mqtt(
    settings: KpiSettings, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient, station_id: str,
    wait_for: Callable[..., Any],
) -> None:
    http_settings = settings.model_copy(update={"kpi_notify": "http"})
    async with KpiEngine(http_settings, definitions("caqi")):
        await send_hours(producer, station_id, range(0, 3))
        caqi_id = kpi_id("caqi", station_id, "hourly")
        entity = await wait_for(lambda: kpi_value_at(kpi_reader, caqi_id, utc(2)), what="CAQI over HTTP")
    assert isinstance(entity["kpiValue"]["value"], float)
    assert entity["kpiDetails"]["value"]["class"] in ("Very low", "Low", "Medium", "High", "Very high")


def test_environment_context_is_the_source_context() -> None:
    chosen = definitions("caqi")
    assert chosen.get("caqi").source.ld_context == ENVIRONMENT_CONTEXT


async def test_late_observations_recompute_their_windows_from_memory_or_from_history(
    settings: KpiSettings, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient, station_id: str,
    wait_for: Callable[..., Any],
) -> None:
    eea_id = kpi_id("eea-air-quality-index", station_id, "hourly")
    day_id = kpi_id("pm25-daily-mean", station_id, "daily")
    sent = [20, 21, 23, 25, 26, 27, 28, 29]  # 15 March 20:00 to 16 March 05:00, Beijing time
    async with KpiEngine(settings, definitions("eea-air-quality-index", "pm25-daily-mean")) as engine:
        for hour in sent:
            await send_hours(producer, station_id, range(hour, hour + 1))
        await wait_for(lambda: kpi_value_at(kpi_reader, eea_id, utc(29)), what="hour 29")
        await engine.drained()
        # Hour 24 (16 March, the day the engine keeps in memory) and hour 22 (15 March, older than
        # anything it keeps: read from the history) arrive late.
        await send_hours(producer, station_id, range(24, 25))
        await send_hours(producer, station_id, range(22, 23))

        async def all_hours() -> list[tuple[str, Any]] | None:
            history = await kpi_history(kpi_reader, eea_id)
            return history if len(history) >= 10 else None

        history = await wait_for(all_hours, what="the late hours in the EEA history")
        assert history == [(utc(h), eea_air_quality_index(hourly_values(h)).level) for h in range(20, 30)]  # type: ignore[union-attr]

        async def days_counted() -> dict[str, Any] | None:
            values = dict(await kpi_history_of(kpi_reader, day_id, "coverage"))
            first, second = values.get(utc(0)), values.get(utc(24))
            return values if first and second and first["valid"] == 4 and second["valid"] == 6 else None

        await wait_for(days_counted, what="both daily means counting their late hour")


async def kpi_history_of(reader: AsyncBrokerClient, entity_id: str, attribute: str) -> list[tuple[str, Any]]:
    entity = await reader.get_temporal_entity(
        entity_id, attrs=attribute, timerel="after", time_at="2000-01-01T00:00:00Z", options="temporalValues"
    )
    found = entity.get(attribute, {"values": []})
    values = found["values"] if isinstance(found, dict) else found[0]["values"]
    return sorted(((stamp, value) for value, stamp in values), key=lambda pair: pair[0])


async def test_an_hour_waiting_behind_a_later_notification_is_still_the_current_value_in_its_turn(
    settings: KpiSettings, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient, station_id: str,
    mqtt_url: str, tenant: str, wait_for: Callable[..., Any],
) -> None:
    """Under load a source's next hours are notified while its jobs run; the memory trimmed for the
    latest hour must still serve a waiting earlier hour (US AQI's NowCast reaches 11 hours back),
    else that hour is read from the history, written after the next one as an older window, and a
    subscriber of the KPI entity never hears of it (bench.kpi: `latency_missing` for us-aqi)."""
    chosen = definitions("us-aqi")
    aqi_id = kpi_id("us-aqi", station_id, "hourly")
    heard: list[str] = []
    topic = f"test/kpi/{tenant}"
    listener = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{tenant}")
    subscribed = threading.Event()
    listener.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.on_message = lambda _c, _u, message: heard.extend(
        str(entity["kpiValue"]["observedAt"]) for entity in orjson.loads(message.payload)["body"]["data"]
    )
    listener.connect("127.0.0.1", int(mqtt_url.rsplit(":", 1)[1]))
    listener.loop_start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        await kpi_reader.create_subscription({
            "type": "Subscription", "entities": [{"id": aqi_id, "type": "KeyPerformanceIndicator"}],
            "notification": {"attributes": ["kpiValue"], "endpoint": {"uri": f"{mqtt_url}/{topic}"}},
        })  # fmt: skip
        async with KpiEngine(settings, chosen) as engine:
            await send_hours(producer, station_id, range(0, 13))
            await wait_for(lambda: kpi_value_at(kpi_reader, aqi_id, utc(12)), what="hour 12")
            await engine.drained()
            reads = engine.stats.reads
            # Hours 13 and 14 are notified together; a worker finishing an earlier run of this
            # source trims its memory right then, before the jobs of 13 and 14 run.
            entity_type = chosen.get("us-aqi").source.type
            engine.changed(station_id, entity_type, observation(station_id, 13))
            engine.changed(station_id, entity_type, observation(station_id, 14))
            engine._trim(station_id, entity_type, engine._observations[station_id])
            await engine.drained()
            await wait_for(lambda: utc(14) in heard, what="the notification of hour 14")
            reads_for_13_and_14 = engine.stats.reads - reads
        assert utc(13) in heard, heard
        assert heard.index(utc(13)) < heard.index(utc(14))
        assert reads_for_13_and_14 == 0  # both hours from memory
        current = await kpi_reader.get_entity(aqi_id)
        assert current["kpiValue"]["observedAt"] == utc(14)
    finally:
        listener.loop_stop()
        listener.disconnect()


async def test_jobs_whose_read_the_broker_did_not_answer_run_again(
    settings: KpiSettings, broker_url: str, producer: AsyncBrokerClient, kpi_reader: AsyncBrokerClient,
    station_id: str, wait_for: Callable[..., Any],
) -> None:
    """The engine's first temporal read of a source (its seed) meets a dropped connection, as under
    load; the hours it was for still reach the KPI entity (they were dropped with the error)."""
    host, port = broker_url.rsplit("/", 1)[-1].split(":")
    dropped: list[bytes] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: bool) -> None:
        while data := await reader.read(65536):
            if requests and data.startswith(b"GET /ngsi-ld/v1/temporal/entities") and not dropped:
                dropped.append(data)  # the broker "disconnected without sending a response"
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(relay(client_reader, upstream_writer, True), relay(upstream_reader, client_writer, False),
                             return_exceptions=True)  # fmt: skip
        client_writer.close()

    proxy = await asyncio.start_server(connection, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    eea_id = kpi_id("eea-air-quality-index", station_id, "hourly")
    try:
        async with KpiEngine(settings.model_copy(update={"broker_url": proxy_url}),
                             definitions("eea-air-quality-index")) as engine:  # fmt: skip
            await send_hours(producer, station_id, range(0, 1))
            await wait_for(lambda: dropped, what="the seed read dropped")
            await send_hours(producer, station_id, range(1, 3))
            await wait_for(lambda: kpi_value_at(kpi_reader, eea_id, utc(2)), what="hour 2")
            await engine.drained()

            async def all_hours() -> list[tuple[str, Any]] | None:
                history = await kpi_history(kpi_reader, eea_id)
                return history if len(history) == 3 else None

            history = await wait_for(all_hours, within=20, what="hours 0 to 2 in the KPI history")
            assert [stamp for stamp, _ in history] == [utc(h) for h in range(3)]
            assert engine.stats.errors >= 1
    finally:
        proxy.close()


async def test_stations_with_hourly_work_are_taken_before_stations_waiting_with_yearly_work_only() -> None:
    """The engine's queue: after every station's yearly KPIs came due at once, a station that reports a new
    hour is served first, also when it was already waiting with yearly work; one yearly station at a time."""
    queue = SourceQueue()
    for n in range(3):
        queue.put(f"yearly-{n}", urgent=False)
    queue.put("hourly-a", urgent=True)
    queue.put("yearly-1", urgent=True)  # a new hour of a station already queued for its year
    queue.put("hourly-a", urgent=False)  # more yearly work of a station queued for an hour: stays ahead
    taken = [await asyncio.wait_for(queue.get(), 1) for _ in range(3)]
    assert taken == [("hourly-a", False), ("yearly-1", False), ("yearly-0", True)]
    assert "yearly-1" not in queue
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not second.done()  # yearly-2 waits until yearly-0 is done
    queue.put("hourly-b", urgent=True)
    assert await asyncio.wait_for(second, 1) == ("hourly-b", False)
    third = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not third.done()
    queue.done_background()
    assert await asyncio.wait_for(third, 1) == ("yearly-2", True)

"""The KPI writer keeps exactly one history instance per window, holding the window's latest value.

Real broker over HTTP; the KPI entities come from the shipped daily-mean definition and its
calculator on synthetic hourly PM2.5 values.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kpi.definitions import load_definitions
from kpi.entities import KpiEntity, calculate_kpi
from kpi.windows import window_at
from kpi.writer import KpiWriter
from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

BEIJING = ZoneInfo("Asia/Shanghai")
DAY = datetime(2016, 3, 15, tzinfo=BEIJING)
DAILY = load_definitions().get("pm25-daily-mean")


def daily_kpi(station_id: str, day: int, hours: int) -> KpiEntity:
    """The daily PM2.5 mean of day `day` (0 = 15 March) over its first `hours` hours."""
    start = DAY + timedelta(days=day)
    series = [((start + timedelta(hours=h)).astimezone(UTC), 10.0 + h) for h in range(hours)]
    return calculate_kpi(DAILY, station_id, {"pm25": series}, window_at("day", start, BEIJING))


@pytest.fixture
async def client(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as client:
        yield client


@pytest.fixture
def station_id() -> str:
    return f"urn:ngsi-ld:AirQualityObserved:beijing:Writer{uuid.uuid4().hex[:8]}"


async def history(client: AsyncBrokerClient, entity_id: str, attribute: str) -> list[tuple[str, Any]]:
    """(observedAt, value) of every instance of `attribute` in the entity's history, in time order."""
    entity = await client.get_temporal_entity(
        entity_id, attrs=attribute, timerel="after", time_at="2000-01-01T00:00:00Z", options="temporalValues"
    )
    found = entity.get(attribute, {"values": []})
    values = found["values"] if isinstance(found, dict) else [v for dataset in found for v in dataset["values"]]
    return sorted(((stamp, value) for value, stamp in values), key=lambda pair: pair[0])


def day_start(day: int) -> str:
    return format_timestamp((DAY + timedelta(days=day)).astimezone(UTC))


async def test_a_window_rewritten_once_complete_replaces_its_history_instance(
    client: AsyncBrokerClient, station_id: str
) -> None:
    writer = KpiWriter(client)
    partial, complete = daily_kpi(station_id, 0, 23), daily_kpi(station_id, 0, 24)
    assert partial.entity["kpiValue"]["value"] != complete.entity["kpiValue"]["value"]
    await writer.write([partial])  # 15 March with 23 hours: the current value
    await writer.write([daily_kpi(station_id, 1, 1)])  # 16 March begins
    await writer.write([complete])  # 15 March completes: now an older window

    values = await history(client, partial.id, "kpiValue")
    assert values == [(day_start(0), complete.entity["kpiValue"]["value"]), (day_start(1), "insufficientData")]
    coverage = await history(client, partial.id, "coverage")
    assert [c["valid"] for _, c in coverage] == [24, 1]
    current = await client.get_entity(partial.id)
    assert current["kpiValue"]["observedAt"] == day_start(1)


async def test_a_day_completed_in_the_same_write_that_begins_the_next_keeps_its_complete_value(
    client: AsyncBrokerClient, station_id: str
) -> None:
    """Under load one write holds both: the completed day (an older window now) and the next day's first hour."""
    writer = KpiWriter(client)
    partial, complete = daily_kpi(station_id, 0, 17), daily_kpi(station_id, 0, 24)
    assert partial.entity["kpiValue"]["value"] == "insufficientData"
    await writer.write([partial])  # 15 March with 17 hours: the current value
    await writer.write([complete, daily_kpi(station_id, 1, 1)])

    values = await history(client, partial.id, "kpiValue")
    assert values == [(day_start(0), complete.entity["kpiValue"]["value"]), (day_start(1), "insufficientData")]
    await writer.flush_history()  # nothing older may come back
    assert await history(client, partial.id, "kpiValue") == values


@pytest.mark.parametrize("replacing", [None, False], ids=["one-upsert", "an-upsert-per-window"])
async def test_new_windows_of_one_entity_in_one_write_each_reach_the_history_and_the_newest_is_current(
    client: AsyncBrokerClient, station_id: str, replacing: bool | None
) -> None:
    """What an engine that fell behind writes: three days of one station at once."""
    writer = KpiWriter(client, upsert_replaces_history=replacing)
    days = [daily_kpi(station_id, day, 20 + day) for day in range(3)]
    await writer.write([days[2], days[0], days[1]])
    assert await history(client, days[0].id, "kpiValue") == [
        (day_start(day), kpi.entity["kpiValue"]["value"]) for day, kpi in enumerate(days)
    ]
    assert [c["valid"] for _, c in await history(client, days[0].id, "coverage")] == [20, 21, 22]
    current = await client.get_entity(days[0].id)
    assert current["kpiValue"]["value"] == days[2].entity["kpiValue"]["value"]
    assert current["coverage"]["value"]["valid"] == 22
    assert writer.upserts == (1 if replacing is None else 3)
    assert await writer.flush_history() == 0


@pytest.mark.parametrize("replacing", [None, False], ids=["broker-replaces-rows", "catch-up-as-for-orion-ld"])
async def test_the_current_window_rewritten_reaches_the_history_when_superseded_or_flushed(
    client: AsyncBrokerClient, station_id: str, replacing: bool | None
) -> None:
    """Our broker (asked, None) replaces the rows under the window's instanceIds at each upsert; with
    `False` (what a broker that does not gets) the writer's catch-up PATCHes bring the history there."""
    writer = KpiWriter(client, upsert_replaces_history=replacing)
    for hours in (1, 12, 18, 20):  # the day fills up: the same window, a new value each time
        await writer.write([daily_kpi(station_id, 0, hours)])
    entity_id = daily_kpi(station_id, 0, 1).id
    assert (await client.get_entity(entity_id))["kpiValue"]["value"] == daily_kpi(station_id, 0, 20).entity[
        "kpiValue"
    ]["value"]
    await writer.write([daily_kpi(station_id, 1, 5)])  # 16 March supersedes it
    assert await history(client, entity_id, "kpiValue") == [
        (day_start(0), daily_kpi(station_id, 0, 20).entity["kpiValue"]["value"]),
        (day_start(1), "insufficientData"),
    ]
    await writer.write([daily_kpi(station_id, 1, 19)])
    await writer.flush_history()  # what a stopping engine does
    values = await history(client, entity_id, "kpiValue")
    assert values[-1] == (day_start(1), daily_kpi(station_id, 1, 19).entity["kpiValue"]["value"])
    assert len(values) == 2
    # The standing appears with the value (insufficientData has none): one instance per window.
    standings = await history(client, entity_id, "currentStanding")
    assert [stamp for stamp, _ in standings] == [day_start(0), day_start(1)]
    if replacing is None:  # asked: no request beyond the upserts was needed
        assert writer.upsert_replaces_history is True
        assert writer.replaced == 0
    else:
        assert writer.replaced == 2


async def test_a_rewrite_that_loses_an_attribute_removes_its_instance_also_on_a_replacing_broker(
    client: AsyncBrokerClient, station_id: str
) -> None:
    """A window's value that becomes `insufficientData` has no standing: an upsert cannot remove the
    standing's instance, the catch-up does (when superseded)."""
    writer = KpiWriter(client)
    valid = daily_kpi(station_id, 0, 20)
    lost = KpiEntity(valid.id, {
        **{k: v for k, v in valid.entity.items() if k != "currentStanding"},
        "kpiValue": {**valid.entity["kpiValue"], "value": "insufficientData"},
    })  # fmt: skip
    await writer.write([valid])
    await writer.write([lost])
    await writer.write([daily_kpi(station_id, 1, 20)])
    assert [stamp for stamp, _ in await history(client, valid.id, "currentStanding")] == [day_start(1)]
    assert await history(client, valid.id, "kpiValue") == [
        (day_start(0), "insufficientData"), (day_start(1), daily_kpi(station_id, 1, 20).entity["kpiValue"]["value"])
    ]  # fmt: skip


async def test_history_written_without_instance_ids_is_replaced_by_the_stored_ids(
    client: AsyncBrokerClient, station_id: str
) -> None:
    """What a broker that ignores client instanceIds (Orion-LD) leaves: the writer reads the ids and patches."""
    old = daily_kpi(station_id, 0, 23)
    await client.batch_upsert([daily_kpi(station_id, 1, 2).entity], mode="update")
    await client.temporal_append(old.id, {
        name: [old.entity[name]] for name in ("kpiValue", "coverage", "currentStanding") if name in old.entity
    })  # fmt: skip
    writer = KpiWriter(client)  # a new process: knows nothing of what is stored
    complete = daily_kpi(station_id, 0, 24)
    await writer.write([complete])
    values = await history(client, old.id, "kpiValue")
    assert values == [(day_start(0), complete.entity["kpiValue"]["value"]), (day_start(1), "insufficientData")]
    # Written again by yet another process: the history has this value, nothing is sent.
    again = KpiWriter(client)
    assert await again.write([complete]) == 0

"""The backfill through a real broker: series KPI history, the same after two runs, a recomputed window replaced.

Three days of the shipped Beijing station (examples/beijing, CC BY 4.0) go into the broker's
history; the backfill computes the hourly EEA index and the PM2.5 daily mean from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from kpi.backfill import backfill, evaluate_windows
from kpi.definitions import DefinitionSet, KpiDefinition, load_definitions
from kpi.engine import KpiEngine
from kpi.entities import NO_VALUE
from kpi.history import history_arrays, read_history, read_history_troe, tenant_database_url
from kpi.observations import SourceObservations, to_micros
from kpi.settings import KpiSettings
from kpi.writer import history_instance_id
from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT
from tests.conftest import running_broker
from tests.kpi.test_backfill_vectorised import BEIJING, SOURCE, station_history

SINCE = datetime(2016, 3, 14, tzinfo=BEIJING)
UNTIL = datetime(2016, 3, 17, tzinfo=BEIJING)
EEA_ID = "urn:ngsi-ld:KeyPerformanceIndicator:beijing:eea-air-quality-index:Aotizhongxin:hourly"
DAILY_ID = "urn:ngsi-ld:KeyPerformanceIndicator:beijing:pm25-daily-mean:Aotizhongxin:daily"


@pytest.fixture(scope="module")
def broker_and_database(
    create_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A broker of this module's own, and its database URL (for the backfill's TRoE reads)."""
    created: list[str] = []

    def create(label: str) -> str:
        created.append(create_database(label))
        return created[-1]

    with running_broker(create, tmp_path_factory) as base_url:
        yield base_url, created[0]


@pytest.fixture(scope="module")
def broker_url(broker_and_database: tuple[str, str]) -> str:
    return broker_and_database[0]


@pytest.fixture(scope="module")
def database_url(broker_and_database: tuple[str, str]) -> str:
    return broker_and_database[1]


@pytest.fixture
async def loaded(broker_url: str, tenant: str) -> AsyncIterator[dict[str, list[tuple[datetime, float]]]]:
    series = station_history(SINCE, UNTIL)
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT_CONTEXT) as client:
        history = {attr: [{"type": "Property", "value": v, "observedAt": format_timestamp(t)} for t, v in points]
                   for attr, points in series.items()}  # fmt: skip
        await client.create_temporal_entity({"id": SOURCE, "type": "AirQualityObserved", **history})
        latest = {attr: rows[-1] for attr, rows in history.items()}
        assert (await client.batch_upsert([{"id": SOURCE, "type": "AirQualityObserved", **latest}])).ok
        yield series


def definitions(*ids: str) -> DefinitionSet:
    return load_definitions().select(ids)


async def run_backfill(broker_url: str, tenant: str, chosen: DefinitionSet, database_url: str | None = None) -> Any:
    settings = KpiSettings(broker_url=broker_url, tenant=tenant, kpi_client_id=f"kpi-{tenant}",
                           kpi_database_url=database_url)  # fmt: skip
    engine = KpiEngine(settings, chosen)
    try:
        return await backfill(engine, SINCE, UNTIL)
    finally:
        await engine.stop()


async def stored(broker_url: str, tenant: str, entity_id: str, attrs: str) -> dict[str, Any]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as reader:
        return await reader.get_temporal_entity(entity_id, attrs=attrs, timerel="after",
                                                time_at="2016-01-01T00:00:00Z")  # fmt: skip


def instances(entity: dict[str, Any], attr: str) -> list[dict[str, Any]]:
    found = entity.get(attr, [])
    return found if isinstance(found, list) else [found]


def expected_values(chosen: DefinitionSet, kpi: str, series: dict[str, list[tuple[datetime, float]]]) -> dict[str, Any]:
    observations = SourceObservations()
    observations.seed(series, SINCE)
    return {
        entity.entity["kpiValue"]["observedAt"]: entity.entity["kpiValue"]["value"]
        for _, entity in evaluate_windows(chosen.get(kpi), SOURCE, observations, SINCE, UNTIL)
    }


@pytest.mark.parametrize("read_from", ["temporal API", "TRoE tables"])
async def test_a_backfill_run_twice_leaves_one_value_per_window_with_its_coverage(
    broker_url: str, database_url: str, tenant: str, loaded: dict[str, list[tuple[datetime, float]]], read_from: str
) -> None:
    chosen = definitions("eea-air-quality-index", "pm25-daily-mean")
    troe = database_url if read_from == "TRoE tables" else None
    first = await run_backfill(broker_url, tenant, chosen, troe)
    assert first.windows == 72 + 3
    assert first.history_instances == 71 + 2  # every window but the newest, which is the entity itself
    second = await run_backfill(broker_url, tenant, chosen, troe)
    assert second.history_instances == 0

    eea = await stored(broker_url, tenant, EEA_ID, "kpiValue")
    values = instances(eea, "kpiValue")
    by_time = {v["observedAt"]: v["value"] for v in values}
    assert len(values) == len(by_time) == 72
    assert by_time == expected_values(chosen, "eea-air-quality-index", loaded)
    # Older windows carry the instanceId the live writer gives them.
    first_hour = format_timestamp(SINCE.astimezone(UTC))
    assert {v["instanceId"] for v in values if v["observedAt"] == first_hour} == {
        history_instance_id(EEA_ID, "kpiValue", first_hour)
    }

    daily = await stored(broker_url, tenant, DAILY_ID, "kpiValue,coverage")
    coverage = {c["observedAt"]: c["value"] for c in instances(daily, "coverage")}
    assert len(instances(daily, "coverage")) == len(coverage) == 3
    assert all(c["expected"] == 24 and c["rule"] == "18 of 24 hours" for c in coverage.values())
    day_values = {v["observedAt"]: v for v in instances(daily, "kpiValue")}
    for stamp, value in day_values.items():
        assert (value["value"] != NO_VALUE) == coverage[stamp]["sufficient"]
        assert value.get("unitCode") == ("GQ" if value["value"] != NO_VALUE else None)


async def test_the_troe_tables_give_what_the_temporal_api_gives(
    broker_url: str, database_url: str, tenant: str, loaded: dict[str, list[tuple[datetime, float]]]
) -> None:
    attributes = sorted(loaded)
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT_CONTEXT) as client:
        # A second value at one instant (a correction) and a non-numeric one: the later number wins, text is left out.
        corrected = format_timestamp(loaded["no2"][5][0])
        await client.temporal_append(SOURCE, {"no2": [{"type": "Property", "value": 999.0, "observedAt": corrected}],
                                              "pm25": [{"type": "Property", "value": "n/a", "observedAt": corrected}]})
        api = await read_history(client, entity_type="AirQualityObserved", attributes=attributes,
                                 start=SINCE, end=UNTIL, entity_ids=[SOURCE])  # fmt: skip
    troe = await read_history_troe(tenant_database_url(database_url, tenant), SOURCE, attributes, SINCE, UNTIL)
    expected = history_arrays(api[SOURCE])
    assert troe.keys() == expected.keys()
    for attr, (times, values) in expected.items():
        assert troe[attr][0].tolist() == times.tolist()
        assert troe[attr][1].tolist() == values.tolist()
    no2 = dict(zip(*(array.tolist() for array in troe["no2"]), strict=True))
    assert no2[to_micros(loaded["no2"][5][0])] == 999.0
    assert len(troe["pm25"][0]) == len(loaded["pm25"])


async def test_a_window_recomputed_with_another_value_replaces_the_stored_one(
    broker_url: str, tenant: str, loaded: dict[str, list[tuple[datetime, float]]]
) -> None:
    await run_backfill(broker_url, tenant, definitions("eea-air-quality-index"))
    # The same KPI, now from O3 alone: many hours get another level.
    original = load_definitions().get("eea-air-quality-index")
    redefined = DefinitionSet((KpiDefinition.model_validate(
        original.model_dump() | {"parameters": {"pollutants": ["o3"]}}
    ),))  # fmt: skip
    expected = expected_values(redefined, "eea-air-quality-index", loaded)
    newest = max(expected)
    before = {v["observedAt"]: v["value"] for v in instances(await stored(broker_url, tenant, EEA_ID, "kpiValue"),
                                                               "kpiValue")}  # fmt: skip
    changed = {stamp for stamp, value in expected.items() if before[stamp] != value and stamp != newest}
    assert len(changed) > 10

    report = await run_backfill(broker_url, tenant, redefined)
    assert report.replaced == len(changed)
    assert report.history_instances == len(changed)
    values = [v for v in instances(await stored(broker_url, tenant, EEA_ID, "kpiValue"), "kpiValue")
              if v["observedAt"] != newest]  # fmt: skip
    # Every older hour once, with its new value (the newest hour is the entity's current value, the writer's).
    assert len(values) == 71
    assert {v["observedAt"]: v["value"] for v in values} == {s: v for s, v in expected.items() if s != newest}
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as reader:
        assert (await reader.get_entity(EEA_ID))["kpiValue"]["value"] == expected[newest]

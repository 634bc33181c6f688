"""General city KPIs (renewable share, recycling rate, traffic volume) on SYNTHETIC entities, through a real broker.

Our data sets have no energy, waste or traffic sources: the entities below are made up for the
test (type names as in broker_config/kpis/city.yaml, ids marked `synthetic`). The backfill path
computes the KPIs; running it twice must leave the same entities and history.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kpi.backfill import backfill
from kpi.calculators.generic import ratio
from kpi.definitions import load_definitions
from kpi.engine import KpiEngine
from kpi.settings import KpiSettings
from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

BEIJING = ZoneInfo("Asia/Shanghai")
MARCH = datetime(2016, 3, 1, tzinfo=BEIJING)


def prop(value: float, moment: datetime) -> dict[str, Any]:
    return {"type": "Property", "value": value, "observedAt": format_timestamp(moment.astimezone(UTC))}


@pytest.fixture
async def client(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant) as broker:
        yield broker


async def provide(client: AsyncBrokerClient, entity_id: str, entity_type: str,
                  series: dict[str, list[tuple[datetime, float]]]) -> None:
    """History through the temporal API and the latest values as current state."""
    temporal = {"id": entity_id, "type": entity_type,
                **{attr: [prop(v, t) for t, v in points] for attr, points in series.items()}}
    await client.create_temporal_entity(temporal)
    latest = {attr: prop(points[-1][1], points[-1][0]) for attr, points in series.items()}
    assert (await client.batch_upsert([{"id": entity_id, "type": entity_type, **latest}], mode="update")).ok


async def test_city_kpis_from_synthetic_entities_and_an_idempotent_backfill(
    client: AsyncBrokerClient, broker_url: str, tenant: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    energy_id = f"urn:ngsi-ld:CityEnergyBalance:beijing:synthetic-{tag}"
    days = [MARCH + timedelta(days=d) for d in range(31)]
    renewable = [(t, 100.0 + d) for d, t in enumerate(days)]
    total = [(t, 400.0) for t in days]
    await provide(client, energy_id, "CityEnergyBalance",
                  {"renewableGeneration": renewable, "totalConsumption": total})
    traffic_id = f"urn:ngsi-ld:TrafficFlowObserved:beijing:synthetic-{tag}"
    hours = [MARCH + timedelta(hours=h) for h in range(24)]
    counts = [(t, 50.0 + h) for h, t in enumerate(hours)]
    await provide(client, traffic_id, "TrafficFlowObserved", {"intensity": counts})

    definitions = load_definitions().select(["renewable-energy-share", "traffic-volume"])
    settings = KpiSettings(broker_url=broker_url, tenant=tenant, kpi_client_id=f"kpi-{tenant}")
    for _ in range(2):  # the second run must change nothing
        engine = KpiEngine(settings, definitions)
        report = await backfill(engine, MARCH, MARCH + timedelta(days=31))
        await engine.stop()
    assert report.windows > 0

    async with AsyncBrokerClient(broker_url, tenant=tenant, context=KPI_CONTEXT) as reader:
        share = await reader.get_entity(f"urn:ngsi-ld:KeyPerformanceIndicator:beijing:renewable-energy-share:"
                                        f"synthetic-{tag}:2016-03")
        expected = ratio([v for _, v in renewable], [v for _, v in total]).value
        assert expected is not None
        assert share["kpiValue"]["value"] == pytest.approx(100 * expected)
        assert share["kpiValue"]["unitCode"] == "P1"
        assert share["currentStanding"]["value"] == "fair"  # 31.9 %: between 20 % and the 42.5 % target

        volume_id = f"urn:ngsi-ld:KeyPerformanceIndicator:beijing:traffic-volume:synthetic-{tag}:daily"
        history = await reader.get_temporal_entity(volume_id, attrs="kpiValue", timerel="after",
                                                   time_at="2016-01-01T00:00:00Z", options="temporalValues")
        values = history["kpiValue"]["values"]
        by_day = {stamp: value for value, stamp in values}
        first_day = format_timestamp(MARCH.astimezone(UTC))
        assert by_day[first_day] == sum(50.0 + h for h in range(24))
        # One value per day of March and no day twice, although the backfill ran twice.
        assert len(values) == 31
        assert len(by_day) == 31

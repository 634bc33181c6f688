"""UltraLight 2.0 and JSON measures over southbound HTTP become Smart Data Models entities with history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agents.iot.settings import SMART_DATA_MODELS_CONTEXT
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient
from tests.agents.iot.iot_services import (
    AgentFactory,
    AgentProcess,
    entity_when_present,
    eventually,
    history_of,
    provision,
)

SDM_CONTEXT = SMART_DATA_MODELS_CONTEXT  # the agent's default context

AQ_GROUP: dict[str, Any] = {
    "apikey": "aq",
    "resource": "/iot/d",
    "entity_type": "AirQualityObserved",
    "attributes": [
        {"object_id": "n", "name": "no2", "type": "Number"},
        {"object_id": "t", "name": "temperature", "type": "Number"},
        {
            "object_id": "f",
            "name": "feelsLikeTemperature",
            "type": "Number",
            "expression": "${(@f - 32) / 1.8}",
            "metadata": {"unitCode": {"type": "Text", "value": "CEL"}},
        },
        {
            "object_id": "h",
            "name": "relativeHumidity",
            "type": "Number",
            "expression": "round(h / 100, 2)",
            "metadata": {"unitCode": "C62"},
        },
    ],
    "static_attributes": [{"name": "location", "type": "geo:point", "value": "39.982, 116.397"}],
}
JSON_GROUP: dict[str, Any] = {**AQ_GROUP, "apikey": "json", "resource": "/iot/json"}
STRICT_GROUP: dict[str, Any] = {
    "apikey": "strict", "resource": "/iot/d", "entity_type": "WeatherObserved", "explicitAttrs": True,
    "autoprovision": False, "attributes": [{"object_id": "t", "name": "temperature", "type": "Number"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def module_agent(start_module_agent: AgentFactory, broker_url: str) -> AgentProcess:
    return start_module_agent(broker_url)


@pytest.fixture
def agent(module_agent: AgentProcess, tenant: str) -> AgentProcess:
    # API keys are unique per agent (measures find their group by key): one set per tenant.
    groups = [{**group, "apikey": f"{tenant}-{group['apikey']}"} for group in (AQ_GROUP, JSON_GROUP, STRICT_GROUP)]
    provision(module_agent, tenant, groups=groups)
    return module_agent


@pytest.fixture
async def broker(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:
        yield client


def send(agent: AgentProcess, tenant: str, device: str, body: str, *, key: str = "aq", resource: str = "/iot/d",
         **params: str) -> httpx.Response:  # fmt: skip
    key = f"{tenant}-{key}" if key != "nokey" else key
    content_type = "application/json" if resource == "/iot/json" else "text/plain"
    return httpx.post(f"{agent.south_url}{resource}", params={"k": key, "i": device, **params}, content=body,
                      headers={"Content-Type": content_type})  # fmt: skip


async def test_ultralight_measure_becomes_an_air_quality_entity(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    response = send(agent, tenant, "station1", "n|41.5|t|21.25|TimeInstant|2024-03-01T10:00:00Z")
    assert response.status_code == 200, response.text

    entity = await entity_when_present(broker, f"urn:ngsi-ld:AirQualityObserved:{tenant}:station1")
    assert entity["type"] == "AirQualityObserved"
    assert entity["no2"]["value"] == 41.5
    assert entity["no2"]["unitCode"] == "GQ"
    assert entity["no2"]["observedAt"] == "2024-03-01T10:00:00.000Z"
    assert entity["temperature"]["value"] == 21.25
    assert entity["temperature"]["unitCode"] == "CEL"
    assert entity["dateObserved"]["value"]["@value"] == "2024-03-01T10:00:00.000Z"
    assert entity["location"]["value"] == {"type": "Point", "coordinates": [116.397, 39.982]}


async def test_multi_measure_groups_keep_their_own_timestamps_in_history(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    body = "2024-03-01T10:00:00Z|n|10#2024-03-01T11:00:00Z|n|11#n|12|TimeInstant|2024-03-01T12:00:00Z"
    assert send(agent, tenant, "station2", body).status_code == 200
    entity_id = f"urn:ngsi-ld:AirQualityObserved:{tenant}:station2"

    async def three_instances() -> list[dict[str, Any]]:
        found = await history_of(broker, entity_id, "no2")
        assert len(found) == 3
        return found

    found = await eventually(three_instances)
    assert sorted((i["observedAt"], i["value"]) for i in found) == [
        ("2024-03-01T10:00:00.000Z", 10), ("2024-03-01T11:00:00.000Z", 11), ("2024-03-01T12:00:00.000Z", 12),
    ]  # fmt: skip
    entity = await broker.get_entity(entity_id)
    assert entity["no2"]["value"] == 12
    assert entity["dateObserved"]["value"]["@value"] == "2024-03-01T12:00:00.000Z"


async def test_measure_without_timestamp_is_observed_when_received(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    assert send(agent, tenant, "station3", "n|7").status_code == 200
    entity = await entity_when_present(broker, f"urn:ngsi-ld:AirQualityObserved:{tenant}:station3")
    assert entity["no2"]["observedAt"] == entity["dateObserved"]["value"]["@value"]
    assert entity["no2"]["observedAt"].startswith("20")


async def test_query_parameter_t_sets_the_observation_time(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    assert send(agent, tenant, "station4", "n|8", t="2023-12-31T23:00:00+01:00").status_code == 200
    entity = await entity_when_present(broker, f"urn:ngsi-ld:AirQualityObserved:{tenant}:station4")
    assert entity["no2"]["observedAt"] == "2023-12-31T22:00:00.000Z"


async def test_expressions_convert_units_safely(agent: AgentProcess, broker: AsyncBrokerClient, tenant: str) -> None:
    assert send(agent, tenant, "station5", "f|212|h|45").status_code == 200
    entity = await entity_when_present(broker, f"urn:ngsi-ld:AirQualityObserved:{tenant}:station5")
    assert entity["feelsLikeTemperature"]["value"] == pytest.approx(100.0)
    assert entity["feelsLikeTemperature"]["unitCode"] == "CEL"
    assert entity["relativeHumidity"]["value"] == 0.45
    assert entity["relativeHumidity"]["unitCode"] == "C62"


async def test_json_object_and_array_payloads(agent: AgentProcess, broker: AsyncBrokerClient, tenant: str) -> None:
    one = '{"n": 30, "t": 19.5, "TimeInstant": "2024-05-01T08:00:00Z"}'
    assert send(agent, tenant, "jstation", one, key="json", resource="/iot/json").status_code == 200
    many = '[{"n": 31, "TimeInstant": "2024-05-01T09:00:00Z"}, {"n": 32, "TimeInstant": "2024-05-01T10:00:00Z"}]'
    assert send(agent, tenant, "jstation", many, key="json", resource="/iot/json").status_code == 200
    entity_id = f"urn:ngsi-ld:AirQualityObserved:{tenant}:jstation"

    async def all_three() -> None:
        assert sorted(i["value"] for i in await history_of(broker, entity_id, "no2")) == [30, 31, 32]

    await eventually(all_three)
    entity = await broker.get_entity(entity_id)
    assert entity["no2"]["value"] == 32
    assert entity["temperature"]["value"] == 19.5


async def test_provisioned_device_names_its_entity_and_overrides_the_group(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    provision(agent, tenant, devices=[{
        "device_id": "sensor-9", "entity_name": "urn:ngsi-ld:AirQualityObserved:Beijing:Aotizhongxin",
        "entity_type": "AirQualityObserved", "protocol": "PDI-IoTA-UltraLight", "transport": "HTTP",
        "attributes": [{"object_id": "n", "name": "no2", "type": "Number", "expression": "n * 2"}],
        "static_attributes": [{"name": "stationName", "type": "Text", "value": "Aotizhongxin"}],
    }])  # fmt: skip
    assert send(agent, tenant, "sensor-9", "n|5").status_code == 200
    entity = await entity_when_present(broker, "urn:ngsi-ld:AirQualityObserved:Beijing:Aotizhongxin")
    assert entity["no2"]["value"] == 10
    assert entity["stationName"]["value"] == "Aotizhongxin"
    assert entity["location"]["value"]["type"] == "Point"


async def test_explicit_attrs_keep_only_provisioned_measures(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    provision(
        agent, tenant, devices=[{"device_id": "w1", "apikey": f"{tenant}-strict", "entity_type": "WeatherObserved"}]
    )
    assert send(agent, tenant, "w1", "t|3.5|junk|1", key="strict").status_code == 200
    entity = await entity_when_present(broker, f"urn:ngsi-ld:WeatherObserved:{tenant}:w1")
    assert entity["temperature"]["value"] == 3.5
    assert "junk" not in entity


def test_autoprovisioned_device_is_listed(agent: AgentProcess, tenant: str) -> None:
    assert send(agent, tenant, "newcomer", "n|1").status_code == 200
    devices = httpx.get(f"{agent.north_url}/iot/devices", headers={"fiware-service": tenant}).json()
    assert "newcomer" in [device["device_id"] for device in devices["devices"]]


def quarantined(agent: AgentProcess, needle: str) -> list[Any]:
    quarantine = Quarantine(agent.data_dir / "quarantine.sqlite")
    try:
        return [record for record in quarantine.list(agent="iot") if needle in record.source]
    finally:
        quarantine.close()


@pytest.mark.parametrize(
    ("key", "device", "body", "status", "name", "reason"),
    [
        ("aq", "bad1", "n|41|t", 400, "WRONG_SYNTAX", "odd number of fields"),
        ("aq", "bad2", "t|warm", 400, "WRONG_SYNTAX", "declared Number"),
        ("nokey", "bad3", "n|1", 404, "DEVICE_GROUP_NOT_FOUND", "Couldn't find device group"),
        ("strict", "bad4", "t|1", 404, "DEVICE_NOT_FOUND", "does not autoprovision"),
        ("strict", "w1", "junk|1", 400, "WRONG_SYNTAX", "no attribute of the measure"),
    ],
)
def test_unmappable_measures_are_refused_and_quarantined(
    agent: AgentProcess, tenant: str, key: str, device: str, body: str, status: int, name: str, reason: str
) -> None:
    if device == "w1":
        provision(agent, tenant, devices=[{"device_id": "w1", "apikey": f"{tenant}-strict"}])
    response = send(agent, tenant, device, body, key=key)
    assert response.status_code == status
    problem = response.json()
    assert problem["name"] == name
    assert reason in problem["message"]
    assert problem["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")
    [record] = quarantined(agent, f"i={device}")
    assert record.payload == body
    assert reason in record.reason


def test_mandatory_parameters_are_named(agent: AgentProcess) -> None:
    response = httpx.post(f"{agent.south_url}/iot/d", params={"i": "x"}, content="n|1")
    assert response.status_code == 400
    assert response.json()["name"] == "MANDATORY_PARAMS_NOT_FOUND_HTTP"
    assert "'k'" in response.json()["message"]


async def test_measure_the_broker_rejects_is_quarantined(
    agent: AgentProcess, broker: AsyncBrokerClient, tenant: str
) -> None:
    # A provisioned entity_name that is not a URI passes the agent but the broker refuses it (400).
    provision(
        agent, tenant, devices=[{"device_id": "odd", "apikey": f"{tenant}-aq", "entity_name": "urn:ngsi-ld:bad id"}]
    )
    assert send(agent, tenant, "odd", "n|1").status_code == 200

    async def rejected() -> None:
        records = quarantined(agent, "i=odd")
        assert records, "the rejected measure is not in the quarantine yet"
        assert "rejected by the broker" in records[0].reason
        assert records[0].metadata["entity"]["id"] == "urn:ngsi-ld:bad id"

    await eventually(rejected)

"""Measures over MQTT (QoS 1): every topic form of FIWARE IoT Agents, both payload forms, shared subscriptions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agents.iot.settings import SMART_DATA_MODELS_CONTEXT
from ngsi.client import AsyncBrokerClient
from tests.agents.iot.iot_services import (
    AgentFactory,
    AgentProcess,
    MqttServer,
    Publisher,
    entity_when_present,
    eventually,
    history_of,
    provision,
)

SDM_CONTEXT = SMART_DATA_MODELS_CONTEXT  # the agent's default context


def weather_group(apikey: str) -> dict[str, Any]:
    return {
        "apikey": apikey,
        "entity_type": "WeatherObserved",
        "attributes": [
            {"object_id": "t", "name": "temperature", "type": "Number"},
            {"object_id": "h", "name": "relativeHumidity", "type": "Number"},
        ],
    }


@pytest.fixture(scope="module")
def mqtt_agent(start_module_agent: AgentFactory, broker_url: str, mqtt_server: MqttServer) -> AgentProcess:
    return start_module_agent(broker_url, mqtt=mqtt_server, iot_instance="mqtt-tests")


@pytest.fixture
async def broker(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:
        yield client


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("/ul/{key}/{device}/attrs", "t|21.5|h|40", {"temperature": 21.5, "relativeHumidity": 40}),
        ("/json/{key}/{device}/attrs", '{"t": 22.5, "h": 41}', {"temperature": 22.5, "relativeHumidity": 41}),
        ("/ul/{key}/{device}/attrs/t", "23.5", {"temperature": 23.5}),
        ("/json/{key}/{device}/attrs/h", "42", {"relativeHumidity": 42}),
        ("/{key}/{device}/attrs", "t|24.5", {"temperature": 24.5}),
        ("/{key}/{device}/attrs", '{"t": 25.5}', {"temperature": 25.5}),
        ("/{key}/{device}/attrs/t", "26.5", {"temperature": 26.5}),
    ],
    ids=["ul", "json", "ul-single", "json-single", "legacy-ul", "legacy-json", "legacy-single"],
)
async def test_each_topic_form_reaches_the_broker(
    mqtt_agent: AgentProcess,
    publisher: Publisher,
    broker: AsyncBrokerClient,
    tenant: str,
    topic: str,
    payload: str,
    expected: dict[str, Any],
) -> None:
    key = f"{tenant}-k"
    provision(mqtt_agent, tenant, groups=[weather_group(key)])
    device = f"dev-{uuid.uuid4().hex[:6]}"
    publisher.publish_all([(topic.format(key=key, device=device), payload)])

    entity = await entity_when_present(broker, f"urn:ngsi-ld:WeatherObserved:{tenant}:{device}")
    assert {name: entity[name]["value"] for name in expected} == expected
    assert "dateObserved" in entity


async def test_multi_measure_ultralight_over_mqtt_keeps_every_measure(
    mqtt_agent: AgentProcess, publisher: Publisher, broker: AsyncBrokerClient, tenant: str
) -> None:
    key = f"{tenant}-k"
    provision(mqtt_agent, tenant, groups=[weather_group(key)])
    body = "2024-01-01T00:00:00Z|t|1#2024-01-01T01:00:00Z|t|2#2024-01-01T02:00:00Z|t|3"
    publisher.publish_all([(f"/ul/{key}/multi/attrs", body)])
    entity_id = f"urn:ngsi-ld:WeatherObserved:{tenant}:multi"

    async def three() -> None:
        assert sorted(i["value"] for i in await history_of(broker, entity_id, "temperature")) == [1, 2, 3]

    await eventually(three)


async def test_unknown_api_key_over_mqtt_is_quarantined(mqtt_agent: AgentProcess, publisher: Publisher) -> None:
    from agents.quarantine import Quarantine

    topic = f"/ul/nobody-{uuid.uuid4().hex[:6]}/dev/attrs"
    publisher.publish_all([(topic, "t|1")])

    async def quarantined() -> None:
        quarantine = Quarantine(mqtt_agent.data_dir / "quarantine.sqlite")
        try:
            records = [r for r in quarantine.list(agent="iot") if r.source == f"mqtt:{topic}"]
        finally:
            quarantine.close()
        assert records and "Couldn't find device group" in records[0].reason
        assert records[0].payload == "t|1"

    await eventually(quarantined)


async def test_agents_in_one_shared_subscription_group_split_the_load_without_duplicates(
    start_agent: AgentFactory, broker_url: str, mqtt_server: MqttServer, publisher: Publisher, tenant: str
) -> None:
    if mqtt_server.protocol != "5":
        pytest.skip("shared subscriptions need MQTT 5 (amqtt speaks 3.1.1 only)")
    group = f"g{uuid.uuid4().hex[:6]}"
    first = start_agent(broker_url, mqtt=mqtt_server, iot_instance="a", iot_mqtt_group=group)
    # Both agents on one data folder: they share the provisioning registry (and the quarantine).
    second = start_agent(broker_url, mqtt=mqtt_server, iot_instance="b", iot_mqtt_group=group, data_dir=first.data_dir)
    key = f"{tenant}-k"
    provision(first, tenant, groups=[weather_group(key)])
    count = 200
    publisher.publish_all(
        [
            (f"/ul/{key}/d{n % 10}/attrs", f"t|{n}|TimeInstant|2024-02-01T00:{n // 60:02d}:{n % 60:02d}Z")
            for n in range(count)
        ]
    )

    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:

        async def all_once() -> None:
            values: list[int] = []
            for device in range(10):
                entity_id = f"urn:ngsi-ld:WeatherObserved:{tenant}:d{device}"
                values += [i["value"] for i in await history_of(client, entity_id, "temperature")]
            assert sorted(values) == list(range(count))

        await eventually(all_once, timeout_s=60)
    async with httpx.AsyncClient() as http:
        shares = [(await http.get(f"{agent.north_url}/health")).json()["mqttReceived"] for agent in (first, second)]
    assert sum(shares) == count
    assert min(shares) > 0, f"one agent took every message: {shares}"

"""Nothing lost while the broker is down: measures wait in the outbox and arrive exactly once when it is back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agents.iot.settings import SMART_DATA_MODELS_CONTEXT
from ngsi.client import AsyncBrokerClient
from tests.agents.iot.iot_services import (
    AgentFactory,
    MqttServer,
    Publisher,
    ServiceProcess,
    broker_url_of,
    eventually,
    history_of,
    provision,
)

SDM_CONTEXT = SMART_DATA_MODELS_CONTEXT  # the agent's default context
DEVICES = 5
GROUP = {
    "apikey": "outage",
    "entity_type": "AirQualityObserved",
    "attributes": [{"object_id": "n", "name": "no2", "type": "Number"}],
}


def stamp(n: int) -> str:
    return f"2024-06-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"


async def wait_until_all_delivered(broker_url: str, tenant: str, measures: int) -> None:
    """Every measure once in history (no gaps, no duplicates) and the newest one in the current state."""
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:

        async def complete() -> None:
            for device in range(DEVICES):
                entity_id = f"urn:ngsi-ld:AirQualityObserved:{tenant}:d{device}"
                values = sorted(i["value"] for i in await history_of(client, entity_id, "no2"))
                assert values == list(range(device, measures, DEVICES)), f"d{device}: {len(values)} instances"

        await eventually(complete, timeout_s=120, interval_s=0.5)
        for device in range(DEVICES):
            entity = await client.get_entity(f"urn:ngsi-ld:AirQualityObserved:{tenant}:d{device}")
            newest = max(range(device, measures, DEVICES))
            assert entity["no2"]["value"] == newest
            assert entity["dateObserved"]["value"]["@value"] == stamp(newest).replace("Z", ".000Z")


def health(agent_north_url: str) -> dict[str, Any]:
    return httpx.get(f"{agent_north_url}/health", timeout=5).json()


async def test_measures_sent_while_the_broker_is_down_arrive_exactly_once(
    start_private_broker: Callable[[], ServiceProcess],
    start_agent: AgentFactory,
    mqtt_server: MqttServer,
    publisher: Publisher,
    tenant: str,
) -> None:
    broker = start_private_broker()
    agent = start_agent(broker_url_of(broker), mqtt=mqtt_server, iot_instance="outage", iot_mqtt_group=tenant)
    provision(agent, tenant, groups=[GROUP])
    total = 600

    def device_traffic() -> None:
        # 600 measures at ~150/s, alternating MQTT and HTTP, while the broker goes down and comes back.
        with httpx.Client() as http:
            for n in range(total):
                body = f"n|{n}|TimeInstant|{stamp(n)}"
                if n % 2:
                    publisher.publish(f"/ul/outage/d{n % DEVICES}/attrs", body).wait_for_publish(10)
                else:
                    response = http.post(f"{agent.south_url}/iot/d", params={"k": "outage", "i": f"d{n % DEVICES}"},
                                         content=body, timeout=30)  # fmt: skip
                    assert response.status_code == 200, response.text
                time.sleep(1 / 150)

    sender = threading.Thread(target=device_traffic)
    sender.start()
    await asyncio.sleep(1.0)
    broker.stop()  # under load
    await eventually(lambda: _broker_down(agent.north_url), timeout_s=30)
    await asyncio.sleep(1.5)  # measures keep coming in while the broker is away
    broker.start()
    sender.join(timeout=120)
    assert not sender.is_alive()

    await wait_until_all_delivered(broker_url_of(broker), tenant, total)
    assert health(agent.north_url)["outboxPending"] == 0


async def _broker_down(north_url: str) -> None:
    async with httpx.AsyncClient() as http:
        status = (await http.get(f"{north_url}/health")).json()
    assert status["brokerAvailable"] is False and status["outboxPending"] > 0


async def test_outbox_survives_an_agent_restart_while_the_broker_is_down(
    start_private_broker: Callable[[], ServiceProcess], start_agent: AgentFactory, tenant: str
) -> None:
    broker = start_private_broker()
    agent = start_agent(broker_url_of(broker))
    provision(agent, tenant, groups=[GROUP])
    broker.stop()
    total = 50
    async with httpx.AsyncClient() as http:
        for n in range(total):
            response = await http.post(f"{agent.south_url}/iot/d", params={"k": "outage", "i": f"d{n % DEVICES}"},
                                 content=f"n|{n}|TimeInstant|{stamp(n)}")  # fmt: skip
            assert response.status_code == 200
    agent.stop()
    agent.start()  # same data folder: the outbox file still holds the 50 measures
    assert health(agent.north_url)["outboxPending"] == total
    broker.start()
    await wait_until_all_delivered(broker_url_of(broker), tenant, total)


@pytest.fixture(autouse=True)
def _quiet_httpx() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)

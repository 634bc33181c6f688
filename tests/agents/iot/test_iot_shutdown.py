"""SIGTERM under backlog: the agent stops within a bound, and after a restart every measure is in history exactly once.

What the agent took is either in the broker or durable in its outbox before it acknowledges it;
what it did not acknowledge stays with the MQTT server for its persistent session. A flood
leaves thousands of measures queued at the MQTT server when the agent is told to stop; a
broker that stops answering (SIGSTOP) leaves a batch upsert hanging in flight.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
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
    ServiceProcess,
    broker_url_of,
    eventually,
    history_of,
    provision,
)

DEVICES = 50
PER_DEVICE = 200
TOTAL = DEVICES * PER_DEVICE
STOP_BOUND_S = 10.0
GROUP = {
    "apikey": "flood",
    "entity_type": "AirQualityObserved",
    "attributes": [{"object_id": "n", "name": "no2", "type": "Number"}],
}


def stamp(n: int) -> str:
    return f"2024-06-{1 + n // 86400:02d}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"


def flood(server: MqttServer, client_id: str) -> None:
    """TOTAL measures, as fast as the MQTT server takes them: device d gets n = d, d + DEVICES, ..."""
    device = Publisher(server, client_id=client_id)
    try:
        device.publish_all(
            [(f"/ul/flood/d{n % DEVICES}/attrs", f"n|{n}|TimeInstant|{stamp(n)}") for n in range(TOTAL)],
            timeout_s=120,
        )
    finally:
        device.close()


def health(agent: AgentProcess) -> dict[str, Any]:
    return httpx.get(f"{agent.north_url}/health", timeout=5).json()


def terminate_and_time(agent: AgentProcess) -> float:
    """SIGTERM the agent and return how long it took to exit (it must exit cleanly)."""
    assert agent.process is not None
    started = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    try:
        code = agent.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        agent.process.kill()
        agent.process.wait()
        raise AssertionError(f"the agent ignored SIGTERM for 60 s:\n{agent.log()}") from None
    elapsed = time.monotonic() - started
    agent.process = None
    assert code == 0, f"the agent exited with {code}:\n{agent.log()}"
    return elapsed


async def assert_exactly_once(broker_url: str, tenant: str) -> None:
    """Every measure in the history of its device's entity (nothing lost), and only once.

    Measures near the stop are sent again after the restart (an entry whose batch upsert was cut off
    by the shutdown, a message the MQTT server delivers again, possibly after newer ones of its
    device): they carry the same instanceId, and the broker replaces the history row under it.
    """
    twice: dict[str, list[int]] = {}
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SMART_DATA_MODELS_CONTEXT) as client:

        async def complete() -> None:
            twice.clear()
            for device in range(DEVICES):
                entity_id = f"urn:ngsi-ld:AirQualityObserved:{tenant}:d{device}"
                values = sorted(i["value"] for i in await history_of(client, entity_id, "no2"))
                expected = list(range(device, TOTAL, DEVICES))
                assert sorted(set(values)) == expected, f"d{device}: {len(set(values))} of {len(expected)} measures"
                if len(values) > len(expected):
                    twice[f"d{device}"] = sorted({v for v in values if values.count(v) > 1})

        await eventually(complete, timeout_s=240, interval_s=2.0)
    assert not twice, f"measures in history twice: {twice}"


def provisioned_agent(
    start_private_broker: Callable[[], ServiceProcess], start_agent: AgentFactory, mqtt_server: MqttServer,
    tenant: str, name: str,
) -> tuple[ServiceProcess, AgentProcess]:
    """A private broker and an agent on it with the flood group, in the tenant's shared subscription."""
    broker = start_private_broker()
    agent = start_agent(broker_url_of(broker), mqtt=mqtt_server, iot_instance=f"{name}-{tenant}", iot_mqtt_group=tenant)
    provision(agent, tenant, groups=[GROUP])
    return broker, agent


async def test_sigterm_with_a_backlog_at_the_mqtt_server_stops_in_time_and_loses_nothing(
    start_private_broker: Callable[[], ServiceProcess], start_agent: AgentFactory, mqtt_server: MqttServer,
    tenant: str,
) -> None:
    broker, agent = provisioned_agent(start_private_broker, start_agent, mqtt_server, tenant, "flood")
    await asyncio.to_thread(flood, mqtt_server, f"device-{tenant}")
    taken = health(agent)["mqttReceived"]
    assert taken < TOTAL, "no backlog: the agent kept up with the flood"

    elapsed = terminate_and_time(agent)
    assert elapsed < STOP_BOUND_S, f"the agent took {elapsed:.1f} s to stop"

    agent.start()  # same data folder and client id: its outbox and its MQTT session
    await assert_exactly_once(broker_url_of(broker), tenant)
    assert health(agent)["outboxPending"] == 0


async def test_sigterm_while_the_broker_hangs_stops_in_time_and_loses_nothing(
    start_private_broker: Callable[[], ServiceProcess], start_agent: AgentFactory, mqtt_server: MqttServer,
    tenant: str,
) -> None:
    broker, agent = provisioned_agent(start_private_broker, start_agent, mqtt_server, tenant, "hang")
    flooding = asyncio.create_task(asyncio.to_thread(flood, mqtt_server, f"device-{tenant}"))

    async def some_delivered() -> None:
        assert (await asyncio.to_thread(health, agent))["delivered"] > 0

    await eventually(some_delivered, timeout_s=60)
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)  # requests in flight now hang: applied or not, nobody knows
    try:
        await asyncio.sleep(1.0)
        elapsed = await asyncio.to_thread(terminate_and_time, agent)
        assert elapsed < STOP_BOUND_S, f"the agent took {elapsed:.1f} s to stop"
    finally:
        broker.process.send_signal(signal.SIGCONT)
    await flooding

    agent.start()
    await assert_exactly_once(broker_url_of(broker), tenant)
    assert health(agent)["outboxPending"] == 0


@pytest.fixture(autouse=True)
def _quiet_httpx() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)

"""Mosquitto with the shipped config loses no QoS 1 message while the agent holds back (outbox full, broker down).

Mosquitto's default `max_queued_messages 1000` would drop everything past the first thousand
messages queued for the agent's session; the shipped mosquitto.conf lifts that limit, and the
agent acknowledges a message only once it is in its outbox, so the backlog waits in Mosquitto.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import httpx
import pytest

from agents.iot.settings import SMART_DATA_MODELS_CONTEXT
from ngsi.client import AsyncBrokerClient
from tests.agents.iot.iot_services import (
    AgentFactory,
    Publisher,
    ServiceProcess,
    broker_url_of,
    eventually,
    history_of,
    provision,
    running_mosquitto,
)

SDM_CONTEXT = SMART_DATA_MODELS_CONTEXT  # the agent's default context
DEVICES = 10
MESSAGES = 3000

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")


async def test_slow_agent_loses_no_qos1_message_with_the_shipped_mosquitto_config(
    start_private_broker: Callable[[], ServiceProcess], start_agent: AgentFactory, tenant: str
) -> None:
    broker = start_private_broker()
    with running_mosquitto(shipped=True) as mosquitto:
        # A tiny outbox and Receive Maximum: with the broker down the agent soon stops acknowledging.
        agent = start_agent(
            broker_url_of(broker), mqtt=mosquitto, iot_instance="slow", iot_outbox_max_pending=50,
            iot_mqtt_receive_maximum=20,
        )  # fmt: skip
        provision(agent, tenant, groups=[{"apikey": "bp", "entity_type": "WeatherObserved"}])
        broker.stop()
        device = Publisher(mosquitto)
        try:
            device.publish_all(
                [(f"/ul/bp/d{n % DEVICES}/attrs", f"temperature|{n}|TimeInstant|2024-07-01T00:00:00Z") for n in
                 range(MESSAGES)]
            )  # fmt: skip
        finally:
            device.close()
        async with httpx.AsyncClient() as http:
            status = (await http.get(f"{agent.north_url}/health")).json()
        # The agent holds at most its outbox plus one Receive Maximum; Mosquitto queues the rest.
        assert status["outboxPending"] <= 50
        assert status["mqttReceived"] < 1000

        broker.start()
        async with AsyncBrokerClient(broker_url_of(broker), tenant=tenant, context=SDM_CONTEXT) as client:

            async def all_arrived() -> None:
                seen: list[int] = []
                for number in range(DEVICES):
                    entity_id = f"urn:ngsi-ld:WeatherObserved:{tenant}:d{number}"
                    seen += [i["value"] for i in await history_of(client, entity_id, "temperature")]
                assert sorted(seen) == list(range(MESSAGES)), f"{len(seen)} of {MESSAGES} measures arrived"

            await eventually(all_arrived, timeout_s=180, interval_s=1.0)

"""`climaborough quarantine list|show|replay` on IoT records: an operator fixes the provisioning and replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from agents.iot.settings import SMART_DATA_MODELS_CONTEXT
from ngsi.client import AsyncBrokerClient
from tests.agents.iot.iot_services import REPO, AgentFactory, entity_when_present, provision

SDM_CONTEXT = SMART_DATA_MODELS_CONTEXT  # the agent's default context


def climaborough(*args: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIMABOROUGH_BROKER_URL": broker_url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.fixture
async def broker(broker_url: str, tenant: str) -> AsyncIterator[AsyncBrokerClient]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:
        yield client


async def test_replay_after_provisioning_delivers_the_quarantined_measure(
    start_agent: AgentFactory, broker_url: str, broker: AsyncBrokerClient, tenant: str
) -> None:
    agent = start_agent(broker_url)
    key = f"{tenant}-late"
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{agent.south_url}/iot/d", params={"k": key, "i": "s1"},
                                   content="t|12.5|TimeInstant|2024-04-01T00:00:00Z")  # fmt: skip
    assert response.status_code == 404
    data_dir = str(agent.data_dir)

    listed = climaborough("quarantine", "list", "--agent", "iot", "--json", "--data-dir", data_dir,
                          broker_url=broker_url)  # fmt: skip
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    [record] = [r for r in records if f"k={key}" in r["source"]]
    assert record["payload"] == "t|12.5|TimeInstant|2024-04-01T00:00:00Z"
    shown = climaborough("quarantine", "show", str(record["id"]), "--data-dir", data_dir, broker_url=broker_url)
    assert json.loads(shown.stdout)["reason"].startswith("Couldn't find device group")

    still_failing = climaborough("quarantine", "replay", str(record["id"]), "--data-dir", data_dir,
                                 broker_url=broker_url)  # fmt: skip
    assert still_failing.returncode == 1
    assert "still failing 1" in still_failing.stdout

    temperature = {"object_id": "t", "name": "temperature", "type": "Number"}
    group = {"apikey": key, "resource": "/iot/d", "entity_type": "WeatherObserved", "attributes": [temperature]}
    provision(agent, tenant, groups=[group])
    replayed = climaborough("quarantine", "replay", str(record["id"]), "--data-dir", data_dir, broker_url=broker_url)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed 1" in replayed.stdout

    entity = await entity_when_present(broker, f"urn:ngsi-ld:WeatherObserved:{tenant}:s1")
    assert entity["temperature"]["value"] == 12.5
    assert entity["temperature"]["observedAt"] == "2024-04-01T00:00:00.000Z"
    gone = climaborough("quarantine", "show", str(record["id"]), "--data-dir", data_dir, broker_url=broker_url)
    assert gone.returncode != 0

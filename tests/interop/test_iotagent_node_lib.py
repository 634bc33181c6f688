"""FIWARE's iotagent-node-lib, in NGSI-LD mode, provisions a device and sends measures that our broker keeps."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.interop

INTEROP_DIR = Path(__file__).resolve().parent
AGENT_SCRIPT = INTEROP_DIR / "agent.js"
LIBRARY_DIR = INTEROP_DIR / "node_modules" / "iotagent-node-lib"
AGENT_TIMEOUT_S = 120.0  # generous: Node startup alone takes seconds on a loaded 2-core box

TENANT = "interop"
ENTITY_TYPE = "AirQualityObserved"
# The entity type and measured attributes as Smart Data Models names them (dataModel.Environment).
SDM_ENVIRONMENT = "https://smartdatamodels.org/dataModel.Environment/"
USER_CONTEXT = {
    "@context": {
        ENTITY_TYPE: f"{SDM_ENVIRONMENT}{ENTITY_TYPE}",
        "no2": f"{SDM_ENVIRONMENT}no2",
        "pm10": f"{SDM_ENVIRONMENT}pm10",
        "temperature": "https://smartdatamodels.org/temperature",
    }
}
LOCATION = {"type": "Point", "coordinates": [-8.6291, 41.1579]}
# The measures agent.js sends by default, oldest first.
MEASURES = [
    {"TimeInstant": "2024-03-15T10:00:00.000Z", "no2": 21.5, "pm10": 14, "temperature": 11.2},
    {"TimeInstant": "2024-03-15T11:00:00.000Z", "no2": 24, "pm10": 17.5, "temperature": 12.4},
    {"TimeInstant": "2024-03-15T12:00:00.000Z", "no2": 22.25, "pm10": 16, "temperature": 13.1},
]
UNITS = {"no2": "GQ", "pm10": "GQ", "temperature": "CEL"}


def missing_node_setup() -> str | None:
    if shutil.which("node") is None:
        return "`node` (Node.js >= 20) is not on PATH"
    if not LIBRARY_DIR.is_dir():
        return f"{LIBRARY_DIR} is missing: run `npm ci` in {INTEROP_DIR}"
    return None


@pytest.fixture(scope="session")
def node_ready() -> None:
    """Skips locally without Node or the npm packages; in CI the same absence is a failure, never a skip.

    Session-scoped and listed first, so that it runs before the (session-scoped) broker starts.
    """
    reason = missing_node_setup()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"interop test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


class _ContextHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(USER_CONTEXT).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/ld+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def user_context_url() -> Iterator[str]:
    """Serves the agent's @context on a free loopback port, as a city would host its user context."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ContextHandler)
    thread = threading.Thread(target=server.serve_forever, name="user-context", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/user-context.jsonld"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class AgentRun:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def explain(self) -> str:
        return f"agent exit {self.returncode}\nevents: {json.dumps(self.events, indent=1)}\nstderr:\n{self.stderr}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_agent(broker_url: str, context_url: str, device_id: str, mode: str) -> AgentRun:
    """Runs agent.js to completion (or kills it at the timeout) and collects its JSON lines."""
    env = {
        **os.environ,
        "BROKER_URL": broker_url,
        "CONTEXT_URL": context_url,
        "NORTH_PORT": str(free_port()),
        "TENANT": TENANT,
        "DEVICE_ID": device_id,
        "MEASURES_MODE": mode,
        "AGENT_TIMEOUT_MS": str(int((AGENT_TIMEOUT_S - 5) * 1000)),
        "AGENT_LOG_LEVEL": "ERROR",
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        str(AGENT_SCRIPT),
        cwd=INTEROP_DIR,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), AGENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
    events = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return AgentRun(process.returncode if process.returncode is not None else -1, events, stderr.decode())


def entity_id_for(device_id: str) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:interop:{device_id}"


def link_header(context_url: str) -> str:
    return f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


async def read_entity(
    broker_url: str, entity_id: str, context_url: str | None, tenant: str | None = TENANT
) -> httpx.Response:
    headers = {"Accept": "application/json"}
    if tenant is not None:
        headers["NGSILD-Tenant"] = tenant
    if context_url is not None:
        headers["Link"] = link_header(context_url)
    async with httpx.AsyncClient(base_url=broker_url, timeout=10) as client:
        return await client.get(f"/ngsi-ld/v1/entities/{entity_id}", headers=headers)


async def read_history(broker_url: str, entity_id: str, context_url: str) -> httpx.Response:
    headers = {"Accept": "application/json", "NGSILD-Tenant": TENANT, "Link": link_header(context_url)}
    params = {"attrs": "no2,pm10,temperature", "timerel": "after", "timeAt": "2024-03-15T00:00:00Z"}
    async with httpx.AsyncClient(base_url=broker_url, timeout=10) as client:
        return await client.get(f"/ngsi-ld/v1/temporal/entities/{entity_id}", headers=headers, params=params)


def assert_current_state_is_last_measure(entity: dict[str, Any], entity_id: str) -> None:
    last = MEASURES[-1]
    assert entity["id"] == entity_id
    assert entity["type"] == ENTITY_TYPE
    for name, unit in UNITS.items():
        attribute = entity[name]
        assert attribute["type"] == "Property", name
        assert attribute["value"] == last[name], name
        assert attribute["unitCode"] == unit, name
        assert attribute["observedAt"] == last["TimeInstant"], name
    assert entity["location"]["type"] == "GeoProperty"
    assert entity["location"]["value"] == LOCATION


def assert_history_has_every_measure(history: dict[str, Any]) -> None:
    for name, unit in UNITS.items():
        instances = history[name]
        if isinstance(instances, dict):  # a single instance may come back unwrapped
            instances = [instances]
        observed = sorted((i["observedAt"], i["value"], i.get("unitCode")) for i in instances)
        expected = [(m["TimeInstant"], m[name], unit) for m in MEASURES]
        assert observed == expected, name


async def test_device_measures_sent_by_iotagent_node_lib_become_the_entity_state(
    node_ready: None, broker_url: str, user_context_url: str
) -> None:
    device_id = f"aq-{uuid.uuid4().hex[:8]}"
    run = await run_agent(broker_url, user_context_url, device_id, mode="single")
    assert run.returncode == 0, run.explain()
    assert [e["event"] for e in run.events].count("measure-sent") == len(MEASURES), run.explain()

    response = await read_entity(broker_url, entity_id_for(device_id), user_context_url)
    assert response.status_code == 200, response.text
    assert_current_state_is_last_measure(response.json(), entity_id_for(device_id))

    # Without the agent's @context the same entity shows the full IRIs its context gave the names.
    expanded = await read_entity(broker_url, entity_id_for(device_id), None)
    assert expanded.status_code == 200, expanded.text
    body = expanded.json()
    assert body["type"] == f"{SDM_ENVIRONMENT}{ENTITY_TYPE}"
    assert body[f"{SDM_ENVIRONMENT}no2"]["value"] == MEASURES[-1]["no2"]

    # The library sent NGSILD-Tenant = fiware-service: the device lives in that tenant only.
    elsewhere = await read_entity(broker_url, entity_id_for(device_id), user_context_url, tenant=None)
    assert elsewhere.status_code == 404, elsewhere.text


async def test_every_measure_sent_by_iotagent_node_lib_is_in_the_history(
    node_ready: None, broker_url: str, user_context_url: str
) -> None:
    device_id = f"aq-{uuid.uuid4().hex[:8]}"
    run = await run_agent(broker_url, user_context_url, device_id, mode="single")
    assert run.returncode == 0, run.explain()

    response = await read_history(broker_url, entity_id_for(device_id), user_context_url)
    assert response.status_code == 200, response.text
    assert_history_has_every_measure(response.json())


async def test_multi_measure_with_repeated_ids_in_one_upsert_applies_in_order(
    node_ready: None, broker_url: str, user_context_url: str
) -> None:
    """The library sends a multi-measure as one upsert repeating the entity id (GS CIM 009 10.3.3)."""
    device_id = f"aq-{uuid.uuid4().hex[:8]}"
    run = await run_agent(broker_url, user_context_url, device_id, mode="batch")
    assert run.returncode == 0, run.explain()
    assert any(e["event"] == "measures-sent" for e in run.events), run.explain()

    response = await read_entity(broker_url, entity_id_for(device_id), user_context_url)
    assert response.status_code == 200, response.text
    assert_current_state_is_last_measure(response.json(), entity_id_for(device_id))

    history = await read_history(broker_url, entity_id_for(device_id), user_context_url)
    assert history.status_code == 200, history.text
    assert_history_has_every_measure(history.json())

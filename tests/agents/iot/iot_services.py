"""Real services for the IoT agent tests: Mosquitto with the shipped config (amqtt if absent), agents, brokers.

Fixtures are registered by conftest.py; helpers are imported from here by the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.embedded_postgres import free_port
from ngsi.client import AsyncBrokerClient
from ngsi.errors import NgsiError

REPO = Path(__file__).resolve().parents[3]
SHIPPED_MOSQUITTO_CONF = REPO / "broker_config" / "mosquitto" / "mosquitto.conf"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MqttServer:
    """A running MQTT server: its URL, which one it is, and the MQTT version agents should speak to it."""

    url: str
    host: str
    port: int
    kind: str
    protocol: str


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} in {START_TIMEOUT_S}s")


def mosquitto_config(port: int, persistence_dir: Path, *, shipped: bool = True) -> str:
    """The shipped mosquitto.conf on a test port and folder (or Mosquitto's defaults with `shipped=False`)."""
    if not shipped:
        return f"listener {port} 127.0.0.1\nallow_anonymous true\n"
    lines = []
    for line in SHIPPED_MOSQUITTO_CONF.read_text().splitlines():
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("persistence_location "):
            line = f"persistence_location {persistence_dir}/"
        lines.append(line)
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_mosquitto(*, shipped: bool = True) -> Iterator[MqttServer]:
    """Mosquitto on a free port with the shipped configuration (or its defaults)."""
    folder = Path(tempfile.mkdtemp(prefix="climaborough-mosquitto-"))
    os.chmod(folder, 0o777)  # as root, mosquitto drops to its own user and must write its persistence file
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(mosquitto_config(port, folder, shipped=shipped))
    log = open(folder / "mosquitto.log", "wb")  # closed below
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port("127.0.0.1", port, process, "mosquitto")
        yield MqttServer(f"mqtt://127.0.0.1:{port}", "127.0.0.1", port, "mosquitto", "5")
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


AMQTT_SCRIPT = """
import asyncio, sys
from amqtt.broker import Broker
async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:" + sys.argv[1]}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextlib.contextmanager
def running_amqtt() -> Iterator[MqttServer]:
    """The embedded MQTT broker (amqtt, MQTT 3.1.1 only) on a free port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", AMQTT_SCRIPT, str(port)], cwd=REPO)
    try:
        _wait_for_port("127.0.0.1", port, process, "amqtt")
        yield MqttServer(f"mqtt://127.0.0.1:{port}", "127.0.0.1", port, "amqtt", "3.1.1")
    finally:
        process.terminate()
        process.wait(timeout=10)


def have_mosquitto() -> bool:
    return shutil.which("mosquitto") is not None and os.environ.get("CLIMABOROUGH_TEST_MQTT") != "amqtt"


@pytest.fixture(scope="session")
def mqtt_server() -> Iterator[MqttServer]:
    """Mosquitto with the shipped configuration; amqtt where Mosquitto is not installed."""
    with running_mosquitto() if have_mosquitto() else running_amqtt() as server:
        yield server


@dataclass
class ServiceProcess:
    """A subprocess started from the repository with its own environment; stop and start again at will."""

    argv: list[str]
    env: dict[str, str]
    health_urls: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(self.health_urls)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv} exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(pending[0], timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pending[0]} did not answer in {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass
class AgentProcess(ServiceProcess):
    """An IoT agent (`python -m agents.iot`) with its provisioning (north) and measure (south) URLs."""

    north_url: str = ""
    south_url: str = ""
    data_dir: Path = field(default_factory=Path)


class AgentFactory:
    """Starts IoT agents (`python -m agents.iot`) on free ports, each with its own data folder; stops them all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.agents: list[AgentProcess] = []

    def __call__(self, broker_url: str, *, mqtt: MqttServer | None = None, data_dir: Path | None = None,
                 **settings: Any) -> AgentProcess:  # fmt: skip
        north, south = free_port(), free_port()
        number = len(self.agents)
        folder = data_dir or self.folder / f"agent-{number}"
        env = {
            **os.environ,
            "CLIMABOROUGH_BROKER_URL": broker_url,
            "CLIMABOROUGH_MQTT_URL": mqtt.url if mqtt else "",
            "CLIMABOROUGH_DATA_DIR": str(folder),
            "CLIMABOROUGH_IOT_NORTH_PORT": str(north),
            "CLIMABOROUGH_IOT_SOUTH_PORT": str(south),
            "CLIMABOROUGH_IOT_MQTT_PROTOCOL": mqtt.protocol if mqtt else "5",
            "CLIMABOROUGH_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **{f"CLIMABOROUGH_{key.upper()}": str(value) for key, value in settings.items()},
        }
        agent = AgentProcess(
            argv=[sys.executable, "-m", "agents.iot"],
            env=env,
            health_urls=[f"http://127.0.0.1:{north}/health", f"http://127.0.0.1:{south}/health"],
            log_path=self.folder / f"agent-{number}.log",
            north_url=f"http://127.0.0.1:{north}",
            south_url=f"http://127.0.0.1:{south}",
            data_dir=folder,
        )
        self.agents.append(agent)
        agent.start()
        return agent

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[AgentFactory]:
    """`start_agent(broker_url, mqtt=server, data_dir=..., **settings)` → a running agent, stopped after the test."""
    factory = AgentFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def start_module_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentFactory]:
    """Like `start_agent`, for agents a whole test module shares (tests isolate themselves by tenant)."""
    factory = AgentFactory(tmp_path_factory.mktemp("agents"))
    yield factory
    factory.stop_all()


RUN_BROKER = (
    "import os, sys; from cli.services import run_broker; "
    "run_broker(os.environ['CLIMABOROUGH_DATABASE_URL'], '127.0.0.1', int(sys.argv[1]))"
)


@pytest.fixture
def start_private_broker(
    create_database: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[[], ServiceProcess]]:
    """A broker of the test's own (`climaborough broker` on its own database) that the test may stop and restart."""
    brokers: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        port = free_port()
        env = {
            **os.environ,
            "CLIMABOROUGH_DATABASE_URL": create_database("iotbroker"),
            "CLIMABOROUGH_DATA_DIR": str(tmp_path / f"broker-{len(brokers)}"),
            "PYTHONUNBUFFERED": "1",
        }
        # `run_broker` directly rather than `climaborough broker`: the command refuses a port that still has
        # connections in TIME_WAIT, which a broker restarted on its own port always has.
        broker = ServiceProcess(
            argv=[sys.executable, "-c", RUN_BROKER, str(port)],
            env=env,
            health_urls=[f"http://127.0.0.1:{port}/health"],
            log_path=tmp_path / f"broker-{len(brokers)}.log",
        )
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.stop()


def broker_url_of(broker: ServiceProcess) -> str:
    return broker.health_urls[0].removesuffix("/health")


class Publisher:
    """A device-side MQTT client publishing QoS 1 measures and waiting until the server has them."""

    def __init__(self, server: MqttServer, client_id: str = "") -> None:
        protocol = paho.MQTTv5 if server.protocol == "5" else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(server.host, server.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def publish_all(self, messages: list[tuple[str, str | bytes]], timeout_s: float = 60.0) -> None:
        infos = [self.publish(topic, payload) for topic, payload in messages]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the MQTT server did not acknowledge a QoS 1 publish in time"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_server: MqttServer) -> Iterator[Publisher]:
    device = Publisher(mqtt_server)
    yield device
    device.close()


async def entity_when_present(client: AsyncBrokerClient, entity_id: str, **options: Any) -> dict[str, Any]:
    """The entity once the broker has it (waits up to 30 s)."""

    async def present() -> dict[str, Any]:
        try:
            return await client.get_entity(entity_id, **options)
        except NgsiError as error:
            if error.status != 404:  # ResourceNotFound, or NonexistentTenant before the first write
                raise
            raise AssertionError(f"{entity_id} is not on the broker yet") from error

    result: dict[str, Any] = await eventually(present)
    return result


async def history_of(client: AsyncBrokerClient, entity_id: str, attribute: str) -> list[dict[str, Any]]:
    """Every instance of one attribute in the entity's history (empty while the broker has none)."""
    try:
        history = await client.get_temporal_entity(entity_id, attrs=attribute)
    except NgsiError as error:
        if error.status >= 500:
            # Seen on a fresh tenant: the broker's first temporal read deadlocks with concurrent writes.
            raise AssertionError(f"the broker answered {error.status}: {error.detail}") from error
        if error.status != 404:
            raise
        return []
    found = history.get(attribute, [])
    return found if isinstance(found, list) else [found]


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    """Run `check` until it returns without AssertionError (returns its value), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval_s)


def provision(agent: AgentProcess, service: str, *, groups: list[dict[str, Any]] | None = None,
              devices: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
    """Provision config groups and devices as an operator would (asserting 201)."""
    headers = {"fiware-service": service, "fiware-servicepath": "/"}
    if groups:
        response = httpx.post(f"{agent.north_url}/iot/groups", json={"groups": groups}, headers=headers)
        assert response.status_code == 201, response.text
    if devices:
        response = httpx.post(f"{agent.north_url}/iot/devices", json={"devices": devices}, headers=headers)
        assert response.status_code == 201, response.text

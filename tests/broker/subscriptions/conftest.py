"""Real receivers for notification tests: HTTP receivers on loopback, an MQTT broker, and our broker process.

Fixtures:
- `start_broker(database_url)`: runs `climaborough broker` as a subprocess with fast retry settings;
  returns a `BrokerProcess` (url, kill(), stop()). `notify_broker` is one such process for a module.
- `receiver`: an HTTP receiver on a free 127.0.0.1 port recording every notification.
- `mqtt_url`: a Mosquitto (if on PATH) or embedded amqtt broker on a free port; `mqtt_listener` records topics.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from broker.embedded_postgres import free_port

REPO = Path(__file__).resolve().parents[3]
FAST_RETRIES = {
    "CLIMABOROUGH_NOTIFY_FIRST_RETRY_S": "0.2",
    "CLIMABOROUGH_NOTIFY_MAX_BACKOFF_S": "0.5",
    "CLIMABOROUGH_NOTIFY_SWEEP_INTERVAL_S": "0.5",
    "CLIMABOROUGH_NOTIFY_TIMEOUT_S": "2",
}


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """Wait until `check()` returns something truthy; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """`await wait_for(check, within=10, what="...")`: poll a condition with a deadline, never a blind sleep."""
    return eventually


@dataclass
class BrokerProcess:
    """Our broker running as a real process on a given database."""

    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def launch_broker(database_url: str, log_path: Path, port: int | None = None) -> BrokerProcess:
    port = port or free_port()
    env = {**os.environ, **FAST_RETRIES, "CLIMABOROUGH_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1",
           "CLIMABOROUGH_DATA_DIR": str(log_path.parent)}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "broker", "--host", "127.0.0.1", "--port", str(port),
             "--no-embedded-postgres", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited while starting:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return BrokerProcess(url, database_url, process, log_path)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"broker did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    started: list[BrokerProcess] = []

    def start(database_url: str, port: int | None = None) -> BrokerProcess:
        broker = launch_broker(database_url, tmp_path / "broker.log", port)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="module")
def notify_broker(create_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[BrokerProcess]:
    broker = launch_broker(create_database("subs"), tmp_path_factory.mktemp("subs-broker") / "broker.log")
    yield broker
    broker.stop()


@pytest.fixture
async def client(notify_broker: BrokerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=notify_broker.url + "/ngsi-ld/v1", timeout=30) as http:
        yield http


@dataclass
class Received:
    """One notification as the receiver got it."""

    headers: dict[str, str]
    body: dict[str, Any]
    at: float


@dataclass
class Receiver:
    """An HTTP receiver; `status` is what it answers (set 500 to play a failing receiver)."""

    port: int
    received: list[Received] = field(default_factory=list)
    status: int = 200
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if receiver.status == 200:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, json.loads(raw), time.monotonic())
                    )
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def entity_ids(self) -> list[str]:
        return [entity["id"] for r in self.received for entity in r.body["data"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver(free_port())
    recv.start()
    yield recv
    recv.stop()


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    receivers: list[Receiver] = []

    def make(port: int | None = None) -> Receiver:
        recv = Receiver(port or free_port())
        recv.start()
        receivers.append(recv)
        return recv

    yield make
    for recv in receivers:
        recv.stop()


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        config = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        process = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    else:
        process = subprocess.Popen(
            [sys.executable, "-c",
             "import asyncio,sys\nfrom amqtt.broker import Broker\n"
             "async def main():\n"
             f"    b = Broker({{'listeners': {{'default': {{'type': 'tcp', 'bind': '127.0.0.1:{port}'}}}},"
             "'auth': {'allow-anonymous': True}, 'topic-check': {'enabled': False}})\n"
             "    await b.start()\n    await asyncio.Event().wait()\n"
             "asyncio.run(main())\n"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 20
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("MQTT broker did not start") from None
            time.sleep(0.05)
    yield f"mqtt://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@dataclass
class MqttListener:
    """Records every message on the topics it subscribed to."""

    client: mqtt.Client
    messages: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)


@pytest.fixture
def mqtt_listener(mqtt_url: str) -> Iterator[Callable[[str], MqttListener]]:
    clients: list[mqtt.Client] = []
    host, port = mqtt_url.removeprefix("mqtt://").split(":")

    def listen(topic: str) -> MqttListener:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        listener = MqttListener(client)
        subscribed = threading.Event()
        client.on_message = lambda c, u, m: listener.messages.append(
            (m.topic, json.loads(m.payload), time.monotonic())
        )
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
        client.connect(host, int(port))
        client.loop_start()
        clients.append(client)
        if not subscribed.wait(10):
            raise RuntimeError("MQTT subscription not acknowledged")
        return listener

    yield listen
    for client in clients:
        client.disconnect()
        client.loop_stop()

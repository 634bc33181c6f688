"""Real services for the KPI engine tests: an MQTT server (Mosquitto, amqtt where it is absent) and helpers.

The broker itself is the session-wide `broker_url` of tests/conftest.py; every test works in a
tenant of its own. Fixtures:
- `mqtt_url` (session): `mqtt://127.0.0.1:<port>` of Mosquitto (or amqtt).
- `wait_for`: `await wait_for(check, within=..., what=...)` polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.embedded_postgres import free_port
from tests.conftest import running_broker

REPO = Path(__file__).resolve().parents[2]

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


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def broker_url(create_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The KPI engine's tests get a broker of their own per module: their timing assertions
    (KPIs within a deadline) must not depend on what earlier tests left the shared broker doing."""
    with running_broker(create_database, tmp_path_factory) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="climaborough-kpi-mqtt-"))
    os.chmod(folder, 0o777)
    if shutil.which("mosquitto") and os.environ.get("CLIMABOROUGH_TEST_MQTT") != "amqtt":
        config = folder / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
            f"persistence true\npersistence_location {folder}/\n"
        )
        argv = ["mosquitto", "-c", str(config)]
    else:
        argv = [sys.executable, "-c", AMQTT_SCRIPT, str(port)]
    with open(folder / "mqtt.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_for_port(port, process, argv[0])
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def eventually(check: Callable[[], Any], within: float = 60.0, what: str = "condition") -> Any:
    """Wait until `check()` returns something truthy; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError as error:
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}: {last_error or 'never true'}")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return eventually

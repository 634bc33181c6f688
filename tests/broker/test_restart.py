"""What the broker keeps across a restart: entities and hosted @contexts (GS CIM 009 5.13)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from broker.embedded_postgres import free_port

REPO = Path(__file__).resolve().parents[2]
API = "/ngsi-ld/v1"


@contextmanager
def running_broker(database_url: str, log_path: Path) -> Iterator[str]:
    """`climaborough broker` as a subprocess on `database_url`; yields its base URL once healthy."""
    port = free_port()
    env = {**os.environ, "CLIMABOROUGH_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "broker", "--host", "127.0.0.1", "--port", str(port),
             "--no-embedded-postgres", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"broker not healthy in 60 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_entities_and_hosted_contexts_survive_a_restart(create_database: Callable[[str], str],
                                                        tmp_path: Path) -> None:
    database_url = create_database("restart")
    log_path = tmp_path / "broker.log"
    document = {"@context": {"speed": "https://example.org/vocab/speed"}}
    with running_broker(database_url, log_path) as base_url:
        added = httpx.post(f"{base_url}{API}/jsonldContexts", json=document)
        assert added.status_code == 201, added.text
        local_id = added.headers["Location"].rsplit("/", 1)[-1]
        car = {"id": "urn:ngsi-ld:Car:r1", "type": "Car", "speed": {"type": "Property", "value": 7}}
        created = httpx.post(f"{base_url}{API}/entities", json=car)
        assert created.status_code == 201, created.text
    with running_broker(database_url, log_path) as base_url:
        served = httpx.get(f"{base_url}{API}/jsonldContexts/{local_id}")
        assert served.status_code == 200 and served.json() == document
        read = httpx.get(f"{base_url}{API}/entities/urn:ngsi-ld:Car:r1", params={"options": "keyValues"})
        assert read.status_code == 200 and read.json()["speed"] == 7

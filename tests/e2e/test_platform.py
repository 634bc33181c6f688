"""From the command line to NGSI-LD answers: the CLI, the shared broker fixture and the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"


def climaborough(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Embedded defaults: whatever database the caller's environment names is not ours to fill.
    env = {key: value for key, value in os.environ.items() if key != "CLIMABOROUGH_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("command", [[], ["broker"], ["up"], ["demo"]])
def test_every_command_explains_itself(command: list[str]) -> None:
    result = climaborough(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


async def test_the_shared_broker_answers_health_and_version(http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    version = await http.get("/version")
    assert health.status_code == 200
    assert version.status_code == 200
    assert "Orion-LD version" in version.json()


async def test_a_tenant_sees_only_its_own_entities(http: httpx.AsyncClient, tenant: str) -> None:
    entity = {"id": "urn:ngsi-ld:Thing:e2e-1", "type": "Thing", "n": {"type": "Property", "value": 1}}
    created = await http.post("/ngsi-ld/v1/entities", json=entity, headers={"NGSILD-Tenant": tenant})
    assert created.status_code == 201, created.text
    mine = await http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:e2e-1", headers={"NGSILD-Tenant": tenant})
    other = await http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:e2e-1", headers={"NGSILD-Tenant": tenant + "x"})
    assert mine.status_code == 200
    assert other.status_code == 404


@pytest.fixture
def demo_data_dir() -> Iterator[Path]:
    # Reachable by `nobody`, which runs PostgreSQL when the tests run as root.
    folder = Path(tempfile.mkdtemp(prefix="climaborough-demo-test-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_loads_beijing_hours_and_stops_cleanly(demo_data_dir: Path) -> None:
    result = climaborough(
        "demo", "--hours", "6", "--port", "0", "--data-dir", str(demo_data_dir / "data"),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "AUTHENTICATION IS OFF" in result.stdout
    assert "6 hours of Aotizhongxin" in result.stdout
    assert "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin" in result.stdout
    assert "Broker and PostgreSQL stopped." in result.stdout
    log = (demo_data_dir / "data" / "postgresql" / "postgres.log").read_text()
    assert "database system is shut down" in log

"""From the command line to NGSI-LD answers: the CLI and the shared broker fixture (the demo: test_demo.py)."""

from __future__ import annotations

import os
import subprocess
import sys
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

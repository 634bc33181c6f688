"""`climaborough agent oup`: the command follows a local OUP (HTTPS history, WSS live) into the running broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ngsi.client import AsyncBrokerClient
from ngsi.errors import NgsiError
from tests.agents.oup.oup_server import OupServer, self_signed_certificate
from tests.agents.oup.test_oup_connector import AIR, ENVIRONMENT, RECORDS, REPO


async def pm25_when(broker_url: str, tenant: str, value: float) -> dict[str, Any]:
    """The station entity once its pm25 is `value` (callers bound the wait with asyncio.timeout)."""
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT) as client:
        while True:
            try:
                entity = await client.get_entity(AIR)
            except NgsiError:  # not there yet (tenant or entity)
                entity = {}
            if entity.get("pm25", {}).get("value") == value:
                return entity
            await asyncio.sleep(0.1)


def test_help_names_the_oup_endpoints_and_the_auth_stance() -> None:
    shown = subprocess.run([sys.executable, "-m", "cli.main", "agent", "oup", "--help"], cwd=REPO, text=True,
                           capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for option in ("--oup-url", "--oup-ws-url", "--oup-ca-file", "--broker-url", "--tenant", "--mapping"):
        assert option in shown.stdout
    assert "CLIMABOROUGH_AUTH" in shown.stdout


async def test_the_command_delivers_history_and_live_records(broker_url: str, tenant: str, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    first = RECORDS[0]
    oup = OupServer([first], cert, key)
    await oup.start()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("CLIMABOROUGH_")},
        "CLIMABOROUGH_BROKER_URL": broker_url,  # from the environment, as in production
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "agent", "oup", "--tenant", tenant, "--oup-url", oup.url,
        "--oup-ws-url", oup.ws_url, "--oup-ca-file", str(cert), "--data-dir", str(tmp_path / "data"),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            history = await pm25_when(broker_url, tenant, first["pm25"])
        assert history["pm25"]["observedAt"] == "2024-05-01T06:00:00.000Z"
        async with asyncio.timeout(30):
            await oup.wait_for_client()
        await oup.push(json.dumps(dict(first, timeRecorded="2024-05-01T07:00:00Z", pm25=77.0)))
        async with asyncio.timeout(60):
            live = await pm25_when(broker_url, tenant, 77.0)
        assert live["pm25"]["observedAt"] == "2024-05-01T07:00:00.000Z"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            output = (await process.stdout.read()).decode() if process.stdout else ""
            code = await process.wait()
        await oup.stop()
    assert code == 0, output
    assert "listens on no port" in output
    assert "1 history records in 1 pages, 1 live, 0 quarantined" in output

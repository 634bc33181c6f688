"""`climaborough quarantine replay --agent oup`: a record the OUP mapping could not read is kept,
and once the operator fixes the mapping it goes to the broker like any other record."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.files import load_mapping
from agents.oup import OupConnector
from agents.quarantine import Quarantine
from tests.agents.oup.oup_server import OupServer, self_signed_certificate
from tests.agents.oup.test_oup_connector import RECORDS, REPO, current, pm25_history, settings_for

# The OUP sent one record with a local, day-first time: the shipped mapping expects ISO 8601.
LOCAL_TIME = "01.05.2024 13:00"


def replay(data_dir: Path, broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIMABOROUGH_BROKER_URL": broker_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "quarantine", "replay", "--agent", "oup", "--data-dir", str(data_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_an_unreadable_record_is_replayed_after_the_mapping_is_fixed(
    broker_url: str, tenant: str, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    odd = dict(RECORDS[0], timeRecorded=LOCAL_TIME, pm25=77.0)
    server = OupServer([*RECORDS, odd], cert, key)
    await server.start()
    mapping_file = tmp_path / "oup.yaml"
    mapping_file.write_text((REPO / "broker_config" / "mappings" / "oup.yaml").read_text(encoding="utf-8"), "utf-8")
    connector = OupConnector(settings_for(server, broker_url, tmp_path), load_mapping(mapping_file), tenant=tenant)
    try:
        assert await connector.backfill() == len(RECORDS) + 1
    finally:
        await connector.aclose()
        await server.stop()
    assert connector.stats.quarantined == 1
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    [kept] = quarantine.list(agent="oup")
    assert LOCAL_TIME in str(kept.payload) and kept.metadata["tenant"] == tenant
    assert kept.metadata["mapping"] == str(mapping_file.absolute())
    assert 77.0 not in await pm25_history(broker_url, tenant)

    still = await asyncio.to_thread(replay, tmp_path, broker_url)
    assert still.returncode == 1 and "replayed 0, still failing 1" in still.stdout, still.stdout + still.stderr
    after_failure = quarantine.get(kept.id)
    assert after_failure is not None and after_failure.attempts == 1

    text = mapping_file.read_text(encoding="utf-8")
    mapping_file.write_text(text.replace("  format: iso8601\n", '  format: "%d.%m.%Y %H:%M"\n'), "utf-8")
    done = await asyncio.to_thread(replay, tmp_path, broker_url)
    assert done.returncode == 0 and "replayed 1, still failing 0" in done.stdout, done.stdout + done.stderr
    assert quarantine.count(agent="oup") == 0
    # 13:00 UTC is newer than every other record: the replayed record is the current state now.
    state = await current(broker_url, tenant)
    assert state["pm25"]["value"] == pytest.approx(77.0)
    assert state["pm25"]["observedAt"] == "2024-05-01T13:00:00.000Z"
    assert 77.0 in await pm25_history(broker_url, tenant)

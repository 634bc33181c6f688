"""`climaborough quarantine replay` on file rows: the operator fixes the mapping and the quarantined rows go in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.files import MappingError, load_mapping
from agents.files.ingest import ingest_file
from agents.files.readers import record_from_text
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient
from tests.agents.files.test_ingest import ENVIRONMENT, MAPPING, REPO, beijing_slice

ATLANTIS = "urn:ngsi-ld:AirQualityObserved:beijing:Atlantis"
KNOWN_STATION = "    Aotizhongxin: [116.397, 39.982]\n"
# Both rows name a station the mapping has no position for; the newer one comes first in the file.
BAD_ROWS = (
    "9001,2013,3,2,2,9,9,3,17,300,89,-0.5,1024.5,-21.4,0,NNW,5.7,Atlantis\n"
    '9002,2013,3,2,1,8,8,3,17,300,89,-0.5,1024.5,-21.4,0,"NNW",5.7,"Atlantis"\n'
)


def climaborough(*args: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIMABOROUGH_BROKER_URL": broker_url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def replay(data_dir: Path, broker_url: str) -> subprocess.CompletedProcess[str]:
    return climaborough("quarantine", "replay", "--agent", "files", "--data-dir", str(data_dir), broker_url=broker_url)


async def test_fixed_mapping_then_replay_delivers_the_rows_without_moving_the_state_back(
    broker_url: str, tenant: str, tmp_path: Path
) -> None:
    mapping_file = tmp_path / "beijing.yaml"
    mapping_file.write_text(MAPPING.read_text(encoding="utf-8"), encoding="utf-8")
    data_dir = tmp_path / "data"
    quarantine = Quarantine(data_dir / "quarantine.sqlite")
    file = beijing_slice(tmp_path, 5, extra=BAD_ROWS)
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT, timeout=60) as client:
        summary = await ingest_file(file, load_mapping(mapping_file), client, quarantine=quarantine,
                                    checkpoint_dir=tmp_path / "checkpoints")  # fmt: skip
    assert summary.quarantined == 2
    kept = sorted(quarantine.list(agent="files"), key=lambda record: record.id)
    assert kept[0].metadata["header"][-1] == "station" and kept[0].metadata["tenant"] == tenant

    still = await asyncio.to_thread(replay, data_dir, broker_url)
    assert still.returncode == 1 and "replayed 0, still failing 2" in still.stdout
    again = [quarantine.get(record.id) for record in kept]
    assert all(r is not None and r.attempts == 1 and "'Atlantis' is not in locations.table" in r.reason
               for r in again)  # fmt: skip

    text = mapping_file.read_text(encoding="utf-8")
    mapping_file.write_text(text.replace(KNOWN_STATION, KNOWN_STATION + "    Atlantis: [116.5, 40.0]\n"), "utf-8")
    done = await asyncio.to_thread(replay, data_dir, broker_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 2, still failing 0" in done.stdout
    assert quarantine.count(agent="files") == 0

    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT) as client:
        entity = await client.get_entity(ATLANTIS)
        history = await client.get_temporal_entity(ATLANTIS, attrs="pm25", options="temporalValues",
                                                   timerel="after", time_at="2000-01-01T00:00:00Z")  # fmt: skip
    # The older row (replayed last) went to the history only: the current state is the newer row.
    assert entity["pm25"]["value"] == 9.0
    assert entity["pm25"]["observedAt"] == "2013-03-01T18:00:00.000Z"  # 2013-03-02 02:00 Beijing time
    assert entity["location"]["value"]["coordinates"] == [116.5, 40.0]
    assert sorted(value for value, _ in history["pm25"]["values"]) == [8.0, 9.0]


def test_a_quarantined_row_is_read_again_from_its_text() -> None:
    mapping = load_mapping(MAPPING)
    header = [*"No,year,month,day,hour,PM2.5,PM10,SO2,NO2,CO,O3".split(","),
              *"TEMP,PRES,DEWP,RAIN,wd,WSPM,station".split(",")]  # fmt: skip
    row = record_from_text(BAD_ROWS.splitlines()[1], mapping, header=header)
    values = dict(zip(mapping.columns(), row.values, strict=True))
    assert values["station"] == "Atlantis" and values["PM2.5"] == "8" and values["hour"] == "1"
    with pytest.raises(MappingError, match="column 'station' is not in the header"):
        record_from_text(BAD_ROWS.splitlines()[1], mapping, header=header[:5])

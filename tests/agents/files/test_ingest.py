"""`climaborough ingest` against the running broker: state, history, no duplicates, stop and resume, quarantine."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.files import Checkpoint, checkpoint_key, compile_translator, ingest_file, load_mapping, open_records
from agents.files.checkpoint import prefix_digest
from agents.files.ingest import BrokerWriter, Chunk, plan_chunk, read_chunks
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient

REPO = Path(__file__).resolve().parents[3]
BEIJING = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
MAPPING = REPO / "broker_config" / "mappings" / "beijing_multisite.yaml"
AIR = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
WEATHER = "urn:ngsi-ld:WeatherObserved:beijing:Aotizhongxin"
WEATHER_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"
ENVIRONMENT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"


def beijing_slice(folder: Path, rows: int, *, extra: str = "") -> Path:
    path = folder / f"aotizhongxin_{rows}.csv"
    with open(BEIJING, encoding="utf-8") as source:
        path.write_text("".join(islice(source, rows + 1)) + extra, encoding="utf-8")
    return path


def csv_values(path: Path, column: str) -> list[float]:
    with open(path, newline="") as handle:
        return [float(row[column]) for row in csv.DictReader(handle) if row.get(column) not in ("NA", "", None)]


async def history_count(client: AsyncBrokerClient, entity_id: str, attribute: str) -> tuple[int, float]:
    """(number of instances, sum of values) of an attribute's whole history, as the broker aggregates them."""
    entity = await client.get_temporal_entity(
        entity_id, attrs=attribute, options="aggregatedValues", aggr_methods=["totalCount", "sum"],
        aggr_period_duration="P3650D", timerel="after", time_at="2000-01-01T00:00:00Z",
    )  # fmt: skip
    series = entity[attribute]
    return sum(p[0] for p in series["totalCount"]), sum(p[0] for p in series["sum"])


@pytest.fixture
async def client(broker_url: str, tenant: str) -> Any:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT, timeout=60) as client:
        yield client


async def test_ingest_writes_current_state_and_the_whole_history(client: AsyncBrokerClient, tmp_path: Path) -> None:
    file = beijing_slice(tmp_path, 300)
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    summary = await ingest_file(file, load_mapping(MAPPING), client, quarantine=quarantine,
                                checkpoint_dir=tmp_path / "checkpoints", chunk_rows=70)  # fmt: skip
    assert summary.records == 300 and summary.quarantined == 0 and summary.temporal_path
    pm25 = csv_values(file, "PM2.5")
    count, total = await history_count(client, AIR, "pm25")
    assert (count, total) == (len(pm25), pytest.approx(sum(pm25)))
    last = list(csv.DictReader(file.read_text().splitlines()))[-1]
    current = await client.get_entity(AIR)
    assert current["pm25"]["value"] == float(last["PM2.5"])
    assert current["pm25"]["observedAt"] == "2013-03-13T03:00:00.000Z"  # 2013-03-13 11:00 Beijing time
    assert current["co"]["unitCode"] == "GP" and current["co"]["value"] == pytest.approx(float(last["CO"]) / 1000)
    assert current["location"]["value"]["coordinates"] == [116.397, 39.982]
    async with AsyncBrokerClient(client.base_url, tenant=client.tenant, context=WEATHER_CONTEXT) as weather_client:
        weather = await weather_client.get_entity(WEATHER)
    assert weather["temperature"]["value"] == float(last["TEMP"])

    again = await ingest_file(file, load_mapping(MAPPING), client, quarantine=quarantine,
                              checkpoint_dir=tmp_path / "checkpoints", chunk_rows=70)  # fmt: skip
    assert again.already_done and again.history_instances == 0
    assert await history_count(client, AIR, "pm25") == (count, total)


async def test_a_grown_file_resumes_where_it_ended(client: AsyncBrokerClient, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    file = beijing_slice(tmp_path, 120)
    await ingest_file(file, load_mapping(MAPPING), client, quarantine=quarantine, checkpoint_dir=checkpoints)
    more = "".join(BEIJING.read_text(encoding="utf-8").splitlines(keepends=True)[121:201])
    file.write_text(file.read_text(encoding="utf-8") + more, encoding="utf-8")
    summary = await ingest_file(file, load_mapping(MAPPING), client, quarantine=quarantine,
                                checkpoint_dir=checkpoints)  # fmt: skip
    assert summary.resumed_from == 120 and summary.records == 80
    assert (await history_count(client, AIR, "pm25"))[0] == len(csv_values(file, "PM2.5"))


async def test_a_chunk_interrupted_after_delivery_is_not_sent_twice(client: AsyncBrokerClient, tmp_path: Path) -> None:
    file = beijing_slice(tmp_path, 200)
    checkpoints = tmp_path / "checkpoints"
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    mapping = load_mapping(MAPPING)
    await ingest_file(file, mapping, client, quarantine=quarantine, checkpoint_dir=checkpoints, chunk_rows=100)
    expected = await history_count(client, AIR, "pm25")
    # As after a crash between writing the second chunk and moving the checkpoint past it.
    lines = file.read_bytes().splitlines(keepends=True)
    after_first_chunk = sum(len(line) for line in lines[:101])
    checkpoint = Checkpoint.load(checkpoints, checkpoint_key(file, mapping.text, client.base_url, client.tenant))
    checkpoint.position, checkpoint.records, checkpoint.done = after_first_chunk, 100, False
    checkpoint.in_flight = [after_first_chunk, len(file.read_bytes())]
    checkpoint.prefix = prefix_digest(file, after_first_chunk)
    checkpoint.save()
    summary = await ingest_file(file, mapping, client, quarantine=quarantine, checkpoint_dir=checkpoints,
                                chunk_rows=100)  # fmt: skip
    assert summary.records == 100
    assert await history_count(client, AIR, "pm25") == expected


async def test_a_chunk_resent_while_its_first_delivery_is_in_flight_is_written_once(
    client: AsyncBrokerClient, tmp_path: Path
) -> None:
    # As when a killed run's requests still run in the broker while the resumed run resends its chunk.
    file = beijing_slice(tmp_path, 100)
    mapping = load_mapping(MAPPING)
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")

    def chunks() -> list[Chunk]:
        with open_records(file, mapping) as records:
            return list(read_chunks(iter(records), compile_translator(mapping), 0, 50))

    first, second = chunks()
    await BrokerWriter(client, quarantine, source="test").write(plan_chunk(first.entities, {}))
    twice = [BrokerWriter(client, quarantine, source="test") for _ in range(2)]
    await asyncio.gather(*(writer.write(plan_chunk(chunk.entities, {})) for writer, chunk in
                           zip(twice, [second, chunks()[1]], strict=True)))  # fmt: skip
    pm25 = csv_values(file, "PM2.5")
    count, total = await history_count(client, AIR, "pm25")
    assert (count, total) == (len(pm25), pytest.approx(sum(pm25)))
    assert (await client.get_entity(AIR))["pm25"]["value"] == pm25[-1]


async def test_without_temporal_append_history_is_written_as_ordered_upserts(client: AsyncBrokerClient,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    file = beijing_slice(tmp_path, 60)
    summary = await ingest_file(file, load_mapping(MAPPING), client, quarantine=Quarantine(tmp_path / "q.sqlite"),
                                checkpoint_dir=tmp_path / "c", chunk_rows=25, temporal=False)  # fmt: skip
    assert not summary.temporal_path
    pm25 = csv_values(file, "PM2.5")
    count, total = await history_count(client, AIR, "pm25")
    assert count == len(pm25) and total == pytest.approx(sum(pm25))
    current = await client.get_entity(AIR)
    assert current["pm25"]["observedAt"] == "2013-03-03T03:00:00.000Z"  # the newest row (11:00 Beijing time)


async def test_rows_that_cannot_be_mapped_go_to_the_quarantine_with_the_reason(client: AsyncBrokerClient,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    bad_rows = (
        "9001,2013,3,2,1,lots,9,3,17,300,89,-0.5,1024.5,-21.4,0,NNW,5.7,Aotizhongxin\n"
        "9002,2013,3,2,2,9,9,3,17,300,89,-0.5,1024.5,-21.4,0,NNW,5.7,Atlantis\n"
    )
    file = beijing_slice(tmp_path, 20, extra=bad_rows)
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    summary = await ingest_file(file, load_mapping(MAPPING), client, quarantine=quarantine,
                                checkpoint_dir=tmp_path / "c")  # fmt: skip
    assert summary.records == 22 and summary.quarantined == 2
    kept = sorted(quarantine.list(agent="files"), key=lambda record: record.id)
    assert [record.payload for record in kept] == bad_rows.splitlines()
    assert "column 'PM2.5': 'lots' is not a number" in kept[0].reason
    assert "'Atlantis' is not in locations.table" in kept[1].reason
    assert kept[0].source.startswith(f"file:{file.name}#")
    assert (await history_count(client, AIR, "pm25"))[0] == len(csv_values(beijing_slice(tmp_path, 20), "PM2.5"))


def test_the_command_can_be_killed_and_run_again_without_losing_or_duplicating(broker_url: str, tenant: str,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    file = beijing_slice(tmp_path, 3000)
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "cli.main", "ingest", str(file), "--mapping", "beijing_multisite", "--tenant",
               tenant, "--broker-url", broker_url, "--data-dir", str(data_dir), "--chunk-rows", "100"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = data_dir / "files" / "checkpoints"
    deadline = time.monotonic() + 120
    progressed = 0
    while time.monotonic() < deadline and first.poll() is None:
        for path in checkpoints.glob("*.json"):
            try:
                progressed = orjson.loads(path.read_bytes()).get("records", 0)
            except (OSError, orjson.JSONDecodeError):
                continue
        if progressed >= 500:
            break
        time.sleep(0.05)
    assert first.poll() is None, f"the ingest finished before it could be stopped: {first.stderr}"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert 500 <= progressed < 3000

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed after records" in second.stdout
    third = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "already ingested" in third.stdout

    async def counted() -> tuple[int, float]:
        async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT, timeout=60) as client:
            return await history_count(client, AIR, "pm25")

    pm25 = csv_values(file, "PM2.5")
    count, total = asyncio.run(counted())
    assert count == len(pm25) and total == pytest.approx(sum(pm25))

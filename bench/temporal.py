"""Temporal API benchmark: backfill ≥ 1,000,000 instances, then time aggregated queries; prints one JSON line.

`python -m bench.temporal` starts its own embedded PostgreSQL and broker on 127.0.0.1, loads
100 entities × 10,000 hourly `no2` instances through `POST /temporal/entities/{id}/attrs`, COPYs
the same rows into a scratch table for comparison, then measures hourly avg/max of one entity
over a year and daily avg over the 100 entities for a month.

Besides the wall-clock figures, `cpu` gives the CPU time the broker process and PostgreSQL (all
backends) spent per appended instance and per aggregated query: unlike wall times these hardly
depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from bench._harness import cpu_seconds, process_tree_cpu_seconds
from broker.embedded_postgres import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
API = "/ngsi-ld/v1"
START = datetime(2016, 1, 1, tzinfo=UTC)
ENTITY_TYPE = "AirQualityObserved"


def entity_id(n: int) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:bench:{n:03d}"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def no2_series(n: int, hours: int) -> list[tuple[datetime, float]]:
    """Hourly NO2-like values (µg/m³): a daily cycle plus noise, different per entity."""
    rng = random.Random(n)
    return [
        (START + timedelta(hours=h), round(40 + 25 * math.sin(2 * math.pi * (h % 24) / 24) + rng.gauss(0, 8), 1))
        for h in range(hours)
    ]


@contextmanager
def running_broker(database_url: str, data_dir: Path) -> Iterator[tuple[str, int]]:
    """The broker on a free loopback port: (base URL, pid)."""
    port = free_port()
    env = {**os.environ, "CLIMABOROUGH_DATABASE_URL": database_url, "CLIMABOROUGH_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "broker", "--host", "127.0.0.1", "--port", str(port),
         "--no-embedded-postgres", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the broker did not start")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def backfill(url: str, entities: int, hours: int, chunk: int, concurrency: int) -> float:
    """Load every entity's series through the temporal append path; returns instances per second."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for n in range(entities):
            first = {
                "id": entity_id(n),
                "type": ENTITY_TYPE,
                "no2": [{"type": "Property", "value": 0.0, "observedAt": iso(START - timedelta(days=1))}],
            }
            response = await client.post(f"{API}/temporal/entities", json=first)
            response.raise_for_status()
        bodies: list[tuple[str, bytes]] = []
        for n in range(entities):
            series = no2_series(n, hours)
            for i in range(0, hours, chunk):
                instances = [{"type": "Property", "value": v, "unitCode": "GQ", "observedAt": iso(t)}
                             for t, v in series[i : i + chunk]]  # fmt: skip
                bodies.append((entity_id(n), json.dumps({"no2": instances}).encode()))
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for item in bodies:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                target, body = queue.get_nowait()
                response = await client.post(
                    f"{API}/temporal/entities/{target}/attrs", content=body,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return entities * hours / elapsed


def raw_copy(database_url: str, entities: int, hours: int) -> float:
    """COPY the same rows straight into a scratch table shaped (and indexed) like `attributes`."""
    ts = datetime.now(UTC).replace(tzinfo=None)
    prefix = str(uuid.uuid4())[:24]
    rows = []
    counter = 0
    for n in range(entities):
        for moment, value in no2_series(n, hours):
            counter += 1
            rows.append((f"urn:ngsi-ld:attribute:instance:{prefix}{counter:012x}",
                         "https://uri.etsi.org/ngsi-ld/default-context/no2", "Append", entity_id(n),
                         moment.replace(tzinfo=None), False, "GQ", None, "Number", None, None, value, None, None,
                         ts))  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        conn.execute("CREATE TABLE bench_copy_scratch (LIKE attributes INCLUDING DEFAULTS INCLUDING INDEXES)")
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY bench_copy_scratch (instanceId, id, opMode, entityId, observedAt, subProperties, unitCode,"
                " datasetId, valueType, text, boolean, number, datetime, compound, ts) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy_scratch")
    return len(rows) / elapsed


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def time_queries(url: str, entities: int, rounds: int) -> dict[str, list[float]]:
    year = {
        "attrs": "no2",
        "aggrMethods": "avg,max",
        "aggrPeriodDuration": "PT1H",
        "timerel": "between",
        "timeAt": "2016-01-01T00:00:00Z",
        "endTimeAt": "2017-01-01T00:00:00Z",
    }
    month = {"type": ENTITY_TYPE, "attrs": "no2", "aggrMethods": "avg", "aggrPeriodDuration": "P1D",
             "timerel": "between", "timeAt": "2016-03-01T00:00:00Z", "endTimeAt": "2016-04-01T00:00:00Z",
             "limit": str(entities)}  # fmt: skip
    timings: dict[str, list[float]] = {"year_hourly_one_entity": [], "month_daily_100_entities": []}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(rounds + 2):
            for name, path, params in (
                ("year_hourly_one_entity", f"{API}/temporal/entities/{entity_id(i % entities)}", year),
                ("month_daily_100_entities", f"{API}/temporal/entities", month),
            ):
                started = time.perf_counter()
                response = await client.get(path, params=params)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                body = response.json()
                if name == "year_hourly_one_entity":
                    assert len(body["no2"]["avg"]) == 366 * 24, len(body["no2"]["avg"])
                else:
                    assert len(body) == entities and len(body[0]["no2"]["avg"]) == 31
                if i >= 2:  # the first rounds warm caches and connections
                    timings[name].append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument("--hours", type=int, default=10_000, help="instances per entity (hourly)")
    parser.add_argument("--chunk", type=int, default=5_000, help="instances per append request")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    cpu: dict[str, dict[str, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="climaborough-bench-temporal-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="climaborough-bench-temporal-pg-"))  # the server may run as nobody
    try:
        with EmbeddedPostgres(pg_dir) as postgres:
            database_url = postgres.ensure_database("bench_temporal")
            with running_broker(database_url, work / "data") as (url, broker_pid):
                postgres_pid = postgres.pid
                assert postgres_pid is not None

                def cpu_now() -> tuple[float, float]:
                    return cpu_seconds(broker_pid), process_tree_cpu_seconds(postgres_pid)

                before = cpu_now()
                append_per_s = asyncio.run(backfill(url, args.entities, args.hours, args.chunk, args.concurrency))
                after = cpu_now()
                appended = args.entities * args.hours
                cpu["append_us_per_instance"] = {
                    "broker": round((after[0] - before[0]) / appended * 1e6, 2),
                    "postgres": round((after[1] - before[1]) / appended * 1e6, 2),
                }
                copy_per_s = raw_copy(database_url, args.entities, args.hours)
                with psycopg.connect(database_url, autocommit=True) as conn:
                    # What autovacuum does after a bulk insert (autovacuum_vacuum_insert_threshold), run
                    # now so that the timings do not depend on when it wakes up.
                    conn.execute("VACUUM ANALYZE attributes")
                    conn.execute("ANALYZE entities")
                    row = conn.execute("SELECT count(*) FROM attributes").fetchone()
                    instances = int(row[0]) if row else 0
                before = cpu_now()
                timings = asyncio.run(time_queries(url, args.entities, args.rounds))
                after = cpu_now()
                queries = 2 * (args.rounds + 2)  # both kinds, warm-up rounds included
                cpu["aggr_ms_per_query"] = {
                    "broker": round((after[0] - before[0]) / queries * 1000, 2),
                    "postgres": round((after[1] - before[1]) / queries * 1000, 2),
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    every = [t for samples in timings.values() for t in samples]
    print(json.dumps({
        "temporal_aggr_p95_ms": round(percentile(every, 0.95), 1),
        "temporal_instances": instances,
        "temporal_append_per_s": round(append_per_s),
        "copy_rows_per_s": round(copy_per_s),
        **{f"{name}_p95_ms": round(percentile(samples, 0.95), 1) for name, samples in timings.items()},
        "cpu": cpu,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

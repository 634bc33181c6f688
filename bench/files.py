"""File translator benchmark: mapping rows/s beside pandas, and the full 12-station Beijing load; one JSON line.

    python -m bench.files --data DIR        # DIR: the 12 PRSA_Data_<Station>_20130301-20170228.csv files

- `file_rows_per_s`: records read and mapped to NGSI-LD entities per second (no network), over
  the first station file; `pandas_rows_per_s`: `pandas.read_csv` of the same file.
- `beijing_full_load_s`: every file through `climaborough ingest` (current state + full history
  through the temporal append path) into a fresh broker on an embedded PostgreSQL, `--parallel`
  ingest processes at a time; the broker's history is then checked (pm25 instances per station
  equal the file's non-NA cells).
- `ingest_peak_rss_mb`: the largest peak resident set (VmHWM) of any ingest process.
- `load_cpu_s`: CPU seconds of the load spent by the ingest processes, the broker and PostgreSQL
  (on a busy machine the wall time says little; this says which side is the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agents.files import compile_translator, load_mapping, open_records
from bench._harness import (
    REPO,
    cpu_seconds,
    emit_result,
    log,
    machine_info,
    peak_rss_mb,
    process_tree_cpu_seconds,
    running_broker,
)
from ngsi.client import AsyncBrokerClient

MAPPING = REPO / "broker_config" / "mappings" / "beijing_multisite.yaml"
ENVIRONMENT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"


def mapping_rows_per_s(path: Path) -> tuple[float, float, int]:
    """Read + map every record of `path`: best of two runs, per wall-clock second and per CPU second."""
    mapping = load_mapping(MAPPING)
    translate = compile_translator(mapping)
    best = best_cpu = 0.0
    rows = 0
    for _ in range(2):
        started, started_cpu = time.perf_counter(), time.process_time()
        rows = 0
        with open_records(path, mapping) as records:
            for record in records:
                translate(record.values)
                rows += 1
        best = max(best, rows / (time.perf_counter() - started))
        best_cpu = max(best_cpu, rows / max(time.process_time() - started_cpu, 1e-9))
    return best, best_cpu, rows


def pandas_rows_per_s(path: Path) -> tuple[float, float]:
    """`pandas.read_csv` of the same file: best of two runs, per wall-clock second and per CPU second."""
    import pandas

    best = best_cpu = 0.0
    for _ in range(2):
        started, started_cpu = time.perf_counter(), time.process_time()
        frame = pandas.read_csv(path, na_values=["NA"])
        best = max(best, len(frame) / (time.perf_counter() - started))
        best_cpu = max(best_cpu, len(frame) / max(time.process_time() - started_cpu, 1e-9))
    return best, best_cpu


def run_ingests(files: list[Path], broker_url: str, data_dir: Path, parallel: int) -> tuple[float, float]:
    """Ingest every file with `parallel` processes at a time; returns (seconds, peak RSS MB of any of them)."""
    pending = list(files)
    running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}  # pid → (process, file)
    peak = 0.0
    started = time.monotonic()
    while pending or running:
        while pending and len(running) < parallel:
            file = pending.pop(0)
            command = [sys.executable, "-m", "cli.main", "ingest", str(file), "--mapping", str(MAPPING),
                       "--broker-url", broker_url, "--data-dir", str(data_dir)]  # fmt: skip
            data_dir.mkdir(parents=True, exist_ok=True)
            with open(data_dir / f"{file.stem}.log", "wb") as errors:
                process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors,
                                           env={**os.environ, "TERM": "dumb"})  # fmt: skip
            running[process.pid] = (process, file)
        for pid, (process, file) in list(running.items()):
            if process.poll() is None:
                try:
                    peak = max(peak, peak_rss_mb(pid))
                except (OSError, ValueError, KeyError):
                    pass  # the process is exiting: its last reading stands
                continue
            del running[pid]
            if process.returncode != 0:
                error = (data_dir / f"{file.stem}.log").read_text(errors="replace")
                raise RuntimeError(f"ingest of {file.name} failed ({process.returncode}): {error[-2000:]}")
            log(f"ingested {file.name} at {time.monotonic() - started:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started, peak


def non_na(path: Path, column: str) -> int:
    with open(path, newline="") as handle:
        return sum(1 for row in csv.DictReader(handle) if row[column] != "NA")


async def history_counts(broker_url: str, files: list[Path]) -> dict[str, tuple[int, int]]:
    """Per station: (pm25 instances in the broker's history, non-NA PM2.5 cells in the file)."""
    counts: dict[str, tuple[int, int]] = {}
    async with AsyncBrokerClient(broker_url, context=ENVIRONMENT, timeout=300) as client:
        for file in files:
            station = file.name.split("_")[2]
            entity = await client.get_temporal_entity(
                f"urn:ngsi-ld:AirQualityObserved:beijing:{station}", attrs="pm25", options="aggregatedValues",
                aggr_methods="totalCount", aggr_period_duration="P3650D", timerel="after",
                time_at="2000-01-01T00:00:00Z",
            )  # fmt: skip
            counts[station] = (int(sum(p[0] for p in entity["pm25"]["totalCount"])), non_na(file, "PM2.5"))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the 12 Beijing station CSV files")
    parser.add_argument("--parallel", type=int, default=2, help="ingest processes at a time")
    parser.add_argument("--skip-load", action="store_true", help="only the mapping and pandas numbers")
    arguments = parser.parse_args()
    files = sorted(arguments.data.glob("PRSA_Data_*_20130301-20170228.csv"))
    if not files:
        parser.error(f"no PRSA_Data_*_20130301-20170228.csv files in {arguments.data}")
    rows_per_s, rows_per_cpu_s, rows = mapping_rows_per_s(files[0])
    log(f"mapping: {rows} rows of {files[0].name}, {rows_per_s:,.0f} rows/s ({rows_per_cpu_s:,.0f} per CPU s)")
    pandas_speed, pandas_cpu_speed = pandas_rows_per_s(files[0])
    log(f"pandas.read_csv: {pandas_speed:,.0f} rows/s ({pandas_cpu_speed:,.0f} per CPU s)")
    result: dict[str, Any] = {
        "file_rows_per_s": round(rows_per_s),
        "pandas_rows_per_s": round(pandas_speed),
        "file_rows_per_cpu_s": round(rows_per_cpu_s),
        "pandas_rows_per_cpu_s": round(pandas_cpu_speed),
        "beijing_full_load_s": None,
        "ingest_peak_rss_mb": None,
    }
    if not arguments.skip_load:
        total_rows = sum(len(file.read_bytes().splitlines()) - 1 for file in files)
        with running_broker() as broker:
            scratch = broker.log_path.parent / "ingest-data"
            servers = {"broker": broker.pid, "postgres": broker.postgres_pid}
            before = {name: process_tree_cpu_seconds(pid) for name, pid in servers.items()}
            ingest_before = cpu_seconds(os.getpid(), with_waited_children=True) - cpu_seconds(os.getpid())
            seconds, peak = run_ingests(files, broker.base_url, scratch, arguments.parallel)
            # Where the load's CPU went: the ingest processes (reaped children) against broker and PostgreSQL.
            cpu = {name: process_tree_cpu_seconds(pid) - before[name] for name, pid in servers.items()}
            cpu["ingest"] = cpu_seconds(os.getpid(), with_waited_children=True) - cpu_seconds(os.getpid())
            cpu["ingest"] -= ingest_before
            counts = asyncio.run(history_counts(broker.base_url, files))
        mismatched = {station: pair for station, pair in counts.items() if pair[0] != pair[1]}
        result.update({
            "beijing_full_load_s": round(seconds, 1),
            "ingest_peak_rss_mb": round(peak, 1),
            "beijing_rows": total_rows,
            "beijing_files": len(files),
            "history_checked": not mismatched,
            "history_mismatches": mismatched,
            "parallel_ingests": arguments.parallel,
            "load_cpu_s": {name: round(used, 1) for name, used in cpu.items()},
        })  # fmt: skip
    result["machine"] = machine_info()
    emit_result(result)


if __name__ == "__main__":
    main()

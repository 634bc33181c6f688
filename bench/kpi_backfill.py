"""Backfill benchmark: every shipped air-quality KPI over the UCI Beijing history, with CPU per process.

`python -m bench.kpi_backfill [--data DIR] [--read troe|api]` starts PostgreSQL and the broker
(bench/_harness.py), loads the PRSA_Data_*.csv files of `--data` through the temporal append path
(not timed), then times `kpi run`'s backfill of 2013-03-01 … 2017-03-01. `--read troe` (default)
gives the engine the broker's database URL, so source history is read straight from the TRoE
tables; `--read api` reads it through the temporal API. Prints ONE JSON line (`kpi_backfill_s`
and details). `bench.kpi` calls `measure_backfill` for its backfill part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._harness import cpu_seconds, emit_result, log, machine_info, process_tree_cpu_seconds, running_broker
from bench.kpi import AQO, BEIJING_TIME, DEFAULT_DATA, air_quality_definitions, load_beijing
from kpi.backfill import backfill
from kpi.engine import KpiEngine
from kpi.settings import KpiSettings
from smart_data_models.models import ENVIRONMENT_CONTEXT

SINCE = datetime(2013, 3, 1, tzinfo=BEIJING_TIME)
UNTIL = datetime(2017, 3, 1, tzinfo=BEIJING_TIME)


def _cpu(broker: Any) -> tuple[float, float, float]:
    return (process_tree_cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.postgres_pid),
            cpu_seconds(os.getpid()))  # fmt: skip


async def measure_backfill(broker: Any, files: list[Path], *, read_from: str = "troe") -> dict[str, Any]:
    """Load `files`, then time the backfill of every shipped air-quality KPI (CPU per process)."""
    started = time.perf_counter()
    instances = await load_beijing(broker.base_url, files)
    load_s = time.perf_counter() - started
    log(f"loaded {instances} instances in {load_s:.1f}s; backfilling (history from {read_from})")
    settings = KpiSettings(broker_url=broker.base_url, kpi_client_id="bench-backfill",
                           kpi_database_url=broker.database_url if read_from == "troe" else None)  # fmt: skip
    engine = KpiEngine(settings, air_quality_definitions())
    # One temporal query first: the broker builds its history indexes on the first one.
    await engine.client_for(ENVIRONMENT_CONTEXT).temporal_query(type=AQO, attrs="no2", last_n=1, limit=1)
    started = time.perf_counter()
    before = _cpu(broker)
    report = await backfill(engine, SINCE, UNTIL)
    elapsed = time.perf_counter() - started
    after = _cpu(broker)
    await engine.stop()
    return {
        "kpi_backfill_s": round(elapsed, 1),
        "backfill_read_from": read_from,
        "backfill_kpis": len(engine.definitions),
        "backfill_sources": report.sources,
        "backfill_windows": report.windows,
        "backfill_history_values": report.history_instances,
        "history_load_s": round(load_s, 1),
        "history_instances": instances,
        "backfill_cpu_broker_s": round(after[0] - before[0], 1),
        "backfill_cpu_postgres_s": round(after[1] - before[1], 1),
        "backfill_cpu_engine_s": round(after[2] - before[2], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PRSA_Data_*.csv (UCI Beijing)")
    parser.add_argument("--read", choices=("troe", "api"), default="troe", help="where the history is read from")
    parser.add_argument("--stations", type=int, default=None, help="only the first N station files")
    args = parser.parse_args()
    files = sorted(args.data.glob("PRSA_Data_*.csv"))[: args.stations]
    if not files:
        raise SystemExit(f"no PRSA_Data_*.csv in {args.data} (give --data)")
    result: dict[str, Any] = {"benchmark": "kpi_backfill"}
    with running_broker() as broker:
        result.update(asyncio.run(measure_backfill(broker, files, read_from=args.read)))
    result["machine"] = machine_info()
    emit_result(result)


if __name__ == "__main__":
    main()

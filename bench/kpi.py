"""KPI engine benchmark: change → KPI entity latency under load, and the backfill of every shipped KPI over Beijing.

`python -m bench.kpi [--data DIR] [--seconds 20] [--stations 100]` starts PostgreSQL and the
broker (bench/_harness.py) and Mosquitto (amqtt if absent), then:

1. Latency: `--stations` AirQualityObserved stations each report once a second (every report is
   the next hour of a replayed day, so every report opens a new hourly window), the KPI engine
   runs live with every shipped air-quality definition, and a second MQTT subscription tells the
   benchmark when the station's hourly EEA index entity has the value of the reported hour.
   Latency = that notification's arrival − the moment before the report was sent.
2. Backfill: the 12-station UCI Beijing history (`--data`, the PRSA_Data_*.csv folder) is loaded
   through the temporal append path, then `kpi run`'s backfill computes every shipped
   air-quality KPI over 2013-03-01 … 2017-03-01 (timed; the load is not).

Prints ONE JSON line: kpi_latency_p50_ms, kpi_latency_p99_ms, kpi_backfill_s and details.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench._harness import (
    HttpConnection,
    cpu_seconds,
    emit_result,
    log,
    machine_info,
    percentile,
    process_tree_cpu_seconds,
    running_broker,
)
from broker.embedded_postgres import free_port
from kpi.definitions import DefinitionSet, load_definitions
from kpi.engine import KpiEngine, tune_garbage_collector
from kpi.settings import KpiSettings
from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "examples" / "beijing"  # the shipped station; --data for all 12
BEIJING_TIME = timezone(timedelta(hours=8))
POLLUTANTS = {"PM2.5": "pm25", "PM10": "pm10", "SO2": "so2", "NO2": "no2", "O3": "o3", "CO": "co"}
AQO = "AirQualityObserved"
LATENCY_START = datetime(2030, 1, 1, tzinfo=BEIJING_TIME)


@contextmanager
def running_mqtt() -> Iterator[str]:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="climaborough-bench-mqtt-"))
    os.chmod(folder, 0o777)
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        argv = [mosquitto, "-c", str(config)]
    else:
        script = (
            "import asyncio, sys\nfrom amqtt.broker import Broker\nasync def main():\n"
            "    b = Broker({'listeners': {'default': {'type': 'tcp', 'bind': '127.0.0.1:' + sys.argv[1]}},"
            " 'plugins': {'amqtt.plugins.authentication.AnonymousAuthPlugin': {'allow_anonymous': True}}})\n"
            "    await b.start()\n    await asyncio.Event().wait()\nasyncio.run(main())\n"
        )
        argv = [sys.executable, "-c", script, str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def air_quality_definitions() -> DefinitionSet:
    definitions = load_definitions()
    return DefinitionSet(tuple(d for d in definitions if d.source.type == AQO))


# -- latency -------------------------------------------------------------------------------------


class StagedKpiEngine(KpiEngine):
    """The engine, noting when each station report's notification arrives and its EEA entity is written."""

    def __init__(self, settings: KpiSettings, definitions: DefinitionSet) -> None:
        super().__init__(settings, definitions)
        self.notified: dict[tuple[str, str], float] = {}
        self.written: dict[tuple[str, str], float] = {}
        self.written_us_aqi: dict[tuple[str, str], float] = {}
        write = self.writer.write

        async def timed_write(kpis: Any) -> int:
            sent = await write(kpis)
            done = time.perf_counter()
            for kpi in kpis:
                if ":eea-air-quality-index:" in kpi.id:
                    key = (kpi.entity["refSourceEntity"]["object"], kpi.entity["kpiValue"]["observedAt"])
                    self.written.setdefault(key, done)
                elif ":us-aqi:" in kpi.id:
                    key = (kpi.entity["refSourceEntity"]["object"], kpi.entity["kpiValue"]["observedAt"])
                    self.written_us_aqi.setdefault(key, done)
            return sent

        self.writer.write = timed_write  # type: ignore[method-assign]

    async def on_notification(self, notification: dict[str, Any]) -> None:
        arrived = time.perf_counter()
        for entity in notification.get("data", []):
            observed = (entity.get("pm25") or {}).get("observedAt") if isinstance(entity, dict) else None
            if observed:
                self.notified.setdefault((entity["id"], observed), arrived)
        await super().on_notification(notification)


async def run_engine_child(broker_url: str, mqtt_url: str, report_path: str) -> None:
    """The engine in a process of its own (so its CPU is its own): `ready` on stdout, its stages in `report_path`.

    Stops on SIGTERM (draining its queue); times are `time.perf_counter()`, i.e. CLOCK_MONOTONIC,
    which the parent process shares.
    """
    settings = KpiSettings(broker_url=broker_url, mqtt_url=mqtt_url, kpi_client_id="bench-kpi", kpi_workers=8)
    engine = StagedKpiEngine(settings, air_quality_definitions())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await engine.start()
    tune_garbage_collector()  # as `climaborough kpi run` does
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    await engine.stop(drain_timeout=30)
    report = {
        "notified": [[*key, at] for key, at in engine.notified.items()],
        "written": [[*key, at] for key, at in engine.written.items()],
        "written_us_aqi": [[*key, at] for key, at in engine.written_us_aqi.items()],
        "errors": engine.stats.errors, "reads": engine.stats.reads, "last_error": engine.stats.last_error,
        "jobs": engine.stats.jobs, "writes": engine.writer.writes, "skipped": engine.writer.skipped,
        "replaced": engine.writer.replaced_by_kind,
        "upserts": engine.writer.upserts, "upserted": engine.writer.upserted,
    }  # fmt: skip
    await asyncio.to_thread(Path(report_path).write_bytes, orjson.dumps(report))


def _stage_ms(later: dict[tuple[str, str], float], earlier: dict[tuple[str, str], float]) -> float | None:
    gaps = [(later[key] - earlier[key]) * 1000 for key in later.keys() & earlier.keys()]
    return round(percentile(gaps, 0.5), 1) if gaps else None


WATCHED_KPIS = {
    "eea-air-quality-index": "hourly",
    "us-aqi": "hourly",
    "pm25-daily-mean": "daily",
    "eu-no2-hourly-exceedances": "yearly",
}
"""The KPIs whose latency is measured, by the group they are reported in."""


def _updated_at(entity: dict[str, Any]) -> str:
    value = (entity.get("updatedAt") or {}).get("value")
    return str(value.get("@value", "")) if isinstance(value, dict) else str(value or "")


class KpiWatcher:
    """Receives the notifications of the watched KPI entities and matches them to the reports acknowledged.

    A report of station S observed at T is seen in a KPI once a notification of that KPI's
    entity of S says the value includes T: for an hourly KPI its `kpiValue.observedAt` (the
    hour) is T; for a daily or yearly KPI its `updatedAt` (the latest observation it used) is T or
    later (each station's reports go forward in time).
    """

    def __init__(self, mqtt_url: str, topic: str) -> None:
        port = int(mqtt_url.rsplit(":", 1)[1])
        self.topic = topic
        self.acked: dict[str, dict[str, float]] = {}
        """station → observedAt → acknowledgement time of the report, for reports not yet seen in every KPI."""
        self.waiting: dict[tuple[str, str], dict[str, float]] = {}
        """(kpi, station) → observedAt → ack time, reports not yet seen in that KPI."""
        self.latencies: dict[str, list[float]] = {kpi: [] for kpi in WATCHED_KPIS}
        self.arrived: dict[tuple[str, str], float] = {}
        self.heard: dict[tuple[str, str], list[tuple[str, float]]] = {}
        """(kpi, station) → the hours (kpiValue.observedAt) its notifications carried, in arrival order."""
        self.timeline: list[tuple[float, str, str, float]] = []
        """(arrival time, kpi, station, latency ms) of every report seen: BENCH_KPI_TIMELINE=FILE writes it
        as JSON (with each report's stages), to see when and where latencies grew."""
        self.kpi_ids: dict[tuple[str, str], str] = {}
        self.never_seen: list[tuple[str, str, str]] = []
        """(kpi, station, observedAt) of the reports given up on."""
        self._outstanding = 0
        self._lock = threading.Condition()
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-kpi-{port}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.wait(10)

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self.topic, qos=0)
        self._ready.set()

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        arrived = time.perf_counter()
        body = orjson.loads(message.payload).get("body", {})
        for entity in body.get("data", []):
            parts = str(entity.get("id", "")).split(":")
            if len(parts) < 6 or parts[4] not in WATCHED_KPIS:
                continue
            kpi, station = parts[4], f"urn:ngsi-ld:{AQO}:beijing:{parts[5]}"
            observed_at = str((entity.get("kpiValue") or {}).get("observedAt", ""))
            updated_at = _updated_at(entity)
            with self._lock:
                self.heard.setdefault((kpi, station), []).append((observed_at, arrived))
                self.kpi_ids[(kpi, station)] = str(entity.get("id"))
                waiting = self.waiting.get((kpi, station), {})
                if WATCHED_KPIS[kpi] == "hourly":
                    done = [observed_at] if observed_at in waiting else []
                else:
                    done = [stamp for stamp in waiting if stamp <= updated_at]
                for stamp in done:
                    self.latencies[kpi].append((arrived - waiting.pop(stamp)) * 1000)
                    self.timeline.append((arrived, kpi, station, self.latencies[kpi][-1]))
                    if kpi == "eea-air-quality-index":
                        self.arrived[(station, stamp)] = arrived
                self._outstanding -= len(done)
                if not self._outstanding:
                    self._lock.notify_all()

    def acknowledged(self, station: str, observed_at: str, at: float) -> None:
        with self._lock:
            for kpi in WATCHED_KPIS:
                # The engine can be quicker than the report's HTTP answer: an hourly KPI showing the hour
                # may have been heard already (latency 0 from the acknowledgement; daily and yearly KPIs
                # are matched by their next notifications anyway).
                early = [arrived for hour, arrived in self.heard.get((kpi, station), ())
                         if hour == observed_at] if WATCHED_KPIS[kpi] == "hourly" else []  # fmt: skip
                if early:
                    self.latencies[kpi].append(max(0.0, early[0] - at) * 1000)
                    self.timeline.append((early[0], kpi, station, self.latencies[kpi][-1]))
                    if kpi == "eea-air-quality-index":
                        self.arrived[(station, observed_at)] = early[0]
                    continue
                self.waiting.setdefault((kpi, station), {})[observed_at] = at
                self._outstanding += 1

    def wait_all_seen(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._outstanding, timeout)

    def give_up(self, now: float) -> dict[str, int]:
        """Reports never seen count with the time waited so far (a lower bound), so they raise p99, not hide."""
        missing = {kpi: 0 for kpi in WATCHED_KPIS}
        with self._lock:
            for (kpi, station), waiting in self.waiting.items():
                for stamp, at in waiting.items():
                    self.latencies[kpi].append((now - at) * 1000)
                    missing[kpi] += 1
                    self.never_seen.append((kpi, station, stamp))
                waiting.clear()
            self._outstanding = 0
        return missing

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def explain_missing(client: AsyncBrokerClient, watcher: KpiWatcher, report: dict[str, Any]) -> None:
    """Debug (BENCH_KPI_EXPLAIN_MISSING=1): for each report never seen, what the engine wrote, the broker
    keeps in the KPI's history and the watcher heard for that entity."""
    written = {(s, o) for s, o, _ in report.get("written_us_aqi", [])} | {(s, o) for s, o, _ in report["written"]}
    for kpi, station, stamp in sorted(watcher.never_seen):
        heard = [o for o, _ in watcher.heard.get((kpi, station), [])]
        log(f"never seen: {kpi} {station} {stamp}; engine wrote it: {(station, stamp) in written}; "
            f"heard for the entity: {heard}")
        kpi_id = watcher.kpi_ids.get((kpi, station))
        if kpi_id is None:
            continue
        history = await client.request(
            "GET", f"/temporal/entities/{kpi_id}",
            params={"timerel": "after", "timeAt": "1970-01-01T00:00:00Z", "lastN": 30},
        )  # fmt: skip
        if history.status_code != 200:
            log(f"  history of {kpi_id}: {history.status_code} {history.text[:500]}")
            continue
        for name, instances in history.json().items():
            if name.endswith("kpiValue"):
                rows = instances if isinstance(instances, list) else [instances]
                log(f"  history of {kpi_id} {name}: " + ", ".join(
                    f"{row.get('observedAt')}={row.get('value')}" for row in rows if isinstance(row, dict)))


def _percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    return {
        f"{prefix}_p50_ms": round(percentile(values, 0.5), 1) if values else None,
        f"{prefix}_p99_ms": round(percentile(values, 0.99), 1) if values else None,
    }


@contextmanager
def engine_process(
    broker_url: str, mqtt_url: str, report: Path, profile: Path | None
) -> Iterator[subprocess.Popen[bytes]]:
    """The KPI engine in its own process; with `profile`, `py-spy record` samples it into that file
    (collapsed stacks for `.txt`, else a flame graph SVG)."""
    argv = [sys.executable, "-m", "bench.kpi", "--engine-child", broker_url, mqtt_url, str(report)]
    process = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the KPI engine did not start: {line!r}")
        if profile is not None:
            py_spy = Path(sys.executable).parent / "py-spy"
            kind = "raw" if profile.suffix == ".txt" else "flamegraph"
            profiler = subprocess.Popen([str(py_spy), "record", "--nonblocking", "--pid", str(process.pid),
                                         "--format", kind,
                                         "-o", str(profile)], stdout=subprocess.DEVNULL)  # fmt: skip
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if profiler is not None:
            profiler.wait(30)


async def measure_latency(
    broker: Any, mqtt_url: str, stations: int, seconds: float, profile: Path | None = None, warmup: float = 0.0
) -> dict[str, Any]:
    """Latency and CPU per report; with `warmup`, the stations report that long first, unmeasured (the
    engine's start: seeding, creating every KPI entity, every yearly KPI at once), then `seconds` measured."""
    broker_url = broker.base_url
    topic = "bench/kpi/watched"
    watcher = KpiWatcher(mqtt_url, topic)
    ids = [f"urn:ngsi-ld:{AQO}:beijing:bench{n:03d}" for n in range(stations)]
    sent_at: dict[tuple[str, str], float] = {}
    acked_at: dict[tuple[str, str], float] = {}
    async with AsyncBrokerClient(broker_url) as client:
        await client.create_subscription({
            "type": "Subscription",
            "entities": [{"type": "KeyPerformanceIndicator",
                          "idPattern": f".*:({'|'.join(WATCHED_KPIS)}):bench[0-9]+:.*"}],
            "notification": {"attributes": ["kpiValue", "updatedAt"], "format": "normalized",
                             "endpoint": {"uri": f"{mqtt_url}/{topic}", "accept": "application/json"}},
            "@context": [KPI_CONTEXT],
        })  # fmt: skip
        report_path = Path(tempfile.mkdtemp(prefix="climaborough-bench-kpi-")) / "engine.json"
        with engine_process(broker_url, mqtt_url, report_path, profile) as engine:
            engine_pid = engine.pid

            def cpu_now() -> tuple[float, float, float, float]:
                return (process_tree_cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.postgres_pid),
                        cpu_seconds(engine_pid), cpu_seconds(os.getpid()))  # fmt: skip

            cpu_before = cpu_now()
            started_all = time.perf_counter()
            measured_from = started_all + warmup

            async def end_of_warmup() -> None:
                nonlocal cpu_before
                await asyncio.sleep(warmup)
                cpu_before = cpu_now()

            async def station(index: int) -> None:
                await asyncio.sleep(index / stations)  # spread the reports over the second
                # A bare keep-alive connection per station: the load generator's CPU stays small
                # beside the engine and the broker it measures (httpx costs ~5 ms per request).
                connection = await HttpConnection(broker.host, broker.port).open()
                hour = 0
                started = time.perf_counter()
                while time.perf_counter() - started < warmup + seconds:
                    moment = LATENCY_START + timedelta(hours=hour)
                    observed = format_timestamp(moment.astimezone(UTC))
                    entity = {
                        "id": ids[index], "type": AQO, "@context": [ENVIRONMENT_CONTEXT],
                        "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": observed}},
                        **{p: {"type": "Property", "value": 10.0 + (index + hour * 7) % 80, "observedAt": observed,
                               "unitCode": "GQ"} for p in ("pm25", "pm10", "no2", "o3", "so2")},
                    }  # fmt: skip
                    measured = time.perf_counter() >= measured_from
                    sent = time.perf_counter()
                    status, answer = await connection.request(
                        "POST", "/ngsi-ld/v1/entityOperations/upsert?options=update", orjson.dumps([entity]),
                        {"Content-Type": "application/ld+json"},
                    )  # fmt: skip
                    if status not in (201, 204):
                        raise RuntimeError(f"report refused: {status} {answer[:300]!r}")
                    if measured:
                        sent_at[(ids[index], observed)] = sent
                        acked = acked_at[(ids[index], observed)] = time.perf_counter()
                        watcher.acknowledged(ids[index], observed, acked)
                    hour += 1
                    await asyncio.sleep(max(0.0, started + hour - time.perf_counter()))
                await connection.close()

            await asyncio.gather(end_of_warmup(), *(station(i) for i in range(stations)))
            load_s = time.perf_counter() - measured_from
            # The yearly KPIs wait up to their min_interval_s (30 s).
            await asyncio.to_thread(watcher.wait_all_seen, 35)
            cpu_after = cpu_now()
            missing = watcher.give_up(time.perf_counter())
            engine.send_signal(signal.SIGTERM)
            await asyncio.to_thread(engine.wait, 60)
            report = orjson.loads(report_path.read_bytes())
            shutil.rmtree(report_path.parent, ignore_errors=True)
            if watcher.never_seen and os.environ.get("BENCH_KPI_EXPLAIN_MISSING"):
                await explain_missing(client, watcher, report)
    watcher.stop()
    notified = {(s, o): at for s, o, at in report["notified"]}
    written = {(s, o): at for s, o, at in report["written"]}
    if os.environ.get("BENCH_KPI_TIMELINE"):
        # Per report of the EEA index: acknowledged, engine notified, entity written, notification seen.
        stages = [(acked_at[key], notified.get(key), written.get(key), watcher.arrived.get(key))
                  for key in acked_at]  # fmt: skip
        await asyncio.to_thread(Path(os.environ["BENCH_KPI_TIMELINE"]).write_bytes,
                                orjson.dumps({"seen": watcher.timeline, "stages": stages}))
    hourly = [v for kpi, group in WATCHED_KPIS.items() if group == "hourly" for v in watcher.latencies[kpi]]
    daily = [v for kpi, group in WATCHED_KPIS.items() if group == "daily" for v in watcher.latencies[kpi]]
    yearly = [v for kpi, group in WATCHED_KPIS.items() if group == "yearly" for v in watcher.latencies[kpi]]
    send_to_ack = [(acked_at[k] - sent_at[k]) * 1000 for k in acked_at]
    engine_cpu = cpu_after[2] - cpu_before[2]
    return {
        # Headline: report acknowledged → the hourly KPI entities (EEA index, US AQI) show its hour,
        # and the daily mean shows a value including it (see KpiWatcher).
        **_percentiles(hourly + daily, "kpi_latency"),
        **_percentiles(hourly, "kpi_hourly_latency"),
        **_percentiles(daily, "kpi_daily_latency"),
        # Yearly KPIs are recomputed at most every trigger.min_interval_s (30 s) per station.
        **_percentiles(yearly, "kpi_yearly_latency"),
        "latency_by_kpi_p50_ms": {
            kpi: round(percentile(values, 0.5), 1) if values else None for kpi, values in watcher.latencies.items()
        },
        "latency_missing": missing,
        "reports_sent": len(acked_at),
        "reports_per_s": round(len(acked_at) / load_s, 1),
        "report_send_to_ack_p50_ms": round(percentile(send_to_ack, 0.5), 1) if send_to_ack else None,
        "engine_errors": report["errors"],
        "engine_reads": report["reads"],
        "engine_jobs": report["jobs"],
        "engine_writes": report["writes"],
        "engine_writes_skipped": report["skipped"],
        "engine_history_replacements": report["replaced"],
        "engine_batch_upserts": report["upserts"],
        "engine_entities_per_upsert": round(report["upserted"] / max(1, report["upserts"]), 1),
        "engine_entities_per_report": round(report["upserted"] / max(1, len(acked_at)), 2),
        "engine_last_error": report["last_error"],
        # Where the time goes (p50, EEA index): report acked → engine notified → entity written → notification seen.
        "stage_report_to_engine_ms": _stage_ms(notified, acked_at),
        "stage_engine_to_written_ms": _stage_ms(written, notified),
        "stage_written_to_seen_ms": _stage_ms(watcher.arrived, written),
        "cpu_broker_s": round(cpu_after[0] - cpu_before[0], 1),
        "cpu_postgres_s": round(cpu_after[1] - cpu_before[1], 1),
        "cpu_engine_s": round(engine_cpu, 1),
        "cpu_engine_ms_per_report": round(engine_cpu * 1000 / max(1, len(acked_at)), 2),
        # The machine's whole budget per report (2 cores at 100 reports/s: 20 ms, of which the broker's event
        # loop can use at most 10): compare these, not wall-clock latency, between runs on a busy machine.
        "cpu_broker_ms_per_report": round((cpu_after[0] - cpu_before[0]) * 1000 / max(1, len(acked_at)), 2),
        "cpu_postgres_ms_per_report": round((cpu_after[1] - cpu_before[1]) * 1000 / max(1, len(acked_at)), 2),
        "cpu_total_ms_per_report": round((sum(cpu_after) - sum(cpu_before)) * 1000 / max(1, len(acked_at)), 2),
        "cpu_load_generator_s": round(cpu_after[3] - cpu_before[3], 1),
    }


# -- backfill ------------------------------------------------------------------------------------


def station_series(csv_path: Path) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """Station name and its hourly instances per pollutant (co in mg/m³ as the Smart Data Model has it)."""
    instances: dict[str, list[dict[str, Any]]] = {attr: [] for attr in POLLUTANTS.values()}
    station = ""
    with open(csv_path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            station = row["station"]
            local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]),
                             tzinfo=BEIJING_TIME)  # fmt: skip
            observed = format_timestamp(local.astimezone(UTC))
            for column, attr in POLLUTANTS.items():
                if row[column] in ("", "NA"):
                    continue
                value = float(row[column]) / (1000 if attr == "co" else 1)
                instances[attr].append({"type": "Property", "value": value, "observedAt": observed,
                                        "unitCode": "GP" if attr == "co" else "GQ"})  # fmt: skip
    return station, instances


async def load_beijing(broker_url: str, files: list[Path], chunk: int = 2000) -> int:
    total = 0
    async with AsyncBrokerClient(broker_url, timeout=300) as client:
        for path in files:
            station, instances = await asyncio.to_thread(station_series, path)
            entity_id = f"urn:ngsi-ld:{AQO}:beijing:{station}"
            last = {attr: rows[-1] for attr, rows in instances.items() if rows}
            # The current state (how the engine finds stations) and the history (what it reads).
            await client.batch_upsert([{"id": entity_id, "type": AQO, "@context": [ENVIRONMENT_CONTEXT], **last}])
            length = max(len(rows) for rows in instances.values())
            for start in range(0, length, chunk):
                body: dict[str, Any] = {attr: rows[start : start + chunk] for attr, rows in instances.items()
                                        if rows[start : start + chunk]}  # fmt: skip
                body["@context"] = [ENVIRONMENT_CONTEXT]
                await client.temporal_append(entity_id, body)
                total += sum(len(v) for k, v in body.items() if k != "@context")
            log(f"loaded {station}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PRSA_Data_*.csv (UCI Beijing)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the stations report")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds the stations report before the measured --seconds (steady state, not the start)")
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile-engine", type=Path, help="write a py-spy flame graph (SVG) of the engine here")
    parser.add_argument("--engine-child", nargs=3, metavar=("BROKER_URL", "MQTT_URL", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        asyncio.run(run_engine_child(*args.engine_child))
        return
    result: dict[str, Any] = {"benchmark": "kpi", "stations": args.stations, "seconds": args.seconds}
    if args.warmup:
        result["warmup_s"] = args.warmup
    with running_mqtt() as mqtt_url:
        if not args.skip_latency:
            with running_broker() as broker:
                log(f"latency: {args.stations} stations for {args.seconds}s")
                result.update(asyncio.run(
                    measure_latency(broker, mqtt_url, args.stations, args.seconds, args.profile_engine, args.warmup)
                ))
        if not args.skip_backfill:
            files = sorted(args.data.glob("PRSA_Data_*.csv"))
            if not files:
                raise SystemExit(f"no PRSA_Data_*.csv in {args.data} (give --data)")
            from bench.kpi_backfill import measure_backfill  # it uses this module's loaders

            with running_broker() as broker:
                result.update(asyncio.run(measure_backfill(broker, files)))
    result["machine"] = machine_info()
    emit_result(result)


if __name__ == "__main__":
    main()

"""IoT agent benchmark: UltraLight measures over MQTT from 100 devices, sustained into the broker; prints one JSON line.

    python -m bench.iot [--rate 2000] [--seconds 20] [--devices 100] [--agents 1]

Starts PostgreSQL + broker (bench/_harness.py), Mosquitto with the shipped
broker_config/mosquitto/mosquitto.conf (amqtt when Mosquitto is absent) and one IoT agent
process (or `--agents N` sharing the MQTT load through one shared subscription), provisions a
config group, then publishes `n|…|t|…|TimeInstant|<publish time>` at a fixed rate with QoS 1.
Device → broker latency of a measure is the broker's history write time (TRoE `attributes.ts`)
minus the publish time it carries (`observedAt`), both on this machine's clock.
`iot_measures_per_s` is how many measures of the measured window reached the broker's history
per second, from the window's first publish to the last write. `cpu_s_per_1000_measures` splits
the CPU of the window among the agents, the broker, PostgreSQL (without the benchmark's own
polling) and the publishing benchmark process itself.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench._harness import (
    REPO,
    cpu_seconds,
    emit_result,
    log,
    machine_info,
    percentile,
    process_tree_cpu_seconds,
    running_broker,
)
from broker.embedded_postgres import free_port

SHIPPED_MOSQUITTO_CONF = REPO / "broker_config" / "mosquitto" / "mosquitto.conf"
APIKEY = "bench"
MAX_IN_FLIGHT = 1000
STALL_S = 20.0
"""Stop waiting for the last measures when none arrived for this long."""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


@contextlib.contextmanager
def running_mqtt(folder: Path) -> Iterator[tuple[str, str]]:
    """(url, MQTT version): Mosquitto with the shipped configuration, else amqtt."""
    port = free_port()
    if shutil.which("mosquitto"):
        os.chmod(folder, 0o777)
        config = folder / "mosquitto.conf"
        lines = []
        for line in SHIPPED_MOSQUITTO_CONF.read_text().splitlines():
            if line.startswith("listener "):
                line = f"listener {port} 127.0.0.1"
            elif line.startswith("persistence_location "):
                line = f"persistence_location {folder}/"
            lines.append(line)
        config.write_text("\n".join(lines) + "\n")
        argv, version = ["mosquitto", "-c", str(config)], "5"
    else:
        script = (
            "import asyncio, sys\nfrom amqtt.broker import Broker\nasync def main():\n"
            "    b = Broker({'listeners': {'default': {'type': 'tcp', 'bind': '127.0.0.1:' + sys.argv[1]}}})\n"
            "    await b.start(); await asyncio.Event().wait()\nasyncio.run(main())\n"
        )
        argv, version = [sys.executable, "-c", script, str(port)], "3.1.1"
    with open(folder / "mqtt.log", "wb") as mqtt_log:
        process = subprocess.Popen(argv, stdout=mqtt_log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, argv[0])
        yield f"mqtt://127.0.0.1:{port}", version
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_agent(
    broker_url: str, mqtt_url: str, version: str, folder: Path, instance: str = "iot"
) -> Iterator[tuple[str, int]]:
    """(north URL, pid) of one IoT agent process; agents of several `instance`s share the MQTT load."""
    north, south = free_port(), free_port()
    env = {
        **os.environ,
        "CLIMABOROUGH_BROKER_URL": broker_url,
        "CLIMABOROUGH_MQTT_URL": mqtt_url,
        "CLIMABOROUGH_DATA_DIR": str(folder / "agent"),
        "CLIMABOROUGH_IOT_NORTH_PORT": str(north),
        "CLIMABOROUGH_IOT_SOUTH_PORT": str(south),
        "CLIMABOROUGH_IOT_MQTT_PROTOCOL": version,
        "CLIMABOROUGH_IOT_INSTANCE": instance,
    }
    agent_log_path = folder / f"agent-{instance}.log"
    with open(agent_log_path, "wb") as agent_log:
        process = subprocess.Popen([sys.executable, "-m", "agents.iot"], cwd=REPO, env=env, stdout=agent_log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{north}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start:\n{agent_log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{north}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def provision(north_url: str) -> None:
    group = {
        "apikey": APIKEY,
        "entity_type": "AirQualityObserved",
        "attributes": [
            {"object_id": "n", "name": "no2", "type": "Number"},
            {"object_id": "t", "name": "temperature", "type": "Number"},
        ],
    }
    response = httpx.post(f"{north_url}/iot/groups", json={"groups": [group]})
    response.raise_for_status()


def iso_ms(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + _remaining_length(len(body)) + body


def _text(value: str) -> bytes:
    encoded = value.encode()
    return len(encoded).to_bytes(2, "big") + encoded


class DevicePublisher:
    """A minimal MQTT QoS 1 publisher on a plain socket, standing in for 100 devices.

    paho's publisher cost about 0.5 s of CPU per 1,000 measures in this process, more than the
    agent, the broker and PostgreSQL together: on 2 cores the load generator took the CPU the
    system under test needed. This one writes each tick's PUBLISH packets in one `sendall` and
    counts PUBACKs on a reader thread (MQTT 3.3, 3.4; no retransmission: the connection is local).
    """

    def __init__(self, mqtt_url: str, version: str) -> None:
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.v5 = version == "5"
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        level, properties = (5, b"\x00") if self.v5 else (4, b"")
        client_id = f"bench-devices-{os.getpid()}-{time.monotonic_ns()}"
        connect = _text("MQTT") + bytes((level, 0x02)) + (60).to_bytes(2, "big") + properties + _text(client_id)
        self.sock.sendall(_packet(0x10, connect))
        self.reader = self.sock.makefile("rb")
        header, _ = self._read_packet()
        if header >> 4 != 2:
            raise RuntimeError(f"expected CONNACK, got packet type {header >> 4}")
        self.sent = 0
        self.acknowledged = 0
        self._acked = threading.Condition()
        self._thread = threading.Thread(target=self._read_acks, daemon=True)
        self._thread.start()

    def _read_packet(self) -> tuple[int, bytes]:
        first = self.reader.read(1)
        if not first:
            raise EOFError("the MQTT server closed the connection")
        length, shift = 0, 0
        while True:
            digit = self.reader.read(1)[0]
            length |= (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        return first[0], self.reader.read(length)

    def _read_acks(self) -> None:
        with contextlib.suppress(EOFError, OSError, ValueError, IndexError):
            while True:
                header, _ = self._read_packet()
                if header >> 4 == 4:  # PUBACK
                    with self._acked:
                        self.acknowledged += 1
                        self._acked.notify_all()

    def publish(self, messages: list[tuple[str, str]]) -> None:
        """Send QoS 1 PUBLISH packets in one write (packet ids cycle through 1..65535)."""
        with self._acked:  # stay within the server's Receive Maximum (the shipped configuration: 1000)
            self._acked.wait_for(lambda: self.sent + len(messages) - self.acknowledged <= MAX_IN_FLIGHT, timeout=30)
        packets = []
        properties = b"\x00" if self.v5 else b""
        for topic, payload in messages:
            self.sent += 1
            packet_id = (self.sent - 1) % 65535 + 1
            body = _text(topic) + packet_id.to_bytes(2, "big") + properties + payload.encode()
            packets.append(_packet(0x32, body))
        self.sock.sendall(b"".join(packets))

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every PUBACK, then DISCONNECT."""
        with self._acked:
            self._acked.wait_for(lambda: self.acknowledged >= self.sent, timeout=timeout_s)
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def publish(mqtt_url: str, version: str, *, rate: float, seconds: float, devices: int) -> tuple[int, float]:
    """Publish at `rate` measures/s for `seconds` (QoS 1); returns (how many, wall time of the first publish)."""
    publisher = DevicePublisher(mqtt_url, version)
    tick = 0.01
    start = time.monotonic()
    first_wall = time.time()
    sent = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int((elapsed + tick) * rate)
        now = iso_ms(time.time())
        batch = []
        while sent < due:
            device = sent % devices
            payload = f"n|{sent % 200}|t|{20 + sent % 10}|TimeInstant|{now}"
            batch.append((f"/ul/{APIKEY}/dev{device:03d}/attrs", payload))
            sent += 1
        if batch:
            publisher.publish(batch)
        time.sleep(max(0.0, start + (sent / rate) - time.monotonic()))
    publisher.close()
    return sent, first_wall


class HistoryProbe:
    """Reads the broker's history on one PostgreSQL connection whose own CPU the benchmark leaves out.

    Waiting for the last measures polls the history table; on a fresh connection per poll, and for
    up to two minutes when measures were missing, that polling cost more PostgreSQL CPU than the
    measures themselves (0.11-0.74 s per 1,000 between otherwise equal runs).
    """

    def __init__(self, database_url: str) -> None:
        self.connection = psycopg.connect(database_url, autocommit=True)
        self.backend_pid = int(self.connection.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]

    def cpu_seconds(self) -> float:
        """CPU the probe's own backend used so far (to subtract from PostgreSQL's)."""
        return cpu_seconds(self.backend_pid)

    def latencies(self, since: float) -> tuple[list[float], float | None]:
        """Latencies (ms) of the no2 measures observed since `since`, and the wall time of the last write."""
        rows = self.connection.execute(
            "SELECT EXTRACT(EPOCH FROM (ts - observedAt)) * 1000, EXTRACT(EPOCH FROM ts) FROM attributes"
            " WHERE id LIKE %s AND observedAt >= %s",
            # Devices send TimeInstant to the millisecond: the first burst may lie within the ms of `since`.
            ("%no2", datetime.fromtimestamp(math.floor(since * 1000) / 1000, UTC).replace(tzinfo=None)),
        ).fetchall()
        if not rows:
            return [], None
        return [float(latency) for latency, _ in rows], max(float(ts) for _, ts in rows)

    def close(self) -> None:
        self.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="measures per second offered (default 2000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20 s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds published before the window")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--agents", type=int, default=1, help="agent processes sharing the MQTT load (MQTT 5)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="climaborough-bench-iot-"))
    try:
        with running_broker() as broker, running_mqtt(folder) as (mqtt_url, version), \
                contextlib.ExitStack() as agents:  # fmt: skip
            started = [
                agents.enter_context(running_agent(broker.base_url, mqtt_url, version, folder, f"iot{number}"))
                for number in range(args.agents)
            ]
            north_url = started[0][0]
            agent_pids = [pid for _, pid in started]
            provision(north_url)
            log(f"mqtt={mqtt_url} (MQTT {version}) broker={broker.base_url}; warm-up {args.warmup}s")
            publish(mqtt_url, version, rate=args.rate, seconds=args.warmup, devices=args.devices)
            cpu_before = {
                "agent": sum(process_tree_cpu_seconds(pid) for pid in agent_pids),
                "broker": process_tree_cpu_seconds(broker.pid),
                "postgres": process_tree_cpu_seconds(broker.postgres_pid),
                "publisher": cpu_seconds(os.getpid()),
            }
            log(f"publishing {args.rate:.0f} measures/s from {args.devices} devices for {args.seconds}s")
            sent, window_start = publish(mqtt_url, version, rate=args.rate, seconds=args.seconds,
                                         devices=args.devices)  # fmt: skip
            probe = HistoryProbe(broker.database_url)
            probe_cpu_before = probe.cpu_seconds()
            latencies: list[float] = []
            last_write: float | None = None
            progress_at = time.monotonic()
            # Wait for every measure, or until nothing new arrived for STALL_S (then some are missing).
            while time.monotonic() - progress_at < STALL_S:
                before = len(latencies)
                latencies, last_write = probe.latencies(window_start)
                if len(latencies) >= sent:
                    break
                if len(latencies) > before:
                    progress_at = time.monotonic()
                time.sleep(0.5)
            probe_cpu = probe.cpu_seconds() - probe_cpu_before
            probe.close()
            cpu = {
                "agent": sum(process_tree_cpu_seconds(pid) for pid in agent_pids) - cpu_before["agent"],
                "broker": process_tree_cpu_seconds(broker.pid) - cpu_before["broker"],
                "postgres": process_tree_cpu_seconds(broker.postgres_pid) - cpu_before["postgres"],
                "publisher": cpu_seconds(os.getpid()) - cpu_before["publisher"],
            }
            cpu["postgres"] -= probe_cpu
        arrived = len(latencies)
        span = (last_write - window_start) if last_write else float("inf")
        result = {
            "benchmark": "iot",
            "iot_measures_per_s": round(arrived / span, 1) if arrived else 0.0,
            "iot_p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
            "iot_p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
            "offered_per_s": args.rate,
            "sent": sent,
            "arrived": arrived,
            "missing": max(0, sent - arrived),
            "devices": args.devices,
            "agents": args.agents,
            "mqtt": "mosquitto" if version == "5" else "amqtt",
            "cpu_s_per_1000_measures": {name: round(used / max(sent, 1) * 1000, 3) for name, used in cpu.items()},
            "machine": machine_info(),
        }
        emit_result(result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Notification benchmark: latency from update acknowledged to receiver, and memory with a large backlog.

`python -m bench.notify [--seconds 10] [--rate 200]` starts an embedded PostgreSQL, Mosquitto
(or amqtt) and the broker, each in its own process on free 127.0.0.1 ports, plus three more
processes so that no measuring code shares an interpreter (or a GIL) with another:

- an HTTP receiver (raw asyncio, HTTP/1.1 keep-alive) that stamps each POST with `time.time()`
  when its body is complete, and answers 204;
- an MQTT receiver (paho) that stamps each message with `time.time()` on arrival;
- a load generator that sends `rate` PATCHes per second open-loop (on a pool of keep-alive
  connections, so a slow answer does not delay the next update) and stamps each acknowledgement
  with `time.time()`.

Latency = receiver's stamp - load generator's acknowledgement stamp (same machine, same clock;
a notification that arrives before the acknowledgement counts as 0). 10 subscriptions match
every update (5 HTTP, 5 MQTT). `achieved_rate_per_s` is acknowledged updates per second from the
first request to the last acknowledgement; CPU per update (and `cpu_ms_per_notification`, the
same divided by the 10 notifications of each update) is split between the broker's API process,
its notifier process and PostgreSQL. Afterwards it queues 100,000 notifications for a dead receiver
and reads the resident memory of both broker processes while the broker keeps taking writes
(`--no-backlog` skips that part). Prints one JSON line.
`--profile out.txt` records the broker with py-spy during the load (if py-spy is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx
import orjson
import psycopg

from bench._harness import HttpConnection, cpu_seconds, process_tree_cpu_seconds, rss_mb, running_broker
from broker.embedded_postgres import free_port

REPO = Path(__file__).resolve().parents[1]
API = "/ngsi-ld/v1"
ENTITY_TYPE = "AirQualityObserved"
ENTITIES = 20
SUBSCRIPTIONS_PER_KIND = int(os.environ.get("BENCH_NOTIFY_SUBSCRIPTIONS_PER_KIND", "5"))
PENDING_TARGET = 100_000
LOAD_CONNECTIONS = 64
"""At most this many updates in flight; beyond that the generator waits (and the achieved rate shows it)."""
DRAIN_TIMEOUT_S = 60.0
"""How long after the last update the receivers may take to get every notification."""


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# ---------------------------------------------------------------- child processes


def _announce(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _wait_for_stop() -> None:
    """Children run until the parent writes a line (or closes their stdin)."""
    sys.stdin.readline()


class _HttpReceiver(asyncio.Protocol):
    """Minimal HTTP/1.1 server side: Content-Length bodies, keep-alive, always 204."""

    arrivals: ClassVar[list[tuple[float, bytes]]] = []

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            self.arrivals.append((time.time(), body))
            del self.buffer[:end + 4 + length]
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


def receive_http() -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_HttpReceiver, "127.0.0.1", 0)
        _announce({"port": server.sockets[0].getsockname()[1]})
        await loop.run_in_executor(None, _wait_for_stop)
        server.close()

    asyncio.run(serve())
    _announce({"arrivals": _seqs_of([(at, orjson.loads(body)) for at, body in _HttpReceiver.arrivals])})


def receive_mqtt(port: int, topic: str) -> None:
    import paho.mqtt.client as mqtt

    arrivals: list[tuple[float, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscribed = threading.Event()
    client.on_message = lambda c, u, m: arrivals.append((time.time(), bytes(m.payload)))
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic + "/#", qos=0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("MQTT subscription not acknowledged")
    _announce({"subscribed": topic})
    _wait_for_stop()
    client.loop_stop()
    _announce({"arrivals": _seqs_of([(at, orjson.loads(payload)["body"]) for at, payload in arrivals])})


def _seqs_of(notifications: list[tuple[float, dict[str, Any]]]) -> list[tuple[int, float]]:
    """(update sequence number, arrival time) for every entity in every notification."""
    seqs = []
    for at, notification in notifications:
        for entity in notification.get("data", []):
            value = entity.get("seq")
            seq = value.get("value") if isinstance(value, dict) else value
            if isinstance(seq, int):
                seqs.append((seq, at))
    return seqs


def generate_load(port: int, rate: float, seconds: float) -> None:
    """Open-loop PATCHes at `rate`/s for `seconds`; every request is answered or the run fails."""
    ids = entity_ids()
    acked: dict[int, float] = {}
    failures: list[str] = []

    async def load() -> None:
        # Connections open lazily; an update waits for a free one only when LOAD_CONNECTIONS are busy.
        free: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for _ in range(LOAD_CONNECTIONS):
            free.put_nowait(HttpConnection("127.0.0.1", port))

        async def one(seq: int) -> None:
            connection = await free.get()
            body = orjson.dumps({"seq": {"type": "Property", "value": seq}})
            try:
                status, answer = await connection.request(
                    "PATCH", f"{API}/entities/{ids[seq % len(ids)]}/attrs", body,
                    {"Content-Type": "application/json"})
                at = time.time()
            except Exception as error:  # the broker dropped the connection: the run reports it
                failures.append(f"{type(error).__name__}: {error}")
                await connection.close()
                return
            finally:
                free.put_nowait(connection)
            if status == 204:
                acked[seq] = at
            else:
                failures.append(f"HTTP {status}: {answer[:200]!r}")

        total = int(rate * seconds)
        start = time.monotonic()
        started_at = time.time()
        tasks = []
        for seq in range(total):
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(seq)))
        _, unanswered = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        for task in unanswered:
            task.cancel()
        while not free.empty():
            await free.get_nowait().close()
        failures.extend(f"no answer in {DRAIN_TIMEOUT_S}s" for _ in unanswered)
        _announce({"acked": acked, "failures": failures[:20], "failed": len(failures),
                   # acknowledged updates per second, from the first request to the last acknowledgement
                   "achieved_rate": round(len(acked) / max(max(acked.values(), default=0) - started_at, 1e-9), 1)})

    asyncio.run(load())


# ---------------------------------------------------------------- parent


class Child:
    """A child process of this module speaking one JSON line at a time on stdout."""

    def __init__(self, stack: ExitStack, *args: str) -> None:
        self.role = " ".join(args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.notify", *args], cwd=REPO, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stack.callback(self._end)

    def read(self, timeout: float = DRAIN_TIMEOUT_S + 30) -> dict[str, Any]:
        assert self.process.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            raise RuntimeError(f"child {self.role} said nothing (exit {self.process.poll()})")
        result: dict[str, Any] = orjson.loads(line[0])
        return result

    def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        self.process.stdin.flush()
        return self.read()

    def _end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def entity_ids() -> list[str]:
    return [f"urn:ngsi-ld:{ENTITY_TYPE}:bench:{i}" for i in range(ENTITIES)]


def start_mqtt_broker(stack: ExitStack, folder: Path) -> int:
    port = free_port()
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
        process = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        code = (
            "import asyncio\nfrom amqtt.broker import Broker\nasync def main():\n"
            f"    b = Broker({{'listeners': {{'default': {{'type': 'tcp', 'bind': '127.0.0.1:{port}'}}}},"
            "'auth': {'allow-anonymous': True}, 'topic-check': {'enabled': False}})\n"
            "    await b.start()\n    await asyncio.Event().wait()\nasyncio.run(main())\n"
        )
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.wait)
    stack.callback(process.terminate)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no MQTT broker on port {port}") from None
            time.sleep(0.05)


def subscribe(client: httpx.Client, uri: str, entity_type: str = ENTITY_TYPE) -> None:
    response = client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}], "watchedAttributes": ["seq"],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}, "format": "keyValues",
                         "attributes": ["seq"]}})
    response.raise_for_status()


@contextmanager
def profiled(pid: int, output: Path | None) -> Iterator[None]:
    """py-spy (a development tool, not a dependency) records the broker while the block runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if output is None or not Path(spy).exists():
        yield
        return
    process = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
                                "--nonblocking", "--subprocesses"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)


def broker_processes(pid: int) -> list[int]:
    """The broker and its children (the notifier process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(child) for child in children.read_text().split())] if children.exists() else [pid]


def latencies(acked: dict[int, float], arrived: list[tuple[int, float]]) -> list[float]:
    return [max(at - acked[seq], 0.0) * 1000 for seq, at in arrived if seq in acked]


def run(seconds: float, rate: float, profile: Path | None, log: IO[str], *, backlog: bool = True) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="climaborough-bench-notify-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, True)
        http_receiver = Child(stack, "--role", "receive-http")
        http_port = http_receiver.read()["port"]
        mqtt_port = start_mqtt_broker(stack, folder)
        topic = f"bench/{uuid.uuid4().hex[:6]}"
        mqtt_receiver = Child(stack, "--role", "receive-mqtt", "--mqtt-port", str(mqtt_port), "--topic", topic)
        mqtt_receiver.read()
        broker = stack.enter_context(running_broker(extra_env={"CLIMABOROUGH_NOTIFY_TIMEOUT_S": "1"}))
        log.write(f"broker pid {broker.pid} on {broker.base_url}, database {broker.database_url}\n")
        log.flush()
        # keepalive_expiry below uvicorn's 5 s keep-alive: with equal timers the server may close a
        # connection just as the client reuses it (httpx ReadError), as happened in earlier runs.
        limits = httpx.Limits(keepalive_expiry=2.0)
        with httpx.Client(base_url=broker.base_url + API, timeout=120, limits=limits) as client:
            for entity_id in entity_ids():
                client.post("/entities", json={"id": entity_id, "type": ENTITY_TYPE,
                                               "seq": {"type": "Property", "value": -1}}).raise_for_status()
            for i in range(SUBSCRIPTIONS_PER_KIND):
                subscribe(client, f"http://127.0.0.1:{http_port}/notify/{i}")
                subscribe(client, f"mqtt://127.0.0.1:{mqtt_port}/{topic}/{i}")

            cpu_before = (cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.pid),
                          process_tree_cpu_seconds(broker.postgres_pid))
            with profiled(broker.pid, profile):
                load = Child(stack, "--role", "load", "--port", str(broker.port), "--rate", str(rate),
                             "--seconds", str(seconds))
                sent = load.read(seconds + DRAIN_TIMEOUT_S + 30)
                acked = {int(seq): at for seq, at in sent["acked"].items()}
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                with psycopg.connect(broker.database_url) as conn:
                    while time.monotonic() < deadline:  # the outbox empties once every notification is out
                        row = conn.execute("SELECT count(*) FROM subscription_outbox").fetchone()
                        if row is not None and row[0] == 0:
                            break
                        time.sleep(0.1)
            cpu = (cpu_seconds(broker.pid) - cpu_before[0], process_tree_cpu_seconds(broker.pid) - cpu_before[1],
                   process_tree_cpu_seconds(broker.postgres_pid) - cpu_before[2])
            http_arrivals, mqtt_arrivals = http_receiver.stop()["arrivals"], mqtt_receiver.stop()["arrivals"]
            http_ms, mqtt_ms = latencies(acked, http_arrivals), latencies(acked, mqtt_arrivals)
            if dump := os.environ.get("BENCH_NOTIFY_DUMP"):  # every (seq, acknowledged, arrived) for a closer look
                Path(dump).write_text(json.dumps({"acked": acked, "http": http_arrivals, "mqtt": mqtt_arrivals}))

            if not backlog:
                return _result(acked, sent, http_ms, mqtt_ms, cpu, rate)
            # Backlog: 10 subscriptions to a receiver that is down, 10,000 updates -> 100,000 pending.
            dead = f"http://127.0.0.1:{free_port()}/dead"
            backlog_type = "BacklogProbe"
            for _ in range(10):
                subscribe(client, dead, backlog_type)
            backlog_ids = [f"urn:ngsi-ld:{backlog_type}:{i}" for i in range(100)]
            for round_ in range(PENDING_TARGET // (10 * len(backlog_ids))):
                body = [{"id": e, "type": backlog_type, "seq": {"type": "Property", "value": round_}}
                        for e in backlog_ids]
                client.post("/entityOperations/upsert", json=body).raise_for_status()
            write_ms = []
            for seq in range(200):
                began = time.monotonic()
                client.patch(f"/entities/{entity_ids()[0]}/attrs",
                             json={"seq": {"type": "Property", "value": 10_000_000 + seq}}).raise_for_status()
                write_ms.append((time.monotonic() - began) * 1000)
        with psycopg.connect(broker.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM subscription_outbox").fetchone()
            pending = int(row[0]) if row else 0
        return {
            **_result(acked, sent, http_ms, mqtt_ms, cpu, rate),
            "pending_notifications": pending,
            "pending_rss_mb": round(sum(rss_mb(pid) for pid in broker_processes(broker.pid)), 1),
            "pending_write_p50_ms": round(statistics.median(write_ms), 2),
        }


def _result(acked: dict[int, float], sent: dict[str, Any], http_ms: list[float], mqtt_ms: list[float],
            cpu: tuple[float, float, float], rate: float) -> dict[str, Any]:
    notifications = max(len(acked) * 2 * SUBSCRIPTIONS_PER_KIND, 1)
    return {
        "notify_http_p50_ms": round(percentile(http_ms, 0.5), 2),
        "notify_http_p99_ms": round(percentile(http_ms, 0.99), 2),
        "notify_mqtt_p50_ms": round(percentile(mqtt_ms, 0.5), 2),
        "notify_mqtt_p99_ms": round(percentile(mqtt_ms, 0.99), 2),
        "notify_http_received": len(http_ms),
        "notify_mqtt_received": len(mqtt_ms),
        "notify_expected_per_kind": len(acked) * SUBSCRIPTIONS_PER_KIND,
        "updates": len(acked),
        "update_failures": sent["failed"],
        "update_failure_examples": sent["failures"][:3],
        "rate_per_s": rate,
        "achieved_rate_per_s": sent["achieved_rate"],
        "subscriptions": 2 * SUBSCRIPTIONS_PER_KIND,
        "broker_cpu_ms_per_update": round(cpu[1] * 1000 / max(len(acked), 1), 2),
        "api_process_cpu_ms_per_update": round(cpu[0] * 1000 / max(len(acked), 1), 2),
        "notifier_process_cpu_ms_per_update": round((cpu[1] - cpu[0]) * 1000 / max(len(acked), 1), 2),
        "postgres_cpu_ms_per_update": round(cpu[2] * 1000 / max(len(acked), 1), 2),
        # Every update notifies every subscription: CPU of each process per notification sent.
        "cpu_ms_per_notification": {
            "broker_api_process": round(cpu[0] * 1000 / notifications, 3),
            "notifier_process": round((cpu[1] - cpu[0]) * 1000 / notifications, 3),
            "postgres": round(cpu[2] * 1000 / notifications, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output of the broker during the load")
    parser.add_argument("--no-backlog", action="store_true", help="only the latency part, not the 100,000 pending")
    parser.add_argument("--role", choices=["receive-http", "receive-mqtt", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "receive-http":
        receive_http()
    elif args.role == "receive-mqtt":
        receive_mqtt(args.mqtt_port, args.topic)
    elif args.role == "load":
        generate_load(args.port, args.rate, args.seconds)
    else:
        result = run(args.seconds, args.rate, args.profile, sys.stderr, backlog=not args.no_backlog)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

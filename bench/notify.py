"""Notification benchmark: latency from update acknowledged to receiver, and memory with a large backlog.

`python -m bench.notify [--seconds 10] [--rate 200]` starts PostgreSQL (embedded, or
CLIMABOROUGH_BENCH_DATABASE_URL's server), Mosquitto (or amqtt), and the broker as a process;
creates 10 matching subscriptions (5 HTTP, 5 MQTT); sends `rate` updates/s; then queues 100,000
notifications for a dead receiver and reads the broker's resident memory while it keeps taking
writes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import psycopg
from psycopg import sql

from broker.embedded_postgres import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
ENTITY_TYPE = "AirQualityObserved"
SUBSCRIPTIONS_PER_KIND = 5
PENDING_TARGET = 100_000


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Arrivals:
    """Receive times by update sequence number, per channel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[tuple[int, float]]] = {"http": [], "mqtt": []}

    def add(self, channel: str, notification: dict[str, Any]) -> None:
        now = time.monotonic()
        with self.lock:
            for entity in notification.get("data", []):
                value = entity.get("seq", {})
                seq = value.get("value") if isinstance(value, dict) else value
                if isinstance(seq, int):
                    self.times[channel].append((seq, now))


def start_http_receiver(arrivals: Arrivals) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            arrivals.add("http", json.loads(raw))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def start_mqtt_broker(stack: ExitStack, folder: Path) -> int:
    port = free_port()
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        process = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        code = (
            "import asyncio\nfrom amqtt.broker import Broker\nasync def main():\n"
            f"    b = Broker({{'listeners': {{'default': {{'type': 'tcp', 'bind': '127.0.0.1:{port}'}}}},"
            "'auth': {'allow-anonymous': True}, 'topic-check': {'enabled': False}})\n"
            "    await b.start()\n    await asyncio.Event().wait()\nasyncio.run(main())\n"
        )
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.terminate)
    wait_for_port(port)
    return port


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def start_mqtt_listener(port: int, topic: str, arrivals: Arrivals) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscribed = threading.Event()
    client.on_message = lambda c, u, m: arrivals.add("mqtt", json.loads(m.payload)["body"])
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic + "/#", qos=0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("MQTT subscription not acknowledged")
    return client


def start_broker(stack: ExitStack, database_url: str, folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {**os.environ, "CLIMABOROUGH_DATABASE_URL": database_url, "CLIMABOROUGH_DATA_DIR": str(folder),
           "CLIMABOROUGH_NOTIFY_TIMEOUT_S": "1"}
    log = open(folder / "broker.log", "wb")  # kept beside the bench output when a run fails
    stack.callback(log.close)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "broker", "--host", "127.0.0.1", "--port", str(port),
         "--no-embedded-postgres", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    def stop() -> None:
        process.terminate()
        process.wait(20)

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((folder / "broker.log").read_text()[-3000:])
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def subscribe(client: httpx.AsyncClient, uri: str, entity_type: str = ENTITY_TYPE) -> None:
    response = await client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}], "watchedAttributes": ["seq"],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}, "format": "keyValues",
                         "attributes": ["seq"]}})
    response.raise_for_status()


async def paced_updates(client: httpx.AsyncClient, ids: list[str], rate: float, seconds: float,
                        acked: dict[int, float]) -> None:
    total = int(rate * seconds)
    start = time.monotonic()

    async def one(seq: int) -> None:
        response = await client.patch(f"/entities/{ids[seq % len(ids)]}/attrs",
                                      json={"seq": {"type": "Property", "value": seq}})
        acked[seq] = time.monotonic()
        response.raise_for_status()

    tasks = []
    for seq in range(total):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(seq)))
    await asyncio.gather(*tasks)


def latencies(acked: dict[int, float], arrived: list[tuple[int, float]]) -> list[float]:
    return [max(at - acked[seq], 0.0) * 1000 for seq, at in arrived if seq in acked]


async def run(database_url: str, folder: Path, stack: ExitStack, seconds: float, rate: float) -> dict[str, Any]:
    arrivals = Arrivals()
    server, http_port = start_http_receiver(arrivals)
    stack.callback(server.shutdown)
    mqtt_port = start_mqtt_broker(stack, folder)
    topic = f"bench/{uuid.uuid4().hex[:6]}"
    listener = start_mqtt_listener(mqtt_port, topic, arrivals)
    stack.callback(listener.loop_stop)
    url, process = start_broker(stack, database_url, folder)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url + "/ngsi-ld/v1", timeout=120, limits=limits) as client:
        ids = [f"urn:ngsi-ld:{ENTITY_TYPE}:bench:{i}" for i in range(20)]
        for entity_id in ids:
            (await client.post("/entities", json={"id": entity_id, "type": ENTITY_TYPE,
                                                  "seq": {"type": "Property", "value": -1}})).raise_for_status()
        for i in range(SUBSCRIPTIONS_PER_KIND):
            await subscribe(client, f"http://127.0.0.1:{http_port}/notify/{i}")
            await subscribe(client, f"mqtt://127.0.0.1:{mqtt_port}/{topic}/{i}")
        acked: dict[int, float] = {}
        await paced_updates(client, ids, rate, seconds, acked)
        expected = len(acked) * SUBSCRIPTIONS_PER_KIND
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (  # noqa: ASYNC110 - arrivals come from other threads
            len(arrivals.times["http"]) < expected or len(arrivals.times["mqtt"]) < expected
        ):
            await asyncio.sleep(0.1)
        http_ms = latencies(acked, arrivals.times["http"])
        mqtt_ms = latencies(acked, arrivals.times["mqtt"])

        # Backlog: 10 subscriptions to a receiver that is down, 10,000 updates -> 100,000 pending.
        dead = f"http://127.0.0.1:{free_port()}/dead"
        backlog_type = "BacklogProbe"
        for _ in range(10):
            await subscribe(client, dead, backlog_type)
        backlog_ids = [f"urn:ngsi-ld:{backlog_type}:{i}" for i in range(100)]
        batches = PENDING_TARGET // (10 * len(backlog_ids))
        for round_ in range(batches):
            body = [{"id": e, "type": backlog_type, "seq": {"type": "Property", "value": round_}} for e in backlog_ids]
            (await client.post("/entityOperations/upsert", json=body)).raise_for_status()
        write_ms = []
        for seq in range(200):
            began = time.monotonic()
            (await client.patch(f"/entities/{ids[0]}/attrs",
                                json={"seq": {"type": "Property", "value": 10_000_000 + seq}})).raise_for_status()
            write_ms.append((time.monotonic() - began) * 1000)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM subscription_outbox").fetchone()
        pending = int(row[0]) if row else 0
    return {
        "notify_http_p50_ms": round(percentile(http_ms, 0.5), 2),
        "notify_http_p99_ms": round(percentile(http_ms, 0.99), 2),
        "notify_mqtt_p50_ms": round(percentile(mqtt_ms, 0.5), 2),
        "notify_mqtt_p99_ms": round(percentile(mqtt_ms, 0.99), 2),
        "notify_http_received": len(http_ms),
        "notify_mqtt_received": len(mqtt_ms),
        "notify_expected_per_kind": expected,
        "updates": len(acked),
        "rate_per_s": rate,
        "subscriptions": 2 * SUBSCRIPTIONS_PER_KIND,
        "pending_notifications": pending,
        "pending_rss_mb": round(rss_mb(process.pid), 1),
        "pending_write_p50_ms": round(statistics.median(write_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="climaborough-bench-notify-"))
    folder.chmod(0o755)  # as root, the embedded server runs as nobody and must enter it
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, True)
        server_url = os.environ.get("CLIMABOROUGH_BENCH_DATABASE_URL")
        if server_url is None:
            postgres = stack.enter_context(EmbeddedPostgres(folder / "pg"))
            admin_url = postgres.url("postgres")
        else:
            admin_url = urlsplit(server_url)._replace(path="/postgres").geturl()
        name = f"bench_notify_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        database_url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        try:
            result = asyncio.run(run(database_url, folder, stack, args.seconds, args.rate))
        except Exception:
            log = folder / "broker.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-4000:])
            raise
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

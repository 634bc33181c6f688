"""What every benchmark needs: a broker on an embedded PostgreSQL, a cheap HTTP client, /proc readings, one JSON line.

- `running_broker()` starts a private PostgreSQL (broker/embedded_postgres.py) under a temporary
  folder and `python -m cli.main broker` as a subprocess, both on free 127.0.0.1 ports, and tears
  both down afterwards (also when the benchmark process dies: PR_SET_PDEATHSIG).
- `HttpConnection` is a keep-alive HTTP/1.1 connection over asyncio streams. It parses only what
  the broker sends (status line, headers, Content-Length or chunked bodies), so a load generator
  built on it spends a few microseconds per request instead of httpx's few hundred and is not
  the bottleneck on a 2-core machine.
- `rss_mb`, `peak_rss_mb`, `cpu_seconds`, `process_tree_cpu_seconds` read /proc.
- `percentile`, `machine_info`, `emit_result` (exactly one JSON line on stdout).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from broker.embedded_postgres import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
BROKER_START_TIMEOUT_S = 60.0
BENCH_DATABASE = "climaborough_bench"
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BrokerUnderTest:
    """A running broker subprocess and the PostgreSQL it writes to."""

    base_url: str
    host: str
    port: int
    pid: int
    database_url: str
    postgres_pid: int
    log_path: Path


def _die_with_parent() -> Any:
    """preexec_fn: the child gets SIGTERM when this process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    tie = threading.current_thread() is threading.main_thread()

    def setup() -> None:
        if tie:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)

    return setup


@contextmanager
def running_broker(*, extra_env: Mapping[str, str] | None = None,
                   postgres_settings: Mapping[str, str] | None = None) -> Iterator[BrokerUnderTest]:
    """An embedded PostgreSQL and the broker on free loopback ports; both stopped on exit."""
    # Under /tmp: as root the server runs as `nobody`, which must reach the data folder.
    data_dir = Path(tempfile.mkdtemp(prefix="climaborough-bench-"))
    os.chmod(data_dir, 0o755)
    try:
        with EmbeddedPostgres(data_dir, settings=dict(postgres_settings or {})) as postgres:
            database_url = postgres.ensure_database(BENCH_DATABASE)
            postgres_pid = postgres.pid
            assert postgres_pid is not None
            port = free_port()
            env = {
                **os.environ,
                **(extra_env or {}),
                "CLIMABOROUGH_DATABASE_URL": database_url,
                "CLIMABOROUGH_DATA_DIR": str(data_dir / "broker"),
                "PYTHONUNBUFFERED": "1",
            }
            log_path = data_dir / "broker.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "broker", "--host", "127.0.0.1", "--port", str(port),
                     "--no-embedded-postgres", "--log-level", "warning"],
                    cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent(),
                )  # fmt: skip
            base_url = f"http://127.0.0.1:{port}"
            try:
                wait_for_health(base_url, process, log_path)
                yield BrokerUnderTest(base_url, "127.0.0.1", port, process.pid, database_url, postgres_pid, log_path)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_for_health(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll `GET /health` until 200; fail with the broker's log if it exits or takes too long."""
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no /health from {base_url} in {BROKER_START_TIMEOUT_S}s:\n"
                               f"{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


class HttpError(RuntimeError):
    """The server closed the connection or sent something that is not an HTTP/1.1 response."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; `request()` returns (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def request(self, method: str, target: str, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            await self.open()
        assert self._writer is not None and self._reader is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._writer.write(head + body if body is not None else head)
        try:
            return await self._read_response(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            await self.close()
            raise HttpError(f"{method} {target}: connection lost ({error})") from None

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP response: {status_line!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        for line in header_lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return status, bytes(body)
                body += await reader.readexactly(size + 2)
                del body[-2:]
        if length is None:
            if status in (204, 304) or 100 <= status < 200:
                return status, b""
            raise HttpError("response without Content-Length on a keep-alive connection")
        return status, await reader.readexactly(length) if length else b""


def _proc_stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat_file:
        return stat_file.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, with_waited_children: bool = False) -> float:
    """User + system CPU time of a process (optionally plus its reaped children) from /proc."""
    fields = _proc_stat_fields(pid)
    # After the ")": state=0, ppid=1, ... utime=11, stime=12, cutime=13, cstime=14.
    ticks = int(fields[11]) + int(fields[12])
    if with_waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def process_tree_cpu_seconds(root_pid: int) -> float:
    """CPU time of `root_pid`, its reaped children and its living direct children (PostgreSQL backends)."""
    total = cpu_seconds(root_pid, with_waited_children=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _proc_stat_fields(int(entry.name))
        except (OSError, IndexError):
            continue
        if fields[1] == str(root_pid):
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status_file:
        for line in status_file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident set size of a process now, in MiB."""
    return round(_status_kib(pid, "VmRSS") / 1024, 1)


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size the process has had, in MiB."""
    return round(_status_kib(pid, "VmHWM") / 1024, 1)


def percentile(values: list[float], share: float) -> float:
    """The `share` (0..1) percentile with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def python_loop_ms() -> float:
    """Wall time of a fixed piece of pure Python (dict and string work), best of three, in ms.

    This host's speed flips between two levels (this loop: about 26 and 43-53 ms; the broker's CPU per
    request: 0.5-0.7 and 1.0-1.4 ms) within seconds to minutes: a bench line that carries this snapshot
    says which kind of moment it ended in. Compare runs by their CPU per request, which covers the
    whole phase.
    """
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        counts: dict[str, int] = {}
        for i in range(100_000):
            key = f"k{i % 512}"
            counts[key] = counts.get(key, 0) + i
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, Python version, load average (how busy the machine is) and speed now."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_mb = None
    try:
        memory_mb = round(_status_kib_meminfo() / 1024)
    except (OSError, KeyError, ValueError):
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_mb": memory_mb,
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_1m": round(os.getloadavg()[0], 2), "loadavg_15m": round(os.getloadavg()[2], 2),
            "python_loop_ms": python_loop_ms()}


def _status_kib_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise KeyError("MemTotal")


def emit_result(result: Mapping[str, Any]) -> None:
    """Print the benchmark's result as exactly one JSON line on stdout (the last line of output)."""
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """Progress for humans, on stderr so that stdout keeps the one JSON line."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()

"""Runs the notifier in its own process beside the API process, and relays the API's hints to it.

Delivery costs about as much CPU as the writes that cause it (rendering, sockets, the outbox
reads and acknowledgements); in the API's event loop it competed with the writes for one core
and notifications queued behind requests. In a child process it has its own interpreter and
core, and needs nothing from the API process but hints: the outbox and its LISTEN/NOTIFY
announcements in PostgreSQL carry every notification. The child ends with its parent (a
closed stdin, and PR_SET_PDEATHSIG on Linux), so a killed broker leaves no deliverer behind.

`start()` returns once the child listens on the outbox (it says so on a pipe): a broker that
answers `/health` delivers its first notification as soon as it commits, not after the child's
imports and connections (seconds on a busy machine, during which the sweep was the only way in).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from broker.settings import BrokerSettings
from broker.subscriptions.notifier.delivery import DeliverySettings

log = logging.getLogger(__name__)

SETTINGS_VARIABLE = "CLIMABOROUGH_NOTIFIER_BROKER_SETTINGS"
"""The child reads the broker's settings (JSON) from this environment variable."""
READY_FD_VARIABLE = "CLIMABOROUGH_NOTIFIER_READY_FD"
"""The child writes `READY` to this file descriptor once it listens on every database it watches."""
READY = b"ready\n"
READY_TIMEOUT_S = 30.0
"""After this long the broker starts anyway (the outbox keeps every notification for a late child)."""
RESTART_DELAY_S = 1.0
"""A child is started again at least this long after the previous start (a child that crashes at
start-up is not restarted in a tight loop); one that ran longer than this is started again at once."""
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Any:
    """preexec_fn: the child gets SIGTERM when the broker dies, even by SIGKILL (Linux)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


async def _ready(fd: int) -> bool:
    """Wait for the child's `READY` on the pipe `fd` (closed afterwards); False if the child died first."""
    loop = asyncio.get_running_loop()
    said: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not said.done():
            try:
                said.set_result(os.read(fd, len(READY)))
            except OSError:
                said.set_result(b"")

    loop.add_reader(fd, readable)
    try:
        return await said == READY
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class NotifierProcess:
    """The API process's handle on the notifier child: `start`, `stop`, `watch_soon`, `wake`."""

    def __init__(self, broker_settings: BrokerSettings, settings: DeliverySettings | None = None) -> None:
        self.broker_settings = broker_settings
        self.settings = settings or DeliverySettings()
        self._process: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0
        self._watched: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the child and wait (at most `READY_TIMEOUT_S`) until it listens on the outbox."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="notifier-supervisor")

    async def _spawn(self) -> None:
        ready_in = self._launch()
        ready = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_TIMEOUT_S):
                ready = await _ready(ready_in)
        if not ready:
            log.warning("notifier process not ready after %.0f s; the broker starts without waiting", READY_TIMEOUT_S)

    def _launch(self) -> int:
        """Start the child; returns the reading end of its readiness pipe."""
        self._launched_at = time.monotonic()
        ready_in, ready_out = os.pipe()
        env = {**os.environ, SETTINGS_VARIABLE: self.broker_settings.model_dump_json(),
               READY_FD_VARIABLE: str(ready_out)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "broker.subscriptions.notifier"], stdin=subprocess.PIPE, env=env,
                pass_fds=(ready_out,), preexec_fn=_die_with_parent(),  # only prctl, before exec
            )
        except BaseException:
            os.close(ready_in)
            raise
        finally:
            os.close(ready_out)  # the child holds the only writing end: a child that dies closes it
        for tenant in sorted(self._watched):
            self._tell(f"watch {tenant or '-'}")
        return ready_in

    async def _supervise(self) -> None:
        """A notifier that died (a crash, the OOM killer) is started again; the outbox lost nothing.

        Until the new child listens, notifications wait in the outbox (its first sweep sends them),
        so every second before the restart is a second of delivery lost: a child that had been
        running is started again at once, only one that dies at start-up waits `RESTART_DELAY_S`.
        """
        while not self._stopping:
            process = self._process
            if process is not None:
                code = await asyncio.to_thread(process.wait)
                if self._stopping:
                    return
                log.warning("notifier process exited code=%s; starting it again", code)
            crash_loop_pause = self._launched_at + RESTART_DELAY_S - time.monotonic()
            if crash_loop_pause > 0:
                await asyncio.sleep(crash_loop_pause)
            if not self._stopping:
                await self._spawn()

    def watch_soon(self, tenant: str | None) -> None:
        """Called by the sink after enqueuing: the child watches that tenant's database from now on."""
        key = tenant.lower() if tenant else ""
        if key in self._watched:
            return
        self._watched.add(key)
        self._tell(f"watch {key or '-'}")

    def wake(self, tenant: str | None, subscription_id: str) -> None:
        """The subscription was created, updated or resumed: the child reloads it and reads its lane."""
        self._tell(f"wake {tenant.lower() if tenant else '-'} {subscription_id}")

    def _tell(self, line: str) -> None:
        process = self._process
        stdin: IO[bytes] | None = process.stdin if process is not None else None
        if stdin is None:
            return
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the supervisor starts a new child, which sweeps every database it watches

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # the child stops when its stdin closes
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

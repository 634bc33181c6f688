"""`climaborough demo` and `up` end to end: every service started, the mission shown, nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.settings import fallback_data_dir, usable_data_dir

REPO = Path(__file__).resolve().parents[2]
NUL = b"\0"


def environment() -> dict[str, str]:
    # Embedded defaults: whatever database or MQTT server the caller's environment names is not ours.
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIMABOROUGH_")}
    return {**env, "COLUMNS": "200"}


def processes_of(data_dir: Path) -> list[str]:
    """Processes still running for this data folder (by CLIMABOROUGH_DATA_DIR or a path in their command)."""
    found = []
    marker = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in command or b"CLIMABOROUGH_DATA_DIR=" + marker + b"\0" in env:
            found.append(f"{entry.name}: {command.replace(NUL, b' ').decode(errors='replace')}")
    return found


def wait_until(check: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not (callable(check) and check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {within}s")
        time.sleep(0.2)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Reachable by `nobody`, which runs PostgreSQL and Mosquitto when the tests run as root.
    folder = Path(tempfile.mkdtemp(prefix="climaborough-demo-test-"))
    os.chmod(folder, 0o755)
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_demo_shows_the_whole_mission_and_leaves_nothing_running(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--free-ports", "--hours", str(24 * 45), "--epochs", "1",
         "--data-dir", str(data_dir)],
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=560, check=False,
    )  # fmt: skip
    output = result.stdout
    assert result.returncode == 0, output[-4000:] + result.stderr[-4000:]
    assert "AUTHENTICATION IS OFF" in output
    for service in ("mqtt", "broker", "iot", "kpi", "api"):
        assert re.search(rf"✓ {service}\s", output), f"{service} did not start"
    assert "3 official examples loaded" in output
    assert re.search(r"records read\s*│ 1080", output), "the ingest summary names every record"
    assert "aggrMethods=avg,max&aggrPeriodDuration=P1D" in output
    assert re.search(r"│ 2017-02-2\d │\s+\d+\.\d │", output), "daily pm25 averages of the last month"
    assert "urn:ngsi-ld:AirQualityObserved:beijing:demo-sensor-01 pm25=72.5" in output, "the device's newest measure"
    assert re.search(r"notification urn:ngsi-ld:Notification:\S+ at .*demo-sensor-01 pm25=", output)
    assert "eea-air-quality-index:Aotizhongxin:hourly" in output
    assert "eea-air-quality-index:demo-sensor-01:hourly" in output
    assert "trained and activated" in output
    assert "written to the broker" in output
    assert "POST /twin/what-if" in output and "next 24 h: mean pm25" in output
    assert "What the demo did and where to look" in output
    assert "Every service stopped" in output
    assert processes_of(data_dir) == []
    assert "database system is shut down" in (data_dir / "postgresql" / "postgres.log").read_text()


@pytest.mark.timeout(300)
def test_up_keeps_every_service_running_until_interrupted(data_dir: Path) -> None:
    log = data_dir.parent / "up.out"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--free-ports", "--data-dir", str(data_dir)],
            cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "climaborough is up" in log.read_text() or process.poll() is not None, 240, "up")
        text = log.read_text()
        assert process.poll() is None, text
        broker = re.search(r"NGSI-LD broker\s*│\s*(http://\S+)/ngsi-ld/v1/", text)
        api = re.search(r"Platform API\s*│\s*(http://\S+)/docs", text)
        iot = re.search(r"provisioning (http://\S+)/iot/devices", text)
        assert broker and api and iot, text
        assert httpx.get(f"{broker.group(1)}/health", timeout=10).status_code == 200
        assert httpx.get(f"{api.group(1)}/health", timeout=10).status_code == 200
        assert httpx.get(f"{iot.group(1)}/iot/about", timeout=10).status_code == 200
        time.sleep(2)  # still up a moment later: nothing stops on its own
        assert process.poll() is None, log.read_text()
        running = processes_of(data_dir)
        assert len(running) >= 6, running  # postgres, mqtt, broker (+ notifier), iot, kpi, twin, api
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=120)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "Every service stopped." in log.read_text()
    wait_until(lambda: processes_of(data_dir) == [], 10, "no process left for the data folder")


def test_a_data_folder_nobody_can_reach_falls_back_under_var_tmp(data_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the fallback is for root, whose PostgreSQL runs as nobody")
    tmp_path = data_dir.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    chosen, note = usable_data_dir(private / "clone" / ".data")
    assert chosen == fallback_data_dir(private / "clone" / ".data")
    assert str(chosen).startswith("/var/tmp/climaborough-")
    assert note is not None and "nobody" in note
    reachable = tmp_path / "open"
    reachable.mkdir(mode=0o755)
    assert usable_data_dir(reachable / ".data") == (reachable / ".data", None)

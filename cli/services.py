"""Starting and stopping the platform's services for `climaborough up` and `demo`, in one place.

`Platform` starts, in order: PostgreSQL (embedded unless `CLIMABOROUGH_DATABASE_URL`), an MQTT
server (Mosquitto if on PATH, else amqtt; none if `CLIMABOROUGH_MQTT_URL`), the broker, the IoT
agent, the KPI engine, the twin's forecast service and the platform API. Each runs as a child
process of ours on its FIWARE default port, or a free one when that is busy, logs to
`<data dir>/logs/<name>.log`, and is tied to our life (`PR_SET_PDEATHSIG`): `stop()` (also on
Ctrl-C) stops them in reverse order, and a killed parent leaves none behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import uvicorn
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from broker.app import create_app
from broker.embedded_postgres import EmbeddedPostgres
from broker.settings import BrokerSettings
from cli.settings import BROKER_PORT, DEFAULT_DATABASE, UNPRIVILEGED_USER, CliSettings, usable_data_dir
from smart_data_models.models import ENVIRONMENT_CONTEXT

log = logging.getLogger(__name__)

BROKER_START_TIMEOUT_S = 60.0
BROKER_KEEP_ALIVE_S = 30
"""Idle keep-alive connections stay open this long (uvicorn's 5 s made clients that keep theirs 5 s too
reuse connections the broker was closing)."""


def announce_auth(settings: CliSettings, console: Console) -> None:
    """Say loudly when the APIs are open to anyone who can reach them."""
    if settings.auth == "off":
        console.print(
            Panel(
                "[bold]CLIMABOROUGH_AUTH=off[/bold]: every API accepts requests without a token.\n"
                "Fine on a laptop bound to 127.0.0.1; set CLIMABOROUGH_AUTH=keycloak anywhere else.",
                title="[bold red]AUTHENTICATION IS OFF[/bold red]",
                border_style="red",
            )
        )


@contextmanager
def database(settings: CliSettings, *, embedded: bool, console: Console) -> Iterator[str]:
    """The database URL to use: `CLIMABOROUGH_DATABASE_URL`, or an embedded PostgreSQL we run."""
    if not embedded:
        if settings.database_url is None:
            raise SystemExit("--no-embedded-postgres needs CLIMABOROUGH_DATABASE_URL")
        yield settings.database_url
        return
    data_dir = Path(settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    with console.status(f"Starting PostgreSQL under {data_dir} ..."):
        postgres = EmbeddedPostgres(data_dir).start()
    try:
        console.print(f"PostgreSQL: [cyan]{postgres.url(DEFAULT_DATABASE)}[/cyan] (log: {postgres.log_path})")
        yield postgres.url(DEFAULT_DATABASE)
    finally:
        postgres.stop()


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as uvicorn does, with SO_REUSEADDR, so
    that connections of a just-stopped server in TIME_WAIT do not count as busy)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def broker_server(database_url: str, host: str, port: int) -> uvicorn.Server:
    """The broker as a uvicorn server over the given database (not started)."""
    settings = BrokerSettings(database_url=database_url, host=host, port=port)
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, loop="uvloop", http="httptools", log_level="warning",
        timeout_keep_alive=BROKER_KEEP_ALIVE_S,
    )
    return uvicorn.Server(config)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_broker(database_url: str, host: str, port: int) -> None:
    """Serve the broker in the foreground until Ctrl-C or SIGTERM.

    uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM into
    SystemExit lets the callers' `finally` blocks stop the embedded PostgreSQL cleanly.
    """
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    broker_server(database_url, host, port).run()


@contextmanager
def broker_in_background(database_url: str, host: str, port: int) -> Iterator[str]:
    """Run the broker in a thread of this process; yields its base URL once /health answers."""
    server = broker_server(database_url, host, port)
    thread = threading.Thread(target=server.run, name="broker", daemon=True)
    thread.start()
    base_url = f"http://{host}:{port}"
    try:
        wait_for_health(base_url, lambda: thread.is_alive())
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for_health(base_url: str, still_starting: object = None) -> None:
    """Poll `GET /health` until it answers 200; fail after BROKER_START_TIMEOUT_S."""
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while True:
        if callable(still_starting) and not still_starting():
            raise RuntimeError(f"the broker at {base_url} stopped while starting (see the log above)")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker at {base_url} did not answer /health within {BROKER_START_TIMEOUT_S}s")
        time.sleep(0.1)


# -- the whole platform as child processes ------------------------------------------------------------

SERVICE_START_TIMEOUT_S = 120.0
SERVICE_STOP_TIMEOUT_S = 30.0
MQTT_PORT = 1883
IOT_NORTH_PORT = 4041
IOT_SOUTH_PORT = 7896
API_PORT = 8000
EVERY_SERVICE = ("mqtt", "broker", "iot", "kpi", "twin", "api")
"""What `climaborough up` runs besides PostgreSQL, in start order."""

AMQTT_SCRIPT = """
import asyncio, sys
from amqtt.broker import Broker
async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:" + sys.argv[1]}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""
_PR_SET_PDEATHSIG = 1


class ServiceFailed(RuntimeError):
    """A service did not start, or stopped on its own; the message points at its log."""


def choose_port(host: str, preferred: int) -> int:
    """`preferred` when it is free, else any free port (0: any free port)."""
    if preferred and port_is_free(host, preferred):
        return preferred
    return free_port(host)


def _tied_to_us() -> Callable[[], None]:
    """What a child does between fork and exec: its own process group (Ctrl-C in the terminal
    reaches only us, and we stop the children in order) and SIGTERM when we die."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def setup() -> None:
        os.setpgrp()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


@dataclass
class ChildService:
    """One running child process: its name, the URL to show, its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("service=%s did not stop within %ss: killed", self.name, SERVICE_STOP_TIMEOUT_S)
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class PlatformUrls:
    """Where each part of the running platform answers."""

    database: str = ""
    mqtt: str = ""
    broker: str = ""
    iot_north: str = ""
    iot_south: str = ""
    api: str = ""


class Platform:
    """The platform's services as child processes of ours; a context manager that stops them all.

    With `default_ports` each service takes its FIWARE default port (a free one where that is
    busy); without, every port is a free one (tests). `start(names)` once; `start_service` or
    `restart_service` later to add or renew one.
    """

    def __init__(self, settings: CliSettings, console: Console, *, host: str = "127.0.0.1",
                 default_ports: bool = True, broker_port: int = BROKER_PORT) -> None:  # fmt: skip
        self.settings = settings
        self.console = console
        self.host = host
        self.default_ports = default_ports
        self.broker_port = broker_port
        self.data_dir = Path(settings.data_dir).absolute()
        self.log_dir = self.data_dir / "logs"
        self.urls = PlatformUrls()
        self.services: list[ChildService] = []
        self._stack = ExitStack()

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, names: tuple[str, ...] = EVERY_SERVICE) -> Platform:
        """Start PostgreSQL and then each named service, waiting until each one answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.urls.database = self._stack.enter_context(
            database(self.settings, embedded=self.settings.database_url is None, console=self.console)
        )
        for name in names:
            self.start_service(name)
        return self

    def stop(self) -> None:
        """Stop every service in reverse start order, then PostgreSQL."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        self._stack.close()

    def check(self) -> None:
        """Raise ServiceFailed if a service has stopped on its own."""
        for service in self.services:
            if not service.alive():
                raise ServiceFailed(
                    f"{service.name} stopped (exit {service.process.returncode}); log {service.log_path}:\n"
                    f"{service.log_tail()}"
                )

    def pids(self) -> dict[str, int]:
        return {service.name: service.process.pid for service in self.services}

    def start_service(self, name: str) -> ChildService | None:
        starters: dict[str, Callable[[], ChildService | None]] = {
            "mqtt": self._start_mqtt, "broker": self._start_broker, "iot": self._start_iot,
            "kpi": self._start_kpi, "twin": self._start_twin, "api": self._start_api,
        }  # fmt: skip
        if name not in starters:
            raise ValueError(f"unknown service {name!r} (known: {', '.join(starters)})")
        with self.console.status(f"Starting {name} ..."):
            service = starters[name]()
        if service is not None:
            self.console.print(f"  [green]✓[/green] {name:<7} {service.url}  (pid {service.process.pid}, "
                               f"log {service.log_path})")  # fmt: skip
        return service

    def restart_service(self, name: str) -> ChildService | None:
        """Stop a service (if running) and start it again, e.g. the twin after a new model."""
        for service in list(self.services):
            if service.name == name:
                service.stop()
                self.services.remove(service)
        return self.start_service(name)

    # -- the services ------------------------------------------------------------------------------

    def _port(self, preferred: int) -> int:
        return choose_port(self.host, preferred if self.default_ports else 0)

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLIMABOROUGH_")}
        env.update({
            "CLIMABOROUGH_DATA_DIR": str(self.data_dir),
            "CLIMABOROUGH_AUTH": self.settings.auth,
            "CLIMABOROUGH_DATABASE_URL": self.urls.database,
            "COLUMNS": "160",
        })  # fmt: skip
        for key, value in (("CLIMABOROUGH_BROKER_URL", self.urls.broker), ("CLIMABOROUGH_MQTT_URL", self.urls.mqtt)):
            if value:
                env[key] = value
        return env

    def _spawn(self, name: str, argv: list[str], url: str, ready: Callable[[ChildService], bool],
               env: dict[str, str] | None = None) -> ChildService:  # fmt: skip
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**self._environment(), **(env or {})},
                preexec_fn=_tied_to_us(),  # only setpgrp and prctl, before exec
            )  # fmt: skip
        service = ChildService(name, url, process, log_path)
        self.services.append(service)
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while not ready(service):
            if not service.alive():
                raise ServiceFailed(f"{name} exited with {process.returncode} while starting; log {log_path}:\n"
                                    f"{service.log_tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{name} was not ready within {SERVICE_START_TIMEOUT_S:.0f}s; log {log_path}:\n"
                                    f"{service.log_tail()}")  # fmt: skip
            time.sleep(0.1)
        return service

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli.main", *args]

    def _start_mqtt(self) -> ChildService | None:
        if self.settings.mqtt_url:
            self.urls.mqtt = self.settings.mqtt_url
            self.console.print(f"  [green]✓[/green] mqtt    {self.urls.mqtt}  (CLIMABOROUGH_MQTT_URL)")
            return None
        port = self._port(MQTT_PORT)
        self.urls.mqtt = f"mqtt://{self.host}:{port}"
        mosquitto = shutil.which("mosquitto")
        if mosquitto:
            folder = self.data_dir / "mqtt"
            folder.mkdir(exist_ok=True)
            lines = [f"listener {port} {self.host}", "allow_anonymous true", "max_queued_messages 0",
                     "persistence true", f"persistence_location {folder}/"]  # fmt: skip
            if os.geteuid() == 0:
                # Mosquitto drops root for this user; it must own its persistence folder.
                user = pwd.getpwnam(UNPRIVILEGED_USER)
                os.chown(folder, user.pw_uid, user.pw_gid)
                lines.append(f"user {UNPRIVILEGED_USER}")
            config = folder / "mosquitto.conf"
            config.write_text("\n".join(lines) + "\n", encoding="utf-8")
            argv = [mosquitto, "-c", str(config)]
        else:
            argv = [sys.executable, "-c", AMQTT_SCRIPT, str(port)]
        service = self._spawn("mqtt", argv, self.urls.mqtt, lambda _: _listening(self.host, port))
        return service

    def _start_broker(self) -> ChildService:
        port = self._port(self.broker_port)
        self.urls.broker = f"http://{self.host}:{port}"
        argv = self._cli("broker", "--no-embedded-postgres", "--host", self.host, "--port", str(port))
        return self._spawn("broker", argv, f"{self.urls.broker}/ngsi-ld/v1/",
                           lambda _: _answers(f"{self.urls.broker}/health"))  # fmt: skip

    def _start_iot(self) -> ChildService:
        north, south = self._port(IOT_NORTH_PORT), self._port(IOT_SOUTH_PORT)
        self.urls.iot_north = f"http://{self.host}:{north}"
        self.urls.iot_south = f"http://{self.host}:{south}"
        argv = self._cli("agent", "iot", "--host", self.host, "--north-port", str(north), "--south-port", str(south),
                         "--log-level", "warning")  # fmt: skip
        # Devices write with the Environment model's @context, the one the file mappings, the KPI
        # engine and the twin use: the same `pm25` term, the same expanded attribute.
        return self._spawn("iot", argv, f"{self.urls.iot_north}/iot/ (measures {self.urls.iot_south}/iot/d)",
                           lambda _: _answers(f"{self.urls.iot_north}/iot/about"),
                           env={"CLIMABOROUGH_IOT_CONTEXT": ENVIRONMENT_CONTEXT})  # fmt: skip

    def _start_kpi(self) -> ChildService:
        return self._spawn("kpi", self._cli("kpi", "run"), f"KeyPerformanceIndicator entities on {self.urls.broker}",
                           lambda service: "KPI engine:" in service.log_tail(50))  # fmt: skip

    def _start_twin(self) -> ChildService:
        return self._spawn("twin", self._cli("twin", "forecast", "--follow"), "forecasts on new observations",
                           lambda service: "twin forecast service:" in service.log_tail(50))  # fmt: skip

    def _start_api(self) -> ChildService:
        port = self._port(API_PORT)
        self.urls.api = f"http://{self.host}:{port}"
        argv = self._cli("api", "--host", self.host, "--port", str(port))
        return self._spawn("api", argv, f"{self.urls.api}/docs", lambda _: _answers(f"{self.urls.api}/health"))


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops us like Ctrl-C does: through the `finally` blocks that stop every service."""
    signal.signal(signal.SIGTERM, _interrupt)


def serve_until_interrupted(platform: Platform, console: Console) -> None:
    """Keep the platform running until Ctrl-C or SIGTERM; ServiceFailed if a service stops on its own."""
    console.print("Everything keeps running; Ctrl-C stops it all.")
    while True:
        platform.check()
        time.sleep(1.0)


def platform_table(platform: Platform) -> Table:
    urls = platform.urls
    table = Table(title="climaborough is up", title_justify="left", show_header=False)
    rows = [
        ("NGSI-LD broker", f"{urls.broker}/ngsi-ld/v1/  (health {urls.broker}/health)"),
        ("MQTT", urls.mqtt),
        ("IoT agent", f"provisioning {urls.iot_north}/iot/devices, measures {urls.iot_south}/iot/d"),
        ("Platform API", f"{urls.api}/docs"),
        ("PostgreSQL", urls.database),
        ("Data folder", f"{platform.data_dir}  (logs in {platform.log_dir})"),
    ]
    for name, where in rows:
        table.add_row(name, where)
    return table


def run_platform(settings: CliSettings, *, console: Console, broker_port: int = BROKER_PORT,
                 default_ports: bool = True) -> None:  # fmt: skip
    """`climaborough up`: every service, until Ctrl-C; all of them stopped on the way out."""
    data_dir, note = usable_data_dir(Path(settings.data_dir))
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    settings = settings.model_copy(update={"data_dir": data_dir})
    announce_auth(settings, console)
    stop_on_sigterm()
    try:
        with Platform(settings, console, broker_port=broker_port, default_ports=default_ports) as platform:
            platform.start()
            console.print(platform_table(platform))
            console.print(f"pids: {platform.pids()}")
            serve_until_interrupted(platform, console)
    except KeyboardInterrupt:
        console.print("Stopping.")
    except ServiceFailed as error:
        console.print(f"[red]A service failed:[/red] {error}")
        raise SystemExit(1) from None
    console.print("Every service stopped.")

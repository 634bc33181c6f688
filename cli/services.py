"""Starting the platform's services for the CLI: the database (embedded or given) and the broker."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import httpx
import uvicorn
from rich.console import Console
from rich.panel import Panel

from broker.app import create_app
from broker.embedded_postgres import EmbeddedPostgres
from broker.settings import BrokerSettings
from cli.settings import DEFAULT_DATABASE, CliSettings

log = logging.getLogger(__name__)

BROKER_START_TIMEOUT_S = 60.0


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
    with socket.socket() as probe:
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
        create_app(settings), host=host, port=port, loop="uvloop", http="httptools", log_level="warning"
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

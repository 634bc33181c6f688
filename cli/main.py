"""The `climaborough` command: starts and wires the platform's services."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agents.commands import agent_app, quarantine_app
from broker_config.config_apply import config_app
from cli.settings import BROKER_PORT, CliSettings
from kpi.commands import kpi_app
from twin.commands import twin_app

app = typer.Typer(
    name="climaborough",
    help="FIWARE-native context platform for climate-neutral cities.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
app.add_typer(kpi_app, name="kpi")
app.add_typer(agent_app, name="agent")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(config_app, name="config")
app.add_typer(twin_app, name="twin")

HostOption = Annotated[str, typer.Option(help="Address the broker listens on.")]
PortOption = Annotated[int, typer.Option(help="Port of the broker's NGSI-LD API (FIWARE default 1026).")]
EmbeddedOption = Annotated[
    bool | None,
    typer.Option(
        "--embedded-postgres/--no-embedded-postgres",
        help="Run our own PostgreSQL under CLIMABOROUGH_DATA_DIR. Default: on when CLIMABOROUGH_DATABASE_URL is unset.",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Where embedded services keep their data (CLIMABOROUGH_DATA_DIR, default ./.data)."),
]
LogLevelOption = Annotated[str, typer.Option(help="Python log level: debug, info, warning, error.")]


def load_settings(data_dir: Path | None) -> CliSettings:
    settings = CliSettings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)


def serve_broker(settings: CliSettings, *, embedded: bool | None, host: str, port: int) -> None:
    # Imported here so that `climaborough --help` stays fast and works without a database.
    from cli.services import announce_auth, database, port_is_free, run_broker

    use_embedded = settings.database_url is None if embedded is None else embedded
    announce_auth(settings, console)
    if not port_is_free(host, port):
        raise typer.BadParameter(f"{host}:{port} is already in use", param_hint="--port")
    with database(settings, embedded=use_embedded, console=console) as database_url:
        console.print(f"NGSI-LD broker: [bold cyan]http://{host}:{port}/ngsi-ld/v1/[/bold cyan]  (Ctrl-C stops)")
        run_broker(database_url, host, port)


@app.command()
def broker(
    host: HostOption = "127.0.0.1",
    port: PortOption = BROKER_PORT,
    embedded_postgres: EmbeddedOption = None,
    data_dir: DataDirOption = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """Run the NGSI-LD broker (with history) on PostgreSQL."""
    configure_logging(log_level)
    serve_broker(load_settings(data_dir), embedded=embedded_postgres, host=host, port=port)


@app.command()
def up(
    port: PortOption = BROKER_PORT,
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Every service on a free port instead of the FIWARE defaults.")
    ] = False,
    data_dir: DataDirOption = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """Run the whole platform on embedded defaults until Ctrl-C: PostgreSQL, MQTT, broker, IoT agent, KPI engine,
    twin forecasts, platform API (each on its FIWARE default port, or a free one when that is busy)."""
    from cli.services import run_platform

    configure_logging(log_level)
    run_platform(load_settings(data_dir), console=console, broker_port=port, default_ports=not free_ports)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Broker port; a free one is used if it is busy.")] = BROKER_PORT,
    hours: Annotated[int, typer.Option(min=24 * 14, help="How many hours of Aotizhongxin to ingest (a year).")] = 8760,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the demo's small twin.")] = 3,
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Every service on a free port instead of the FIWARE defaults.")
    ] = False,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Keep everything running after the demo (Ctrl-C stops).")
    ] = False,
    data_dir: DataDirOption = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """The whole mission end to end: services, Smart Data Models, a year of real data, queries, a subscription,
    a simulated IoT device, KPIs, a quickly trained twin and a what-if answer."""
    from cli.demo import DemoOptions, run_demo

    configure_logging(log_level)
    options = DemoOptions(hours=hours, epochs=epochs, keep_running=keep_running, default_ports=not free_ports,
                          broker_port=port)  # fmt: skip
    run_demo(load_settings(data_dir), console=console, options=options)


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The data file (csv, json, xml, txt).")],
    mapping: Annotated[str, typer.Option(help="Mapping file (YAML) or a shipped mapping's name (beijing_multisite).")],
    tenant: Annotated[str | None, typer.Option(help="NGSILD-Tenant to write to (default tenant if unset).")] = None,
    broker_url: Annotated[str | None, typer.Option(help="Broker root URL (CLIMABOROUGH_BROKER_URL).")] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Records per chunk (one checkpoint per chunk).")] = 5000,
    restart: Annotated[bool, typer.Option("--restart", help="Forget the checkpoint and send the file again.")] = False,
    no_temporal: Annotated[
        bool, typer.Option("--no-temporal", help="Write history as upserts (brokers without temporal append).")
    ] = False,
    data_dir: DataDirOption = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """Stream a file through its mapping into the broker: current state and history, resumable, no duplicates."""
    from agents.files.command import run_ingest
    from agents.files.ingest import IngestInterrupted
    from agents.files.settings import FilesSettings
    from ngsi.errors import NgsiError

    configure_logging(log_level)
    settings = FilesSettings()
    updates = {key: value for key, value in (("broker_url", broker_url), ("data_dir", data_dir)) if value is not None}
    settings = settings.model_copy(update=updates)
    try:
        run_ingest(file, mapping, settings, tenant=tenant, console=console, chunk_rows=chunk_rows, restart=restart,
                   temporal=False if no_temporal else None)  # fmt: skip
    except IngestInterrupted as error:
        console.print(f"[red]Stopped:[/red] {error}. Run the same command again to resume.")
        raise typer.Exit(3) from error
    except KeyboardInterrupt:
        console.print("[yellow]Stopped.[/yellow] The checkpoint keeps the progress: run the same command to resume.")
        raise typer.Exit(130) from None
    except NgsiError as error:
        console.print(f"[red]{error.title}:[/red] {error.detail}")
        raise typer.Exit(2) from error


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address the platform API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the platform API.")] = 8000,
    data_dir: DataDirOption = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """Run the platform API (twin what-if and forecasts, KPIs; OpenAPI docs at /docs)."""
    import uvicorn

    from api.app import create_app
    from api.settings import ApiSettings

    configure_logging(log_level)
    settings = ApiSettings() if data_dir is None else ApiSettings(data_dir=data_dir)
    console.print(f"platform API: [bold cyan]http://{host}:{port}/docs[/bold cyan]  (Ctrl-C stops)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


if __name__ == "__main__":
    app()

"""`climaborough agent …` and `climaborough quarantine list|show|replay` (registered by cli/main.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agents.quarantine import QUARANTINE_FILE, Quarantine, ReplayHandler

console = Console()
agent_app = typer.Typer(help="Run the platform's agents.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Records agents could not map or the broker refused: list, show, replay.",
                             no_args_is_help=True)  # fmt: skip

DataDirOption = Annotated[
    Path | None, typer.Option(help="Data folder (CLIMABOROUGH_DATA_DIR, default ./.data) holding quarantine.sqlite.")
]


@agent_app.command("iot")
def agent_iot(
    broker_url: Annotated[str | None, typer.Option(help="NGSI-LD broker (CLIMABOROUGH_BROKER_URL).")] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="MQTT server, '' for none (CLIMABOROUGH_MQTT_URL).")] = None,
    north_port: Annotated[int | None, typer.Option(help="Provisioning API port (default 4041).")] = None,
    south_port: Annotated[int | None, typer.Option(help="HTTP measures port (default 7896).")] = None,
    host: Annotated[str | None, typer.Option(help="Address both APIs listen on.")] = None,
    instance: Annotated[str | None, typer.Option(help="Name of this agent process (own outbox).")] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
) -> None:
    """FIWARE-compatible IoT agent: provisioning on :4041, UltraLight/JSON over MQTT and HTTP (:7896).

    Provisioning is guarded by `CLIMABOROUGH_AUTH` (docs/security.md): `fiware-service` is the
    tenant, every role of the city reads, only `city-admin` provisions.
    """
    from fastapi import Depends

    from agents.iot.service import run_iot_agent
    from agents.iot.settings import IotAgentSettings
    from api.auth import Access, AuthSettings, authenticator_from_settings, require_tenant_access

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    overrides = {
        "broker_url": broker_url, "mqtt_url": mqtt_url, "iot_north_port": north_port, "iot_south_port": south_port,
        "iot_host": host, "iot_instance": instance, "data_dir": data_dir,
    }  # fmt: skip
    settings = IotAgentSettings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    auth_settings = AuthSettings()
    authenticator = authenticator_from_settings(auth_settings, service="iot-agent")
    access = require_tenant_access(authenticator, tenant_header="fiware-service", write_access=Access.ADMINISTER)
    if auth_settings.auth == "off":
        console.print("[bold red]AUTHENTICATION IS OFF[/]: anyone who reaches the provisioning API may provision "
                      "devices (set CLIMABOROUGH_AUTH=keycloak anywhere but a laptop bound to 127.0.0.1)")  # fmt: skip
    console.print(
        f"IoT agent: provisioning [bold cyan]http://{settings.iot_host}:{settings.iot_north_port}/iot/[/], "
        f"measures http://{settings.iot_host}:{settings.iot_south_port}/iot/d, MQTT {settings.mqtt_url or 'off'}, "
        f"broker {settings.broker_url}  (Ctrl-C stops)"
    )

    async def serve() -> None:
        try:
            await run_iot_agent(settings, north_access=[Depends(access)])
        finally:
            await authenticator.aclose()

    asyncio.run(serve())


@agent_app.command("oup")
def agent_oup(
    tenant: Annotated[str | None, typer.Option(help="Broker tenant the records go to (default: none).")] = None,
    mapping: Annotated[str, typer.Option(help="Mapping file or shipped mapping name for the OUP records.")] = "oup",
    oup_url: Annotated[str | None, typer.Option(help="OUP history API, HTTPS (CLIMABOROUGH_OUP_URL).")] = None,
    oup_ws_url: Annotated[str | None, typer.Option(help="OUP live stream, WSS (CLIMABOROUGH_OUP_WS_URL).")] = None,
    oup_ca_file: Annotated[
        Path | None, typer.Option(help="Trust only this CA for the OUP (CLIMABOROUGH_OUP_CA_FILE; default system CAs).")
    ] = None,
    broker_url: Annotated[str | None, typer.Option(help="NGSI-LD broker (CLIMABOROUGH_BROKER_URL).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (CLIMABOROUGH_DATA_DIR): oup/ checkpoint, outbox, quarantine.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "info",
) -> None:
    """Open Urban Platform connector: history over HTTPS (resumable), then the live stream over WSS, into the broker.

    It listens on no port, so `CLIMABOROUGH_AUTH` has nothing to guard here; it writes straight
    to `--broker-url`, which must therefore be the broker on the private network, not the gateway.
    Records it cannot map go to the quarantine (`climaborough quarantine list --agent oup`).
    """
    import signal

    from agents.files.command import resolve_mapping
    from agents.files.mapping import MappingError
    from agents.oup import OupConnector, OupSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    overrides = {"broker_url": broker_url, "oup_url": oup_url, "oup_ws_url": oup_ws_url, "oup_ca_file": oup_ca_file,
                 "data_dir": data_dir}  # fmt: skip
    settings = OupSettings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        chosen = resolve_mapping(mapping)
    except MappingError as error:
        raise typer.BadParameter(error.detail, param_hint="--mapping") from error
    connector = OupConnector(settings, chosen, tenant=tenant)
    console.print("[bold]OUP connector[/]: listens on no port (CLIMABOROUGH_AUTH does not apply); it writes straight "
                  f"to the broker {settings.broker_url}, keep that one off the public network")  # fmt: skip
    trust = settings.oup_ca_file or "the system CAs"
    console.print(
        f"OUP connector: history [bold cyan]{settings.oup_url}[/], live {settings.oup_ws_url} (trusting {trust}) "
        f"→ broker {settings.broker_url}, tenant {tenant or '(default)'}, mapping {connector.mapping.name}  "
        "(Ctrl-C stops)"
    )

    async def follow() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await connector.run(stop)
        finally:
            await connector.aclose()
        stats = connector.stats
        console.print(f"OUP connector stopped: {stats.history_records} history records in {stats.history_pages} "
                      f"pages, {stats.live_records} live, {stats.quarantined} quarantined")  # fmt: skip

    asyncio.run(follow())


def _quarantine(data_dir: Path | None) -> Quarantine:
    from agents.iot.settings import IotAgentSettings

    folder = data_dir if data_dir is not None else IotAgentSettings().data_dir
    return Quarantine(folder / QUARANTINE_FILE)


@quarantine_app.command("list")
def quarantine_list(
    agent: Annotated[str | None, typer.Option(help="Only records of this agent (iot, files, oup).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """List quarantined records, newest first."""
    quarantine = _quarantine(data_dir)
    records = quarantine.list(agent=agent, limit=limit, offset=offset)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.as_dict(), ensure_ascii=False))
        return
    table = Table(title=f"Quarantine ({quarantine.count(agent=agent)} records)")
    for column in ("id", "time", "agent", "source", "reason", "attempts"):
        table.add_column(column)
    for record in records:
        table.add_row(str(record.id), record.as_dict()["quarantinedAt"], record.agent, record.source,
                      record.reason[:80], str(record.attempts))  # fmt: skip
    console.print(table)


@quarantine_app.command("show")
def quarantine_show(record_id: int, data_dir: DataDirOption = None) -> None:
    """Show one record with its original payload (JSON)."""
    record = _quarantine(data_dir).get(record_id)
    if record is None:
        raise typer.BadParameter(f"no quarantined record {record_id}", param_hint="RECORD_ID")
    typer.echo(json.dumps(record.as_dict(), ensure_ascii=False, indent=2))


def replay_handler(agent: str, data_dir: Path | None) -> ReplayHandler:
    """The handler that re-ingests records of one agent (iot, files, oup)."""
    if agent == "iot":
        from agents.iot.replay import iot_replay_handler
        from agents.iot.settings import IotAgentSettings

        settings = IotAgentSettings()
        if data_dir is not None:
            settings = settings.model_copy(update={"data_dir": data_dir})
        return iot_replay_handler(settings)
    if agent == "files":
        from agents.files.replay import files_replay_handler
        from agents.files.settings import FilesSettings

        files_settings = FilesSettings()
        if data_dir is not None:
            files_settings = files_settings.model_copy(update={"data_dir": data_dir})
        return files_replay_handler(files_settings)
    if agent == "oup":
        from agents.oup.replay import oup_replay_handler
        from agents.oup.settings import OupSettings

        oup_settings = OupSettings()
        if data_dir is not None:
            oup_settings = oup_settings.model_copy(update={"data_dir": data_dir})
        return oup_replay_handler(oup_settings)
    raise typer.BadParameter(f"records of agent {agent!r} cannot be replayed from the command line")


@quarantine_app.command("replay")
def quarantine_replay(
    record_ids: Annotated[list[int] | None, typer.Argument(help="Record ids; none: every record (of --agent).")] = None,
    agent: Annotated[str | None, typer.Option(help="Only records of this agent.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Map and send records again; those that go through leave the quarantine, the others keep their new reason."""
    quarantine = _quarantine(data_dir)
    records = (
        [r for r in (quarantine.get(i) for i in record_ids) if r is not None]
        if record_ids
        else quarantine.list(agent=agent, limit=1_000_000)
    )
    by_agent: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: r.id):
        by_agent.setdefault(record.agent, []).append(record.id)

    async def replay() -> tuple[int, dict[int, str]]:
        replayed, failed = 0, {}
        for name, ids in by_agent.items():
            handler = replay_handler(name, data_dir)
            outcome = await quarantine.replay(ids, handler)
            replayed += len(outcome.replayed)
            failed.update(outcome.failed)
            closing = getattr(handler, "aclose", None)
            if closing is not None:
                await closing()
        return replayed, failed

    replayed, failed = asyncio.run(replay())
    console.print(f"replayed {replayed}, still failing {len(failed)}")
    for record_id, reason in failed.items():
        console.print(f"  {record_id}: {reason}")
    if failed:
        raise typer.Exit(1)

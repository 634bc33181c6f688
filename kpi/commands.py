"""`climaborough kpi …`: run the engine (live or backfilling a period), evaluate one calculator, list definitions."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from kpi.backfill import BackfillReport
    from kpi.definitions import DefinitionSet
    from kpi.settings import KpiSettings

kpi_app = typer.Typer(help="KPI engine: KeyPerformanceIndicator entities computed from the broker's data.",
                      no_args_is_help=True)  # fmt: skip
console = Console(stderr=True)

DefinitionsOption = Annotated[
    list[Path] | None,
    typer.Option("--definitions", help="Definition files or folders (default: the shipped broker_config/kpis)."),
]


def _moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or date-time", param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _definitions(settings: KpiSettings, paths: list[Path] | None, only: list[str] | None) -> DefinitionSet:
    from kpi.definitions import InvalidDefinition, load_definitions

    try:
        definitions = load_definitions(paths or settings.kpi_definitions)
        return definitions.select(only) if only else definitions
    except InvalidDefinition as error:
        console.print(f"[red]invalid KPI definition[/red] {error}")
        raise typer.Exit(2) from None
    except KeyError as error:
        raise typer.BadParameter(str(error), param_hint="--kpi") from None


@kpi_app.command("run")
def run(
    since: Annotated[
        str | None,
        typer.Option(help="Backfill from this date/date-time (ISO 8601) instead of running live (source history from"
                          " CLIMABOROUGH_KPI_DATABASE_URL's TRoE tables when set, else the temporal API)."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="End of the backfill (exclusive; default: now).")] = None,
    kpi: Annotated[list[str] | None, typer.Option(help="Only these KPI ids (repeatable).")] = None,
    definitions: DefinitionsOption = None,
    notify: Annotated[str | None, typer.Option(help="mqtt (default) or http notifications.")] = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "warning",
) -> None:
    """Keep KPI entities up to date as data changes; with --since/--until, backfill that period."""
    from kpi.settings import KpiSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = KpiSettings()
    if notify is not None:
        if notify not in ("mqtt", "http"):
            raise typer.BadParameter("must be mqtt or http", param_hint="--notify")
        settings = settings.model_copy(update={"kpi_notify": notify})
    chosen = _definitions(settings, definitions, kpi)
    if since is None:
        if until is not None:
            raise typer.BadParameter("--until needs --since", param_hint="--until")
        asyncio.run(_run_live(settings, chosen))
        return
    start = _moment(since, "--since")
    end = _moment(until, "--until") if until else datetime.now(UTC)
    if end <= start:
        raise typer.BadParameter("must be after --since", param_hint="--until")
    report = asyncio.run(_run_backfill(settings, chosen, start, end))
    console.print(
        f"backfilled {len(chosen)} KPIs for {report.sources} source entities: {report.windows} windows, "
        f"{report.entities_written} entities written, {report.history_instances} history values added"
        + (f" ({report.replaced} replacing stored values that differed)" if report.replaced else "")
    )


async def _run_backfill(
    settings: KpiSettings, definitions: DefinitionSet, since: datetime, until: datetime
) -> BackfillReport:
    from kpi.backfill import backfill
    from kpi.engine import KpiEngine

    engine = KpiEngine(settings, definitions)
    columns = (TextColumn("[bold]KPIs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("backfill", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await backfill(engine, since, until, progress=advance)
    finally:
        await engine.stop()


async def _run_live(settings: KpiSettings, definitions: DefinitionSet) -> None:
    from kpi.engine import KpiEngine, tune_garbage_collector

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with KpiEngine(settings, definitions):
        tune_garbage_collector()
        where = f"{settings.broker_url} ({settings.kpi_notify})"
        console.print(f"KPI engine: {len(definitions)} KPIs on {where}; Ctrl-C stops")
        await stop.wait()


@kpi_app.command("calc")
def calc(
    name: Annotated[str, typer.Argument(help="Calculator name (`climaborough kpi list` shows them).")],
    input: Annotated[Path, typer.Option("--input", help="JSON file: {parameters, timezone, window, series}.")],
) -> None:
    """Evaluate one calculator on the values of a JSON file and print the result as JSON."""
    from kpi.calc import CalcInputError, calculate_from_input

    try:
        document = json.loads(Path(input).read_text(encoding="utf-8"))
    except OSError as error:
        raise typer.BadParameter(str(error), param_hint="--input") from None
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--input") from None
    try:
        result = calculate_from_input(name, document)
    except CalcInputError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")


@kpi_app.command("list")
def list_kpis(definitions: DefinitionsOption = None) -> None:
    """List the KPI definitions (checking them) and the calculators."""
    from kpi.catalogue import CALCULATORS
    from kpi.settings import KpiSettings

    chosen = _definitions(KpiSettings(), definitions, None)
    table = Table("id", "calculator", "window", "source", "trigger", "version")
    for d in chosen:
        table.add_row(d.id, d.calculator, d.window.kind, f"{d.source.type} {','.join(d.source.attributes)}",
                      d.trigger.when, str(d.version))  # fmt: skip
    Console().print(table)
    calculators = Table("calculator", "what it gives", "input")
    for name, calculator in sorted(CALCULATORS.items()):
        calculators.add_row(name, calculator.summary, calculator.input_shape)
    Console().print(calculators)

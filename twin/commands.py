"""`climaborough twin …`: train a station's model (from the broker or a Beijing CSV), forecast once or
follow new observations, list model versions, roll back."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

    from twin.service import ForecastSettings
    from twin.training import TrainedStation

twin_app = typer.Typer(help="Digital twin: train, forecast, list and roll back models.", no_args_is_help=True)
console = Console(stderr=True)

StationOption = Annotated[
    str, typer.Option(help="AirQualityObserved entity id (or, with --csv, the station name).")
]
TargetOption = Annotated[str | None, typer.Option(help="Pollutant to forecast (CLIMABOROUGH_TWIN_TARGET, pm25).")]
DataDirOption = Annotated[Path | None, typer.Option(help="CLIMABOROUGH_DATA_DIR; models live in <data dir>/models.")]
TRAINING_YEARS = 3


def _moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or date-time", param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _settings(data_dir: Path | None, target: str | None) -> ForecastSettings:
    from twin.service import ForecastSettings

    settings = ForecastSettings()
    updates: dict[str, object] = {}
    if data_dir is not None:
        updates["data_dir"] = data_dir
    if target is not None:
        updates["twin_target"] = target
    return settings.model_copy(update=updates)


def _station_id(station: str, city: str) -> str:
    from smart_data_models import entity_id

    return station if station.startswith("urn:") else entity_id("AirQualityObserved", city, station)


async def _read_broker_history(
    settings: ForecastSettings, station: str, since: datetime, until: datetime
) -> pd.DataFrame:
    from twin.service import StationReader

    reader = StationReader(settings.broker_url, tenant=settings.tenant, timeout=settings.twin_request_timeout_s)
    try:
        return await reader.history(station, since, until)
    finally:
        await reader.aclose()


def _report(trained: TrainedStation) -> None:
    report = trained.report
    table = Table("hours ahead", "model RMSE", "persistence", "AR(24)", "model / persistence",
                  title=f"{trained.version}: test split, {report.samples} windows")  # fmt: skip
    for hours in (1, 3, 6, 12, 24):
        if hours <= len(report.model_rmse):
            i = hours - 1
            table.add_row(str(hours), f"{report.model_rmse[i]:.1f}", f"{report.persistence_rmse[i]:.1f}",
                          f"{report.ar_rmse[i]:.1f}", f"{report.ratio_to_persistence(hours):.2f}")  # fmt: skip
    Console().print(table)


@twin_app.command("train")
def train(
    station: StationOption,
    since: Annotated[str | None, typer.Option(help="Start of the history (ISO 8601; default: 3 years).")] = None,
    until: Annotated[str | None, typer.Option(help="End of the history (exclusive; default now).")] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", exists=True, dir_okay=False, help="Train from a Beijing PRSA_Data_*.csv.")
    ] = None,
    city: Annotated[str, typer.Option(help="City in the station's entity id when --station is a name.")] = "beijing",
    timezone: Annotated[
        str | None, typer.Option(help="Time zone of calendar features (default: Asia/Shanghai for --csv, else UTC).")
    ] = None,
    target: TargetOption = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (default: the benchmark's).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Train a station's model, compare it with persistence and AR(24), store it as the active version."""
    from twin.model import TrainingConfig
    from twin.sources import BEIJING_TZ, read_beijing_station
    from twin.store import ModelStore
    from twin.training import train_station

    settings = _settings(data_dir, target)
    station_id = _station_id(station, city)
    config = TrainingConfig() if epochs is None else TrainingConfig(epochs=epochs)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"reading the history of {station_id}")
        if csv is not None:
            observations = read_beijing_station(csv)
            sources = [str(csv)]
            local_tz: str | None = timezone or BEIJING_TZ
        else:
            end = _moment(until, "--until") if until else datetime.now(UTC)
            start = _moment(since, "--since") if since else end - timedelta(days=365 * TRAINING_YEARS)
            if end <= start:
                raise typer.BadParameter("must be after --since", param_hint="--until")
            try:
                observations = asyncio.run(_read_broker_history(settings, station_id, start, end))
            except Exception as error:
                console.print(f"[red]cannot read the history:[/red] {error}")
                raise typer.Exit(2) from None
            sources = [station_id]
            local_tz = timezone
        progress.update(task, description=f"training on {len(observations)} hourly rows ({settings.twin_target})")
        try:
            store = ModelStore(settings.model_dir)
            trained = train_station(observations, station_id, target=settings.twin_target, config=config,
                                    store=store, local_tz=local_tz, source=sources)  # fmt: skip
        except ValueError as error:
            console.print(f"[red]cannot train:[/red] {error}")
            raise typer.Exit(2) from None
    _report(trained)
    console.print(f"stored and activated [bold]{trained.version}[/bold] under {settings.model_dir}")


async def _forecast_once(settings: ForecastSettings, station: str, until: datetime | None) -> None:
    from twin.service import ForecastService

    service = ForecastService(settings)
    try:
        forecast = await service.forecast_station(station, until=until)
    finally:
        await service.reader.aclose()
    assert forecast is not None
    data = forecast.to_json()
    title = f"{data['station']} from {data['origin']} ({data['modelVersion']}, {data['covariates']})"
    table = Table("hour (UTC)", data["target"], "low", "high", "EEA band", title=title)
    for hour in data["hours"]:
        table.add_row(hour["time"], f"{hour['value']:.1f}", f"{hour['low']:.1f}", f"{hour['high']:.1f}",
                      str(hour["eeaBand"] or ""))  # fmt: skip
    Console().print(table)


async def _follow(settings: ForecastSettings) -> None:
    from twin.service import ForecastService

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ForecastService(settings) as service:
        console.print(f"twin forecast service: {len(service.stations())} stations on {settings.broker_url} "
                      f"({settings.twin_notify}); Ctrl-C stops")  # fmt: skip
        await stop.wait()


@twin_app.command("forecast")
def forecast(
    station: Annotated[str | None, typer.Option(help="Forecast this station once and write its KPI entities.")] = None,
    until: Annotated[str | None, typer.Option(help="Forecast from the newest window at or before this moment.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep forecasting on every new observation.")] = False,
    notify: Annotated[str | None, typer.Option(help="With --follow: mqtt (default) or http notifications.")] = None,
    target: TargetOption = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "warning",
) -> None:
    """Forecast the next 24 h of a station (written to the broker as KPI entities), or follow all stations."""
    from ngsi.errors import NgsiError
    from twin.store import ModelNotFound

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(data_dir, target)
    if notify is not None:
        if notify not in ("mqtt", "http"):
            raise typer.BadParameter("must be mqtt or http", param_hint="--notify")
        settings = settings.model_copy(update={"twin_notify": notify})
    if follow:
        asyncio.run(_follow(settings))
        return
    if station is None:
        raise typer.BadParameter("give --station, or --follow to forecast every station", param_hint="--station")
    try:
        asyncio.run(_forecast_once(settings, station, _moment(until, "--until") if until else None))
    except (NgsiError, ModelNotFound) as error:
        console.print(f"[red]cannot forecast:[/red] {error}")
        raise typer.Exit(2) from None


@twin_app.command("models")
def models(data_dir: DataDirOption = None) -> None:
    """List stored model versions (the active one of each station marked)."""
    from twin.store import ModelStore

    settings = _settings(data_dir, None)
    table = Table("version", "active", "created", "24 h RMSE / persistence", "1 h RMSE / persistence", "data")
    for info in ModelStore(settings.model_dir).list():
        metrics = info.metadata.get("metrics", {})
        window = info.metadata.get("dataWindow", {})

        def ratio(i: int, m: dict[str, list[float]] = metrics) -> str:
            try:
                return f"{m['model_rmse'][i] / m['persistence_rmse'][i]:.2f}"
            except (KeyError, IndexError, ZeroDivisionError):
                return "-"

        table.add_row(info.version, "*" if info.active else "", info.created_at, ratio(23), ratio(0),
                      f"{window.get('start', '?')[:10]} … {window.get('end', '?')[:10]}")  # fmt: skip
    Console().print(table)


@twin_app.command("rollback")
def rollback(station: StationOption, target: TargetOption = None, data_dir: DataDirOption = None) -> None:
    """Make the version before the active one of a station active again."""
    from twin.service import ActiveModels
    from twin.store import ModelNotFound, ModelStore

    settings = _settings(data_dir, target)
    models = ActiveModels(ModelStore(settings.model_dir))
    try:
        key = models.resolve(station, settings.twin_target)
        version = models.store.rollback(key, settings.twin_target)
    except ModelNotFound as error:
        console.print(f"[red]cannot roll back:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"active model of {key}: [bold]{version}[/bold]")

"""`climaborough demo`: embedded PostgreSQL and broker, real data in, NGSI-LD queries out, via ngsi.client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.beijing import STATION_LOCATIONS, station_hours
from cli.services import announce_auth, broker_in_background, database, free_port, port_is_free
from cli.settings import CliSettings
from ngsi.client import BrokerClient
from ngsi.errors import NgsiError
from smart_data_models import format_timestamp, to_ngsi_ld
from smart_data_models.models import ENVIRONMENT_CONTEXT, WEATHER_CONTEXT

REPO = Path(__file__).resolve().parents[1]
BEIJING_CSV = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
API = "/ngsi-ld/v1"


def link_header(context_url: str) -> str:
    # GS CIM 009 6.3.5: a JSON body or query takes its @context from the Link header.
    return f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


def official_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    """The official Smart Data Models normalized NGSI-LD examples shipped in `smart_data_models`."""
    root = resources.files("smart_data_models")
    stack = [root]
    while stack:
        folder = stack.pop()
        for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
            if item.is_dir():
                stack.append(item)
            elif item.name == "example-normalized.jsonld":
                yield f"{folder.name}/{item.name}", json.loads(item.read_text(encoding="utf-8"))


def upsert(client: BrokerClient, entities: list[dict[str, Any]]) -> None:
    # GS CIM 009 5.6.8: batch upsert; the entities carry their own @context.
    result = client.batch_upsert(entities)
    if not result.ok:
        raise RuntimeError("; ".join(f"{error.entity_id}: {error.error}" for error in result.errors))


def load_examples(client: BrokerClient, console: Console) -> int:
    examples = list(official_examples())
    if not examples:
        console.print("[yellow]No official Smart Data Models examples found in the smart_data_models package.")
        return 0
    # One upsert per example: each has its own @context.
    for name, entity in examples:
        upsert(client, [entity])
        console.print(f"  loaded official example [cyan]{entity['id']}[/cyan] ({name})")
    return len(examples)


def load_beijing(client: BrokerClient, console: Console, hours: int) -> tuple[int, str, str]:
    """Send each hour of Aotizhongxin as upserts, so that the broker's history builds up."""
    if not BEIJING_CSV.exists():
        raise SystemExit(f"{BEIJING_CSV} is missing: run the demo from a clone of the repository")
    first = last = ""
    sent = 0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Beijing Aotizhongxin, hourly upserts", total=hours)
        for hour in station_hours(BEIJING_CSV, limit=hours):
            # One upsert per @context: entities of one batch share a context on some brokers.
            upsert(client, [to_ngsi_ld(hour.air_quality)])
            upsert(client, [to_ngsi_ld(hour.weather)])
            first = first or format_timestamp(hour.observed_at)
            last = format_timestamp(hour.observed_at)
            sent += 1
            progress.advance(task)
    return sent, first, last


def entity_table(title: str, entities: list[dict[str, Any]], attributes: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("id", style="cyan", overflow="fold")
    table.add_column("type")
    for attribute in attributes:
        table.add_column(attribute, justify="right")
    for entity in entities:
        cells = []
        for attribute in attributes:
            value = entity.get(attribute)
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            if isinstance(value, dict) and "@value" in value:
                value = value["@value"]
            cells.append("" if value is None else str(value))
        table.add_row(str(entity.get("id")), str(entity.get("type")), *cells)
    return table


@dataclass(frozen=True)
class DemoQuery:
    """One GET /entities the demo runs and shows, with the curl line to repeat it."""

    title: str
    context: str
    params: dict[str, str]
    attributes: list[str]

    def curl(self, base_url: str) -> str:
        url = httpx.URL(f"{base_url}{API}/entities", params=self.params)
        return f"curl -s '{url}' -H 'Link: {link_header(self.context)}'"


def demo_queries() -> list[DemoQuery]:
    longitude, latitude = STATION_LOCATIONS["Aotizhongxin"]
    return [
        DemoQuery("All AirQualityObserved", ENVIRONMENT_CONTEXT, {"type": "AirQualityObserved"},
                  ["dateObserved", "pm25", "no2"]),
        DemoQuery("AirQualityObserved with q=no2>40", ENVIRONMENT_CONTEXT,
                  {"type": "AirQualityObserved", "q": "no2>40"}, ["dateObserved", "no2"]),
        DemoQuery(
            "AirQualityObserved within 2 km of Aotizhongxin (georel=near;maxDistance==2000)",
            ENVIRONMENT_CONTEXT,
            {"type": "AirQualityObserved", "georel": "near;maxDistance==2000", "geometry": "Point",
             "coordinates": f"[{longitude},{latitude}]"},
            ["dateObserved", "location"],
        ),
        DemoQuery("WeatherObserved", WEATHER_CONTEXT, {"type": "WeatherObserved"},
                  ["dateObserved", "temperature", "windSpeed"]),
    ]  # fmt: skip


def run_queries(clients: dict[str, BrokerClient], console: Console) -> None:
    """A few NGSI-LD queries (type, q, near, count), printed as tables."""
    for query in demo_queries():
        params = dict(query.params)
        try:
            result = clients[query.context].query_entities(type=params.pop("type"), extra=params)
        except NgsiError as error:
            console.print(f"[red]{query.title}: {error.status} {error.title}: {error.detail}")
            continue
        console.print(entity_table(query.title, result.items, query.attributes))
    counts = Table(title="How many entities (count=true&limit=0, NGSILD-Results-Count)", title_justify="left")
    counts.add_column("type")
    counts.add_column("count", justify="right")
    for entity_type, context in (("AirQualityObserved", ENVIRONMENT_CONTEXT), ("WeatherObserved", WEATHER_CONTEXT)):
        try:
            counted = clients[context].query_entities(type=entity_type, count=True, limit=0).count
            counts.add_row(entity_type, str(counted))
        except NgsiError as error:
            counts.add_row(entity_type, f"({error.status} {error.title})")
    console.print(counts)


def show_history(client: BrokerClient, console: Console, entity_id: str) -> bool:
    """The last hours of no2 from the temporal API, when the broker has it."""
    try:
        history = client.get_temporal_entity(entity_id, attrs="no2", last_n=6)
    except NgsiError as error:
        console.print(f"[yellow]Temporal API: {error.status} {error.title}: {error.detail}")
        return False
    instances = history.get("no2", [])
    if isinstance(instances, dict):
        instances = [instances]
    table = Table(title=f"History of no2 for {entity_id} (temporal API, lastN=6)", title_justify="left")
    table.add_column("observedAt")
    table.add_column("no2 µg/m³", justify="right")
    for instance in instances:
        table.add_row(str(instance.get("observedAt")), str(instance.get("value")))
    console.print(table)
    return True


def run_demo(settings: CliSettings, *, console: Console, port: int, hours: int, keep_running: bool) -> None:
    """Start everything, load data, query it, say where to look, stop (or keep running)."""
    announce_auth(settings, console)
    host = "127.0.0.1"
    if port == 0:
        port = free_port(host)
    elif not port_is_free(host, port):
        busy, port = port, free_port(host)
        console.print(f"Port {busy} is busy; the broker uses {port} instead.")
    with (
        database(settings, embedded=settings.database_url is None, console=console) as database_url,
        broker_in_background(database_url, host, port) as base_url,
        BrokerClient(base_url, context=ENVIRONMENT_CONTEXT, timeout=30) as environment,
        BrokerClient(base_url, context=WEATHER_CONTEXT, timeout=30) as weather,
    ):
        console.print(f"NGSI-LD broker: [bold cyan]{base_url}{API}/[/bold cyan]")
        examples = load_examples(environment, console)
        sent, first, last = load_beijing(environment, console, hours)
        console.print(
            f"Loaded {examples} official Smart Data Models examples and {sent} hours of Aotizhongxin "
            f"({first} → {last}) as AirQualityObserved + WeatherObserved upserts."
        )
        run_queries({ENVIRONMENT_CONTEXT: environment, WEATHER_CONTEXT: weather}, console)
        station = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
        has_history = show_history(environment, console, station)
        tries = [query.curl(base_url) for query in demo_queries()[:2]]
        if has_history:
            tries.append(
                f"curl -s '{base_url}{API}/temporal/entities/{station}?attrs=no2&lastN=24' "
                f"-H 'Link: {link_header(ENVIRONMENT_CONTEXT)}'"
            )
        console.print(
            Panel(
                f"Broker: {base_url}{API}/   health: {base_url}/health   version: {base_url}/version\n"
                f"Data folder: {Path(settings.data_dir).absolute()} (PostgreSQL cluster and its log)\n\n"
                "Try:\n" + "\n".join(tries),
                title="What the demo did and where to look",
            )
        )
        if keep_running:
            console.print("The broker keeps running; Ctrl-C stops it.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                console.print("Stopping.")
    console.print("Broker and PostgreSQL stopped.")

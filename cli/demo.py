"""`climaborough demo`: embedded PostgreSQL and broker, real data in, NGSI-LD queries out, over HTTP only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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
from smart_data_models import format_timestamp, to_ngsi_ld
from smart_data_models.models import ENVIRONMENT_CONTEXT, WEATHER_CONTEXT

REPO = Path(__file__).resolve().parents[1]
BEIJING_CSV = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
API = "/ngsi-ld/v1"
LD_JSON = "application/ld+json"


def link_header(context_url: str) -> dict[str, str]:
    # GS CIM 009 6.3.5: a JSON body or query takes its @context from the Link header.
    return {"Link": f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'}


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


def upsert(client: httpx.Client, entities: list[dict[str, Any]]) -> None:
    # GS CIM 009 5.6.8: batch upsert; entities carry their own @context, hence ld+json.
    response = client.post(
        f"{API}/entityOperations/upsert", content=json.dumps(entities), headers={"Content-Type": LD_JSON}
    )
    if response.status_code not in (200, 201, 204):
        raise RuntimeError(f"upsert failed with {response.status_code}: {response.text[:1000]}")


def load_examples(client: httpx.Client, console: Console) -> int:
    examples = list(official_examples())
    if not examples:
        console.print("[yellow]No official Smart Data Models examples found in the smart_data_models package.")
        return 0
    upsert(client, [entity for _, entity in examples])
    for name, entity in examples:
        console.print(f"  loaded official example [cyan]{entity['id']}[/cyan] ({name})")
    return len(examples)


def load_beijing(client: httpx.Client, console: Console, hours: int) -> tuple[int, str, str]:
    """Send each hour of Aotizhongxin as one upsert, so that the broker's history builds up."""
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


def run_queries(client: httpx.Client, console: Console) -> list[tuple[str, str]]:
    """A few NGSI-LD queries, printed as tables; returns (URL, @context) of each for the summary."""
    longitude, latitude = STATION_LOCATIONS["Aotizhongxin"]
    queries = [
        ("All AirQualityObserved", {"type": "AirQualityObserved"}, ENVIRONMENT_CONTEXT,
         ["dateObserved", "pm25", "no2"]),
        ("AirQualityObserved with q=no2>40", {"type": "AirQualityObserved", "q": "no2>40"}, ENVIRONMENT_CONTEXT,
         ["dateObserved", "no2"]),
        (
            "AirQualityObserved within 2 km of Aotizhongxin (georel=near;maxDistance==2000)",
            {"type": "AirQualityObserved", "georel": "near;maxDistance==2000",
             "geometry": "Point", "coordinates": f"[{longitude},{latitude}]"},
            ENVIRONMENT_CONTEXT,
            ["dateObserved", "location"],
        ),
        ("WeatherObserved", {"type": "WeatherObserved"}, WEATHER_CONTEXT,
         ["dateObserved", "temperature", "windSpeed"]),
    ]  # fmt: skip
    shown: list[tuple[str, str]] = []
    for title, params, context, attributes in queries:
        response = client.get(f"{API}/entities", params=params, headers=link_header(context))
        shown.append((str(response.request.url), context))
        if response.status_code != 200:
            console.print(f"[red]{title}: {response.status_code} {response.text[:300]}")
            continue
        console.print(entity_table(title, response.json(), attributes))
    counts = Table(title="How many entities (count=true&limit=0, NGSILD-Results-Count)", title_justify="left")
    counts.add_column("type")
    counts.add_column("count", justify="right")
    for entity_type, context in (("AirQualityObserved", ENVIRONMENT_CONTEXT), ("WeatherObserved", WEATHER_CONTEXT)):
        response = client.get(
            f"{API}/entities",
            params={"type": entity_type, "count": "true", "limit": "0"},
            headers=link_header(context),
        )
        shown.append((str(response.request.url), context))
        counts.add_row(entity_type, response.headers.get("NGSILD-Results-Count", f"({response.status_code})"))
    console.print(counts)
    return shown


def show_history(client: httpx.Client, console: Console, entity_id: str) -> tuple[str, str] | None:
    """The last hours of no2 from the temporal API, when the broker has it."""
    response = client.get(
        f"{API}/temporal/entities/{entity_id}",
        params={"attrs": "no2", "lastN": "6"},
        headers=link_header(ENVIRONMENT_CONTEXT),
    )
    # GS CIM 009 6.3.10: 206 when lastN or the instance limit cut the history short.
    if response.status_code not in (200, 206):
        console.print(f"[yellow]Temporal API: {response.status_code} (history query not available yet)")
        return None
    instances = response.json().get("no2", [])
    if isinstance(instances, dict):
        instances = [instances]
    table = Table(title=f"History of no2 for {entity_id} (temporal API, lastN=6)", title_justify="left")
    table.add_column("observedAt")
    table.add_column("no2 µg/m³", justify="right")
    for instance in instances:
        table.add_row(str(instance.get("observedAt")), str(instance.get("value")))
    console.print(table)
    return str(response.request.url), ENVIRONMENT_CONTEXT


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
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        console.print(f"NGSI-LD broker: [bold cyan]{base_url}{API}/[/bold cyan]")
        examples = load_examples(client, console)
        sent, first, last = load_beijing(client, console, hours)
        console.print(
            f"Loaded {examples} official Smart Data Models examples and {sent} hours of Aotizhongxin "
            f"({first} → {last}) as AirQualityObserved + WeatherObserved upserts."
        )
        urls = run_queries(client, console)
        history = show_history(client, console, "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin")
        if history:
            urls.append(history)
        tries = "\n".join(
            f"curl -s '{url}' -H 'Link: {link_header(context)['Link']}'" for url, context in [*urls[:2], urls[-1]]
        )
        console.print(
            Panel(
                f"Broker: {base_url}{API}/   health: {base_url}/health   version: {base_url}/version\n"
                f"Data folder: {Path(settings.data_dir).absolute()} (PostgreSQL cluster and its log)\n\n"
                f"Try:\n{tries}",
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

"""`climaborough demo`: the whole mission on embedded defaults, from a fresh clone, narrated step by step.

PostgreSQL, MQTT, broker, IoT agent, KPI engine and platform API start as child processes
(`cli.services.Platform`); then: the official Smart Data Models examples, a year of one Beijing
station ingested from its file through `agents/files` (history by temporal append), an
aggregated temporal query and a `q` + `near` query, a subscription notifying a receiver in this
process, a simulated UltraLight device over MQTT, the KPI entities that appear, a quickly
trained twin with one forecast written to the broker and one what-if answer over HTTP, and a
summary with URLs to open.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as mqtt
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cli.services import Platform, ServiceFailed, announce_auth, free_port, serve_until_interrupted, stop_on_sigterm
from cli.settings import CliSettings, usable_data_dir
from ngsi.client import BrokerClient, GeoQuery
from ngsi.errors import AlreadyExists, NgsiError
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT

REPO = Path(__file__).resolve().parents[1]
BEIJING_CSV = REPO / "examples" / "beijing" / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"
BEIJING_MAPPING = "beijing_multisite"
API = "/ngsi-ld/v1"
STATION = "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin"
STATION_POINT = (116.397, 39.982)
BEIJING_TZ = "Asia/Shanghai"
HOURS_PER_YEAR = 24 * 365
WAIT_S = 90.0
"""How long the demo waits for something to happen (a notification, an entity, KPIs) on a busy machine."""

DEVICE_APIKEY = "demo-ul-key"
DEVICE_ID = "aq-sensor-01"
DEVICE_ENTITY = "urn:ngsi-ld:AirQualityObserved:beijing:demo-sensor-01"
DEVICE_MEASURES = ("p|41.5|n|38.0", "p|57.0|n|44.5", "p|72.5|n|52.0")
"""UltraLight 2.0 measures of the simulated device: `p` is pm25 and `n` is no2 (µg/m³)."""

SHOWN_KPIS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class DemoOptions:
    """What `climaborough demo` was asked to do."""

    hours: int = HOURS_PER_YEAR
    epochs: int = 3
    keep_running: bool = False
    default_ports: bool = True
    broker_port: int = 1026


def link_header(context_url: str) -> str:
    # GS CIM 009 6.3.5: a JSON body or query takes its @context from the Link header.
    return f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


def wait_for(check: Callable[[], T | None], what: str, within: float = WAIT_S) -> T:
    """Poll `check` until it returns something truthy; raise naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: nothing after {within:.0f}s")
        time.sleep(0.25)


def value_of(attribute: Any) -> Any:
    """The plain value of a normalized attribute (a DateTime's `@value` included)."""
    if isinstance(attribute, dict):
        attribute = attribute.get("value", attribute.get("object", attribute))
    if isinstance(attribute, dict) and "@value" in attribute:
        attribute = attribute["@value"]
    return attribute


# -- 2. the official Smart Data Models examples ------------------------------------------------------


def official_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    """The official normalized NGSI-LD examples shipped in `smart_data_models/examples`."""
    root = resources.files("smart_data_models") / "examples"
    for folder in sorted(root.iterdir(), key=lambda entry: entry.name):
        example = folder / "example-normalized.jsonld"
        if folder.is_dir() and example.is_file():
            yield folder.name, json.loads(example.read_text(encoding="utf-8"))


def load_examples(broker_url: str, console: Console) -> int:
    loaded = 0
    with BrokerClient(broker_url, timeout=30) as client:
        for model, entity in official_examples():
            # GS CIM 009 5.6.8: batch upsert; each example carries its own @context.
            result = client.batch_upsert([entity])
            if not result.ok:
                raise RuntimeError("; ".join(f"{error.entity_id}: {error.error}" for error in result.errors))
            console.print(f"  official example [cyan]{entity['id']}[/cyan] ({model})")
            loaded += 1
    return loaded


# -- 3. a year of one station from its file ----------------------------------------------------------


def year_of_station(data_dir: Path, hours: int) -> Path:
    """The last `hours` rows of the Aotizhongxin file (a year by default), as a file of their own."""
    if not BEIJING_CSV.exists():
        raise SystemExit(f"{BEIJING_CSV} is missing: run the demo from a clone of the repository")
    lines = BEIJING_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    chosen = rows[-hours:]
    def day(row: str) -> str:
        _, year, month, day_of_month, *_ = row.split(",")
        return f"{year}{int(month):02d}{int(day_of_month):02d}"

    name = f"Aotizhongxin_{day(chosen[0])}-{day(chosen[-1])}"
    path = data_dir / "demo" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(header + "".join(chosen), encoding="utf-8")
    return path


def ingest_station(platform: Platform, console: Console, hours: int) -> tuple[datetime, datetime]:
    """Stream the file through the shipped mapping; returns the first and last hour (UTC) it holds."""
    from agents.files.command import ingest_with_progress, resolve_mapping, summary_table
    from agents.files.settings import FilesSettings

    file = year_of_station(platform.data_dir, hours)
    settings = FilesSettings(broker_url=platform.urls.broker, data_dir=platform.data_dir)
    summary = asyncio.run(
        ingest_with_progress(file, resolve_mapping(BEIJING_MAPPING), settings, tenant=None, console=console)
    )
    if summary.already_done:
        console.print(f"  {file.name} was already ingested in this data folder: the broker has it.")
    else:
        console.print(summary_table(summary))
    with BrokerClient(platform.urls.broker, context=ENVIRONMENT_CONTEXT, timeout=60) as client:
        latest = client.get_entity(STATION, attrs="pm25")
    end = _parse(str(latest["pm25"]["observedAt"]))
    return end - timedelta(hours=hours - 1), end


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def show_daily_aggregates(broker_url: str, console: Console, end: datetime) -> None:
    """Daily average and maximum of pm25 over the last month, aggregated by the broker."""
    start = (end - timedelta(days=30)).replace(hour=0, minute=0, second=0)
    with BrokerClient(broker_url, context=ENVIRONMENT_CONTEXT, timeout=60) as client:
        # GS CIM 009 4.5.19: aggregated temporal representation (aggrMethods, aggrPeriodDuration).
        history = client.get_temporal_entity(
            STATION, attrs="pm25", timerel="between", time_at=_iso(start), end_time_at=_iso(end + timedelta(hours=1)),
            aggr_methods="avg,max", aggr_period_duration="P1D",
        )  # fmt: skip
    attribute = history.get("pm25", {})
    if isinstance(attribute, list):
        attribute = attribute[0] if attribute else {}
    averages = {str(row[1]): row[0] for row in attribute.get("avg", [])}
    maxima = {str(row[1]): row[0] for row in attribute.get("max", [])}
    table = Table(title=f"pm25 of Aotizhongxin per day (µg/m³), {start:%Y-%m-%d} → {end:%Y-%m-%d}: "
                        "aggrMethods=avg,max&aggrPeriodDuration=P1D", title_justify="left")  # fmt: skip
    table.add_column("day (UTC)")
    table.add_column("avg", justify="right")
    table.add_column("max", justify="right")
    table.add_column("")
    for day in sorted(averages):
        average, maximum = averages[day], maxima.get(day)
        bar = "█" * min(60, int((average or 0) / 5))
        table.add_row(day[:10], f"{average:.1f}", "" if maximum is None else f"{maximum:.0f}", f"[magenta]{bar}")
    console.print(table)


def near_query() -> tuple[str, GeoQuery]:
    # GS CIM 009 4.9 (q) and 4.10 (geo-query): polluted stations within 5 km of Aotizhongxin.
    return "pm25>10", GeoQuery("near;maxDistance==5000", "Point", list(STATION_POINT))


def show_near_query(broker_url: str, console: Console) -> None:
    q, geo = near_query()
    with BrokerClient(broker_url, context=ENVIRONMENT_CONTEXT, timeout=30) as client:
        found = client.query_entities(type="AirQualityObserved", q=q, geo=geo, attrs="pm25,no2,dateObserved")
    table = Table(title=f"AirQualityObserved with q={q} and georel={geo.georel} of {list(STATION_POINT)}",
                  title_justify="left")  # fmt: skip
    for column in ("id", "dateObserved", "pm25", "no2"):
        table.add_column(column, justify="left" if column in ("id", "dateObserved") else "right")
    for entity in found.items:
        table.add_row(entity["id"], *(str(value_of(entity.get(name, ""))) for name in ("dateObserved", "pm25", "no2")))
    console.print(table)


# -- 4. a subscription notifying this process --------------------------------------------------------


class NotificationReceiver:
    """A small HTTP server in this process that keeps the NGSI-LD notifications it receives."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    received.put(json.loads(body))
                except json.JSONDecodeError:
                    pass
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, free_port(host)), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, name="notification-receiver", daemon=True)

    def __enter__(self) -> NotificationReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_about(self, entity_id: str, within: float = WAIT_S) -> dict[str, Any]:
        """The first notification whose data names `entity_id`."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                notification = self.received.get(timeout=left)
            except queue.Empty:
                break
            if any(item.get("id") == entity_id for item in notification.get("data", [])):
                return notification
        raise TimeoutError(f"no notification about {entity_id} within {within:.0f}s")


def subscribe(broker_url: str, receiver: NotificationReceiver) -> str:
    # GS CIM 009 5.8.1: a subscription to pm25 changes of every AirQualityObserved, notified over HTTP.
    subscription = {
        "id": "urn:ngsi-ld:Subscription:climaborough-demo",
        "type": "Subscription",
        "description": "climaborough demo: pm25 changes of air-quality stations",
        "entities": [{"type": "AirQualityObserved"}],
        "watchedAttributes": ["pm25"],
        "notification": {"attributes": ["pm25", "no2"], "format": "normalized",
                         "endpoint": {"uri": receiver.url, "accept": "application/json"}},
    }  # fmt: skip
    with BrokerClient(broker_url, context=ENVIRONMENT_CONTEXT, timeout=30) as client:
        try:
            return str(client.create_subscription(subscription))
        except AlreadyExists:
            fragment = {key: value for key, value in subscription.items() if key not in ("id", "type")}
            client.update_subscription(str(subscription["id"]), fragment)
            return str(subscription["id"])


# -- 5. the IoT agent with a simulated device --------------------------------------------------------


def provision_device(north_url: str) -> None:
    """A config group and a device on the provisioning API (FIWARE IoT Agent format)."""
    group = {"apikey": DEVICE_APIKEY, "entity_type": "AirQualityObserved", "resource": ""}
    device = {
        "device_id": DEVICE_ID, "entity_name": DEVICE_ENTITY, "entity_type": "AirQualityObserved",
        "apikey": DEVICE_APIKEY, "protocol": "PDI-IoTA-UltraLight", "transport": "MQTT",
        "attributes": [{"object_id": "p", "name": "pm25", "type": "Number", "metadata": {"unitCode": "GQ"}},
                       {"object_id": "n", "name": "no2", "type": "Number", "metadata": {"unitCode": "GQ"}}],
        "static_attributes": [{"name": "location", "type": "GeoProperty",
                               "value": {"type": "Point", "coordinates": [116.404, 39.975]}}],
    }  # fmt: skip
    for path, body in (("/iot/services", {"services": [group]}), ("/iot/devices", {"devices": [device]})):
        response = httpx.post(f"{north_url}{path}", json=body, timeout=30)
        if response.status_code not in (201, 409):  # 409: provisioned by an earlier run
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")


def publish_measures(mqtt_url: str, measures: tuple[str, ...]) -> None:
    """Publish UltraLight measures as the device would, on `/ul/<apikey>/<device>/attrs`, QoS 1."""
    url = httpx.URL(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-device-{time.monotonic_ns()}")
    client.connect(url.host, url.port or 1883)
    client.loop_start()
    try:
        for payload in measures:
            info = client.publish(f"/ul/{DEVICE_APIKEY}/{DEVICE_ID}/attrs", payload, qos=1)
            info.wait_for_publish(timeout=30)
            time.sleep(1.0)  # a second apart, as a sensor reports: distinct observedAt, distinct history instances
    finally:
        client.loop_stop()
        client.disconnect()


def device_entity_with(broker_url: str, pm25: float) -> dict[str, Any] | None:
    with BrokerClient(broker_url, context=ENVIRONMENT_CONTEXT, timeout=30) as client:
        try:
            entity = client.get_entity(DEVICE_ENTITY)
        except NgsiError:
            return None
    return entity if value_of(entity.get("pm25")) == pm25 else None


# -- 6. KPIs -----------------------------------------------------------------------------------------


def kpis_of(broker_url: str, stations: tuple[str, ...]) -> list[dict[str, Any]]:
    with BrokerClient(broker_url, context=KPI_CONTEXT, timeout=30) as client:
        found = client.query_entities(type="KeyPerformanceIndicator", limit=1000)
    return [kpi for kpi in found.items if any(station.rsplit(":", 1)[-1] in kpi["id"] for station in stations)]


def show_kpis(kpis: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="KeyPerformanceIndicator entities written by the KPI engine", title_justify="left")
    for column in ("id (urn:ngsi-ld:KeyPerformanceIndicator:…)", "kpiValue", "currentStanding", "calculationPeriod"):
        table.add_column(column, overflow="fold")
    hourly_first = sorted(kpis, key=lambda entity: (not entity["id"].endswith(":hourly"), entity["id"]))
    for kpi in hourly_first[:SHOWN_KPIS]:
        period = value_of(kpi.get("calculationPeriod"))
        span = f"{period.get('from', '')} → {period.get('to', '')}" if isinstance(period, dict) else ""
        standing = value_of(kpi.get("currentStanding")) or ""
        name = kpi["id"].removeprefix("urn:ngsi-ld:KeyPerformanceIndicator:")
        table.add_row(name, str(value_of(kpi.get("kpiValue"))), str(standing), span)
    console.print(table)
    if len(kpis) > SHOWN_KPIS:
        console.print(f"  … and {len(kpis) - SHOWN_KPIS} more (monthly, yearly, exceedance counts)")


# -- 7. the twin ---------------------------------------------------------------------------------------


def train_twin(platform: Platform, console: Console, start: datetime, end: datetime, epochs: int) -> str:
    """Train a small model on the station's history read over the temporal API; returns its version."""
    from twin.commands import _read_broker_history
    from twin.model import TrainingConfig
    from twin.service import ForecastSettings
    from twin.store import ModelStore
    from twin.training import train_station

    settings = ForecastSettings(broker_url=platform.urls.broker, mqtt_url=platform.urls.mqtt,
                                data_dir=platform.data_dir)  # fmt: skip
    with console.status("Reading the station's history over the temporal API ..."):
        observations = asyncio.run(_read_broker_history(settings, STATION, start, end + timedelta(hours=1)))
    console.print(f"  history: {len(observations)} hourly rows × {len(observations.columns)} series")
    config = TrainingConfig(epochs=epochs, lstm_units=16, dense_units=16, patience=1, batch_size=512)
    with console.status(f"Training a small twin ({epochs} epochs, 16 LSTM units) ..."):
        began = time.monotonic()
        store = ModelStore(settings.model_dir)
        trained = train_station(observations, STATION, target=settings.twin_target, config=config, store=store,
                                local_tz=BEIJING_TZ, source=[STATION])  # fmt: skip
    console.print(f"  trained and activated [bold]{trained.version}[/bold] in {time.monotonic() - began:.0f}s "
                  f"(stored under {settings.model_dir})")  # fmt: skip
    return str(trained.version)


def forecast_once(platform: Platform, console: Console) -> None:
    """One 24 h forecast from the newest hour, written to the broker as KPI entities."""
    from twin.service import ForecastService, ForecastSettings

    settings = ForecastSettings(broker_url=platform.urls.broker, mqtt_url=platform.urls.mqtt,
                                data_dir=platform.data_dir)  # fmt: skip

    async def forecast() -> dict[str, Any] | None:
        service = ForecastService(settings)
        try:
            result = await service.forecast_station(STATION)
        finally:
            await service.reader.aclose()
        return None if result is None else result.to_json()

    data = asyncio.run(forecast())
    if data is None:
        console.print("  this origin was already forecast by this model: the broker holds that forecast")
        return
    table = Table(title=f"Twin forecast of {data['target']} from {data['origin']} ({data['modelVersion']}), "
                        "written to the broker", title_justify="left")  # fmt: skip
    for column in ("hour (UTC)", data["target"], "low", "high", "EEA band"):
        table.add_column(column, justify="right")
    for hour in data["hours"][::3]:
        table.add_row(hour["time"], f"{hour['value']:.1f}", f"{hour['low']:.1f}", f"{hour['high']:.1f}",
                      str(hour.get("eeaBand") or ""))  # fmt: skip
    console.print(table)


WHAT_IF = {
    "station": STATION,
    "horizon": 24,
    "scenario": [{"feature": "no2", "operation": "scale", "value": 0.7, "from": -23, "until": 0}],
}
"""What if traffic (no2) had been 30 % lower over the last day?"""


def ask_what_if(api_url: str, console: Console) -> dict[str, Any]:
    response = httpx.post(f"{api_url}/twin/what-if", json=WHAT_IF, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"POST /twin/what-if: {response.status_code} {response.text}")
    answer: dict[str, Any] = response.json()
    table = Table(title="POST /twin/what-if: no2 30 % lower over the last 24 h → pm25 over the next 24 h",
                  title_justify="left")  # fmt: skip
    for column in ("hour (UTC)", "baseline", "scenario", "Δ"):
        table.add_column(column, justify="right")
    for hour, baseline, scenario in itertools.islice(
        zip(answer["hours"], answer["baseline"], answer["scenario"], strict=False), 0, None, 4
    ):
        table.add_row(hour, f"{baseline:.1f}", f"{scenario:.1f}", f"{scenario - baseline:+.1f}")
    console.print(table)
    before, after = answer["baselineSummary"], answer["scenarioSummary"]
    console.print(f"  next 24 h: mean pm25 {before['mean']} → {after['mean']} µg/m³, max {before['max']} → "
                  f"{after['max']}, hours above the EU limit {before['hoursAboveEU']} → {after['hoursAboveEU']}")
    return answer


# -- 8. summary ----------------------------------------------------------------------------------------


def summary_panel(platform: Platform, note: str | None) -> Panel:
    urls = platform.urls
    link = link_header(ENVIRONMENT_CONTEXT)
    q, geo = near_query()
    near = httpx.URL(f"{urls.broker}{API}/entities", params={"type": "AirQualityObserved", "q": q, **geo.params()})
    lines = [
        f"NGSI-LD broker   {urls.broker}{API}/   (health {urls.broker}/health, version {urls.broker}/version)",
        f"MQTT             {urls.mqtt}",
        f"IoT agent        {urls.iot_north}/iot/devices   (UltraLight over MQTT: /ul/<apikey>/<device>/attrs)",
        f"Platform API     {urls.api}/docs",
        f"Data folder      {platform.data_dir}   (logs in {platform.log_dir})",
        *([f"[yellow]Note: {note}[/yellow]"] if note else []),
        "",
        "Try:",
        f"curl -s '{urls.broker}{API}/entities/{STATION}' -H 'Link: {link}'",
        f"curl -s '{near}' -H 'Link: {link}'",
        f"curl -s '{urls.broker}{API}/temporal/entities/{STATION}?attrs=pm25&aggrMethods=avg,max"
        f"&aggrPeriodDuration=P1D&lastN=30' -H 'Link: {link}'",
        f"curl -s '{urls.broker}{API}/entities?type=KeyPerformanceIndicator&limit=5' "
        f"-H 'Link: {link_header(KPI_CONTEXT)}'",
        f"curl -s '{urls.iot_north}/iot/devices'",
        f"curl -s -X POST '{urls.api}/twin/what-if' -H 'Content-Type: application/json' "
        f"-d '{json.dumps(WHAT_IF, separators=(',', ':'))}'",
    ]
    return Panel("\n".join(lines), title="What the demo did and where to look")


# -- the whole demo --------------------------------------------------------------------------------------


def run_demo(settings: CliSettings, *, console: Console, options: DemoOptions) -> None:
    """Start everything, run the mission, say where to look, stop (or keep running until Ctrl-C)."""
    began = time.monotonic()
    if not console.is_terminal:
        console.width = max(console.width, 150)  # logs and `make demo | tee`: keep ids and curl lines whole
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    data_dir, note = usable_data_dir(Path(settings.data_dir))
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    settings = settings.model_copy(update={"data_dir": data_dir})
    announce_auth(settings, console)
    stop_on_sigterm()
    try:
        with Platform(settings, console, default_ports=options.default_ports,
                      broker_port=options.broker_port) as platform:  # fmt: skip
            console.rule("1. Services")
            platform.start(("mqtt", "broker", "iot", "kpi", "api"))
            _mission(platform, console, options)
            console.print(summary_panel(platform, note))
            console.print(f"Demo finished in {time.monotonic() - began:.0f}s.")
            if options.keep_running:
                console.rule("Running")
                platform.restart_service("twin")  # now that a model exists, it forecasts on every new pm25
                serve_until_interrupted(platform, console)
    except KeyboardInterrupt:
        console.print("Stopping.")
    except ServiceFailed as error:
        console.print(f"[red]A service failed:[/red] {error}")
        raise SystemExit(1) from None
    console.print("Every service stopped (broker, agents, KPI engine, API, MQTT, PostgreSQL).")


def _mission(platform: Platform, console: Console, options: DemoOptions) -> None:
    broker = platform.urls.broker
    console.rule("2. Official Smart Data Models examples")
    examples = load_examples(broker, console)
    console.print(f"  {examples} official examples loaded")

    console.rule("3. A year of one station from its file (agents/files, history by temporal append)")
    start, end = ingest_station(platform, console, options.hours)
    console.print(f"  Aotizhongxin {options.hours} hours: {_iso(start)} → {_iso(end)}")
    show_daily_aggregates(broker, console, end)
    platform.check()

    with NotificationReceiver() as receiver:
        console.rule("4. A subscription")
        subscription = subscribe(broker, receiver)
        console.print(f"  subscription {subscription} → {receiver.url} (this process)")

        console.rule("5. The IoT agent with a simulated device (UltraLight over MQTT)")
        provision_device(platform.urls.iot_north)
        console.print(f"  provisioned group {DEVICE_APIKEY!r} and device {DEVICE_ID!r} on {platform.urls.iot_north}")
        publish_measures(platform.urls.mqtt, DEVICE_MEASURES)
        console.print(f"  published {len(DEVICE_MEASURES)} measures on /ul/{DEVICE_APIKEY}/{DEVICE_ID}/attrs: "
                      f"{', '.join(DEVICE_MEASURES)}")  # fmt: skip
        last_pm25 = float(DEVICE_MEASURES[-1].split("|")[1])
        entity = wait_for(lambda: device_entity_with(broker, last_pm25), f"{DEVICE_ENTITY} with pm25={last_pm25}")
        console.print(f"  broker: [cyan]{entity['id']}[/cyan] pm25={value_of(entity['pm25'])} "
                      f"no2={value_of(entity.get('no2'))} observedAt={entity['pm25'].get('observedAt')}")  # fmt: skip
        notification = receiver.next_about(DEVICE_ENTITY)
        item = next(item for item in notification["data"] if item["id"] == DEVICE_ENTITY)
        console.print(f"  [green]notification[/green] {notification['id']} at {notification['notifiedAt']}: "
                      f"{item['id']} pm25={value_of(item.get('pm25'))}")  # fmt: skip
    show_near_query(broker, console)
    platform.check()

    console.rule("6. KPIs appearing as data arrives")
    def station_and_device_kpis() -> list[dict[str, Any]] | None:
        found = kpis_of(broker, (STATION, DEVICE_ENTITY))
        return found if len(found) >= 2 else None

    kpis = wait_for(station_and_device_kpis, "KeyPerformanceIndicator entities of the station and the device")
    show_kpis(kpis, console)

    console.rule("7. The digital twin")
    train_twin(platform, console, start, end, options.epochs)
    forecast_once(platform, console)
    ask_what_if(platform.urls.api, console)
    platform.check()

"""The forecast service: on every new air-quality observation of a station that has an active
model, forecast the next 24 h and write them to the broker as KeyPerformanceIndicator entities.

Flow: one subscription (deterministic id) to the target attribute of the AirQualityObserved
entities of every station with an active model, notified over MQTT (default) or HTTP through the
KPI engine's intakes. A notification names a station and the `observedAt` of its new value; per
station only the newest pending moment is kept (a burst of history collapses into one forecast).
The forecast reads the recent history over the temporal API of any broker (the station's
AirQualityObserved and the WeatherObserved it references with `refWeatherObserved`, or the
nearest one within `NEAREST_WEATHER_M`), takes the weather over the horizon from the station's
`WeatherForecast` entities when the broker has them (ids `urn:ngsi-ld:WeatherForecast:<city>:<station>…`,
one per hour, valid from `validFrom`), else yesterday's observed weather, runs the model in a
thread, and upserts two KPI series per lead hour: the predicted concentration and its EEA
index band. Ids name the lead hour (`…:twin-pm25-forecast:<station>:h01` … `h24`), so a new
forecast overwrites the previous one and the entity's history keeps every forecast made.

The service may start before any model exists (`climaborough up` does): every
`twin_model_check_s` it re-reads the store's `active` pointer files, widens the subscription when a
station gains a model and forecasts a station again when its active version changes (a new model or
a rollback), without a restart.

Stations are known by their AirQualityObserved entity id; the model store keys models by it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic_settings import BaseSettings, SettingsConfigDict

from kpi.calculators.eaqi import EEA_BANDS, EEA_UPPER_LIMITS_2024, eea_pollutant_level
from kpi.intake import HttpIntake, MqttIntake
from ngsi.client import AsyncBrokerClient, GeoQuery
from ngsi.errors import AlreadyExists, NgsiError, OperationNotSupported, ResourceNotFound
from smart_data_models import format_timestamp, sanitise_id_part
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT, WEATHER_CONTEXT
from twin.dataset import CALENDAR, POLLUTANTS, WEATHER, add_features, hourly_frame
from twin.history import read_history_api, short_name
from twin.model import Forecaster
from twin.scenarios import TrainingRange
from twin.store import ModelInfo, ModelNotFound, ModelStore
from twin.training import latest_window

log = logging.getLogger(__name__)

NEAREST_WEATHER_M = 10_000
"""How far a WeatherObserved may be from a station without `refWeatherObserved` to stand for its weather."""
COVARIATES_FORECAST = "WeatherForecast"
COVARIATES_YESTERDAY = "WeatherObserved of the same hours yesterday"
CALCULATED_BY = "climaborough twin"
FORMULA = "ridge regression + residual LSTM over the last observed hours and the weather ahead (twin/model.py)"
UNIT_CODES: dict[str, str] = {"co": "GP"}
"""UN/CEFACT unit of each target; everything else is µg/m³ (GQ)."""
WIND_VECTOR = ("wind_u", "wind_v")


class ForecastSettings(BaseSettings):
    """Where the broker, the MQTT server and the model store are, and how notifications arrive."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    tenant: str | None = None
    data_dir: Path = Path(".data")
    twin_notify: Literal["mqtt", "http"] = "mqtt"
    twin_http_host: str = "127.0.0.1"
    twin_http_port: int = 0
    """Port of the HTTP notification receiver (0: any free port)."""
    twin_http_advertised_host: str | None = None
    twin_client_id: str = "climaborough-twin"
    """Names the service's MQTT session, topic and subscription."""
    twin_target: str = "pm25"
    twin_request_timeout_s: float = 30.0
    twin_model_check_s: float = 5.0
    """How often the model store's `active` pointers are re-read: a model trained or rolled back
    while the service runs is picked up (subscription widened, station forecast again) within this."""

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"


class NotEnoughHistory(OperationNotSupported):
    """The broker does not hold the recent observations a forecast needs."""

    title = "Not enough history to forecast"
    type = OperationNotSupported.type


# -- models ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model version and what its artefact says about it."""

    version: str
    forecaster: Forecaster
    artefact: dict[str, Any]

    @property
    def station(self) -> str:
        return str(self.artefact["station"])

    @property
    def target(self) -> str:
        return self.forecaster.target

    @property
    def local_tz(self) -> str | None:
        tz = self.artefact.get("localTimeZone")
        return str(tz) if tz else None

    @property
    def seasonal(self) -> bool:
        """Whether the model uses the day-of-year cycle (trained on a year or more of history): the
        features of a short recent window must then include it too."""
        return "doy_sin" in self.forecaster.features

    @property
    def bounds(self) -> TrainingRange:
        ranges = self.artefact["trainingRange"]
        return TrainingRange(ranges["min"], ranges["max"])

    @property
    def residual_q10(self) -> list[float]:
        return list(self.artefact["metrics"]["residual_q10"])

    @property
    def residual_q90(self) -> list[float]:
        return list(self.artefact["metrics"]["residual_q90"])


class ActiveModels:
    """The active model of each station, loaded once per version (a rollback is seen at the next call)."""

    LIST_TTL_S: ClassVar[float] = 2.0

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._loaded: dict[str, ActiveModel] = {}
        self._lock = threading.Lock()
        self._listed: tuple[float, list[ModelInfo]] | None = None
        self._pointers: dict[str, dict[str, str]] = {}

    def listing(self) -> list[ModelInfo]:
        """Every stored version (re-read at most every `LIST_TTL_S`: listing reads every artefact)."""
        now = time.monotonic()
        listed = self._listed
        if listed is None or now - listed[0] > self.LIST_TTL_S:
            listed = self._listed = (now, self.store.list())
        return listed[1]

    def active(self, target: str | None = None) -> list[ModelInfo]:
        """Active versions (from the listing, at most `LIST_TTL_S` old)."""
        return [info for info in self.listing() if info.active and (target is None or info.target == target)]

    def active_versions(self, target: str) -> dict[str, str]:
        """Station → active version of `target`, from the store's `active` pointer files only (cheap:
        no artefact is read). A change here also drops the cached listing of `active`."""
        versions: dict[str, str] = {}
        for pointer in self.store.root.glob("*/*/active"):
            try:
                version = pointer.read_text().strip()
            except OSError:  # replaced while we read it: seen at the next check
                continue
            station, _, rest = version.partition("/")
            series, _, number = rest.partition("/")
            if series == target and number:
                versions[station] = version
        with self._lock:
            if versions != self._pointers.get(target):
                self._pointers[target] = versions
                self._listed = None
        return versions

    def resolve(self, station: str, target: str) -> str:
        """The store's station key for `station`: an entity id, or its last segment (`Aotizhongxin`).
        The cached listing answers; a station it does not know is looked up in the store itself
        (a model trained since the listing was read)."""
        for listing in (self.listing, self.store.list):
            stations = {info.station for info in listing() if info.target == target}
            if station in stations:
                return station
            matches = sorted(s for s in stations if s.rsplit(":", 1)[-1] == station)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ModelNotFound(f"{station!r} names several stations: {', '.join(matches)}; use the entity id")
        known = ", ".join(sorted(stations)) or "none"
        raise ModelNotFound(f"no trained {target} model for station {station!r} (stations with a model: {known})")

    def get(self, station: str, target: str) -> ActiveModel:
        """The active model of a station (blocking: loading runs TensorFlow, call it in a thread)."""
        key = self.resolve(station, target)
        version = self.store.active_version(key, target)
        with self._lock:
            if version not in self._loaded:
                self._loaded[version] = ActiveModel(version, self.store.load(version), self.store.artefact(version))
            return self._loaded[version]


# -- reading what a forecast needs ------------------------------------------------------------------


@dataclass(frozen=True)
class StationSources:
    """The entities a station's forecast reads and the names its KPI entities get."""

    air_quality: str
    weather: str | None
    city: str
    name: str

    @classmethod
    def named(cls, air_quality: str, weather: str | None) -> StationSources:
        # urn:ngsi-ld:AirQualityObserved:<city>:<station>
        parts = air_quality.split(":")
        city = parts[3] if len(parts) >= 5 and parts[:2] == ["urn", "ngsi-ld"] else "city"
        return cls(air_quality, weather, sanitise_id_part(city) or "city", sanitise_id_part(parts[-1]) or "station")


@dataclass(frozen=True)
class ForecastInputs:
    """One model input window, the covariates over the horizon and where they came from."""

    window: np.ndarray
    future: np.ndarray
    origin: pd.Timestamp
    covariates: str


def raw_attributes(features: Sequence[str]) -> tuple[list[str], list[str]]:
    """(air-quality, weather) attributes to read for a model's features (the wind vector needs
    speed and direction; calendar features need nothing)."""
    raw = {f for f in features if f not in CALENDAR and f not in WIND_VECTOR}
    if any(f in features for f in WIND_VECTOR):
        raw |= {"windSpeed", "windDirection"}
    return sorted(raw & set(POLLUTANTS)), sorted(raw - set(POLLUTANTS))


def _instance_time(attribute: Any) -> datetime | None:
    instances = attribute if isinstance(attribute, list) else [attribute]
    stamps = [i["observedAt"] for i in instances if isinstance(i, dict) and isinstance(i.get("observedAt"), str)]
    return max((_parse(s) for s in stamps), default=None)


def _parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class StationReader:
    """Reads a station's recent history and weather forecast from any NGSI-LD broker."""

    def __init__(self, broker_url: str, *, tenant: str | None = None, timeout: float = 30.0) -> None:
        def client(context: str) -> AsyncBrokerClient:
            return AsyncBrokerClient(broker_url, tenant=tenant, context=context, timeout=timeout)

        self.air_quality = client(ENVIRONMENT_CONTEXT)
        self.weather = client(WEATHER_CONTEXT)
        self.kpi = client(KPI_CONTEXT)
        self._sources: dict[str, StationSources] = {}

    async def aclose(self) -> None:
        for client in (self.air_quality, self.weather, self.kpi):
            await client.aclose()

    async def sources(self, station_id: str) -> StationSources:
        """The station's AirQualityObserved and the WeatherObserved at or near it (cached)."""
        if station_id in self._sources:
            return self._sources[station_id]
        try:
            station = await self.air_quality.get_entity(station_id)
        except ResourceNotFound:
            raise ResourceNotFound(f"the broker has no entity {station_id}", entity=station_id) from None
        weather: str | None = None
        reference = station.get("refWeatherObserved")
        if isinstance(reference, dict) and isinstance(reference.get("object"), str):
            weather = reference["object"]
        else:
            location = station.get("location")
            point = location.get("value") if isinstance(location, dict) else None
            if isinstance(point, dict) and point.get("type") == "Point":
                near = GeoQuery(f"near;maxDistance=={NEAREST_WEATHER_M}", "Point", point["coordinates"])
                found = await self.weather.query_entities(type="WeatherObserved", geo=near, attrs="location", limit=1)
                weather = found.items[0]["id"] if found.items else None
        self._sources[station_id] = StationSources.named(station_id, weather)
        return self._sources[station_id]

    async def history(self, station_id: str, since: datetime, until: datetime) -> pd.DataFrame:
        """What a model can learn from: every pollutant of the station and the weather at or near it."""
        sources = await self.sources(station_id)
        frames = [await read_history_api(self.air_quality, [station_id], list(POLLUTANTS), since, until)]
        if sources.weather is not None:
            frames.append(await read_history_api(self.weather, [sources.weather], list(WEATHER), since, until))
        return pd.concat(frames, axis=1).sort_index()

    async def latest_observation(self, station_id: str, target: str) -> datetime:
        """`observedAt` of the station's current `target` value (now when it has none)."""
        entity = await self.air_quality.get_entity(station_id, attrs=target)
        return _instance_time(entity.get(target)) or datetime.now(UTC)

    async def recent_observations(self, sources: StationSources, model: ActiveModel, until: datetime) -> pd.DataFrame:
        """The station's observations (SDM names, UTC index) of the hours the model looks back on."""
        config = model.forecaster.config
        # Enough for the input window, yesterday's weather over the horizon and a few missing hours.
        since = until - timedelta(hours=config.lookback + 24)
        air, weather = raw_attributes(model.forecaster.features)
        reads = [read_history_api(self.air_quality, [sources.air_quality], air, since, until)]
        if weather and sources.weather is not None:
            reads.append(read_history_api(self.weather, [sources.weather], weather, since, until))
        frame = pd.concat(await asyncio.gather(*reads), axis=1).sort_index()
        missing = sorted(set(air + weather) - set(frame.columns))
        if missing:
            raise NotEnoughHistory(
                f"{sources.air_quality}: no {', '.join(missing)} observations between "
                f"{format_timestamp(since)} and {format_timestamp(until)}"
                + ("" if sources.weather else " (no WeatherObserved at or near the station)"),
                entity=sources.air_quality,
            )
        return frame

    async def weather_forecast(
        self, sources: StationSources, model: ActiveModel, after: datetime, hours: int
    ) -> pd.DataFrame | None:
        """The station's WeatherForecast values valid over the `hours` after `after`, or None."""
        _, weather = raw_attributes(model.forecaster.features)
        if not weather:
            return None
        start, end = format_timestamp(after), format_timestamp(after + timedelta(hours=hours))
        pattern = f"^urn:ngsi-ld:WeatherForecast:{sources.city}:{sources.name}(:.*)?$"
        rows: list[dict[str, Any]] = []
        async for entity in self.weather.iter_entities(
            type="WeatherForecast", id_pattern=pattern, q=f"validFrom>{start};validFrom<={end}",
            attrs=[*weather, "validFrom"], options="keyValues", page_size=100,
        ):  # fmt: skip
            valid = entity.get("validFrom")
            valid = valid.get("@value") if isinstance(valid, dict) else valid
            if isinstance(valid, str):
                rows.append({"time": _parse(valid), **{short_name(k): v for k, v in entity.items()}})
        if not rows:
            return None
        frame = pd.DataFrame(rows).set_index("time")
        frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
        numeric = frame[[c for c in weather if c in frame.columns]]
        return add_features(hourly_frame(numeric), local_tz=model.local_tz, seasonal=model.seasonal)

    async def inputs(self, model: ActiveModel, until: datetime | None = None) -> ForecastInputs:
        """The newest complete input window at or before `until` (default: the station's newest
        observation) and the weather over the horizon after it."""
        sources = await self.sources(model.station)
        if until is None:
            until = await self.latest_observation(model.station, model.target)
        until = until + timedelta(seconds=1)  # the temporal API's `between` excludes its end
        observations = await self.recent_observations(sources, model, until)
        frame = add_features(hourly_frame(observations), local_tz=model.local_tz, seasonal=model.seasonal)
        forecaster = model.forecaster
        try:
            window, future, origin = latest_window(frame, forecaster)
        except ValueError as error:
            raise NotEnoughHistory(f"{model.station}: {error}", entity=model.station) from None
        forecast = await self.weather_forecast(sources, model, origin.to_pydatetime(), forecaster.config.horizon)
        if forecast is not None:
            try:
                _, future, _ = latest_window(frame.loc[:origin], forecaster, forecast)
                return ForecastInputs(window, future, origin, COVARIATES_FORECAST)
            except (ValueError, KeyError):
                log.warning("weather forecast of %s unusable; using yesterday's weather", model.station)
        return ForecastInputs(window, future, origin, COVARIATES_YESTERDAY)


# -- forecasting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """A station's forecast for the hours after `origin`, with its uncertainty band and EEA bands."""

    station: str
    target: str
    version: str
    origin: pd.Timestamp
    covariates: str
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    bands: list[str] | None

    @property
    def hours(self) -> pd.DatetimeIndex:
        return pd.date_range(self.origin + pd.Timedelta(hours=1), periods=len(self.values), freq="1h")

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station,
            "target": self.target,
            "modelVersion": self.version,
            "origin": format_timestamp(self.origin.to_pydatetime()),
            "covariates": self.covariates,
            "unitCode": UNIT_CODES.get(self.target, "GQ"),
            "hours": [
                {
                    "time": format_timestamp(hour.to_pydatetime()),
                    "value": round(float(value), 2),
                    "low": round(float(low), 2),
                    "high": round(float(high), 2),
                    "eeaBand": self.bands[i] if self.bands else None,
                }
                for i, (hour, value, low, high) in enumerate(
                    zip(self.hours, self.values, self.low, self.high, strict=True)
                )
            ],
        }


def eea_bands(target: str, values: np.ndarray) -> list[str] | None:
    if target not in EEA_UPPER_LIMITS_2024:
        return None
    return [EEA_BANDS[eea_pollutant_level(target, float(max(v, 0.0))) - 1] for v in values]


def forecast_from(model: ActiveModel, inputs: ForecastInputs) -> Forecast:
    """Run the model on one window (CPU work: call it in a thread)."""
    predicted = model.forecaster.predict(inputs.window[None], inputs.future[None])[0]
    values = np.clip(predicted, 0, None)
    low = np.clip(values + np.asarray(model.residual_q10), 0, None)
    high = np.clip(values + np.asarray(model.residual_q90), 0, None)
    return Forecast(
        model.station, model.target, model.version, inputs.origin, inputs.covariates, values, low, high,
        eea_bands(model.target, values),
    )  # fmt: skip


def forecast_kpi_ids(sources: StationSources, target: str, horizon: int) -> list[str]:
    """Ids of the concentration and band KPI entities of every lead hour."""
    return [
        kpi_id(sources, series, lead)
        for series in (f"twin-{target}-forecast", f"twin-{target}-eea-band-forecast")
        for lead in range(1, horizon + 1)
    ]


def kpi_id(sources: StationSources, series: str, lead: int) -> str:
    return f"urn:ngsi-ld:KeyPerformanceIndicator:{sources.city}:{series}:{sources.name}:h{lead:02d}"


def _prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def forecast_entities(forecast: Forecast, sources: StationSources, features: Sequence[str]) -> list[dict[str, Any]]:
    """KeyPerformanceIndicator entities (normalized) of one forecast: per lead hour, the predicted
    concentration and, for pollutants the EEA index covers, the predicted band."""
    target, origin = forecast.target, format_timestamp(forecast.origin.to_pydatetime())
    unit = UNIT_CODES.get(target, "GQ")
    air, weather = raw_attributes(features)
    aggregated = [{"entityType": "AirQualityObserved", "attrs": air}]
    if weather:
        aggregated.append({"entityType": "WeatherObserved", "attrs": weather})
    entities: list[dict[str, Any]] = []
    for lead, hour in enumerate(forecast.hours, start=1):
        at = format_timestamp(hour.to_pydatetime())
        provenance = {
            "modelVersion": forecast.version, "origin": origin, "leadHours": lead, "covariates": forecast.covariates,
            "sources": [s for s in (sources.air_quality, sources.weather) if s],
        }  # fmt: skip
        common: dict[str, Any] = {
            "type": "KeyPerformanceIndicator",
            "category": _prop(["quantitative", "leading"]),
            "organization": _prop(sources.city),
            "process": _prop(f"{target} forecast"),
            "calculatedBy": _prop(CALCULATED_BY),
            "calculationMethod": _prop("automatic"),
            "calculationFrequency": _prop("hourly"),
            "calculationFormula": _prop(FORMULA),
            "aggregatedData": _prop(aggregated),
            "area": _prop(sources.name),
            "refSourceEntity": {"type": "Relationship", "object": sources.air_quality},
            "provenance": _prop(provenance),
            "@context": [KPI_CONTEXT],
        }
        i = lead - 1
        entities.append({
            "id": kpi_id(sources, f"twin-{target}-forecast", lead),
            **common,
            "name": _prop(f"Forecast {target} +{lead} h — {sources.name}"),
            "description": _prop(f"Predicted hourly {target} concentration {lead} h after the newest observation"),
            "kpiValue": _prop(round(float(forecast.values[i]), 2), observedAt=at, unitCode=unit),
            "kpiDetails": _prop(
                {"low": round(float(forecast.low[i]), 2), "high": round(float(forecast.high[i]), 2),
                 "band": "residual quantiles 10-90 % on the test split"},
                observedAt=at,
            ),
        })  # fmt: skip
        if forecast.bands is not None:
            entities.append({
                "id": kpi_id(sources, f"twin-{target}-eea-band-forecast", lead),
                **common,
                "name": _prop(f"Forecast EEA index band ({target}) +{lead} h — {sources.name}"),
                "description": _prop(f"European Air Quality Index band of the predicted {target}, {lead} h ahead"),
                "kpiValue": _prop(forecast.bands[i], observedAt=at),
                "kpiDetails": _prop({"level": EEA_BANDS.index(forecast.bands[i]) + 1}, observedAt=at),
            })  # fmt: skip
    return entities


# -- the service ----------------------------------------------------------------------------------


def subscription_id(client_id: str) -> str:
    return f"urn:ngsi-ld:Subscription:{client_id}:AirQualityObserved"


@dataclass
class ServiceStats:
    notifications: int = 0
    forecasts: int = 0
    errors: int = 0
    last_error: str | None = None
    last_forecast: dict[str, str] = field(default_factory=dict)


class ForecastService:
    """Keeps forecast KPI entities of every station with an active model up to date (module docstring)."""

    def __init__(self, settings: ForecastSettings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.models = ActiveModels(store or ModelStore(settings.model_dir))
        self.reader = StationReader(
            settings.broker_url, tenant=settings.tenant, timeout=settings.twin_request_timeout_s
        )
        self.stats = ServiceStats()
        self._intake: MqttIntake | HttpIntake | None = None
        self._pending: dict[str, datetime] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: dict[str, tuple[str, pd.Timestamp, str]] = {}
        self._idle = asyncio.Event()
        self._versions: dict[str, str] = {}
        """Active model version of each station as last seen (`check_models` compares against it)."""
        self._subscribed: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for notifications and subscribe to the stations with an active model."""
        s = self.settings
        if s.twin_notify == "mqtt":
            self._intake = MqttIntake(s.mqtt_url, f"climaborough/twin/{s.twin_client_id}", s.twin_client_id,
                                      self.on_notification)  # fmt: skip
        else:
            self._intake = HttpIntake(s.twin_http_host, s.twin_http_port, self.on_notification,
                                      advertised_host=s.twin_http_advertised_host)  # fmt: skip
        await self._intake.start()
        self._versions = await asyncio.to_thread(self.models.active_versions, s.twin_target)
        stations = await self.register_subscription(self._intake.endpoint_uri)
        self._subscribed = set(stations)
        self._watcher = asyncio.create_task(self._watch_models())
        log.info("twin forecast service started stations=%d endpoint=%s", len(stations), self._intake.endpoint_uri)

    async def stop(self, *, drain_timeout: float = 60.0) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._intake is not None:
            await self._intake.stop()
        try:
            await asyncio.wait_for(self.drained(), drain_timeout)
        except TimeoutError:
            log.warning("twin forecast service stopped with %d stations pending", len(self._pending))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reader.aclose()

    async def __aenter__(self) -> ForecastService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def drained(self) -> None:
        """Wait until no forecast is pending or running."""
        while self._pending or self._running:
            self._idle.clear()
            await self._idle.wait()

    # -- subscription ------------------------------------------------------------------------------

    def stations(self) -> list[str]:
        """Stations with an active model of the target (read from the store's pointer files)."""
        return sorted(self.models.active_versions(self.settings.twin_target))

    async def register_subscription(self, endpoint_uri: str) -> list[str]:
        """One subscription to the target of every station with an active model (updated if it exists)."""
        stations = self.stations()
        sid = subscription_id(self.settings.twin_client_id)
        client = self.reader.air_quality
        if not stations:
            log.warning("no active twin model for %s: nothing to forecast yet", self.settings.twin_target)
            return []
        endpoint: dict[str, Any] = {"uri": endpoint_uri, "accept": "application/json"}
        if endpoint_uri.startswith("mqtt"):
            endpoint["notifierInfo"] = [{"key": "MQTT-QoS", "value": "1"}]
        target = self.settings.twin_target
        body: dict[str, Any] = {
            "id": sid,
            "type": "Subscription",
            "description": "climaborough twin: new observations of stations with a forecast model",
            "entities": [{"id": station, "type": "AirQualityObserved"} for station in stations],
            "watchedAttributes": [target],
            "notification": {"attributes": [target], "format": "normalized", "endpoint": endpoint},
        }
        try:
            await client.create_subscription(body)
        except AlreadyExists:
            await client.update_subscription(sid, {k: v for k, v in body.items() if k not in ("id", "type")})
        return stations

    # -- models trained or rolled back while running -----------------------------------------------

    async def _watch_models(self) -> None:
        while True:
            await asyncio.sleep(self.settings.twin_model_check_s)
            try:
                await self.check_models()
            except Exception as error:  # the broker may be away for a while: try again at the next check
                log.warning("twin model check failed (retried in %.0f s): %s", self.settings.twin_model_check_s,
                            error)  # fmt: skip

    async def check_models(self) -> list[str]:
        """Pick up models activated since the last check: widen (or narrow) the subscription to the
        stations that have one now and forecast each changed station from its newest observation,
        so its forecast KPIs come from the active model without waiting for the next observation.
        Returns the stations whose active version changed."""
        target = self.settings.twin_target
        versions = await asyncio.to_thread(self.models.active_versions, target)
        if versions == self._versions:
            return []
        if versions and set(versions) != self._subscribed and self._intake is not None:
            self._subscribed = set(await self.register_subscription(self._intake.endpoint_uri))
            log.info("twin subscription now covers stations=%s", sorted(self._subscribed))
        changed = sorted(station for station, version in versions.items() if self._versions.get(station) != version)
        self._versions = versions
        for station in changed:
            try:
                moment = await self.reader.latest_observation(station, target)
            except NgsiError as error:
                log.warning("twin model %s is active but its station cannot be read: %s", versions[station], error)
                continue
            log.info("twin model %s is active: forecasting %s again", versions[station], station)
            self._queue(station, moment)
        return changed

    # -- notifications -----------------------------------------------------------------------------

    async def on_notification(self, notification: dict[str, Any]) -> None:
        """Queue a forecast for each notified station with an active model (newest moment wins)."""
        self.stats.notifications += 1
        target = self.settings.twin_target
        stations = set(self.stations())
        for entity in notification.get("data", []):
            if not isinstance(entity, dict) or entity.get("id") not in stations:
                continue
            attribute = next((v for k, v in entity.items() if short_name(k) == target), None)
            moment = _instance_time(attribute)
            if moment is not None:
                self._queue(str(entity["id"]), moment)

    def _queue(self, station: str, moment: datetime) -> None:
        """Forecast `station` from `moment` (or the newest moment queued meanwhile), one run at a time."""
        self._pending[station] = max(moment, self._pending.get(station, moment))
        if station not in self._running:
            self._running.add(station)
            task = asyncio.create_task(self._work(station))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self, station: str) -> None:
        try:
            while station in self._pending:
                until = self._pending.pop(station)
                try:
                    await self.forecast_station(station, until=until)
                except (NgsiError, ModelNotFound, ValueError) as error:
                    self.stats.errors += 1
                    self.stats.last_error = f"{station}: {error}"
                    log.warning("twin forecast failed station=%s: %s", station, error)
                except Exception as error:  # one failing station must not stop the service
                    self.stats.errors += 1
                    self.stats.last_error = f"{station}: {type(error).__name__}: {error}"
                    log.exception("twin forecast failed station=%s", station)
        finally:
            self._running.discard(station)
            self._idle.set()

    async def forecast_station(self, station: str, *, until: datetime | None = None) -> Forecast | None:
        """Forecast one station from its newest window at or before `until` and write the KPI
        entities; None when that origin was already forecast by the same model version."""
        model = await asyncio.to_thread(self.models.get, station, self.settings.twin_target)
        inputs = await self.reader.inputs(model, until)
        done = (model.version, inputs.origin, inputs.covariates)
        if self._done.get(model.station) == done:
            return None
        forecast = await asyncio.to_thread(forecast_from, model, inputs)
        sources = await self.reader.sources(model.station)
        result = await self.reader.kpi.batch_upsert(forecast_entities(forecast, sources, model.forecaster.features))
        if not result.ok:
            raise result.errors[0].error
        self._done[model.station] = done
        self.stats.forecasts += 1
        self.stats.last_forecast[model.station] = format_timestamp(inputs.origin.to_pydatetime())
        log.info("twin forecast station=%s origin=%s version=%s covariates=%s",
                 model.station, inputs.origin, model.version, inputs.covariates)  # fmt: skip
        return forecast


async def read_forecast(reader: StationReader, station: str, target: str, horizon: int = 24) -> dict[str, Any]:
    """The forecast the broker holds for a station (as written by the service), as one series."""
    sources = await reader.sources(station)
    ids = forecast_kpi_ids(sources, target, horizon)
    found = await reader.kpi.query_entities(type="KeyPerformanceIndicator", id=ids, limit=len(ids))
    by_id = {entity["id"]: entity for entity in found.items}
    values = [by_id.get(kpi_id(sources, f"twin-{target}-forecast", lead)) for lead in range(1, horizon + 1)]
    if not any(values):
        raise ResourceNotFound(f"the broker holds no {target} forecast for {station} yet", entity=station)
    hours: list[dict[str, Any]] = []
    provenance: dict[str, Any] = {}
    for lead, entity in enumerate(values, start=1):
        if entity is None:
            continue
        band = by_id.get(kpi_id(sources, f"twin-{target}-eea-band-forecast", lead))
        details = entity.get("kpiDetails", {}).get("value", {})
        provenance = entity.get("provenance", {}).get("value", provenance)
        hours.append({
            "time": entity["kpiValue"].get("observedAt"), "value": entity["kpiValue"]["value"],
            "low": details.get("low"), "high": details.get("high"),
            "eeaBand": band["kpiValue"]["value"] if band else None, "kpi": entity["id"],
        })  # fmt: skip
    return {
        "station": station, "target": target, "modelVersion": provenance.get("modelVersion"),
        "origin": provenance.get("origin"), "covariates": provenance.get("covariates"),
        "unitCode": UNIT_CODES.get(target, "GQ"), "hours": hours,
    }  # fmt: skip

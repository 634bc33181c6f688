"""The subscription-driven KPI engine: a change notification → the windows it affects → recomputed KPI entities.

Flow: the engine registers one subscription per source type (deterministic id, so a restart
reuses it) with MQTT (default) or HTTP notifications. A notification names entities and the
`observedAt` of the attributes that changed; each affected (definition, entity, window) becomes
a job. Jobs of one source entity run together and never concurrently: their history is read
once per distinct span from the temporal API, evaluated, and the KPI entities are written in one
batch. A job already waiting absorbs new changes (coalescing); `trigger.min_interval_s` spaces
out recalculations of long windows. Scheduled definitions are recomputed every `every_s` for the
window that contains now. `stop()` drains the queue, so a graceful restart loses nothing; changes
made while the engine is down wait in its persistent MQTT session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kpi.definitions import DefinitionSet, KpiDefinition
from kpi.entities import KpiEntity, calculate_kpi
from kpi.history import History, parse_time, read_history
from kpi.intake import HttpIntake, MqttIntake
from kpi.settings import KpiSettings
from kpi.windows import Window, window_at
from kpi.writer import KpiWriter
from ngsi.client import AsyncBrokerClient
from ngsi.errors import AlreadyExists, NgsiError
from smart_data_models.models import KPI_CONTEXT

log = logging.getLogger(__name__)

JobKey = tuple[str, str, str]
"""(definition id, source entity id, window label)."""


@dataclass(frozen=True)
class Job:
    definition: KpiDefinition
    source_id: str
    window: Window

    @property
    def key(self) -> JobKey:
        return (self.definition.id, self.source_id, self.window.label)


@dataclass
class EngineStats:
    notifications: int = 0
    jobs: int = 0
    reads: int = 0
    errors: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.monotonic)


def subscription_id(client_id: str, entity_type: str) -> str:
    return f"urn:ngsi-ld:Subscription:{client_id}:{entity_type}"


def observed_moments(entity: dict[str, Any], attributes: Iterable[str]) -> set[datetime]:
    """The distinct `observedAt` of the given attributes in a notified entity (normalized or concise)."""
    moments: set[datetime] = set()
    for name in attributes:
        attribute = entity.get(name)
        for instance in attribute if isinstance(attribute, list) else [attribute]:
            if isinstance(instance, dict) and isinstance(instance.get("observedAt"), str):
                moments.add(parse_time(instance["observedAt"]))
    return moments


def _merged_spans(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class KpiEngine:
    """Keeps the KPI entities of `definitions` up to date with the broker's data."""

    def __init__(self, settings: KpiSettings, definitions: DefinitionSet) -> None:
        self.settings = settings
        self.definitions = definitions
        self.stats = EngineStats()
        self._clients: dict[str | None, AsyncBrokerClient] = {}
        self.writer = KpiWriter(self.client_for(KPI_CONTEXT))
        self._intake: MqttIntake | HttpIntake | None = None
        self._pending: dict[str, dict[JobKey, Job]] = {}
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._deferred: set[JobKey] = set()
        self._last_run: dict[JobKey, float] = {}
        self._latest_seen: dict[str, datetime] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._schedules: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def client_for(self, context: str | None) -> AsyncBrokerClient:
        """One client per @context (sent as Link), so that types and attributes mean what the producers meant."""
        if context not in self._clients:
            self._clients[context] = AsyncBrokerClient(
                self.settings.broker_url, tenant=self.settings.tenant, context=context,
                timeout=self.settings.kpi_request_timeout_s,
            )  # fmt: skip
        return self._clients[context]

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for notifications, register the subscriptions, start workers and schedules."""
        topic = f"climaborough/kpi/{self.settings.kpi_client_id}"
        if self.settings.kpi_notify == "mqtt":
            self._intake = MqttIntake(self.settings.mqtt_url, topic, self.settings.kpi_client_id, self.on_notification)
        else:
            self._intake = HttpIntake(
                self.settings.kpi_http_host, self.settings.kpi_http_port, self.on_notification,
                advertised_host=self.settings.kpi_http_advertised_host,
            )  # fmt: skip
        await self._intake.start()
        self._workers = [asyncio.create_task(self._work()) for _ in range(max(1, self.settings.kpi_workers))]
        await self.register_subscriptions(self._intake.endpoint_uri)
        for definition in self.definitions:
            if definition.trigger.on_schedule:
                self._schedules.append(asyncio.create_task(self._schedule(definition)))
        log.info("kpi engine started definitions=%d endpoint=%s", len(self.definitions), self._intake.endpoint_uri)

    async def stop(self, *, drain_timeout: float = 30.0) -> None:
        """Stop taking notifications, finish the queued work, close connections."""
        for task in self._schedules:
            task.cancel()
        if self._intake is not None:
            await self._intake.stop()
        try:
            await asyncio.wait_for(self.drained(), drain_timeout)
        except TimeoutError:
            log.warning("kpi engine stopped with %d entities still queued", len(self._pending))
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, *self._schedules, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()

    async def __aenter__(self) -> KpiEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def drained(self) -> None:
        """Wait until no job is queued, deferred or running."""
        while True:
            await self._idle.wait()
            if not self._pending and not self._running and not self._deferred:
                return
            self._idle.clear()

    def _update_idle(self) -> None:
        if not self._pending and not self._running and not self._deferred:
            self._idle.set()
        else:
            self._idle.clear()

    # -- subscriptions ---------------------------------------------------------------------------

    async def register_subscriptions(self, endpoint_uri: str) -> list[str]:
        """One subscription per (source type, @context); an existing one (same id) is updated."""
        groups: dict[tuple[str, str | None], set[str]] = {}
        for definition in self.definitions:
            if definition.trigger.on_change:
                key = (definition.source.type, definition.source.ld_context)
                groups.setdefault(key, set()).update(definition.source.attributes)
        ids = []
        for (entity_type, context), attributes in sorted(groups.items(), key=lambda g: g[0][0]):
            endpoint: dict[str, Any] = {"uri": endpoint_uri, "accept": "application/json"}
            if endpoint_uri.startswith("mqtt"):
                endpoint["notifierInfo"] = [{"key": "MQTT-QoS", "value": "1"}]
            body: dict[str, Any] = {
                "id": subscription_id(self.settings.kpi_client_id, entity_type),
                "type": "Subscription",
                "description": f"climaborough KPI engine: changes of {entity_type}",
                "entities": [{"type": entity_type}],
                "watchedAttributes": sorted(attributes),
                "notification": {"attributes": sorted(attributes), "format": "normalized", "endpoint": endpoint},
            }
            if context is not None:
                body["@context"] = [context]
            client = self.client_for(context)
            try:
                await client.create_subscription(body)
            except AlreadyExists:
                update = {k: v for k, v in body.items() if k not in ("id", "type")}
                await client.update_subscription(body["id"], update)
            ids.append(body["id"])
        return ids

    # -- notifications → jobs --------------------------------------------------------------------

    async def on_notification(self, notification: dict[str, Any]) -> None:
        """Turn the entities of one notification into jobs for the windows they change."""
        self.stats.notifications += 1
        for entity in notification.get("data", []):
            if not isinstance(entity, dict) or not isinstance(entity.get("id"), str):
                continue
            self.changed(entity["id"], str(entity.get("type", "")), entity)

    def changed(self, source_id: str, entity_type: str, entity: dict[str, Any]) -> None:
        """Queue the windows of every on-change definition that a change of `source_id` affects."""
        short_type = entity_type.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
        for definition in self.definitions.for_source(short_type):
            if not definition.trigger.on_change or not definition.source.stations.matches(source_id):
                continue
            moments = observed_moments(entity, definition.source.attributes)
            if not moments:
                continue
            latest = max(moments)
            self._latest_seen[source_id] = max(latest, self._latest_seen.get(source_id, latest))
            for window in self.affected_windows(definition, moments, self._latest_seen[source_id]):
                self.enqueue(Job(definition, source_id, window))

    def affected_windows(self, definition: KpiDefinition, moments: set[datetime], latest: datetime) -> list[Window]:
        windows: dict[str, Window] = {}
        calculator = definition.calculator_impl
        for moment in moments:
            window = window_at(definition.window.kind, moment, definition.tz, custom=definition.custom_bounds)
            if definition.window.kind == "custom" and not window.contains(moment):
                continue
            windows[window.label] = window
            for _ in range(calculator.affected_windows(definition.params, window, definition.tz) - 1):
                window = window.following()
                if window.start > latest:
                    break
                windows[window.label] = window
        return list(windows.values())

    def enqueue(self, job: Job) -> None:
        source = job.source_id
        interval = job.definition.trigger.min_interval_s
        if interval > 0 and job.key not in self._pending.get(source, {}):
            wait = self._last_run.get(job.key, float("-inf")) + interval - time.monotonic()
            if wait > 0:
                if job.key not in self._deferred:
                    self._deferred.add(job.key)
                    self._idle.clear()
                    asyncio.get_running_loop().call_later(wait, self._release, job)
                return
        self._pending.setdefault(source, {})[job.key] = job
        self.stats.jobs += 1
        self._idle.clear()
        if source not in self._queued and source not in self._running:
            self._queued.add(source)
            self._ready.put_nowait(source)

    def _release(self, job: Job) -> None:
        self._deferred.discard(job.key)
        self._last_run.pop(job.key, None)
        self.enqueue(job)
        self._update_idle()

    # -- workers ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            source = await self._ready.get()
            self._queued.discard(source)
            jobs = list(self._pending.pop(source, {}).values())
            self._running.add(source)
            try:
                if jobs:
                    await self.run_jobs(source, jobs)
            except Exception as error:  # one failing source must not stop the engine
                self.stats.errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                log.exception("kpi jobs failed source=%s jobs=%d", source, len(jobs))
            finally:
                self._running.discard(source)
                if self._pending.get(source) and source not in self._queued:
                    self._queued.add(source)
                    self._ready.put_nowait(source)
                self._update_idle()

    async def run_jobs(self, source_id: str, jobs: list[Job]) -> list[KpiEntity]:
        """Read the history the jobs need (once per distinct span), evaluate, write."""
        now = time.monotonic()
        for job in jobs:
            self._last_run[job.key] = now
        by_read: dict[tuple[str, str | None], list[Job]] = {}
        for job in jobs:
            by_read.setdefault((job.definition.source.type, job.definition.source.ld_context), []).append(job)
        results: list[KpiEntity] = []
        for (entity_type, context), group in by_read.items():
            attributes = sorted({a for job in group for a in job.definition.source.attributes})
            spans = [job.definition.calculator_impl.span(job.definition.params, job.window, job.definition.tz)
                     for job in group]  # fmt: skip
            history: History = {}
            for start, end in _merged_spans(spans):
                self.stats.reads += 1
                part = await read_history(
                    self.client_for(context), entity_type=entity_type, attributes=attributes,
                    start=start, end=end, entity_ids=[source_id],
                )  # fmt: skip
                for attr, series in part.get(source_id, {}).items():
                    history.setdefault(source_id, {}).setdefault(attr, []).extend(series)
            observations = {attr: sorted(series) for attr, series in history.get(source_id, {}).items()}
            for job in group:
                results.append(calculate_kpi(job.definition, source_id, observations, job.window))
        await self.writer.write(results)
        return results

    # -- schedules -------------------------------------------------------------------------------

    async def sources_of(self, definition: KpiDefinition) -> list[str]:
        """Ids of the entities a definition is computed for (current entities of its type and selector)."""
        selector = definition.source.stations
        if selector.ids and selector.id_pattern is None:
            return list(selector.ids)
        client = self.client_for(definition.source.ld_context)
        ids = []
        async for entity in client.iter_entities(
            type=definition.source.type, id_pattern=selector.id_pattern, options="keyValues",
            attrs=list(definition.source.attributes), page_size=500,
        ):  # fmt: skip
            if selector.matches(entity["id"]):
                ids.append(entity["id"])
        return ids

    async def _schedule(self, definition: KpiDefinition) -> None:
        assert definition.trigger.every_s is not None
        while True:
            try:
                now = datetime.now(UTC)
                window = window_at(definition.window.kind, now, definition.tz, custom=definition.custom_bounds)
                for source_id in await self.sources_of(definition):
                    self.enqueue(Job(definition, source_id, window))
            except NgsiError as error:
                log.warning("scheduled kpi=%s failed: %s", definition.id, error)
            await asyncio.sleep(definition.trigger.every_s)

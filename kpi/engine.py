"""The subscription-driven KPI engine: a change notification → the windows it affects → recomputed KPI entities.

Flow: the engine registers one subscription per source type (deterministic id, so a restart reuses
it) with MQTT (default) or HTTP notifications. A notification carries the new values and their
`observedAt`; they go into the source's in-memory observations (`kpi.observations`), and each
affected (definition, entity, window) becomes a job. The first job of a source seeds its
observations once from the temporal API, bounded to the spans the loaded definitions need around
its latest observation; after that, windows are evaluated from memory, and only a window older than
what memory holds (late data) is read from the temporal API. Jobs of one source entity run together
and never concurrently; windows of many values (a year of data) are evaluated in a thread so that
hourly KPIs never wait behind them (their results are queued first). Results of all sources are
written together: one batch upsert every few milliseconds (`kpi_write_coalesce_s`), not one request
per KPI. A job already waiting absorbs new changes (coalescing); `trigger.min_interval_s` spaces
out recalculations of long windows. Scheduled definitions are recomputed every `every_s` for the
window that contains now (read from the temporal API: nothing notifies them). `stop()` drains the
queue and the writes, so a graceful restart loses nothing; changes made while the engine is down
wait in its persistent MQTT session, and a restart seeds again from the history.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from kpi.catalogue import Observations, Series
from kpi.definitions import DefinitionSet, KpiDefinition
from kpi.entities import KpiEntity, calculate_kpi, prepared
from kpi.history import History, parse_time, read_history
from kpi.intake import HttpIntake, MqttIntake
from kpi.observations import SourceObservations, from_micros, to_micros
from kpi.settings import KpiSettings
from kpi.windows import SERIES_KINDS, Window, window_at
from kpi.writer import KpiWriter, is_series
from ngsi.client import AsyncBrokerClient, BrokerUnavailable
from ngsi.errors import AlreadyExists, NgsiError
from smart_data_models.models import KPI_CONTEXT

log = logging.getLogger(__name__)

JobKey = tuple[str, str, datetime]
"""(definition id, source entity id, window start): a definition has one window kind."""


@dataclass(frozen=True)
class Job:
    definition: KpiDefinition
    source_id: str
    window: Window

    @functools.cached_property
    def key(self) -> JobKey:
        return (self.definition.id, self.source_id, self.window.start)

    def span(self) -> tuple[datetime, datetime]:
        """The observations the job's window depends on."""
        shared = prepared(self.definition)
        return shared.calculator.span(shared.params, self.window, shared.tz)


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


def observed_values(entity: dict[str, Any], attributes: Iterable[str]) -> list[tuple[str, datetime, float]]:
    """(attribute, observedAt, value) of the numeric instances of `attributes` in a notified entity."""
    values = []
    for name in attributes:
        attribute = entity.get(name)
        for instance in attribute if isinstance(attribute, list) else [attribute]:
            if not isinstance(instance, dict) or not isinstance(instance.get("observedAt"), str):
                continue
            value = instance.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append((name, parse_time(instance["observedAt"]), float(value)))
    return values


SeedRequest = tuple[str, datetime, datetime, "asyncio.Future[dict[str, Series]]"]
"""(source id, start, end, where its history goes)."""

SEED_SLICE_HOURS = 24 * 400
"""A seed reads up to a year and a bit in one request (a broker that cuts the answer is followed)."""

WRITES_IN_FLIGHT = 3
"""Batches of the short lane sent at once."""
LONG_LANE_BATCH = 25
"""Most entities per batch of the long lane (month, year, custom periods), which sends one batch at a time."""
LONG_LANE_YIELD_S = 0.25
"""How long a batch of the long lane waits for the short lane to have nothing in flight."""
WRITE_RETRY_S = 1.0
"""Wait before a batch the broker did not answer is sent again."""

NEEDED_FROM_KEPT = 4096
"""Answers of `needed_from` kept (a few per hour of data)."""

LONG_WORK_VALUES = 2000
"""Windows holding more values than this are evaluated in a thread (a year of hourly values is ~10^4;
a year that has just begun is evaluated at once, as handing it to a thread would cost more)."""


# Each report allocates thousands of short-lived containers (notification JSON, observations, windows,
# KPI entities). With CPython's default thresholds the cycle collector ran every few hundred of them and
# its full collections walked everything start-up built: in bench.kpi (100 stations) 1.5 s of the
# engine's ~10 s of CPU, with four full collections of 140-188 ms each holding the event loop. Frozen
# after start and with these thresholds (the broker's, broker/app.py): 0.28 s. Two interleaved pairs of
# runs: 4.81 / 4.52 ms of engine CPU per report against 5.15 / 4.90 without.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_garbage_collector() -> None:
    """For a process that runs the engine: what start-up built out of the collector's sight; collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _calculate_all(work: list[tuple[Job, Observations]], source_id: str) -> list[KpiEntity]:
    return [calculate_kpi(job.definition, source_id, observations, job.window) for job, observations in work]


def _merged_spans(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def is_short(job: Job) -> bool:
    """A job of an hour, 8-hour or day window: what users watch live, run before the long windows."""
    return job.window.kind in SERIES_KINDS


class SourceQueue:
    """Sources with jobs waiting, in two lanes: a source with a short-window job is taken before any
    source that waits only with long windows (this year's counts, released every `min_interval_s` for
    every station at once), and only one source of the second lane is worked on at a time, so that
    hourly KPIs never queue behind a year of recomputations (the workers share one event loop)."""

    def __init__(self, background_at_once: int = 1) -> None:
        self._lanes: tuple[deque[str], deque[str]] = (deque(), deque())
        self._lane_of: dict[str, int] = {}
        self._available = asyncio.Event()
        self._background_at_once = background_at_once
        self._background = 0

    def __contains__(self, source: str) -> bool:
        return source in self._lane_of

    def put(self, source: str, *, urgent: bool) -> None:
        """Queue `source` (again: moved to the first lane if it becomes urgent)."""
        lane = 0 if urgent else 1
        queued = self._lane_of.get(source)
        if queued is not None and queued <= lane:
            return
        self._lane_of[source] = lane
        self._lanes[lane].append(source)  # its entry in the second lane, if any, is skipped when reached
        self._available.set()

    async def get(self) -> tuple[str, bool]:
        """The next source, and whether it came from the second lane (then call `done_background` after)."""
        while True:
            for lane, waiting in enumerate(self._lanes):
                if lane == 1 and self._background >= self._background_at_once:
                    break
                while waiting:
                    source = waiting.popleft()
                    if self._lane_of.get(source) == lane:
                        del self._lane_of[source]
                        self._background += lane
                        return source, lane == 1
            self._available.clear()
            await self._available.wait()

    def done_background(self) -> None:
        self._background -= 1
        self._available.set()


class KpiEngine:
    """Keeps the KPI entities of `definitions` up to date with the broker's data."""

    def __init__(self, settings: KpiSettings, definitions: DefinitionSet) -> None:
        self.settings = settings
        self.definitions = definitions
        self.stats = EngineStats()
        self._clients: dict[str | None, AsyncBrokerClient] = {}
        self.writer = KpiWriter(
            self.client_for(KPI_CONTEXT), upsert_replaces_history=settings.kpi_upsert_replaces_history
        )  # fmt: skip
        self._intake: MqttIntake | HttpIntake | None = None
        self._pending: dict[str, dict[JobKey, Job]] = {}
        self._running: set[str] = set()
        self._ready = SourceQueue()
        self._deferred: set[JobKey] = set()
        self._last_run: dict[JobKey, float] = {}
        self._latest_seen: dict[str, datetime] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._schedules: list[asyncio.Task[None]] = []
        self._observations: dict[str, SourceObservations] = {}
        self._seed_requests: dict[tuple[str, str | None], list[SeedRequest]] = {}
        self._seed_batches: dict[tuple[str, str | None], asyncio.Task[None]] = {}
        self._notified_attributes = sorted({a for d in definitions if d.trigger.on_change for a in d.source.attributes})
        self._live_by_source: dict[tuple[str, str], list[KpiDefinition]] = {}
        self._live_lists: dict[tuple[str, ...], list[KpiDefinition]] = {}
        self._needed_from: dict[tuple[int, int], datetime] = {}
        """(id of a `_live_lists` list, latest observation) → `needed_from` (every station asks it each hour)."""
        self._trimmed_hour: dict[str, int] = {}
        # Two write lanes, so that hourly and daily KPIs never wait behind a batch of yearly ones.
        self._outgoing: dict[str, list[KpiEntity]] = {"short": [], "long": []}
        self._write_wanted = {lane: asyncio.Event() for lane in self._outgoing}
        self._short_quiet = asyncio.Event()
        """Set while the short lane has no batch in flight: the long lane's moment to send."""
        self._short_quiet.set()
        self._writing: set[asyncio.Task[None]] = set()
        """Batches being written (`_write_loop`; never two holding the same entity)."""
        self._write_tasks: list[asyncio.Task[None]] = []
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
        self._write_tasks = [asyncio.create_task(self._write_loop(lane)) for lane in self._outgoing]
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
        for task in self._write_tasks:
            task.cancel()
        await asyncio.gather(*self._workers, *self._schedules, *self._write_tasks, *self._writing,
                             return_exceptions=True)
        try:
            await self.writer.flush_history()
        except NgsiError as error:
            log.warning("kpi history of the current windows not brought up to date: %s", error)
        for client in self._clients.values():
            await client.aclose()

    async def __aenter__(self) -> KpiEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _busy(self) -> bool:
        return bool(self._pending or self._running or self._deferred or self._writing or any(self._outgoing.values()))

    async def drained(self) -> None:
        """Wait until no job is queued, deferred or running and every result is written."""
        while True:
            await self._idle.wait()
            if not self._busy():
                return
            self._idle.clear()

    def _update_idle(self) -> None:
        if not self._busy():
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
        definitions = self._live_definitions(short_type, source_id)
        if not definitions:
            return
        self._record(source_id, entity)
        moments_of = {name: observed_moments(entity, (name,)) for name in self._notified_attributes}
        moments_by_attributes: dict[tuple[str, ...], set[datetime]] = {}
        windows: dict[tuple[str, datetime, tzinfo], list[Window]] = {}
        for definition in definitions:
            attributes = definition.source.attributes
            moments = moments_by_attributes.get(attributes)
            if moments is None:
                moments = moments_by_attributes[attributes] = set().union(
                    *(moments_of.get(name, ()) for name in attributes)
                )  # fmt: skip
            if not moments:
                continue
            latest = max(moments)
            self._latest_seen[source_id] = max(latest, self._latest_seen.get(source_id, latest))
            for window in self.affected_windows(definition, moments, self._latest_seen[source_id], windows):
                self.enqueue(Job(definition, source_id, window))

    def _live_definitions(self, entity_type: str, source_id: str) -> list[KpiDefinition]:
        """The on-change definitions of a source entity (remembered per source: selectors are regular expressions)."""
        key = (entity_type, source_id)
        found = self._live_by_source.get(key)
        if found is None:
            matching = [
                d for d in self.definitions.for_source(entity_type)
                if d.trigger.on_change and d.source.stations.matches(source_id)
            ]  # fmt: skip
            # Sources with the same definitions share one list (`needed_from` remembers its answers per list).
            found = self._live_by_source[key] = self._live_lists.setdefault(tuple(d.id for d in matching), matching)
        return found

    def _record(self, source_id: str, entity: dict[str, Any]) -> SourceObservations:
        """Put the notified values into the source's observations (kept even before they are seeded)."""
        state = self._observations.get(source_id)
        if state is None:
            state = self._observations[source_id] = SourceObservations()
        for name, moment, value in observed_values(entity, self._notified_attributes):
            state.record(name, moment, value)
        return state

    def needed_from(self, entity_type: str, source_id: str, latest: datetime) -> datetime:
        """The earliest observation any on-change window containing `latest` depends on (bounds the memory)."""
        definitions = self._live_definitions(entity_type, source_id)
        key = (id(definitions), to_micros(latest))  # the instant: local times a DST fold repeats compare equal
        found = self._needed_from.get(key)
        if found is None:
            if len(self._needed_from) >= NEEDED_FROM_KEPT:
                self._needed_from.clear()
            found = self._needed_from[key] = self._earliest_needed(definitions, latest)
        return found

    @staticmethod
    def _earliest_needed(definitions: list[KpiDefinition], latest: datetime) -> datetime:
        earliest = latest
        for definition in definitions:
            shared = prepared(definition)
            window = window_at(definition.window.kind, latest, shared.tz, custom=definition.custom_bounds)
            if definition.window.kind == "custom" and not window.contains(latest):
                continue
            start, _ = shared.calculator.span(shared.params, window, shared.tz)
            earliest = min(earliest, start)
        return earliest

    async def _seeded(
        self, source_id: str, entity_type: str, context: str | None, jobs: list[Job]
    ) -> SourceObservations:
        """The source's observations, read once from the temporal API the first time they are needed."""
        state = self._observations.get(source_id)
        if state is None:
            state = self._observations[source_id] = SourceObservations()
        if state.seeded:
            return state
        latest = from_micros(state.latest) if state.latest is not None else max(job.window.start for job in jobs)
        # What the windows of the latest observation need, and what the jobs at hand need (they may be older).
        spans = [job.span() for job in jobs]
        start = min([self.needed_from(entity_type, source_id, latest), *(span[0] for span in spans)])
        end = max(latest, datetime.now(UTC)) + timedelta(days=1)
        # Sources that need a seed at about the same time (a start, a burst of new stations) share a read.
        key = (entity_type, context)
        request: SeedRequest = (source_id, start, end, asyncio.get_running_loop().create_future())
        self._seed_requests.setdefault(key, []).append(request)
        if key not in self._seed_batches:
            self._seed_batches[key] = asyncio.create_task(self._seed_batch(key))
        state.seed(await request[3], start)
        return state

    async def _seed_batch(self, key: tuple[str, str | None]) -> None:
        """One temporal query (100 ids per request) for every source waiting for its seed."""
        await asyncio.sleep(self.settings.kpi_write_coalesce_s)
        del self._seed_batches[key]
        requests = self._seed_requests.pop(key, [])
        entity_type, context = key
        attributes = sorted({
            a for d in self.definitions.for_source(entity_type) if d.trigger.on_change for a in d.source.attributes
        })  # fmt: skip
        try:
            self.stats.reads += 1
            history = await read_history(
                self.client_for(context), entity_type=entity_type, attributes=attributes,
                start=min(r[1] for r in requests), end=max(r[2] for r in requests),
                entity_ids=sorted({r[0] for r in requests}), slice_hours=SEED_SLICE_HOURS,
            )  # fmt: skip
        except Exception as error:
            for *_, future in requests:
                if not future.done():
                    future.set_exception(error)
            return
        for source_id, *_, future in requests:
            if not future.done():
                future.set_result(history.get(source_id, {}))

    def _trim(self, source_id: str, entity_type: str, state: SourceObservations) -> None:
        """Forget observations no window of the latest hour needs any more (once per hour of data), nor
        what a job still waiting for this source reads from memory.

        Notifications of later hours arrive while a source's jobs run: trimming for the latest hour
        alone dropped what a waiting job of an earlier hour needed (US AQI's NowCast reaches 11 hours
        back), so that job read the temporal API and its window was written after the next hour's, as
        an older window: into the history only, never the entity's current value, never notified.
        """
        if state.latest is None:
            return
        hour = state.latest // 3_600_000_000
        if self._trimmed_hour.get(source_id) == hour:
            return
        keep_from = self.needed_from(entity_type, source_id, from_micros(state.latest))
        held_back = False
        for job in self._pending.get(source_id, {}).values():
            if job.definition.trigger.on_change and job.definition.source.type == entity_type:
                start = job.span()[0]
                if start < keep_from and state.covers(start):
                    keep_from, held_back = start, True
        if not held_back:  # else trimmed again after the waiting jobs ran
            self._trimmed_hour[source_id] = hour
        state.forget_before(keep_from)

    def affected_windows(
        self, definition: KpiDefinition, moments: set[datetime], latest: datetime,
        known: dict[tuple[str, datetime, tzinfo], list[Window]] | None = None,
    ) -> list[Window]:
        """The windows of `definition` that observations at `moments` change (`known`: windows already
        worked out for this notification, by kind, moment and time zone)."""
        windows: dict[datetime, Window] = {}
        shared = prepared(definition)
        kind = definition.window.kind
        following = 0
        for moment in moments:
            cache_key = (kind, moment, shared.tz)
            chain = known.get(cache_key) if known is not None and kind != "custom" else None
            if chain is None:
                window = window_at(kind, moment, shared.tz, custom=definition.custom_bounds)
                if kind == "custom" and not window.contains(moment):
                    continue
                chain = [window]
                if known is not None and kind != "custom":
                    known[cache_key] = chain
            following = following or shared.calculator.affected_windows(shared.params, chain[0], shared.tz)
            while len(chain) < following and chain[-1].following().start <= latest:
                chain.append(chain[-1].following())
            for window in chain[:following]:
                windows[window.start] = window
        return list(windows.values())

    def enqueue(self, job: Job) -> None:
        source = job.source_id
        key = job.key
        interval = job.definition.trigger.min_interval_s
        if interval > 0 and key not in self._pending.get(source, {}):
            wait = self._last_run.get(key, float("-inf")) + interval - time.monotonic()
            if wait > 0:
                if key not in self._deferred:
                    self._deferred.add(key)
                    self._idle.clear()
                    asyncio.get_running_loop().call_later(wait, self._release, job)
                return
        self._pending.setdefault(source, {})[key] = job
        self.stats.jobs += 1
        self._idle.clear()
        if source not in self._running:
            self._ready.put(source, urgent=is_short(job))

    def _release(self, job: Job) -> None:
        self._deferred.discard(job.key)
        self._last_run.pop(job.key, None)
        self.enqueue(job)
        self._update_idle()

    # -- workers ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            source, background = await self._ready.get()
            jobs = list(self._pending.pop(source, {}).values())
            self._running.add(source)
            try:
                if jobs:
                    await self.run_jobs(source, jobs)
            except BrokerUnavailable as error:
                # The broker did not answer a read (a seed, a window from the history): the jobs
                # wait and run again (they were lost: their hours never reached the KPI entities).
                self.stats.errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                log.warning("kpi jobs of %s retried in %.0f s: %s", source, WRITE_RETRY_S, error)
                await asyncio.sleep(WRITE_RETRY_S)
                waiting = self._pending.setdefault(source, {})
                for job in jobs:
                    waiting.setdefault(job.key, job)  # a job of the same window queued since is as good
            except Exception as error:  # one failing source must not stop the engine
                self.stats.errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
                log.exception("kpi jobs failed source=%s jobs=%d", source, len(jobs))
            finally:
                if background:
                    self._ready.done_background()
                self._running.discard(source)
                left = self._pending.get(source)
                if left:
                    self._ready.put(source, urgent=any(is_short(job) for job in left.values()))
                self._update_idle()

    async def run_jobs(self, source_id: str, jobs: list[Job]) -> list[KpiEntity]:
        """Evaluate the jobs (from memory, else from the temporal API) and queue their writes."""
        now = time.monotonic()
        for job in jobs:
            self._last_run[job.key] = now
        by_read: dict[tuple[str, str | None], list[Job]] = {}
        for job in jobs:
            by_read.setdefault((job.definition.source.type, job.definition.source.ld_context), []).append(job)
        results: list[KpiEntity] = []
        for (entity_type, context), group in by_read.items():
            live = [job for job in group if job.definition.trigger.on_change]
            state = await self._seeded(source_id, entity_type, context, live) if live else None
            long_work: list[tuple[Job, Observations]] = []
            from_api: list[Job] = []
            short: list[KpiEntity] = []
            for job in group:
                start, end = job.span()
                if state is None or not job.definition.trigger.on_change or not state.covers(start):
                    from_api.append(job)
                    continue
                observations = state.observations(job.definition.source.attributes, start, end)
                if sum(map(len, observations.values())) > LONG_WORK_VALUES:
                    long_work.append((job, observations))
                else:
                    short.append(calculate_kpi(job.definition, source_id, observations, job.window))
            # What is ready goes out now: the hourly KPIs never wait for a year or a read.
            self._queue_writes(short)
            results.extend(short)
            later: list[KpiEntity] = []
            if from_api:
                later.extend(await self._run_from_history(source_id, entity_type, context, from_api))
            if long_work:
                later.extend(await asyncio.to_thread(_calculate_all, long_work, source_id))
            self._queue_writes(later)
            results.extend(later)
            if state is not None:
                self._trim(source_id, entity_type, state)
        return results

    async def _run_from_history(
        self, source_id: str, entity_type: str, context: str | None, jobs: list[Job]
    ) -> list[KpiEntity]:
        """Jobs whose data memory does not hold: read once per distinct span from the temporal API."""
        attributes = sorted({a for job in jobs for a in job.definition.source.attributes})
        spans = [job.span() for job in jobs]
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
        return [calculate_kpi(job.definition, source_id, observations, job.window) for job in jobs]

    # -- coalesced writes ------------------------------------------------------------------------

    def _queue_writes(self, results: list[KpiEntity]) -> None:
        for kpi in results:
            lane = "short" if is_series(kpi) else "long"
            self._outgoing[lane].append(kpi)
            self._write_wanted[lane].set()
        if results:
            self._idle.clear()

    async def _write_loop(self, lane: str) -> None:
        """One writer per lane for every source: what the workers produced in the last few ms goes in one batch.

        Up to `WRITES_IN_FLIGHT` batches of the short lane are written at once, so one slow request
        does not hold back the next batch; the long lane sends one batch of at most `LONG_LANE_BATCH`
        at a time, when the short lane has none in flight (or after `LONG_LANE_YIELD_S`). An entity
        in a batch still in flight waits for the one after (its windows reach the broker in order).
        Every `kpi_history_sync_s` (periods: `kpi_period_history_sync_s`) the lane also brings the
        history instances of its current windows up to their latest value (the writer's
        `flush_history`), when none of its batches is in flight, so a replacement never races a
        write of the same entity.
        """
        wanted = self._write_wanted[lane]
        series = lane == "short"
        sync_every = self.settings.kpi_history_sync_s if series else self.settings.kpi_period_history_sync_s
        synced = time.monotonic()
        slots = asyncio.Semaphore(WRITES_IN_FLIGHT if series else 1)
        most = self.settings.kpi_write_batch if series else min(LONG_LANE_BATCH, self.settings.kpi_write_batch)
        in_flight: set[str] = set()
        lane_tasks: set[asyncio.Task[None]] = set()
        while True:
            try:
                await asyncio.wait_for(wanted.wait(), sync_every)
            except TimeoutError:
                pass
            if wanted.is_set():
                await asyncio.sleep(self.settings.kpi_write_coalesce_s)
                wanted.clear()
            if self._outgoing[lane]:
                await slots.acquire()
                if not series:
                    # The long lane (this year's counts of every station at once) sends in the short
                    # lane's pauses, one batch at a time: the broker serves the hourly KPIs first.
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._short_quiet.wait(), LONG_LANE_YIELD_S)
                batch: list[KpiEntity] = []
                kept: list[KpiEntity] = []
                for kpi in self._outgoing[lane]:
                    (batch if kpi.id not in in_flight and len(batch) < most else kept).append(kpi)
                self._outgoing[lane] = kept
                if len(batch) == most:
                    wanted.set()  # more to send once a slot is free
                if not batch:  # all wait for batches in flight; their end wakes this loop
                    slots.release()
                    continue
                ids = {kpi.id for kpi in batch}
                in_flight.update(ids)
                task = asyncio.create_task(self._write_batch(lane, batch))
                lane_tasks.add(task)
                self._writing.add(task)
                if series:
                    self._short_quiet.clear()

                def finished(done: asyncio.Task[None], ids: set[str] = ids) -> None:
                    in_flight.difference_update(ids)
                    lane_tasks.discard(done)
                    self._writing.discard(done)
                    slots.release()
                    if series and not lane_tasks:
                        self._short_quiet.set()
                    if self._outgoing[lane]:
                        wanted.set()
                    self._update_idle()

                task.add_done_callback(finished)
            elif not lane_tasks and time.monotonic() - synced >= sync_every:
                synced = time.monotonic()
                try:
                    await self.writer.flush_history(series=series)
                except Exception as error:  # a failed write must not stop the engine
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(error).__name__}: {error}"
                    log.exception("kpi history catch-up failed")

    async def _write_batch(self, lane: str, batch: list[KpiEntity]) -> None:
        """Write one batch; when the broker cannot be reached, the batch goes back to the lane after
        `WRITE_RETRY_S` (writes are idempotent: what went out already is skipped)."""
        try:
            await self.writer.write(batch)  # `_write_loop` cut it to the lane's batch size
        except BrokerUnavailable as error:
            self.stats.errors += 1
            self.stats.last_error = f"{type(error).__name__}: {error}"
            log.warning("kpi write failed, retried in %.0f s: %s", WRITE_RETRY_S, error)
            await asyncio.sleep(WRITE_RETRY_S)
            self._outgoing[lane][:0] = batch
        except Exception as error:  # a failed write must not stop the engine
            self.stats.errors += 1
            self.stats.last_error = f"{type(error).__name__}: {error}"
            log.exception("kpi write failed lane=%s entities=%d", lane, len(batch))

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

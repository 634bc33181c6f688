"""Delivers the outbox: one worker per tenant database, one ordered lane per subscription, retries with backoff.

At least once: a row leaves the outbox only after its receiver took it, so a broker killed at
any moment sends what was pending when it starts again (possibly twice, same notification id).
Lanes are independent tasks, so a dead receiver only ever delays its own subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.storage.tenants import TenantDatabases
from broker.subscriptions import store
from broker.subscriptions.model import Subscription
from broker.subscriptions.notifier.http_sender import DeliveryFailed, HttpSender
from broker.subscriptions.notifier.mqtt_sender import MqttSender
from broker.subscriptions.notifier.render import render
from broker.subscriptions.registry import SubscriptionRegistry
from broker.subscriptions.sink import new_notification_id
from ngsi.contexts import ContextStore

log = logging.getLogger(__name__)


class DeliverySettings(BaseSettings):
    """How hard the notifier tries (`CLIMABOROUGH_NOTIFY_*` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_NOTIFY_", extra="ignore")

    timeout_s: float = 5.0
    first_retry_s: float = 0.5
    max_backoff_s: float = 30.0
    failed_after: int = 3
    """Consecutive failures after which the subscription's status is `failed`."""
    batch_size: int = 100
    sweep_interval_s: float = 2.0
    pool_size: int = 4


def backoff(attempts: int, settings: DeliverySettings) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped."""
    return min(settings.first_retry_s * 2 ** max(attempts - 1, 0), settings.max_backoff_s)


@dataclass(slots=True)
class _Lane:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class DatabaseWorker:
    """Delivers the outbox of one database: LISTEN for new rows, a sweep for anything missed."""

    def __init__(self, conninfo: str, database: str, notifier: Notifier) -> None:
        self.conninfo = conninfo
        self.database = database
        self._notifier = notifier
        self._settings = notifier.settings
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=self._settings.pool_size, open=False,
                                         name=f"notifier-{database}")
        self._lanes: dict[str, _Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._periodic_sent: dict[str, datetime] = {}

    async def start(self) -> None:
        await self._pool.open(wait=True, timeout=30)
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"notifier-listen-{self.database}"),
            asyncio.create_task(self._sweep(), name=f"notifier-sweep-{self.database}"),
        ]

    async def stop(self) -> None:
        tasks = self._tasks + [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._lanes.clear()
        await self._pool.close()

    def wake(self, subscription_id: str) -> None:
        lane = self._lanes.get(subscription_id)
        if lane is None:
            lane = self._lanes[subscription_id] = _Lane()
            lane.task = asyncio.create_task(self._run_lane(subscription_id, lane),
                                            name=f"notifier-lane-{subscription_id}")
        lane.wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                conn = await AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {store.OUTBOX_CHANNEL}")
                    # Rows committed before LISTEN took effect are found by this first sweep.
                    await self._sweep_once()
                    async for note in conn.notifies():
                        self.wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("notifier listen lost database=%s error=%s", self.database, error)
                await asyncio.sleep(1.0)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval_s)
            try:
                await self._sweep_once()
                await self._periodic()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("notifier sweep failed database=%s error=%s", self.database, error)

    async def _sweep_once(self) -> None:
        async with self._pool.connection() as conn:
            pending = await store.lanes_with_pending(conn)
        for subscription_id in pending:
            if subscription_id not in self._lanes:
                self.wake(subscription_id)

    async def _periodic(self) -> None:
        """GS CIM 009 5.2.12 timeInterval: every interval, one notification with every matching entity."""
        now = datetime.now(UTC)
        async with self._pool.connection() as conn:
            subscriptions = await self._notifier.registry.all(conn)
            for sub, entity_filter in subscriptions.values():
                if sub.time_interval is None or not sub.is_live(now):
                    continue
                last = self._periodic_sent.get(sub.id)
                if last is not None and (now - last).total_seconds() < sub.time_interval:
                    continue
                self._periodic_sent[sub.id] = now
                types = [s.type for s in sub.entities if s.type] or None
                entities = [
                    {**e, "createdAt": _iso(e["createdAt"]), "modifiedAt": _iso(e["modifiedAt"])}
                    for e in await store.entities_of_types(conn, types, entity_filter.condition)
                    if (not sub.entities or any(s.selects(e["id"], e["types"]) for s in sub.entities))
                    and entity_filter.geo_holds(e)
                ]
                if sub.notify_attributes:
                    entities = [{**e, "doc": {k: v for k, v in e["doc"].items() if k in sub.notify_attributes}}
                                for e in entities]
                if entities:
                    async with conn.transaction():
                        await store.enqueue(conn, [(sub.id, new_notification_id(), entities)])

    async def _run_lane(self, subscription_id: str, lane: _Lane) -> None:
        try:
            while True:
                lane.wake.clear()
                delivered_any = await self._deliver_batch(subscription_id)
                if not delivered_any and not lane.wake.is_set():
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notifier lane crashed subscription=%s", subscription_id)
        finally:
            if self._lanes.get(subscription_id) is lane:
                del self._lanes[subscription_id]

    async def _deliver_batch(self, subscription_id: str) -> bool:
        """Send the oldest pending rows of one subscription in order; False when there was nothing to do."""
        async with self._pool.connection() as conn:
            rows = await store.claim_lane(conn, subscription_id, self._settings.batch_size)
            await conn.commit()
            if not rows:
                return False
            sub = await self._notifier.registry.get(conn, subscription_id)
        if sub is None or not sub.is_active:
            return False  # deleted (its rows went with it) or paused: resumes on update or sweep
        terms = await self._notifier.contexts.term_map(sub.context)
        delivered: list[int] = []
        try:
            for row in rows:
                wait = (row.next_attempt_at - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    await self._flush(subscription_id, delivered)
                    await asyncio.sleep(wait)
                notification = render(sub, row.notification_id, row.entities, terms)
                try:
                    await self._notifier.sender_for(sub).send(sub.endpoint, notification)
                except DeliveryFailed as error:
                    await self._flush(subscription_id, delivered)
                    await self._failed(sub, row.seq, row.attempts + 1, str(error))
                    return True
                delivered.append(row.seq)
        finally:
            await self._flush(subscription_id, delivered)
        return True

    async def _flush(self, subscription_id: str, delivered: list[int]) -> None:
        if not delivered:
            return
        seqs = list(delivered)
        delivered.clear()
        async with self._pool.connection() as conn, conn.transaction():
            await store.record_delivered(conn, subscription_id, seqs, datetime.now(UTC))

    async def _failed(self, sub: Subscription, seq: int, attempts: int, error: str) -> None:
        now = datetime.now(UTC)
        retry_at = now + timedelta(seconds=backoff(attempts, self._settings))
        log.info("notification failed subscription=%s attempts=%d error=%s", sub.id, attempts, error)
        async with self._pool.connection() as conn, conn.transaction():
            await store.record_failed(conn, sub.id, seq, error, now, retry_at)


def _iso(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


class Notifier:
    """Starts a `DatabaseWorker` for every tenant database that has (or gets) subscriptions."""

    def __init__(self, databases: TenantDatabases, contexts: ContextStore, registry: SubscriptionRegistry,
                 settings: DeliverySettings | None = None) -> None:
        self.databases = databases
        self.contexts = contexts
        self.registry = registry
        self.settings = settings or DeliverySettings()
        self._workers: dict[str, DatabaseWorker] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._http = HttpSender(self.settings.timeout_s)
        self._mqtt = MqttSender(self.settings.timeout_s)

    def sender_for(self, sub: Subscription) -> HttpSender | MqttSender:
        return self._mqtt if sub.endpoint.scheme.startswith("mqtt") else self._http

    async def start(self) -> None:
        """Watch the default database and every tenant database that exists already."""
        await self._watch(None)
        pool = await self.databases.pool(None, create=False)
        prefix = self.databases.default_database + "_"
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            )
            names = [row[0][len(prefix):] for row in await cur.fetchall()]
        for tenant in names:
            try:
                await self._watch(tenant)
            except (psycopg.Error, Exception) as error:  # a tenant database we cannot open is logged, not fatal
                log.warning("notifier cannot watch tenant=%s error=%s", tenant, error)

    def watch_soon(self, tenant: str | None) -> None:
        """Called by the sink after enqueuing: start watching that tenant's database if not yet."""
        key = tenant.lower() if tenant else ""
        if key in self._workers or key in self._starting:
            return
        task = asyncio.create_task(self._watch(tenant))
        self._starting[key] = task
        task.add_done_callback(lambda _: self._starting.pop(key, None))

    async def _watch(self, tenant: str | None) -> None:
        key = tenant.lower() if tenant else ""
        if key in self._workers:
            return
        pool = await self.databases.pool(tenant, create=False)
        worker = DatabaseWorker(str(pool.conninfo), key or self.databases.default_database, self)
        self._workers[key] = worker
        await worker.start()

    def wake(self, tenant: str | None, subscription_id: str) -> None:
        worker = self._workers.get(tenant.lower() if tenant else "")
        if worker is not None:
            worker.wake(subscription_id)

    async def stop(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await worker.stop()
        await self._http.aclose()
        await self._mqtt.aclose()

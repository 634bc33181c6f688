"""Delivers the outbox: one worker per tenant database, one ordered lane per subscription, retries with backoff.

At least once: a row leaves the outbox only after its receiver took it, so a broker killed at
any moment sends what was pending when it starts again (possibly twice, same notification id).
Lanes are independent tasks, so a dead receiver only ever delays its own subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.storage.tenants import TenantDatabases, configure_connection
from broker.subscriptions import store
from broker.subscriptions.model import Subscription
from broker.subscriptions.notifier.http_sender import DeliveryFailed, HttpSender
from broker.subscriptions.notifier.mqtt_sender import MqttSender
from broker.subscriptions.notifier.render import NotifiedAt, render, render_data
from broker.subscriptions.registry import SubscriptionRegistry
from broker.subscriptions.sink import new_notification_id
from ngsi.contexts import ContextStore, TermMap

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
    in_flight_per_subscription: int = 16
    """Notifications of one subscription on their way at once (one entity's always one after the other)."""


def backoff(attempts: int, settings: DeliverySettings) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped."""
    return min(settings.first_retry_s * 2 ** max(attempts - 1, 0), settings.max_backoff_s)


LIVE_QUEUE_LIMIT = 5_000
"""Rows a lane holds in memory; beyond that it reads its backlog from the outbox instead."""
ANNOUNCEMENTS_PER_READ = 500
"""Committed transactions whose rows are read with one query."""
RENDERED_KEPT = 4_096
"""Rendered `data` members kept for the other subscriptions of the same change."""
LISTEN_WAIT_S = 10.0
"""How long a new database worker waits for its LISTEN before it reports itself started anyway."""
ACK_DELAY_S = 0.05
"""Delivered rows are removed from the outbox with one statement per this interval, not one per row.

Longer means fewer statements (each costs both processes a round trip) but more rows sent again
after a crash; the delivery itself never waits for it."""


@dataclass(slots=True)
class _Lane:
    """The ordered delivery of one subscription.

    Live: every new row reaches the lane from the listener (read by the sequence numbers its
    transaction announced on commit), in commit order, so the lane never scans the outbox.
    Backlog: the outbox is the truth (after a start, a failure, a paused subscription, a big
    transaction or more than `LIVE_QUEUE_LIMIT` waiting); the lane reads it in `seq` order and
    goes live again when it has caught up.
    """

    subscription_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    live: bool = False
    queue: deque[store.OutboxRow] = field(default_factory=deque)
    read_from_outbox: set[int] = field(default_factory=set)
    """Rows of the last outbox read: when the same rows also arrive in memory they are not sent twice."""

    def to_backlog(self) -> None:
        self.live = False
        self.queue.clear()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class _Acks:
    """Delivered rows waiting to leave the outbox, written together a few milliseconds later."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._seqs: list[int] = []
        self._counts: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._scheduled: asyncio.Task[None] | None = None

    def add(self, subscription_id: str, seq: int) -> None:
        self._seqs.append(seq)
        self._counts[subscription_id] = self._counts.get(subscription_id, 0) + 1
        if self._scheduled is None or self._scheduled.done():
            self._scheduled = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(ACK_DELAY_S)
        try:
            await self.flush()
        except Exception as error:  # kept for the next flush; at worst rows are sent again after a restart
            log.warning("notifier could not record deliveries error=%s", error)

    async def flush(self) -> None:
        async with self._lock:
            if not self._seqs:
                return
            seqs, counts = self._seqs, self._counts
            self._seqs, self._counts = [], {}
            try:
                async with self._pool.connection() as conn:
                    await store.record_delivered(conn, seqs, counts, datetime.now(UTC))
            except BaseException:
                self._seqs[:0] = seqs
                for subscription_id, count in counts.items():
                    self._counts[subscription_id] = self._counts.get(subscription_id, 0) + count
                raise

    def cancel(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()


class DatabaseWorker:
    """Delivers the outbox of one database: LISTEN for committed rows, a sweep for anything missed."""

    def __init__(self, conninfo: str, database: str, notifier: Notifier) -> None:
        self.conninfo = conninfo
        self.database = database
        self.dbname = str(conninfo_to_dict(conninfo).get("dbname") or database)
        self._notifier = notifier
        self._settings = notifier.settings
        # Autocommit: the hot reads (announced rows, lanes) and the acknowledgements are single
        # statements, which then cost one round trip each instead of BEGIN, statement, COMMIT.
        # Statements that must go together say so with `conn.transaction()`.
        self._pool = AsyncConnectionPool(conninfo, min_size=1, max_size=self._settings.pool_size, open=False,
                                         name=f"notifier-{database}", configure=configure_connection,
                                         kwargs={"autocommit": True})
        self._lanes: dict[str, _Lane] = {}
        self._acks = _Acks(self._pool)
        self._announcements: deque[str] = deque()
        self._announced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._periodic_sent: dict[str, datetime] = {}
        self._listening = asyncio.Event()
        self._notified_at = NotifiedAt()
        self._rendered: dict[tuple[str, int, str, bool], tuple[TermMap, bytes]] = {}

    async def start(self) -> None:
        """Open the pool and return once LISTEN is in effect (or after `LISTEN_WAIT_S`: the loop keeps trying)."""
        await self._pool.open(wait=True, timeout=30)
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"notifier-listen-{self.database}"),
            asyncio.create_task(self._sweep(), name=f"notifier-sweep-{self.database}"),
            asyncio.create_task(self._take_announced(), name=f"notifier-announced-{self.database}"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), LISTEN_WAIT_S)

    async def stop(self) -> None:
        tasks = self._tasks + [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._acks.cancel()
        with contextlib.suppress(Exception):
            await self._acks.flush()
        self._lanes.clear()
        await self._pool.close()

    def wake(self, subscription_id: str) -> None:
        """Read this subscription's lane from the outbox (new, resumed or changed elsewhere)."""
        lane = self._lane(subscription_id)
        lane.to_backlog()
        self._run(lane)

    def _lane(self, subscription_id: str) -> _Lane:
        lane = self._lanes.get(subscription_id)
        if lane is None:
            lane = self._lanes[subscription_id] = _Lane(subscription_id)
        return lane

    def _run(self, lane: _Lane) -> None:
        lane.wake.set()
        if not lane.running:
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"notifier-lane-{lane.subscription_id}")

    async def _take_announced(self) -> None:
        """Transactions that added rows have committed: read exactly those rows and hand them to their lanes.

        Every announcement waiting is read with one query, and rows reach their lanes in the order
        of the announcements (commit order), then of `seq` within one transaction.
        """
        while True:
            await self._announced.wait()
            self._announced.clear()
            while self._announcements:
                payloads = [self._announcements.popleft()
                            for _ in range(min(len(self._announcements), ANNOUNCEMENTS_PER_READ))]
                try:
                    await self._hand_over([store.parse_announcement(payload) for payload in payloads])
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the rows stay in the outbox: the sweep hands them over
                    log.warning("notifier could not read announced rows database=%s error=%s", self.database, error)

    async def _hand_over(self, announced: list[store.Announcement]) -> None:
        if any(announcement.seqs is None for announcement in announced):
            await self._sweep_once()
        wanted = [seq for announcement in announced if announcement.seqs is not None for seq in announcement.seqs]
        if not wanted:
            return
        # Most announcements carry their rows; only the others are read (one query for all of them).
        rows = {row.seq: row for announcement in announced if announcement.rows for row in announcement.rows}
        unread = [seq for seq in wanted if seq not in rows]
        if unread:
            async with self._pool.connection() as conn:
                rows.update((row.seq, row) for row in await store.fetch_rows(conn, unread))
        woken: dict[str, _Lane] = {}
        for seq in wanted:
            row = rows.get(seq)
            if row is None:
                continue  # delivered already (read by a backlog read) or its subscription is gone
            lane = woken.get(row.subscription_id) or self._lane(row.subscription_id)
            woken[row.subscription_id] = lane
            if lane.live:
                if len(lane.queue) < LIVE_QUEUE_LIMIT:
                    lane.queue.append(row)
                else:
                    lane.to_backlog()
        for lane in woken.values():
            self._run(lane)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {store.OUTBOX_CHANNEL}")
                    self._listening.set()
                    # Rows committed before LISTEN took effect are found by this first sweep.
                    await self._sweep_once()
                    async for note in conn.notifies():
                        self._announcements.append(note.payload)
                        self._announced.set()
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
        """Lanes with rows in the outbox but no delivery running missed an announcement: read them."""
        await self._acks.flush()
        async with self._pool.connection() as conn:
            pending = await store.lanes_with_pending(conn)
        for subscription_id in pending:
            lane = self._lanes.get(subscription_id)
            if lane is None or not lane.running:
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

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while True:
                lane.wake.clear()
                if lane.live:
                    progressed = await self._deliver_live(lane)
                else:
                    progressed = await self._deliver_backlog(lane)
                if not progressed and not lane.wake.is_set():
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            lane.to_backlog()  # the outbox still has every row not delivered; the sweep resumes the lane
            log.exception("notifier lane crashed subscription=%s", lane.subscription_id)

    async def _subscription(self, subscription_id: str) -> Subscription | None:
        entries = self._notifier.registry.cached(self.dbname)
        entry = entries.get(subscription_id) if entries is not None else None
        if entry is not None:
            return entry[0]
        async with self._pool.connection() as conn:
            return await self._notifier.registry.get(conn, subscription_id)

    async def _deliver_live(self, lane: _Lane) -> bool:
        """Send what arrived in memory, in commit order; False when there was nothing to do."""
        if not lane.queue:
            return False
        sub = await self._subscription(lane.subscription_id)
        if sub is None or not sub.is_active:
            lane.to_backlog()  # deleted (its rows went with it) or paused: resumes on update or sweep
            return False
        if len(lane.queue) == 1 and lane.queue[0].attempts == 0:
            # The steady state: one change, one notification. Sent right here, without the task,
            # slot and waits that keep several entities' notifications in order.
            row = lane.queue.popleft()
            if row.seq not in lane.read_from_outbox and not await self._send_one(sub, row):
                lane.to_backlog()
            return True

        def arrived() -> Iterator[store.OutboxRow]:
            while lane.live and lane.queue:
                row = lane.queue.popleft()
                if row.seq not in lane.read_from_outbox:
                    yield row

        if not await self._send_in_order(sub, arrived()):
            lane.to_backlog()
        return True

    async def _deliver_backlog(self, lane: _Lane) -> bool:
        """Send the oldest rows of the outbox in order; False when there was nothing to do."""
        await self._acks.flush()  # rows already delivered must not be read again
        lane.queue.clear()
        lane.live = True  # from here on new rows are kept in memory; the read below covers the older ones
        async with self._pool.connection() as conn:
            rows = await store.claim_lane(conn, lane.subscription_id, self._settings.batch_size)
            await conn.commit()
        if len(rows) >= self._settings.batch_size:
            lane.to_backlog()
        if not rows:
            return False
        sub = await self._subscription(lane.subscription_id)
        if sub is None or not sub.is_active:
            lane.to_backlog()
            return False
        lane.read_from_outbox = {row.seq for row in rows}
        if not await self._send_in_order(sub, iter(rows)):
            lane.to_backlog()
        return True

    async def _send_one(self, sub: Subscription, row: store.OutboxRow) -> bool:
        """Send one first-attempt row (what `_send_in_order` does with a single row); False after a failure."""
        terms = await self._notifier.contexts.term_map(sub.context)
        try:
            data = self._render_data(sub, row, terms)
            await self._notifier.sender_for(sub).send(
                sub.endpoint, render(sub, row.notification_id, data, self._notified_at())
            )
        except DeliveryFailed as error:
            await self._failed(sub, row.seq, row.attempts + 1, str(error))
            return False
        self._acks.add(sub.id, row.seq)
        return True

    async def _send_in_order(self, sub: Subscription, rows: Iterator[store.OutboxRow]) -> bool:
        """Send rows keeping each entity's order, several entities at once; False after a failure.

        A receiver's round trip, not our CPU, bounds one connection's rate, so up to
        `in_flight_per_subscription` notifications travel at once; one entity's notifications
        never overtake each other (each waits for the previous one of its entity). After a
        failure nothing more is started; the earliest failed row is recorded (attempts, backoff)
        and everything not delivered stays in the outbox for the backlog read.
        """
        terms = await self._notifier.contexts.term_map(sub.context)
        sender = self._notifier.sender_for(sub)
        slots = asyncio.Semaphore(self._settings.in_flight_per_subscription)
        last_of_entity: dict[str, asyncio.Task[None]] = {}
        running: set[asyncio.Task[None]] = set()
        failures: list[tuple[store.OutboxRow, str]] = []

        async def deliver(row: store.OutboxRow, key: str | None, previous: asyncio.Task[None] | None) -> None:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                if failures:
                    return
                data = self._render_data(sub, row, terms)
                await sender.send(sub.endpoint, render(sub, row.notification_id, data, self._notified_at()))
                self._acks.add(sub.id, row.seq)
            except DeliveryFailed as error:
                failures.append((row, str(error)))
            finally:
                slots.release()
                if key is not None and last_of_entity.get(key) is asyncio.current_task():
                    del last_of_entity[key]

        try:
            for row in rows:
                wait = (row.next_attempt_at - datetime.now(UTC)).total_seconds()
                key = row.entities[0].get("id", "") if len(row.entities) == 1 else None
                if (wait > 0 or key is None) and running:
                    await asyncio.wait(running)  # a retry or a many-entity notification goes after all before it
                if failures:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
                await slots.acquire()
                if failures:
                    slots.release()
                    break
                task = asyncio.create_task(deliver(row, key, last_of_entity.get(key) if key is not None else None))
                running.add(task)
                task.add_done_callback(running.discard)
                if key is None:
                    await asyncio.wait([task])
                else:
                    last_of_entity[key] = task
            if running:
                await asyncio.wait(running)
        finally:
            for task in list(running):
                task.cancel()
        if not failures:
            return True
        row, error = min(failures, key=lambda failure: failure[0].seq)
        await self._failed(sub, row.seq, row.attempts + 1, error)
        return False

    def _render_data(self, sub: Subscription, row: store.OutboxRow, terms: TermMap) -> bytes:
        """Rendered once per change and form: the other subscriptions of the change reuse it.

        `terms` come from the context store's cache (one object per @context); each entry holds its
        `terms`, so their id cannot be reused by another @context while the entry lives.
        """
        if not row.entities_json:
            return render_data(sub, row.entities, terms)
        key = (row.entities_json, id(terms), sub.format, sub.sys_attrs)
        cached = self._rendered.get(key)
        if cached is not None and cached[0] is terms:
            return cached[1]
        if len(self._rendered) >= RENDERED_KEPT:
            self._rendered.clear()
        data = render_data(sub, row.entities, terms)
        self._rendered[key] = (terms, data)
        return data

    async def _failed(self, sub: Subscription, seq: int, attempts: int, error: str) -> None:
        now = datetime.now(UTC)
        retry_at = now + timedelta(seconds=backoff(attempts, self._settings))
        log.info("notification failed subscription=%s attempts=%d error=%s", sub.id, attempts, error)
        await self._acks.flush()  # the rows before it count as sent before it counts as failed
        async with self._pool.connection() as conn, conn.transaction():
            await store.record_failed(conn, sub.id, seq, error, now, retry_at)


def _iso(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


TENANTS_OPENED_AT_ONCE = 8


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
        opening = asyncio.Semaphore(TENANTS_OPENED_AT_ONCE)

        async def watch(tenant: str) -> None:
            async with opening:
                try:
                    await self._watch(tenant)
                except (psycopg.Error, Exception) as error:  # a tenant database we cannot open is logged, not fatal
                    log.warning("notifier cannot watch tenant=%s error=%s", tenant, error)

        await asyncio.gather(*(watch(tenant) for tenant in names))

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
        """The subscription changed (created, updated, resumed): reload it and read its lane."""
        worker = self._workers.get(tenant.lower() if tenant else "")
        if worker is not None:
            self.registry.invalidate(worker.dbname)
            worker.wake(subscription_id)

    async def stop(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await worker.stop()
        await self._http.aclose()
        await self._mqtt.aclose()

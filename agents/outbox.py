"""Outbox: a durable, ordered, at-least-once queue from an agent to the broker, so nothing is lost while it is down.

Shared by every agent. One SQLite file (WAL) per agent process, e.g.
`<CLIMABOROUGH_DATA_DIR>/iot/outbox-<instance>.sqlite`:

    outbox = Outbox(path, max_pending=100_000)
    relay = OutboxRelay(outbox, BrokerUpsert(broker_url, context=...), quarantine, agent="iot")
    task = asyncio.create_task(relay.run())
    await outbox.put([OutboxEntry(lane=tenant or "", key=entity["id"], payload=entity,
                                  source={"source": "mqtt:/ul/k/d/attrs", "payload": "t|21", "metadata": {...}})])
    # the device (MQTT ack, HTTP 200) is answered only now: the entry is on disk.
    ...
    relay.stop(); await task

Guarantees:
- `put` returns once the entries are committed (fsync'd with `synchronous="FULL"`); with
  `max_pending` it waits for room instead of growing without bound, which is how an agent
  applies backpressure to its sources (it stops acknowledging MQTT messages).
- Delivery is in order per `(lane, key)` (per tenant and entity): a batch holds at most one
  entry of a key and a key is never in two batches at once, so entries of other keys may pass a
  slow one but no entry overtakes an older entry of its own key.
- At least once: an entry leaves the outbox only when the destination accepted it (delivered)
  or refused it for good (rejected: it goes to the quarantine with the broker's reason).
  Unreachable destination: `DeliveryUnavailable`, retried with exponential backoff forever.

No duplicates in history on redelivery (`BrokerUpsert`): an entry is sent again only if the
previous attempt failed. When that failure was certain not to have reached the broker (connection
refused, connect timeout), resending is safe. When it may have been applied (timeout or reset
after the request went out, 5xx), the entry is marked *uncertain*, and before resending it the
relay reads the entity's current state: if every measured attribute already holds the entry's
value with the entry's own `observedAt`, or a newer observation, the broker applied it and it is
not sent again. This is sound because of the per-key order above (nothing of that entity was sent
in between but what came after it, e.g. later entries of the same failed batch upsert of
agents/handoff.py)
and works against any NGSI-LD broker, since TRoE history writes (ours and Orion-LD's) get a
fresh instanceId per write and cannot themselves tell a retry from a new observation.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient, BrokerUnavailable
from ngsi.errors import NgsiError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  lane TEXT NOT NULL,
  key TEXT NOT NULL,
  payload BLOB NOT NULL,
  source BLOB NOT NULL,
  enqueued_at REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  uncertain INTEGER NOT NULL DEFAULT 0);
"""


@dataclass(frozen=True)
class OutboxEntry:
    """What an agent hands over: the payload for one `(lane, key)` and where it came from (for the quarantine).

    `lane`: the destination partition (the NGSI-LD tenant, "" for the default one). `key`: the
    ordering key (the entity id). `source`: `{"agent"?, "source", "payload", "metadata"?}` as
    the quarantine keeps it if the broker refuses the payload.
    """

    lane: str
    key: str
    payload: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxItem:
    """An entry waiting in the outbox, with its sequence number and delivery history."""

    seq: int
    lane: str
    key: str
    payload: dict[str, Any]
    source: dict[str, Any]
    enqueued_at: float
    attempts: int
    uncertain: bool


@dataclass
class DeliveryReport:
    """What the destination did with a batch: sequence numbers delivered and rejected (with the reason).

    Items in neither list stay in the outbox and are retried later, marked uncertain.
    """

    delivered: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)


class DeliveryUnavailable(Exception):
    """The destination cannot be reached; `uncertain` when the request may nevertheless have been applied."""

    def __init__(self, message: str, *, uncertain: bool) -> None:
        super().__init__(message)
        self.uncertain = uncertain


Deliver = Callable[[list[OutboxItem]], Awaitable[DeliveryReport]]
"""Sends one batch (all items of one lane, distinct keys) and says what happened to each item."""


class Outbox:
    """The durable queue: `put` entries, and (for `OutboxRelay`) take batches and settle them."""

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_pending = max_pending
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pending = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        self._changed = asyncio.Event()
        self._room = asyncio.Event()

    @property
    def pending(self) -> int:
        """How many entries wait for delivery."""
        return self._pending

    def close(self) -> None:
        """Close the file (entries stay on disk for the next start)."""
        with self._lock:  # a settle of a cancelled delivery may still be running in its thread
            self._db.close()

    async def put(self, entries: Sequence[OutboxEntry], *, uncertain: bool = False, force: bool = False) -> None:
        """Commit entries durably, waiting first for room when `max_pending` is reached.

        `uncertain`: a delivery of these entries failed in a way that may have applied them.
        `force`: commit without waiting for room (an agent shutting down, whose relay has stopped).
        """
        if not entries:
            return
        if self.max_pending is not None and not force:
            while self._pending > 0 and self._pending + len(entries) > self.max_pending:
                self._room.clear()
                await self._room.wait()
        self._pending += len(entries)
        try:
            await asyncio.to_thread(self._insert, entries, uncertain)
        except BaseException:
            self._pending -= len(entries)
            raise
        self._changed.set()

    def _insert(self, entries: Sequence[OutboxEntry], uncertain: bool) -> None:
        now = time.time()
        flag = int(uncertain)
        rows = [(e.lane, e.key, orjson.dumps(e.payload), orjson.dumps(e.source), now, flag) for e in entries]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO outbox (lane, key, payload, source, enqueued_at, uncertain) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def next_batch(self, limit: int, *, busy_seqs: set[int], busy_keys: set[tuple[str, str]]) -> list[OutboxItem]:
        """The oldest deliverable entries of one lane, at most one per key and none of a key in flight."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, lane, key, payload, source, enqueued_at, attempts, uncertain FROM outbox"
                " ORDER BY seq LIMIT ?",
                (limit * 8 + len(busy_seqs),),
            ).fetchall()
        seen = set(busy_keys)
        lane: str | None = None
        batch: list[OutboxItem] = []
        for seq, row_lane, key, payload, source, enqueued_at, attempts, uncertain in rows:
            if seq in busy_seqs:
                continue
            if (row_lane, key) in seen:
                continue
            seen.add((row_lane, key))
            if lane is None:
                lane = row_lane
            elif row_lane != lane:
                continue
            batch.append(
                OutboxItem(seq, row_lane, key, orjson.loads(payload), orjson.loads(source), enqueued_at,
                           attempts, bool(uncertain))
            )  # fmt: skip
            if len(batch) >= limit:
                break
        return batch

    def settle(self, seqs: Sequence[int]) -> None:
        """Remove entries that were delivered or quarantined."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
            self._db.execute("COMMIT")
        self._pending -= len(seqs)

    def admit_all(self) -> None:
        """Stop applying `max_pending`: an agent shutting down commits what it holds rather than wait for room."""
        self.max_pending = None
        self._room.set()

    def after_settle(self) -> None:
        """Tell waiting producers there may be room (call on the event loop)."""
        self._room.set()

    def mark_attempt(self, seqs: Sequence[int], *, uncertain: bool) -> None:
        """Count a failed attempt; `uncertain` if the destination may have applied it."""
        with self._lock:
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, uncertain = max(uncertain, ?) WHERE seq = ?",
                [(int(uncertain), seq) for seq in seqs],
            )


class OutboxRelay:
    """Moves entries to the destination: batches, in order per key, retries with backoff, quarantines refusals."""

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        quarantine: Quarantine,
        *,
        agent: str,
        batch_size: int = 100,
        concurrency: int = 2,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        max_failures: int = 10,
    ) -> None:
        self.outbox = outbox
        self.deliver = deliver
        self.quarantine = quarantine
        self.agent = agent
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_failures = max_failures
        self.delivered = 0
        self.on_delivered: Callable[[list[OutboxItem]], None] | None = None
        self._stop = asyncio.Event()
        self._backoff = 0.0
        self._resume_at = 0.0
        self._busy_seqs: set[int] = set()
        self._busy_keys: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Finish the batches in flight, then return from `run`."""
        self._stop.set()
        self.outbox._changed.set()

    def give_up(self) -> None:
        """Stop now: cancel the batches in flight; they stay in the outbox, marked uncertain (see `_send`)."""
        self.stop()
        for task in self._tasks:
            task.cancel()

    @property
    def available(self) -> bool:
        """False while the destination is backing off after failures."""
        return self._backoff == 0.0

    async def run(self) -> None:
        """Deliver until stopped."""
        tasks = self._tasks
        while not self._stop.is_set():
            self.outbox._changed.clear()
            while len(tasks) < self.concurrency and time.monotonic() >= self._resume_at and not self._stop.is_set():
                # Adaptive batching: a second batch goes out only when a full one is waiting; otherwise
                # entries gather while the first is in flight, so batches grow with the load.
                if tasks and self.outbox.pending - len(self._busy_seqs) < self.batch_size:
                    break
                batch = await asyncio.to_thread(
                    self.outbox.next_batch, self.batch_size, busy_seqs=set(self._busy_seqs),
                    busy_keys=set(self._busy_keys),
                )  # fmt: skip
                if not batch:
                    break
                for item in batch:
                    self._busy_seqs.add(item.seq)
                    self._busy_keys.add((item.lane, item.key))
                tasks.add(asyncio.create_task(self._send(batch)))
            timeout = max(0.0, self._resume_at - time.monotonic()) if self._resume_at > time.monotonic() else 1.0
            changed = asyncio.ensure_future(self.outbox._changed.wait())
            done, _ = await asyncio.wait({*tasks, changed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            tasks -= done
        if tasks:
            await asyncio.wait(tasks)
        tasks.clear()

    def _failed(self, seqs: list[int], *, uncertain: bool, reason: str) -> None:
        self.outbox.mark_attempt(seqs, uncertain=uncertain)
        self.note_unavailable(reason, entries=len(seqs))

    def note_unavailable(self, reason: str, *, entries: int = 0) -> None:
        """A delivery failed: back off (exponentially) before the next attempt; `available` turns False."""
        self._backoff = min(self.max_backoff_s, max(self.min_backoff_s, self._backoff * 2))
        self._resume_at = time.monotonic() + self._backoff
        log.warning("delivery failed agent=%s entries=%d retry_in_s=%.1f reason=%s",
                    self.agent, entries, self._backoff, reason)  # fmt: skip

    def quarantine_rejected(self, items: Sequence[OutboxItem], rejected: Mapping[int, str]) -> None:
        """Keep entries the destination refused for good in the quarantine, with its reason."""
        by_seq = {item.seq: item for item in items}
        self.quarantine.add_many(
            (
                str(by_seq[seq].source.get("agent") or self.agent),
                str(by_seq[seq].source.get("source") or f"outbox:{by_seq[seq].lane}"),
                by_seq[seq].source.get("payload") or orjson.dumps(by_seq[seq].payload).decode(),
                f"rejected by the broker: {reason}",
                {**by_seq[seq].source.get("metadata", {}), "lane": by_seq[seq].lane, "entity": by_seq[seq].payload},
            )
            for seq, reason in rejected.items()
        )

    async def _send(self, batch: list[OutboxItem]) -> None:
        seqs = [item.seq for item in batch]
        try:
            try:
                report = await self.deliver(batch)
            except asyncio.CancelledError:
                self.outbox.mark_attempt(seqs, uncertain=True)  # give_up(): the broker may still apply them
                raise
            except DeliveryUnavailable as error:
                await asyncio.to_thread(self._failed, seqs, uncertain=error.uncertain, reason=str(error))
                return
            except Exception as error:  # a failing destination must not stop the relay
                log.exception("outbox destination raised agent=%s", self.agent)
                poisoned = [item for item in batch if item.attempts + 1 >= self.max_failures]
                report = DeliveryReport(rejected={item.seq: f"delivery failed: {error!r}" for item in poisoned})
                await asyncio.to_thread(self._failed, [s for s in seqs if s not in report.rejected],
                                        uncertain=True, reason=repr(error))  # fmt: skip
            await asyncio.to_thread(self._settle, batch, report)
        finally:
            for item in batch:
                self._busy_seqs.discard(item.seq)
                self._busy_keys.discard((item.lane, item.key))
            self.outbox.after_settle()
            self.outbox._changed.set()

    def _settle(self, batch: list[OutboxItem], report: DeliveryReport) -> None:
        by_seq = {item.seq: item for item in batch}
        if report.rejected:
            self.quarantine_rejected(batch, report.rejected)
        settled = [*report.delivered, *report.rejected]
        self.outbox.settle(settled)
        self.delivered += len(report.delivered)
        if report.delivered and self.on_delivered is not None:
            delivered = set(report.delivered)
            self.on_delivered([item for item in batch if item.seq in delivered])
        left = [seq for seq in by_seq if seq not in set(settled)]
        if left:
            self._failed(left, uncertain=True, reason="some entities failed with a server error")
        elif settled:  # the broker answered for every entry
            self._backoff = 0.0
            self._resume_at = 0.0


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class BrokerUpsert:
    """The NGSI-LD destination: batch upsert (update mode) of entity fragments, one client per tenant (lane).

    Works against any NGSI-LD broker (ours, Orion-LD) through `ngsi.client.AsyncBrokerClient`.
    """

    def __init__(self, broker_url: str, *, context: str | None = None, timeout_s: float = 10.0) -> None:
        self.broker_url = broker_url
        self.context = context
        self.timeout_s = timeout_s
        self._clients: dict[str, AsyncBrokerClient] = {}

    def client(self, lane: str) -> AsyncBrokerClient:
        """The client for one tenant ("" = default)."""
        client = self._clients.get(lane)
        if client is None:
            client = AsyncBrokerClient(
                self.broker_url, tenant=lane or None, context=self.context, timeout=self.timeout_s, batch_size=1000
            )
            self._clients[lane] = client
        return client

    async def aclose(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def __call__(self, batch: list[OutboxItem]) -> DeliveryReport:
        client = self.client(batch[0].lane)
        report = DeliveryReport()
        try:
            if any(item.uncertain for item in batch):
                uncertain = [item for item in batch if item.uncertain]
                applied = await self._already_applied(client, uncertain)
                log.info("uncertain entries checked entries=%d applied=%d", len(uncertain), len(applied))
                report.delivered.extend(applied)
                batch = [item for item in batch if item.seq not in set(applied)]
            if batch:
                await self._upsert(client, batch, report)
        except BrokerUnavailable as error:
            # Delivered ones above were read back from the broker; the rest is retried.
            raise DeliveryUnavailable(str(error), uncertain=not isinstance(error.__cause__, _NOT_SENT)) from error
        return report

    async def _upsert(self, client: AsyncBrokerClient, batch: list[OutboxItem], report: DeliveryReport) -> None:
        try:
            result = await client.batch_upsert([item.payload for item in batch], mode="update")
        except BrokerUnavailable:
            raise
        except NgsiError as error:
            if error.status >= 500:
                raise DeliveryUnavailable(f"{error.status} {error.detail}", uncertain=True) from error
            if len(batch) == 1:
                report.rejected[batch[0].seq] = f"{error.status} {error.title}: {error.detail}"
                return
            # The whole request was refused: find out which entity by sending them one by one.
            for item in batch:
                await self._upsert(client, [item], report)
            return
        failed = {failure.entity_id: failure.error for failure in result.errors}
        for item in batch:
            refusal = failed.get(item.key)
            if refusal is None:
                report.delivered.append(item.seq)
            elif refusal.status < 500:
                report.rejected[item.seq] = f"{refusal.status} {refusal.title}: {refusal.detail}"

    async def _already_applied(self, client: AsyncBrokerClient, items: list[OutboxItem]) -> list[int]:
        """Uncertain entries the broker already holds: every measured attribute has their value and observedAt."""
        result = await client.query_entities(id=[item.key for item in items], limit=len(items))
        current = {entity.get("id"): entity for entity in result.items}
        return [item.seq for item in items if _holds(current.get(item.key), item.payload)]


def _holds(entity: Mapping[str, Any] | None, fragment: Mapping[str, Any]) -> bool:
    """Whether the current state shows the fragment applied: each measured attribute holds it, or a newer one.

    A newer observation counts: entries of one entity are sent in order, so a newer one in the
    current state was applied after this one (in the same batch upsert, or a later one).
    """
    if entity is None:
        return False
    measured = 0
    for name, attribute in fragment.items():
        if not isinstance(attribute, dict) or "observedAt" not in attribute:
            continue
        measured += 1
        held = entity.get(name)
        if isinstance(held, list):
            held = next((i for i in held if isinstance(i, dict) and "datasetId" not in i), None)
        if not isinstance(held, dict):
            return False
        held_at, sent_at = _moment(held.get("observedAt")), _moment(attribute["observedAt"])
        if held_at is None or sent_at is None or held_at < sent_at:
            return False
        sent_value = attribute.get("value", attribute.get("object"))
        if held_at == sent_at and held.get("value", held.get("object")) != sent_value:
            return False
    return measured > 0


def _moment(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

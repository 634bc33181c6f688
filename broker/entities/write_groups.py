"""Group commit: the single-entity writes that wait at the same time for one tenant share one transaction.

Each write of a busy broker paid for its own transaction: three messages to PostgreSQL, statements
parsed and planned, and a WAL flush at COMMIT. A tenant's writes now go through one queue; one task per
tenant takes the queued writes and runs them as one transaction: the entities locked in one statement,
each write applied in arrival order to the state the previous one left (the same entity twice is changed
twice, in order), one state upsert with the history rows, one change-sink record, one COMMIT. A write
that finds a free slot goes at once; writes queue only while `in_flight` transactions of their tenant are
running (default 4, at most half the pool's connections): while one group is at the database, statement
and WAL flush, the next ones are built and sent, so this process and PostgreSQL (one backend per group)
work at the same time instead of taking turns. A group takes at most an `in_flight`-th of the tenant's
pending writes (queued or in a group not yet answered; at most `max_group`): 16 writers make groups of
about 4, four at the database, where taking everything queued made two groups of 8 that took turns
(bench.broker, 16 clients, paired runs: 1,104 / 1,396 / 1,115 against 846 / 1,210 / 744 requests/s; 64
clients: 1,399 / 960 against 946 / 875), and 64 writers make groups of about 16. Writes to one entity
keep their arrival order across groups in flight: a group starts only once the group before it holds its
locks, and every writer takes per-id advisory locks in one canonical order (store.ADVISORY_LOCKS), so a
later group that writes the same entity waits at its lock for the earlier group's COMMIT and reads what
it wrote; an id that does not exist yet is locked too (two groups, or a group and a batch, creating it:
one creates, the other finds it).
After groups of several writes, the next one waits a few milliseconds for a share of the writes they
held (their clients, answered together, send their next writes one by one): without this, the first of
them went alone and every other group held a single write.

Every write keeps its own answer: an error found in Python (a missing entity, an id taken) belongs to
its write alone. When the group's transaction fails (PostgreSQL refuses a value, a broken geometry),
each write of the group runs again on its own, so one bad write never fails another. (A later group
already in flight may then write one of its entities before that write runs again: the one case where
two writes of an entity in consecutive groups are applied out of arrival order.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from broker.entities import store
from broker.entities.stored import StoredEntity
from broker.storage.history import OpMode
from ngsi.errors import NgsiError

log = logging.getLogger(__name__)

MAX_GROUP = 64
GATHER_S = 0.005
GATHER_ROUNDS = 3
IN_FLIGHT = 4

Write = tuple[StoredEntity | None, StoredEntity | None, OpMode, datetime]
"""(before, after, opMode, at) of one write: `before` None on create, `after` None on delete."""

Apply = Callable[[StoredEntity | None], tuple[StoredEntity | None, OpMode | None, Any]]
"""A write's rule: from the entity's state (None: absent) to (the state after it — built on a copy, `before`
is never changed; never None: deleting entities is not grouped —, its opMode or None when it changed
nothing, the request's answer). Raises NgsiError for an error of that request alone. It may run twice
(alone again after its group failed), so it must not depend on having run before."""

Record = Callable[[AsyncConnection, str | None, list[Write], list[StoredEntity]], Awaitable[None]]
"""Stores the states and writes the history rows and change events of writes, in the caller's transaction."""


@dataclass(slots=True)
class EntityWrite:
    """One request's change of one entity, waiting for its group."""

    entity_id: str
    at: datetime
    apply: Apply
    answer: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Lane:
    """The writes of one tenant's database waiting for a transaction, and the task that runs them."""

    tenant: str | None
    pool: AsyncConnectionPool
    in_flight: int
    """Groups at the database at once: `in_flight`, at most half the pool's connections (reads need some)."""
    queue: deque[EntityWrite] = field(default_factory=deque)
    runner: asyncio.Task[None] | None = None
    expected: int = 0
    """How many writes the runner waits for before the next group (the size of the last one)."""
    filled: asyncio.Future[None] | None = None
    """Resolved when `expected` writes are queued."""
    answered: int = 0
    """Writes answered by groups of several since the last group started: about as many will come back."""
    woken: asyncio.Future[None] | None = None
    """Resolved by the next queued write, while the runner waits with a free slot and nothing queued."""
    pending: int = 0
    """Writes queued or in a group not yet answered: about how many writers this tenant has right now."""


class WriteGroups:
    """Runs single-entity writes in per-tenant groups, one transaction per group, one answer per write."""

    def __init__(self, record: Record, *, max_group: int = MAX_GROUP, gather_s: float = GATHER_S,
                 in_flight: int = IN_FLIGHT) -> None:
        self._record = record
        self._max_group = max(1, max_group)
        self._in_flight = max(1, in_flight)
        self._gather_s = gather_s
        self._lanes: dict[tuple[str | None, AsyncConnectionPool], Lane] = {}
        self.groups = 0
        """Transactions run so far (a group run again one write at a time counts once)."""
        self.writes = 0
        """Writes they held."""
        self.stage_s = {"queued": 0.0, "locking": 0.0, "writing": 0.0, "committing": 0.0}
        """Seconds the writes spent in each stage, summed over writes (GET /health; bench.broker divides
        by the writes): waiting for their group; from the group's start (a pooled connection, BEGIN) to
        holding the locks and rows; applying and sending the states, history and changes; COMMIT."""

    @property
    def queued(self) -> int:
        """Writes waiting for a group right now, all tenants."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    async def write(self, tenant: str | None, pool: AsyncConnectionPool, entity_id: str, at: datetime,
                    apply: Apply) -> Any:
        """Apply one write in the next transaction of `tenant` and return its answer (or raise its error)."""
        key = (tenant, pool)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(tenant, pool, max(1, min(self._in_flight, pool.max_size // 2)))
        write = EntityWrite(entity_id, at, apply, asyncio.get_running_loop().create_future())
        lane.queue.append(write)
        lane.pending += 1
        if lane.filled is not None and len(lane.queue) >= lane.expected:
            resolve(lane.filled)
        if lane.woken is not None:
            resolve(lane.woken)
        if lane.runner is None:
            lane.runner = asyncio.create_task(self._run_lane(key, lane))
        return await write.answer

    async def _run_lane(self, key: tuple[str | None, AsyncConnectionPool], lane: Lane) -> None:
        """Start groups while writes are queued, at most `in_flight` at the database at once.

        A group starts only once the one before it holds its locks: a later write to the same entity waits
        for the earlier group's COMMIT at its lock (store.ADVISORY_LOCKS), so writes to one entity are applied
        in arrival order even with several groups in flight, and groups of different entities overlap.
        """
        in_flight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while True:
                in_flight = {task for task in in_flight if not task.done()}
                if (lane.queue or lane.answered > 1) and len(in_flight) < lane.in_flight:
                    if lane.answered > 1:
                        # The answered writers split into as many groups as may be in flight: the first
                        # part goes while the rest is still coming, and the rest goes while it commits.
                        expected, lane.answered = -(-lane.answered // lane.in_flight), 0
                        await self._gather(lane, expected)
                        if not lane.queue:
                            continue
                    # A share of the pending writes, so that the writers spread over the groups in flight.
                    size = min(len(lane.queue), self._max_group, -(-lane.pending // lane.in_flight))
                    group = [lane.queue.popleft() for _ in range(size)]
                    self.groups += 1
                    self.writes += len(group)
                    started = time.perf_counter()
                    self.stage_s["queued"] += sum(started - write.queued_at for write in group)
                    locked: asyncio.Future[None] = loop.create_future()
                    task = asyncio.create_task(self._run_group(lane, group, locked))
                    in_flight.add(task)
                    await asyncio.wait((locked, task), return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not lane.queue and not in_flight:
                    break
                waits: set[asyncio.Future[Any]] = set(in_flight)
                if len(in_flight) < lane.in_flight:  # the queue is empty: wake on the next write
                    lane.woken = loop.create_future()
                    waits.add(lane.woken)
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lane.woken = None
        finally:
            lane.runner = None
            for task in in_flight:
                task.cancel()
            while lane.queue:  # only when cancelled (the broker stops): nobody will run these
                lane.queue.popleft().answer.cancel()
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _gather(self, lane: Lane, expected: int) -> None:
        """After a group of several writes, wait until as many are queued again, or until none came for `gather_s`.

        Its writers were answered together and send their next writes one by one: without this wait the
        first of them would go alone, the others queue behind it, and every other group held one write.
        The time counts from when the answers have left (the requests waiting for them run first); it is
        renewed while writes keep coming (on a busy machine they come slowly), at most GATHER_ROUNDS times.
        A write that comes after a group of one (a lone client) never waits.
        """
        if len(lane.queue) >= expected or self._gather_s <= 0:
            return
        loop = asyncio.get_running_loop()
        filled: asyncio.Future[None] = loop.create_future()
        lane.expected, lane.filled = expected, filled
        timers: list[asyncio.TimerHandle] = []

        def check(queued: int, rounds: int) -> None:
            if rounds > 0 and len(lane.queue) > queued:
                timers.append(loop.call_later(self._gather_s, check, len(lane.queue), rounds - 1))
            else:
                resolve(filled)

        loop.call_soon(lambda: timers.append(loop.call_later(self._gather_s, check, len(lane.queue), GATHER_ROUNDS)))
        try:
            await filled
        finally:
            for timer in timers:
                timer.cancel()
            lane.expected, lane.filled = 0, None

    async def _run_group(self, lane: Lane, group: list[EntityWrite], locked: asyncio.Future[None]) -> None:
        try:
            try:
                answers = await self._commit(lane, group, locked)
            except Exception as error:
                if len(group) == 1:
                    settle(group[0], Outcome(error=error))
                    return
                log.info("group commit failed, running its writes one by one writes=%d error=%s",
                         len(group), type(error).__name__)
                for write in group:
                    try:
                        outcome = (await self._commit(lane, [write]))[0]
                    except Exception as alone:
                        outcome = Outcome(error=alone)
                    settle(write, outcome)
                return
            for write, outcome in zip(group, answers, strict=True):
                settle(write, outcome)
        except BaseException:
            for write in group:
                if not write.answer.done():
                    write.answer.cancel()
            raise
        finally:
            resolve(locked)
            lane.pending -= len(group)
            if len(group) > 1:  # its writers, answered together, send their next writes one by one
                lane.answered += len(group)

    async def _commit(self, lane: Lane, group: list[EntityWrite], locked: asyncio.Future[None] | None = None
                      ) -> list[Outcome]:
        """One transaction for the group; its writes' outcomes (an NgsiError for a write refused in Python).

        `locked` is resolved once the group holds the locks of its entities."""
        entity_ids = sorted({write.entity_id for write in group})
        answers: list[Outcome] = []
        began = time.perf_counter()
        async with lane.pool.connection() as conn, store.write_transaction(conn):
            current = await store.lock_entities(conn, entity_ids)
            if locked is not None:
                resolve(locked)
            holding = time.perf_counter()
            writes: list[Write] = []
            changed: set[str] = set()
            for write in group:
                before = current[write.entity_id]
                try:
                    after, op, answer = write.apply(before)
                except NgsiError as error:
                    answers.append(Outcome(error=error))
                    continue
                answers.append(Outcome(answer))
                if op is None:
                    continue
                current[write.entity_id] = after
                writes.append((before, after, op, write.at))
                if after is not None and (after.touched or before is None):
                    changed.add(write.entity_id)
            if writes:
                saving = [entity for entity_id in entity_ids if entity_id in changed
                          if (entity := current[entity_id]) is not None]
                await self._record(conn, lane.tenant, writes, saving)
            written = time.perf_counter()
        done = time.perf_counter()
        for stage, seconds in (("locking", holding - began), ("writing", written - holding),
                               ("committing", done - written)):
            self.stage_s[stage] += seconds * len(group)
        return answers


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a write's request gets: its answer, or the error it raises."""

    answer: Any = None
    error: Exception | None = None


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def settle(write: EntityWrite, outcome: Outcome) -> None:
    """Hand a write its answer, or raise its error in the request that waits for it."""
    if write.answer.done():  # the request went away (its task was cancelled)
        return
    if outcome.error is not None:
        write.answer.set_exception(outcome.error)
    else:
        write.answer.set_result(outcome.answer)

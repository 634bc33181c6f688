"""Durable hand-off: an agent's entries go straight to the broker in coalesced batch upserts, or into the outbox.

    hand_off = HandOff(relay)                    # the relay's outbox and destination (BrokerUpsert)
    task = asyncio.create_task(hand_off.run())
    await hand_off.put(entries)                  # returns once every entry is durable (see below)
    ...
    hand_off.stop(); await task

An entry is durable when the broker accepted it, when the broker refused it for good and it is in
the quarantine, or when it is committed to the outbox. `put` returns only then, so an agent
answers its device (MQTT PUBACK, HTTP 200) after the durable hand-off and never before.

Coalescing: whatever producers `put` while a batch is on its way (MQTT batches, concurrent HTTP
requests) is gathered, for at most `max_delay_s` when idle, into the next batch of at most
`max_entries`, one batch upsert per tenant (lane). One batch is in flight at a time, so entries
of one device (key) are applied in the order they were put; a batch may hold several entries of
one entity, which the broker applies in array order (GS CIM 009 clause 10.3.3: batch upsert
processes repeated entity ids chronologically, each update adding its instances to the
history, as Orion-LD does).

The outbox keeps the order: while it holds anything, or the broker is backing off after a
failure, new entries go to the outbox behind the older ones (the `OutboxRelay` delivers them);
entries of a batch that failed are put there too, marked uncertain when the broker may have
applied them (the relay then reads the current state before resending, see agents/outbox.py).
Once the outbox is empty and the broker answers again, entries go straight through again.

Shutdown within a bound: `stop()` sends what was put; if the broker does not answer in time,
`give_up()` cancels the batch upsert in flight and commits its entries to the outbox, marked
uncertain (the broker may still apply the request it received), so every producer is answered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence

from agents.outbox import DeliveryReport, DeliveryUnavailable, OutboxEntry, OutboxItem, OutboxRelay

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 1000
"""Entities per batch upsert (Orion-LD's own limit per batch request)."""
DEFAULT_MAX_DELAY_S = 0.005
"""How long an idle hand-off waits for more entries before sending what it has."""


class HandOff:
    """Coalesces entries into batch upserts sent directly to the broker; falls back to the outbox in order."""

    def __init__(
        self,
        relay: OutboxRelay,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
    ) -> None:
        self.relay = relay
        self.outbox = relay.outbox
        self.max_entries = max_entries
        self.max_delay_s = max_delay_s
        self.direct = 0
        """Entries the broker accepted straight from the hand-off (the relay counts the outbox's)."""
        self._waiting: deque[tuple[Sequence[OutboxEntry], asyncio.Future[None]]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._sequence = itertools.count(-1, -1)  # direct items are not in the outbox: negative numbers
        self._delivery: asyncio.Future[DeliveryReport] | None = None
        self._gave_up = False

    async def put(self, entries: Sequence[OutboxEntry]) -> None:
        """Return once every entry is durable: accepted or quarantined by the broker, or in the outbox."""
        if not entries:
            return
        if self._stopping:
            await self.outbox.put(entries, force=self._gave_up)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entries, done))
        self._queued += len(entries)
        self._wake.set()
        await done

    def stop(self) -> None:
        """Send what was put, then return from `run` (later `put`s go to the outbox)."""
        self._stopping = True
        self._wake.set()

    def give_up(self) -> None:
        """Stop waiting for the broker: the batch in flight and everything after it go to the outbox (uncertain)."""
        self._stopping = True
        self._gave_up = True
        self.outbox.admit_all()
        if self._delivery is not None and not self._delivery.done():
            self._delivery.cancel()
        self._wake.set()

    async def run(self) -> None:
        """Send batches until stopped."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._waiting:
                if self._stopping:
                    return
                continue
            if self._queued < self.max_entries and self.max_delay_s > 0 and not self._stopping:
                await asyncio.sleep(self.max_delay_s)  # let concurrent producers join this batch
            taken: list[tuple[Sequence[OutboxEntry], asyncio.Future[None]]] = []
            count = 0
            while self._waiting and (not taken or count + len(self._waiting[0][0]) <= self.max_entries):
                entries, done = self._waiting.popleft()
                taken.append((entries, done))
                count += len(entries)
            self._queued -= count
            try:
                await self._hand_over([entry for entries, _ in taken for entry in entries])
            except asyncio.CancelledError:
                for _, done in taken:
                    done.cancel()
                raise
            except BaseException as error:  # the producers answer their devices with the failure
                for _, done in taken:
                    if not done.done():
                        done.set_exception(error)
            else:
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)
            if self._waiting or self._stopping:
                self._wake.set()

    async def _hand_over(self, entries: list[OutboxEntry]) -> None:
        if self._gave_up:
            await self.outbox.put(entries, force=True)  # shutting down: no room to wait for
            return
        if self.outbox.pending or not self.relay.available:
            await self.outbox.put(entries)  # nothing overtakes what waits in the outbox
            return
        lanes: dict[str, list[tuple[OutboxItem, OutboxEntry]]] = {}
        for entry in entries:
            item = OutboxItem(next(self._sequence), entry.lane, entry.key, entry.payload, entry.source, 0.0, 0, False)
            lanes.setdefault(entry.lane, []).append((item, entry))
        for pairs in lanes.values():
            await self._send([item for item, _ in pairs], {item.seq: entry for item, entry in pairs})

    async def _send(self, items: list[OutboxItem], entries: dict[int, OutboxEntry]) -> None:
        if self.outbox.pending or not self.relay.available:
            await self.outbox.put(list(entries.values()))  # an earlier lane of this batch just failed
            return
        if self._gave_up:
            await self.outbox.put(list(entries.values()), force=True)
            return
        self._delivery = asyncio.ensure_future(self.relay.deliver(items))
        try:
            report = await self._delivery
        except asyncio.CancelledError:
            if not self._gave_up or not self._delivery.cancelled():
                raise  # the hand-off itself is cancelled
            # give_up(): the request may have reached the broker, which may still apply it.
            await self.outbox.put(list(entries.values()), uncertain=True, force=True)
            return
        except DeliveryUnavailable as error:
            self.relay.note_unavailable(str(error))
            await self.outbox.put(list(entries.values()), uncertain=error.uncertain)
            return
        except Exception as error:  # a failing destination must not lose entries
            log.exception("hand-off destination raised agent=%s", self.relay.agent)
            self.relay.note_unavailable(repr(error))
            await self.outbox.put(list(entries.values()), uncertain=True)
            return
        await self._settle(items, entries, report)

    async def _settle(self, items: list[OutboxItem], entries: dict[int, OutboxEntry], report: DeliveryReport) -> None:
        if report.rejected:
            await asyncio.to_thread(self.relay.quarantine_rejected, items, report.rejected)
        self.direct += len(report.delivered)
        settled = {*report.delivered, *report.rejected}
        left = [entries[item.seq] for item in items if item.seq not in settled]
        if left:
            # Server errors for some entities: the broker may or may not have applied them.
            self.relay.note_unavailable("some entities failed with a server error")
            await self.outbox.put(left, uncertain=True)

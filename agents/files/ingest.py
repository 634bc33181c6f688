"""File ingest: stream a file through its mapping into any NGSI-LD broker, history included, resumable, nothing lost.

For each chunk of records:
- records that cannot be mapped go to the quarantine with the reason;
- per entity and attribute, the newest instance becomes the current state (one batch upsert
  per @context, `options=update`), and every older instance is written to the history through
  the temporal append path (`POST /temporal/entities/{id}/attrs`, GS CIM 009 5.6.12) in one
  request per entity. A broker without that path gets the older instances as upserts in time
  order instead (its own TRoE history records them);
- the checkpoint then moves past the chunk.

Exactly one history instance per observation: the upsert writes the newest, the append the rest.
A re-run of a finished file sends nothing. After a crash only the chunk marked `in_flight` is
uncertain: before resending it, the broker's history is counted (`aggrMethods=totalCount`) for
each of its entities and what is already there is not sent again. That count cannot see a
request of the killed run that the broker is still working on, so every instance also carries an
`instanceId` derived from entity, attribute and observedAt: our broker keeps given instanceIds
and writes no instance twice, which makes such a late duplicate harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from agents.files.checkpoint import Checkpoint, checkpoint_key, prefix_digest
from agents.files.mapping import Mapping as FileMapping
from agents.files.readers import Record, open_records
from agents.files.translator import Entity, Translator, UnmappableRecord, compile_translator
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient, BatchResult, BrokerUnavailable
from ngsi.errors import NgsiError, NonexistentTenant, ResourceNotFound

log = logging.getLogger(__name__)

AGENT = "files"
DEFAULT_CHUNK_ROWS = 5000
APPEND_CONCURRENCY = 4
"""Temporal append requests in flight at once (one per entity)."""
MAX_INSTANCES_PER_APPEND = 20_000
"""Instances per temporal append request (keeps bodies well under the broker's backfill limit)."""
_STATIC_KEYS = frozenset({"id", "type", "@context"})


class IngestInterrupted(Exception):
    """The broker stayed unreachable; the checkpoint keeps the progress, a re-run resumes."""


@dataclass
class IngestSummary:
    """What one run did."""

    file: str
    records: int = 0
    entities: int = 0
    current_state_writes: int = 0
    history_instances: int = 0
    quarantined: int = 0
    skipped_blank: int = 0
    rejected_by_broker: int = 0
    resumed_from: int = 0
    already_done: bool = False
    seconds: float = 0.0
    temporal_path: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return dict(self.__dict__)


@dataclass
class Chunk:
    """Mapped records of one chunk: their entities, what was unmappable, where the chunk ends."""

    start: int
    end: int
    records: int = 0
    blank: int = 0
    entities: list[Entity] = field(default_factory=list)
    unmappable: list[tuple[Record, str]] = field(default_factory=list)


def read_chunks(records: Iterator[Record], translate: Translator, start: int, rows: int) -> Iterator[Chunk]:
    """Group records into chunks of `rows`, translating each; pure apart from reading the file."""
    position = start
    while True:
        chunk = Chunk(start=position, end=position)
        for record in records:
            chunk.records += 1
            chunk.end = record.position
            if record.error is not None:
                chunk.unmappable.append((record, record.error))
            elif translate.is_blank(record.values):
                chunk.blank += 1
            else:
                try:
                    chunk.entities.extend(translate(record.values))
                except UnmappableRecord as error:
                    chunk.unmappable.append((record, str(error)))
            if chunk.records >= rows:
                break
        if chunk.records == 0:
            return
        position = chunk.end
        yield chunk


@dataclass
class _Planned:
    """One entity's share of a chunk: the upsert fragment and the older instances for history."""

    entity_id: str
    context: Any
    upsert: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]

    def history_count(self) -> int:
        return sum(len(instances) for instances in self.history.values())


def plan_chunk(entities: list[Entity], latest: dict[tuple[str, str], str]) -> list[_Planned]:
    """Split a chunk's entities: the newest instance per attribute for the current state, the rest for history.

    `latest` remembers the newest observedAt already written per (entity, attribute), so an
    unsorted file never moves the current state back in time.
    """
    grouped: dict[str, list[Entity]] = {}
    for entity in entities:
        grouped.setdefault(entity["id"], []).append(entity)
    planned: list[_Planned] = []
    for entity_id, parts in grouped.items():
        upsert: dict[str, Any] = {"id": entity_id, "type": parts[0]["type"]}
        newest_static = ""
        instances: dict[str, list[dict[str, Any]]] = {}
        for part in parts:
            observed = _date_observed(part)
            for name, attribute in part.items():
                if name in _STATIC_KEYS:
                    continue
                if isinstance(attribute, dict) and "observedAt" in attribute:
                    instances.setdefault(name, []).append(attribute)
                elif observed >= newest_static or name not in upsert:
                    upsert[name] = attribute
            newest_static = max(newest_static, observed)
        history: dict[str, list[dict[str, Any]]] = {}
        for name, found in instances.items():
            found.sort(key=_observed_at)
            newest = found[-1]
            known = latest.get((entity_id, name))
            if known is None or newest["observedAt"] >= known:
                upsert[name] = newest
                latest[(entity_id, name)] = newest["observedAt"]
                older = found[:-1]
            else:
                older = found
            if older:
                history[name] = older
        planned.append(_Planned(entity_id, parts[0]["@context"], upsert, history))
    return planned


def _observed_at(attribute: dict[str, Any]) -> str:
    return str(attribute["observedAt"])


def _date_observed(entity: Entity) -> str:
    value = entity.get("dateObserved", {}).get("value")
    return str(value.get("@value", "")) if isinstance(value, dict) else str(value or "")


class BrokerWriter:
    """Writes planned chunks to one broker tenant; refusals go to the quarantine, outages are retried."""

    def __init__(
        self,
        client: AsyncBrokerClient,
        quarantine: Quarantine,
        *,
        source: str,
        temporal: bool | None = None,
        retry_for_s: float = 300.0,
    ) -> None:
        self.client = client
        self.quarantine = quarantine
        self.source = source
        self.temporal = temporal
        self.retry_for_s = retry_for_s
        self.latest: dict[tuple[str, str], str] = {}
        self.rejected = 0

    async def probe_temporal(self) -> bool:
        """Does the broker have the temporal append path? (404 ResourceNotFound for an unknown entity = yes)."""
        if self.temporal is not None:
            return self.temporal
        probe = "urn:ngsi-ld:IngestProbe:climaborough-files"
        try:
            await self._retrying(lambda: self.client.temporal_append(probe, {"probe": [{"type": "Property",
                                                                           "value": 0}]}))  # fmt: skip
            self.temporal = True  # it accepted an append for an entity without history: the path exists
        except (ResourceNotFound, NonexistentTenant):
            self.temporal = True  # the path exists; it only says the probe entity (or tenant) has no history
        except NgsiError:
            self.temporal = False
        log.info("temporal append path available=%s", self.temporal)
        return self.temporal

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                return await call()
            except BrokerUnavailable as error:
                if time.monotonic() + delay > deadline:
                    reason = f"broker unreachable for {self.retry_for_s:.0f} s: {error.detail}"
                    raise IngestInterrupted(reason) from error
                log.warning("broker unavailable, retrying in %.1f s: %s", delay, error.detail)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _reject(self, payload: Any, reason: str, metadata: dict[str, Any]) -> None:
        self.rejected += 1
        self.quarantine.add(agent=AGENT, source=self.source, payload=orjson.dumps(payload).decode(),
                            reason=f"rejected by the broker: {reason}",
                            metadata={**metadata, "tenant": self.client.tenant})  # fmt: skip

    async def write(self, planned: list[_Planned], *, uncertain: bool = False) -> tuple[int, int]:
        """Write a chunk; returns (current-state writes, history instances). `uncertain`: skip what the broker has."""
        temporal = await self.probe_temporal()
        if uncertain:
            planned = await self._not_yet_written(planned)
        if not temporal:
            return await self._write_as_upserts(planned)
        for part in planned:
            _identify_upserted(part)
        upserts = [p for p in planned if len(p.upsert) > 2]
        refused = await self._upsert([{**p.upsert, "@context": p.context} for p in upserts])
        for part in planned:
            if part.history and part.entity_id in refused:
                for body in _append_bodies(part):
                    self._reject(body, "its entity was refused (see the upsert record)",
                                 {"operation": "temporal append", "entity": part.entity_id})  # fmt: skip
        gate = asyncio.Semaphore(APPEND_CONCURRENCY)

        async def append(part: _Planned) -> int:
            async with gate:
                return await self._append(part)

        counts = await asyncio.gather(*(append(p) for p in planned if p.history and p.entity_id not in refused))
        return len(upserts) - len(refused), sum(counts)

    async def _upsert(self, entities: list[dict[str, Any]]) -> set[str]:
        """Batch upsert, one request per @context; returns the ids the broker refused."""
        refused: set[str] = set()
        by_context: dict[str, list[dict[str, Any]]] = {}
        for entity in entities:
            by_context.setdefault(orjson.dumps(entity["@context"]).decode(), []).append(entity)
        for group in by_context.values():
            try:
                result: BatchResult = await self._retrying(partial(self.client.batch_upsert, group, mode="update"))
            except NgsiError as error:
                if error.status >= 500:
                    raise IngestInterrupted(f"broker failed: {error.status} {error.detail}") from error
                for entity in group:
                    self._reject(entity, f"{error.status} {error.title}: {error.detail}", {"operation": "upsert"})
                    refused.add(entity["id"])
                continue
            by_id = {entity["id"]: entity for entity in group}
            for failure in result.errors:
                refused.add(failure.entity_id)
                self._reject(by_id.get(failure.entity_id, {"id": failure.entity_id}),
                             f"{failure.error.status} {failure.error.title}: {failure.error.detail}",
                             {"operation": "upsert"})  # fmt: skip
        return refused

    async def _append(self, part: _Planned) -> int:
        written = 0
        for body in _append_bodies(part):
            count = sum(len(v) for k, v in body.items() if k != "@context")
            try:
                await self._retrying(partial(self.client.temporal_append, part.entity_id, body))
            except NgsiError as error:
                if error.status >= 500:
                    raise IngestInterrupted(f"broker failed: {error.status} {error.detail}") from error
                self._reject(body, f"{error.status} {error.title}: {error.detail}",
                             {"operation": "temporal append", "entity": part.entity_id})  # fmt: skip
                continue
            written += count
        return written

    async def _write_as_upserts(self, planned: list[_Planned]) -> tuple[int, int]:
        """Brokers without temporal append: every instance as an upsert, oldest first, newest last."""
        writes = history = 0
        for part in planned:
            by_time: dict[str, dict[str, Any]] = {}
            for name, instances in part.history.items():
                for instance in instances:
                    by_time.setdefault(instance["observedAt"], {})[name] = instance
            for moment in sorted(by_time):
                fragment = {"id": part.entity_id, "type": part.upsert["type"], **by_time[moment],
                            "@context": part.context}  # fmt: skip
                if not await self._upsert([fragment]):
                    history += len(by_time[moment])
            if len(part.upsert) > 2 and not await self._upsert([{**part.upsert, "@context": part.context}]):
                writes += 1
        return writes, history

    async def _not_yet_written(self, planned: list[_Planned]) -> list[_Planned]:
        """For a chunk whose delivery was interrupted: drop what the broker's history already holds."""
        kept: list[_Planned] = []
        for part in planned:
            times = [i["observedAt"] for a in (*part.history.values(),) for i in a]
            times += [a["observedAt"] for a in part.upsert.values() if isinstance(a, dict) and "observedAt" in a]
            if not times:
                kept.append(part)
                continue
            found = await self._history_count(part, min(times), max(times))
            upserted = sum(1 for a in part.upsert.values() if isinstance(a, dict) and "observedAt" in a)
            if found == 0:
                kept.append(part)
            elif found >= upserted + part.history_count():
                log.info("interrupted chunk: %s already written, skipped", part.entity_id)
            elif found == upserted:
                header = {"id": part.entity_id, "type": part.upsert["type"]}
                kept.append(_Planned(part.entity_id, part.context, header, part.history))
            else:
                log.warning("interrupted chunk: %s partly written (%d instances found); resending", part.entity_id,
                            found)  # fmt: skip
                kept.append(part)
        return kept

    async def _history_count(self, part: _Planned, first: str, last: str) -> int:
        start = _parse(first)
        end = _parse(last) + timedelta(milliseconds=1)
        days = max(1, (end - start).days + 2)
        measured = (n for n, a in part.upsert.items() if isinstance(a, dict) and "observedAt" in a)
        names = sorted({*part.history, *measured})
        try:
            entity = await self._retrying(lambda: self.client.get_temporal_entity(
                part.entity_id, attrs=names, options="aggregatedValues", timerel="between",
                time_at=first, end_time_at=end.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                aggr_methods="totalCount", aggr_period_duration=f"P{days}D",
            ))  # fmt: skip
        except ResourceNotFound:
            return 0
        except NgsiError as error:
            log.warning("cannot count history of %s (%s); resending the chunk", part.entity_id, error.detail)
            return 0
        total = 0
        for name in names:
            attribute = entity.get(name)
            for period in (attribute or {}).get("totalCount", []) if isinstance(attribute, dict) else []:
                if isinstance(period, list) and period and isinstance(period[0], int | float):
                    total += int(period[0])
        return total


def _replay_metadata(path: Path, mapping: FileMapping, tenant: str | None, header: list[str]) -> dict[str, Any]:
    """What `climaborough quarantine replay` needs to map a quarantined row again (agents/files/replay.py).

    Paths are absolute (a replay may run from another folder); `header` is the csv file's header.
    """
    location = Path(mapping.path)
    metadata: dict[str, Any] = {
        "file": str(path.absolute()),
        "mapping": str(location.absolute()) if location.exists() else mapping.path,
        "mappingName": mapping.name,
        "format": mapping.source.format,
        "tenant": tenant,
    }
    if header:
        metadata["header"] = header
    return metadata


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def instance_id_prefix(entity_id: str, attribute: str) -> str:
    """The start of the instanceIds of one entity attribute's history instances (see `_append_bodies`)."""
    digest = hashlib.blake2b(f"{entity_id}\0{attribute}".encode(), digest_size=12).hexdigest()
    return f"urn:ngsi-ld:attribute:instance:{digest}:"


def _identify_upserted(part: _Planned) -> None:
    """Give the newest instances (the upsert's measured attributes) their instanceIds, as `_append_bodies` does.

    A broker that keeps them writes no second history row when the same instance is upserted again.
    """
    for name, attribute in part.upsert.items():
        if isinstance(attribute, dict) and "observedAt" in attribute:
            attribute["instanceId"] = instance_id_prefix(part.entity_id, name) + str(attribute["observedAt"])


def _append_bodies(part: _Planned) -> Iterator[dict[str, Any]]:
    """The history of one entity in requests of at most MAX_INSTANCES_PER_APPEND instances.

    Each instance carries an `instanceId` derived from its entity, attribute and observedAt, the
    same in every run: a broker that keeps given instanceIds and skips the ones its history
    already holds makes a resent chunk harmless (the append of a killed run may still be in
    flight when the resumed run resends it).
    """
    body: dict[str, Any] = {}
    size = 0
    for name, instances in part.history.items():
        prefix = instance_id_prefix(part.entity_id, name)
        for instance in instances:
            instance["instanceId"] = prefix + str(instance["observedAt"])
        for start in range(0, len(instances), MAX_INSTANCES_PER_APPEND):
            piece = instances[start : start + MAX_INSTANCES_PER_APPEND]
            if size + len(piece) > MAX_INSTANCES_PER_APPEND and body:
                yield {**body, "@context": part.context}
                body, size = {}, 0
            body[name] = piece
            size += len(piece)
    if body:
        yield {**body, "@context": part.context}


ProgressCallback = Callable[[int, int], None]
"""Called with (bytes read, file size) after each chunk."""


async def ingest_file(
    path: Path,
    mapping: FileMapping,
    client: AsyncBrokerClient,
    *,
    quarantine: Quarantine,
    checkpoint_dir: Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    restart: bool = False,
    temporal: bool | None = None,
    retry_for_s: float = 300.0,
    progress: ProgressCallback | None = None,
) -> IngestSummary:
    """Deliver `path` through `mapping` to the broker behind `client`, resuming from its checkpoint."""
    started = time.monotonic()
    key = checkpoint_key(path, mapping.text, client.base_url, client.tenant)
    checkpoint = Checkpoint.load(checkpoint_dir, key)
    if restart or (checkpoint.position and checkpoint.prefix != prefix_digest(path, checkpoint.position)):
        checkpoint.reset()  # asked for, or the part delivered before has changed since: start over
    summary = IngestSummary(file=str(path), resumed_from=checkpoint.records)
    size = await asyncio.to_thread(os.path.getsize, path)
    if checkpoint.done and checkpoint.size == size:
        summary.already_done = True
        summary.seconds = time.monotonic() - started
        if progress:
            progress(size, size)
        return summary
    checkpoint.file, checkpoint.mapping, checkpoint.done = str(path), mapping.name, False
    translate = compile_translator(mapping)
    source = f"file:{path.name}"
    writer = BrokerWriter(client, quarantine, source=source, temporal=temporal, retry_for_s=retry_for_s)
    uncertain_start = checkpoint.in_flight[0] if checkpoint.in_flight else None
    with open_records(path, mapping, checkpoint.position) as stream:
        chunks = read_chunks(iter(stream), translate, checkpoint.position, chunk_rows)
        pending = asyncio.create_task(asyncio.to_thread(next, chunks, None))
        while True:
            chunk = await pending
            if chunk is None:
                break
            pending = asyncio.create_task(asyncio.to_thread(next, chunks, None))
            try:
                checkpoint.in_flight = [chunk.start, chunk.end]
                checkpoint.save()
                planned = plan_chunk(chunk.entities, writer.latest)
                writes, history = await writer.write(planned, uncertain=chunk.start == uncertain_start)
            except BaseException:
                pending.cancel()
                raise
            if chunk.unmappable:
                replay = _replay_metadata(path, mapping, client.tenant, stream.header)
                quarantine.add_many(
                    (AGENT, f"{source}#{record.position}", record.raw, reason, {**replay, "position": record.position})
                    for record, reason in chunk.unmappable
                )
            checkpoint.position = chunk.end
            checkpoint.prefix = prefix_digest(path, chunk.end)
            checkpoint.records += chunk.records
            checkpoint.entities += len(chunk.entities)
            checkpoint.quarantined += len(chunk.unmappable)
            checkpoint.in_flight = None
            checkpoint.save()
            summary.records += chunk.records
            summary.entities += len(chunk.entities)
            summary.current_state_writes += writes
            summary.history_instances += history
            summary.quarantined += len(chunk.unmappable)
            summary.skipped_blank += chunk.blank
            if progress:
                progress(stream.bytes_read, size)
    checkpoint.done = True
    checkpoint.size = size
    checkpoint.save()
    summary.rejected_by_broker = writer.rejected
    summary.temporal_path = bool(writer.temporal)
    summary.seconds = time.monotonic() - started
    return summary

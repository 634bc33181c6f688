"""Writes KPI entities to the broker: batched, in time order, one history instance per window, no value twice.

Every window's attribute instances (`kpiValue`, `currentStanding`, `coverage`, `kpiDetails`) carry
an instanceId derived from the KPI entity, the attribute and the window's `observedAt`
(`history_instance_id`), so a window has exactly one instance in the entity's history.

For each KPI entity the writer knows the newest `kpiValue.observedAt` it holds (read once from
the broker per entity and process). A newer window is upserted (whole the first time this
process writes the entity, afterwards only the attributes whose value changed), which also adds
it to the entity's history; when one batch holds several new windows of an entity, they go out
oldest first, so each one is the entity's current value in turn: in one batch upsert on this
project's broker (it applies a batch's entries in order), else in as many batch upserts. A window
rewritten with a new value REPLACES its history instance (GS CIM 009 5.6.19, PATCH of the
instance): at once for an older window (late data, a day that completed after the next began);
for the current window, whose updates the broker keeps out of the history (its instanceId is
the current state's), when a newer window supersedes it or the writer is flushed (the engine
does so every `kpi_history_sync_s` and when it stops): a window rewritten on every change
(today's daily mean) costs one batch entity per change, not four extra requests. An
older window the history does not have yet is appended (5.6.12). A window whose history already
holds the same value (a restart recomputing what was written) is not written at all.

Brokers that ignore client instanceIds (Orion-LD): a PATCH of the derived id finds nothing, so
the writer reads the instance ids stored at that `observedAt` from the temporal API and patches
those.

This project's broker replaces the history row of an entity and attribute whose instanceId an
entity write carries again (docs/internals.md, History), so there every rewrite of the current
window is in the history at once and the catch-up PATCHes above are never needed: the writer asks
the broker's `GET /version` once (`upsert_replaces_history`; Orion-LD answers with its own
version) and skips them there. Older windows are still PATCHed (the temporal append keeps what the
history holds), and so is a window whose rewrite lost an attribute (an upsert cannot remove its
instance).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kpi.entities import DYNAMIC_ATTRIBUTES, KPI_TYPE, KpiEntity
from kpi.history import parse_time
from kpi.windows import SERIES_KINDS
from ngsi.client import AsyncBrokerClient
from ngsi.errors import NonexistentTenant, ResourceNotFound
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

log = logging.getLogger(__name__)

HISTORY_ATTRIBUTES = ("kpiValue", "coverage", "currentStanding", "kpiDetails")
"""Attributes a window adds to the history (all carry the window's observedAt)."""
_NOT_READ = ""
APPEND_CONCURRENCY = 8
"""History appends and instance replacements of different entities in flight at once."""
NEWEST_QUERY_IDS = 50
"""Entity ids per query for the stored newest values (keeps the URL well under server limits)."""
REPLACING_BROKER_VERSION = "climaborough-"
"""How this project's broker begins its `GET /version` "Orion-LD version" (it replaces history rows by instanceId)."""


@functools.lru_cache(maxsize=65536)
def _instance_id_prefix(entity_id: str) -> str:
    return "urn:ngsi-ld:kpi:" + hashlib.blake2b(entity_id.encode(), digest_size=8).hexdigest() + ":"


def history_instance_id(entity_id: str, attribute: str, observed_at: str) -> str:
    """The instanceId of one window's instance of `attribute`: the same for every rewrite of that window.

    `urn:ngsi-ld:kpi:<16 hex digits of the entity id's BLAKE2b>:<attribute>:<observedAt digits>`,
    e.g. `urn:ngsi-ld:kpi:3fa2c1d97b0e4a11:kpiValue:20160315T030000000Z` (the backfill uses the same
    ids). One entity's ids sort by time, so PostgreSQL adds new rows at the end of its primary-key
    index instead of all over it.
    """
    stamp = observed_at.replace("-", "").replace(":", "").replace(".", "")
    return f"{_instance_id_prefix(entity_id)}{attribute}:{stamp}"


def with_instance_ids(kpi: KpiEntity) -> KpiEntity:
    """The KPI entity with the window's instanceIds on its history attributes."""
    stamp = value_time(kpi)
    entity = dict(kpi.entity)
    for name in HISTORY_ATTRIBUTES:
        if name in entity:
            entity[name] = {**entity[name], "instanceId": history_instance_id(kpi.id, name, stamp)}
    return KpiEntity(kpi.id, entity)


def _fingerprint(kpi: KpiEntity, names: Sequence[str] = DYNAMIC_ATTRIBUTES) -> bytes:
    encoded = kpi.encoded
    return b"\x00".join(name.encode() + b"=" + encoded.get(name, b"-") for name in names)


def _history_fingerprint(kpi: KpiEntity) -> bytes:
    return _fingerprint(kpi, HISTORY_ATTRIBUTES)


def is_series(kpi: KpiEntity) -> bool:
    """Whether the entity is of a short window (one entity, one history value per window) rather than a period."""
    return kpi.entity["provenance"]["value"]["window"]["kind"] in SERIES_KINDS


def value_time(kpi: KpiEntity) -> str:
    return str(kpi.entity["kpiValue"]["observedAt"])


@dataclass
class _Stored:
    """What the broker holds of one window: nothing, the same value, or another value (with its instance ids)."""

    exists: bool = False
    same: bool = False
    instance_ids: dict[str, list[str]] = field(default_factory=dict)


class KpiWriter:
    """Idempotent writes of KeyPerformanceIndicator entities (see the module docstring)."""

    def __init__(self, client: AsyncBrokerClient, *, upsert_replaces_history: bool | None = None) -> None:
        self.client = client
        self.upsert_replaces_history = upsert_replaces_history
        """Whether an upsert carrying a window's instanceIds replaces that window's history rows (this
        project's broker) rather than adding rows or keeping ids of its own (Orion-LD); None: asked at
        the first write (`replacing_broker`)."""
        self._written: dict[tuple[str, str], bytes] = {}
        """(entity, window observedAt) → fingerprint of what was last sent for it (current state or history)."""
        self._history: dict[tuple[str, str], bytes] = {}
        """(entity, window observedAt) → fingerprint of the history instances the broker holds for it."""
        self._history_attributes: dict[tuple[str, str], frozenset[str]] = {}
        """(entity, window observedAt) → which attributes have an instance there (absent: not known)."""
        self._current: dict[str, KpiEntity] = {}
        """entity → the window last upserted as its current value (its history may lag, see the docstring)."""
        self._newest: dict[str, str] = {}
        self._full_written: set[str] = set()
        self._sent: dict[str, dict[str, bytes]] = {}
        """entity → attribute → what the current state holds (as this process last upserted it)."""
        self.writes = 0
        self.skipped = 0
        self.replaced = 0
        self.upserts = 0
        """Batch upsert requests sent (`upserted`: the entities in them)."""
        self.upserted = 0
        self.replaced_by_kind: dict[str, int] = {}

    async def replacing_broker(self) -> bool:
        """Whether upserts replace history rows by instanceId: the broker's `GET /version` says (once)."""
        if self.upsert_replaces_history is None:
            response = await self.client.request("GET", "/version", api=False)
            try:
                version = response.json() if response.status_code == 200 else {}
            except ValueError:
                version = {}
            name = version.get("Orion-LD version") if isinstance(version, dict) else None
            self.upsert_replaces_history = isinstance(name, str) and name.startswith(REPLACING_BROKER_VERSION)
            log.info("kpi writer: upserts %s history rows", "replace" if self.upsert_replaces_history else "add")
        return self.upsert_replaces_history

    async def _newest_stored(self, entity_id: str) -> str:
        """observedAt of the stored entity's kpiValue ("" when there is none)."""
        if entity_id not in self._newest:
            try:
                stored = await self.client.get_entity(entity_id, attrs="kpiValue")
                value = stored.get("kpiValue")
                self._newest[entity_id] = str(value.get("observedAt", "")) if isinstance(value, dict) else ""
            except (ResourceNotFound, NonexistentTenant):
                self._newest[entity_id] = _NOT_READ
        return self._newest[entity_id]

    async def _load_newest(self, entity_ids: Sequence[str]) -> None:
        """Learn the stored `kpiValue.observedAt` of the entities not seen yet: one query per 50 ids."""
        unknown = [entity_id for entity_id in entity_ids if entity_id not in self._newest]
        for first in range(0, len(unknown), NEWEST_QUERY_IDS):
            chunk = unknown[first : first + NEWEST_QUERY_IDS]
            for entity_id in chunk:
                self._newest[entity_id] = _NOT_READ
            try:
                found = await self.client.query_entities(
                    type=KPI_TYPE, id=chunk, attrs="kpiValue", limit=len(chunk)
                )  # fmt: skip
            except NonexistentTenant:  # nothing written in this tenant yet: the first upsert creates it
                return
            for stored in found.items:
                value = stored.get("kpiValue")
                if isinstance(value, dict) and isinstance(stored.get("id"), str):
                    self._newest[stored["id"]] = str(value.get("observedAt", ""))

    async def _stored_window(self, kpi: KpiEntity, attributes: Sequence[str] = ("kpiValue",)) -> _Stored:
        """The history instances of `attributes` at the window's observedAt (read from the temporal API)."""
        moment = parse_time(value_time(kpi))
        try:
            stored = await self.client.get_temporal_entity(
                kpi.id, attrs=list(attributes), timerel="between", time_at=format_timestamp(moment),
                end_time_at=format_timestamp(moment + timedelta(milliseconds=1)),
            )  # fmt: skip
        except ResourceNotFound:
            return _Stored()
        found = _Stored()
        for name in attributes:
            instances = stored.get(name)
            for instance in instances if isinstance(instances, list) else [instances]:
                if not isinstance(instance, dict):
                    continue
                found.exists = True
                if isinstance(instance.get("instanceId"), str):
                    found.instance_ids.setdefault(name, []).append(instance["instanceId"])
                if name == "kpiValue" and instance.get("value") == kpi.entity["kpiValue"]["value"]:
                    found.same = True
        return found

    async def write(self, kpis: Sequence[KpiEntity]) -> int:
        """Write what is new; returns how many entities, history appends and replacements were sent."""
        by_id: dict[str, list[KpiEntity]] = {}
        for kpi in kpis:
            by_id.setdefault(kpi.id, []).append(kpi)
        rounds: list[list[KpiEntity]] = []
        """Upserts: round k holds each entity's k-th new window (oldest first)."""
        older: dict[str, list[KpiEntity]] = {}
        """Windows older than the entity's current one: appended, or replaced in the history."""
        stored: set[str] = set()
        await self._load_newest(list(by_id))
        for entity_id, versions in by_id.items():
            newest = await self._newest_stored(entity_id)
            if newest:
                stored.add(entity_id)
            latest_per_time: dict[str, KpiEntity] = {value_time(k): k for k in versions}
            rank = 0
            for stamp, kpi in sorted(latest_per_time.items()):
                key = (entity_id, stamp)
                fingerprint = _fingerprint(kpi)
                if self._written.get(key) == fingerprint:
                    self.skipped += 1
                    continue
                if key not in self._written and key not in self._history and stamp <= newest:
                    found = await self._stored_window(kpi)
                    if found.same:
                        self._written[key] = fingerprint
                        self._remember_history(kpi)
                        self.skipped += 1
                        continue
                    if found.exists:
                        self._history[key] = b"?"  # another value: replace it
                if stamp >= newest:
                    if rank == len(rounds):
                        rounds.append([])
                    rounds[rank].append(kpi)
                    rank += 1
                    newest = stamp
                else:
                    older.setdefault(entity_id, []).append(kpi)
        sent = 0
        # Older windows reach the history before the current value moves on, so that whoever
        # sees the newer value also finds every older one (entities that do not exist yet get
        # their history after the upsert creates them).
        sent += await self._write_older({e: older.pop(e) for e in [e for e in older if e in stored]})
        if rounds and await self.replacing_broker():
            # This project's broker applies a batch's entries in order (each one's history rows
            # and notification too): an entity's new windows, oldest first, go in one request.
            sent += await self._upsert([kpi for upserts in rounds for kpi in upserts])
        else:
            for upserts in rounds:
                sent += await self._upsert(upserts)
        sent += await self._write_older(older)
        self.writes += sent
        return sent

    async def _upsert(self, upserts: list[KpiEntity]) -> int:
        """One batch upsert (an entity's windows in time order); the current windows it supersedes get
        their final value into the history."""
        replacing = await self.replacing_broker()
        candidates = {(kpi.id, value_time(kpi)): kpi for kpi in (self._current.get(k.id) for k in upserts) if kpi}
        payload = []
        sending: dict[str, dict[str, bytes]] = {}
        for kpi in upserts:
            payload.append(self._changed_part(kpi, sending.get(kpi.id)))
            sending[kpi.id] = kpi.encoded
        self.upserts += 1
        self.upserted += len(payload)
        result = await self.client.batch_upsert(payload, mode="update")
        failed = {error.entity_id for error in result.errors}
        for error in result.errors:
            log.warning("kpi write failed entity=%s reason=%s", error.entity_id, error.error)
        for kpi in upserts:
            if kpi.id in failed:
                continue
            key = (kpi.id, value_time(kpi))
            candidates[key] = kpi
            self._written[key] = _fingerprint(kpi)
            # A new window's upsert adds its instances to the history; a rewrite of the current
            # window replaces them on a replacing broker (unless it lost an attribute, whose
            # instance only a catch-up removes), elsewhere it leaves the history behind.
            held = self._history_attributes.get(key)
            if key not in self._history or (replacing and held is not None and held <= kpi.entity.keys()):
                self._remember_history(kpi)
            if kpi.id not in self._current or value_time(self._current[kpi.id]) <= key[1]:
                self._current[kpi.id] = kpi
            if key[1] >= self._newest.get(kpi.id, ""):
                self._newest[kpi.id] = key[1]
            self._full_written.add(kpi.id)
            self._sent[kpi.id] = kpi.encoded
        superseded = [
            kpi for (entity_id, stamp), kpi in candidates.items()
            if entity_id not in failed and stamp < value_time(self._current[entity_id]) and self._history_lags(kpi)
        ]  # fmt: skip
        await self._concurrently([(kpi.id, [kpi]) for kpi in superseded])
        return len(upserts) - len(failed)

    def _changed_part(self, kpi: KpiEntity, before: dict[str, bytes] | None = None) -> dict[str, Any]:
        """What an upsert must send: the whole entity the first time, then only the attributes whose
        value differs from what the current state holds (each one sent is a history row more).

        `before`: what an earlier entry of the same batch leaves in the current state.
        """
        entity = with_instance_ids(kpi).entity
        if before is None:
            if kpi.id not in self._full_written:
                return entity
            before = self._sent.get(kpi.id, {})
        encoded = kpi.encoded
        part: dict[str, Any] = {k: entity[k] for k in ("id", "type", "@context") if k in entity}
        for name in DYNAMIC_ATTRIBUTES:
            if name in encoded and before.get(name) != encoded[name]:
                part[name] = entity[name]
        return part

    def _history_lags(self, kpi: KpiEntity) -> bool:
        return self._history.get((kpi.id, value_time(kpi))) != _history_fingerprint(kpi)

    async def flush_history(self, *, series: bool | None = None) -> int:
        """Bring the history instances of the current windows up to their last written value.

        `series`: only the entities of short windows (True) or of periods (False); None: all.
        """
        lagging = [
            (kpi.id, [kpi]) for kpi in list(self._current.values())
            if self._history_lags(kpi) and (series is None or is_series(kpi) == series)
        ]  # fmt: skip
        return await self._concurrently(lagging)

    async def _write_older(self, older: dict[str, list[KpiEntity]]) -> int:
        return await self._concurrently(list(older.items()))

    async def _concurrently(self, work: list[tuple[str, list[KpiEntity]]]) -> int:
        """Older windows of many entities, a few requests at a time (each entity's appends in one request)."""
        if not work:
            return 0
        limit = asyncio.Semaphore(APPEND_CONCURRENCY)

        async def one(entity_id: str, windows: list[KpiEntity]) -> int:
            async with limit:
                return await self._to_history(entity_id, windows)

        return sum(await asyncio.gather(*(one(e, windows) for e, windows in work)))

    async def _to_history(self, entity_id: str, windows: Sequence[KpiEntity]) -> int:
        """Append the windows the history lacks, replace those it holds with another value."""
        held = [kpi for kpi in windows if (kpi.id, value_time(kpi)) in self._history]
        new = [kpi for kpi in windows if (kpi.id, value_time(kpi)) not in self._history]
        if new:
            await self.append_history(entity_id, new)
        for kpi in held:
            await self.replace_history(kpi)
        for kpi in windows:
            self._written[(kpi.id, value_time(kpi))] = _fingerprint(kpi)
            self._remember_history(kpi)
        return len(windows)

    def _remember_history(self, kpi: KpiEntity) -> None:
        key = (kpi.id, value_time(kpi))
        self._history[key] = _history_fingerprint(kpi)
        self._history_attributes[key] = frozenset(name for name in HISTORY_ATTRIBUTES if name in kpi.entity)

    async def append_history(self, entity_id: str, kpis: Sequence[KpiEntity]) -> None:
        """Add the values of older windows to an entity's history (GS CIM 009 5.6.12)."""
        body: dict[str, Any] = {}
        for name in HISTORY_ATTRIBUTES:
            instances = [with_instance_ids(kpi).entity[name] for kpi in kpis if name in kpi.entity]
            if instances:
                body[name] = instances
        if body:
            body["@context"] = [KPI_CONTEXT]
            await self.client.temporal_append(entity_id, body)

    async def replace_history(self, kpi: KpiEntity) -> None:
        """Make the history hold this window's value, once (GS CIM 009 5.6.19: PATCH each instance).

        An attribute the new value lacks (no standing for `insufficientData`) loses its instance;
        one it gains is appended.
        """
        self.replaced += 1
        kind = kpi.entity["provenance"]["value"]["window"]["kind"]
        self.replaced_by_kind[kind] = self.replaced_by_kind.get(kind, 0) + 1
        stamp = value_time(kpi)
        entity = with_instance_ids(kpi).entity
        had = self._history_attributes.get((kpi.id, stamp), frozenset(HISTORY_ATTRIBUTES))
        missing: list[str] = []
        for name in HISTORY_ATTRIBUTES:
            if name not in entity and name not in had:
                continue
            instance_id = history_instance_id(kpi.id, name, stamp)
            try:
                if name in entity:
                    await self.client.update_temporal_instance(kpi.id, name, instance_id, entity[name])
                else:
                    await self.client.delete_temporal_instance(kpi.id, name, instance_id)
            except ResourceNotFound:
                missing.append(name)
        if missing:
            await self._replace_by_stored_ids(kpi, entity, missing)

    async def _replace_by_stored_ids(self, kpi: KpiEntity, entity: dict[str, Any], names: list[str]) -> None:
        """For a broker that gave the instances ids of its own (or an attribute the window never had)."""
        found = await self._stored_window(kpi, names)
        gained: dict[str, Any] = {}
        for name in names:
            ids = found.instance_ids.get(name, [])
            if not ids:
                if name in entity:
                    gained[name] = [entity[name]]
                continue
            keep, *extra = ids
            if name in entity:
                await self.client.update_temporal_instance(kpi.id, name, keep, entity[name])
            else:
                extra = ids
            for instance_id in extra:  # duplicates at one observedAt (written before instanceIds)
                try:
                    await self.client.delete_temporal_instance(kpi.id, name, instance_id)
                except ResourceNotFound:
                    pass
        if gained:
            await self.client.temporal_append(kpi.id, {**gained, "@context": [KPI_CONTEXT]})

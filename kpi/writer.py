"""Writes KPI entities to the broker: batched, in time order, and never the same window value twice.

For each KPI entity the writer knows the newest `kpiValue.observedAt` it holds (read once from
the broker per entity and process). A newer window is upserted (whole the first time this
process writes the entity, only its changing attributes afterwards), which also adds it to the
entity's history. An older window (late data, a replayed change) must not push the current
value back: it is appended to the history instead, unless the history already has that window
with the same value (a restart recomputing what was written), in which case nothing is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from kpi.entities import DYNAMIC_ATTRIBUTES, KPI_TYPE, KpiEntity
from kpi.history import parse_time
from ngsi.client import AsyncBrokerClient
from ngsi.errors import ResourceNotFound
from smart_data_models import format_timestamp
from smart_data_models.models import KPI_CONTEXT

log = logging.getLogger(__name__)

HISTORY_ATTRIBUTES = ("kpiValue", "coverage", "currentStanding", "kpiDetails")
"""Attributes of an older window that go to the history (all carry the window's observedAt)."""
_NOT_READ = ""
APPEND_CONCURRENCY = 8
"""History appends of different entities in flight at once."""
NEWEST_QUERY_IDS = 50
"""Entity ids per query for the stored newest values (keeps the URL well under server limits)."""


def _fingerprint(entity: dict[str, Any]) -> bytes:
    return orjson.dumps({k: entity.get(k) for k in DYNAMIC_ATTRIBUTES}, option=orjson.OPT_SORT_KEYS)


def value_time(kpi: KpiEntity) -> str:
    return str(kpi.entity["kpiValue"]["observedAt"])


class KpiWriter:
    """Idempotent writes of KeyPerformanceIndicator entities (see the module docstring)."""

    def __init__(self, client: AsyncBrokerClient) -> None:
        self.client = client
        self._written: dict[tuple[str, str], bytes] = {}
        self._newest: dict[str, str] = {}
        self._full_written: set[str] = set()
        self.writes = 0
        self.skipped = 0

    async def _newest_stored(self, entity_id: str) -> str:
        """observedAt of the stored entity's kpiValue ("" when there is none)."""
        if entity_id not in self._newest:
            try:
                stored = await self.client.get_entity(entity_id, attrs="kpiValue")
                value = stored.get("kpiValue")
                self._newest[entity_id] = str(value.get("observedAt", "")) if isinstance(value, dict) else ""
            except ResourceNotFound:
                self._newest[entity_id] = _NOT_READ
        return self._newest[entity_id]

    async def _load_newest(self, entity_ids: Sequence[str]) -> None:
        """Learn the stored `kpiValue.observedAt` of the entities not seen yet: one query per 50 ids."""
        unknown = [entity_id for entity_id in entity_ids if entity_id not in self._newest]
        for first in range(0, len(unknown), NEWEST_QUERY_IDS):
            chunk = unknown[first : first + NEWEST_QUERY_IDS]
            found = await self.client.query_entities(
                type=KPI_TYPE, id=chunk, attrs="kpiValue", limit=len(chunk)
            )  # fmt: skip
            for entity_id in chunk:
                self._newest[entity_id] = _NOT_READ
            for stored in found.items:
                value = stored.get("kpiValue")
                if isinstance(value, dict) and isinstance(stored.get("id"), str):
                    self._newest[stored["id"]] = str(value.get("observedAt", ""))

    async def _in_history(self, kpi: KpiEntity) -> bool:
        moment = parse_time(value_time(kpi))
        try:
            stored = await self.client.get_temporal_entity(
                kpi.id, attrs="kpiValue", timerel="between", time_at=format_timestamp(moment),
                end_time_at=format_timestamp(moment + timedelta(milliseconds=1)), options="temporalValues",
            )  # fmt: skip
        except ResourceNotFound:
            return False
        attribute = stored.get("kpiValue")
        datasets = attribute if isinstance(attribute, list) else [attribute]
        wanted = kpi.entity["kpiValue"]["value"]
        return any(
            pair[0] == wanted for dataset in datasets if isinstance(dataset, dict) for pair in dataset.get("values", [])
        )

    async def write(self, kpis: Sequence[KpiEntity]) -> int:
        """Write what is new; returns how many entities or history appends were sent."""
        by_id: dict[str, list[KpiEntity]] = {}
        for kpi in kpis:
            by_id.setdefault(kpi.id, []).append(kpi)
        upserts: list[KpiEntity] = []
        appends: dict[str, list[KpiEntity]] = {}
        stored: set[str] = set()
        await self._load_newest(list(by_id))
        for entity_id, versions in by_id.items():
            newest = await self._newest_stored(entity_id)
            if newest:
                stored.add(entity_id)
            latest_per_time: dict[str, KpiEntity] = {value_time(k): k for k in versions}
            for stamp, kpi in sorted(latest_per_time.items()):
                fingerprint = _fingerprint(kpi.entity)
                known = self._written.get((entity_id, stamp))
                if known == fingerprint:
                    self.skipped += 1
                    continue
                if known is None and stamp <= newest and await self._in_history(kpi):
                    self._written[(entity_id, stamp)] = fingerprint
                    self.skipped += 1
                    continue
                if stamp >= newest:
                    if upserts and upserts[-1].id == entity_id:
                        appends.setdefault(entity_id, []).append(upserts.pop())
                    upserts.append(kpi)
                    newest = stamp
                else:
                    appends.setdefault(entity_id, []).append(kpi)
        sent = 0
        # Older windows reach the history before the current value moves on, so that whoever
        # sees the newer value also finds every older one (entities that do not exist yet get
        # their history after the upsert creates them).
        sent += await self._append_all({e: appends.pop(e) for e in [e for e in appends if e in stored]})
        if upserts:
            payload = [kpi.dynamic() if kpi.id in self._full_written else kpi.entity for kpi in upserts]
            result = await self.client.batch_upsert(payload, mode="update")
            failed = {error.entity_id for error in result.errors}
            for error in result.errors:
                log.warning("kpi write failed entity=%s reason=%s", error.entity_id, error.error)
            for kpi in upserts:
                if kpi.id not in failed:
                    self._remember(kpi)
                    self._full_written.add(kpi.id)
            sent += len(upserts) - len(failed)
        sent += await self._append_all(appends)
        self.writes += sent
        return sent

    async def _append_all(self, appends: dict[str, list[KpiEntity]]) -> int:
        """The older windows of many entities, a few requests at a time (each entity's in one request)."""
        if not appends:
            return 0
        limit = asyncio.Semaphore(APPEND_CONCURRENCY)

        async def one(entity_id: str, older: list[KpiEntity]) -> int:
            async with limit:
                return await self._append(entity_id, older)

        return sum(await asyncio.gather(*(one(e, older) for e, older in appends.items())))

    async def _append(self, entity_id: str, older: Sequence[KpiEntity]) -> int:
        await self.append_history(entity_id, older)
        for kpi in older:
            self._remember(kpi, newest=False)
        return len(older)

    def _remember(self, kpi: KpiEntity, *, newest: bool = True) -> None:
        stamp = value_time(kpi)
        self._written[(kpi.id, stamp)] = _fingerprint(kpi.entity)
        if newest and stamp >= self._newest.get(kpi.id, ""):
            self._newest[kpi.id] = stamp

    async def append_history(self, entity_id: str, kpis: Sequence[KpiEntity]) -> None:
        """Add the values of older windows to an entity's history (GS CIM 009 5.6.12)."""
        body: dict[str, Any] = {}
        for name in HISTORY_ATTRIBUTES:
            instances = [kpi.entity[name] for kpi in kpis if name in kpi.entity]
            if instances:
                body[name] = instances
        if body:
            body["@context"] = [KPI_CONTEXT]
            await self.client.temporal_append(entity_id, body)

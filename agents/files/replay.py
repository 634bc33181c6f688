"""Replaying quarantined file records: map the row again with the mapping as it is now, send it through ngsi.client.

Two kinds of `agent="files"` records (written by `agents/files/ingest.py`):
- rows the mapping could not turn into entities: the raw row, `metadata.mapping` (its path),
  `mappingName`, `format`, `tenant` and, for csv, the file's `header`. The row is read again
  with the current mapping file (fixed by the operator since), translated and sent;
- entities or history bodies the broker refused: `metadata.operation` ("upsert" or "temporal
  append", with `entity`) and `tenant`. They are sent again as they are.

A replayed row is usually older than what the broker holds: per attribute, an instance newer
than the broker's current one becomes the current state (batch upsert, `options=update`), an
older one goes to the history only (temporal append, GS CIM 009 5.6.12), so a replay never
moves the current state back in time. Any failure raises: the record stays, with the new reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from agents.files.command import resolve_mapping, shipped_mappings
from agents.files.ingest import plan_chunk
from agents.files.mapping import Mapping as FileMapping
from agents.files.readers import record_from_text
from agents.files.settings import FilesSettings
from agents.files.translator import Entity, UnmappableRecord, compile_translator
from agents.quarantine import QuarantinedRecord, ReplayHandler
from ngsi.client import AsyncBrokerClient, BatchResult
from ngsi.errors import ResourceNotFound

_STATIC_KEYS = frozenset({"id", "type", "@context"})


class FileReplay:
    """A `Quarantine.replay` handler for `agent="files"` records (see the module docstring)."""

    def __init__(self, settings: FilesSettings) -> None:
        self.settings = settings
        self._clients: dict[tuple[str | None, str | None], AsyncBrokerClient] = {}

    async def aclose(self) -> None:
        """Close the broker connections."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, tenant: str | None, context: str | None = None) -> AsyncBrokerClient:
        key = (tenant, context)
        if key not in self._clients:
            self._clients[key] = AsyncBrokerClient(self.settings.broker_url, tenant=tenant, context=context,
                                                   timeout=60.0)  # fmt: skip
        return self._clients[key]

    async def __call__(self, record: QuarantinedRecord) -> None:
        metadata = record.metadata
        tenant = metadata.get("tenant")
        payload = record.payload if isinstance(record.payload, str) else record.payload.decode("utf-8")
        operation = metadata.get("operation")
        if operation == "upsert":
            _raise_for_refusal(await self._client(tenant).batch_upsert([orjson.loads(payload)], mode="update"))
        elif operation == "temporal append":
            await self._client(tenant).temporal_append(str(metadata["entity"]), orjson.loads(payload))
        elif "mapping" in metadata:
            for entity in self._map(payload, metadata):
                await self._deliver(entity, tenant)
        else:
            raise ValueError("the record says neither which mapping read it nor which broker operation refused it")

    def _map(self, raw: str, metadata: dict[str, Any]) -> list[Entity]:
        mapping = current_mapping(metadata)
        row = record_from_text(raw, mapping, header=metadata.get("header") or (),
                               file_name=Path(str(metadata.get("file", ""))).name)  # fmt: skip
        if row.error is not None:
            raise UnmappableRecord(row.error)
        translate = compile_translator(mapping)
        if translate.is_blank(row.values):
            raise UnmappableRecord("the row is blank: nothing to send")
        return translate(row.values)

    async def _deliver(self, entity: Entity, tenant: str | None) -> None:
        """Newer instances to the current state, older ones to the history only."""
        context = entity.get("@context")
        single = context[0] if isinstance(context, list) and len(context) == 1 else context
        client = self._client(tenant, single if isinstance(single, str) else None)
        latest: dict[tuple[str, str], str] = {}
        try:
            current = await client.get_entity(entity["id"])
        except ResourceNotFound:  # a new entity (or a new tenant): everything is current state
            current = {}
        for name, attribute in current.items():
            if isinstance(attribute, dict) and "observedAt" in attribute:
                latest[(entity["id"], name)] = str(attribute["observedAt"])
        [planned] = plan_chunk([entity], latest)
        upsert = planned.upsert
        if planned.history and current:
            # An older row: its static properties (dateObserved, name ...) would move the entity back in time.
            upsert = {
                k: v for k, v in upsert.items() if k in _STATIC_KEYS or (isinstance(v, dict) and "observedAt" in v)
            }
        if len(upsert) > 2:
            _raise_for_refusal(await client.batch_upsert([{**upsert, "@context": planned.context}], mode="update"))
        if planned.history:
            await client.temporal_append(planned.entity_id, {**planned.history, "@context": planned.context})


def current_mapping(metadata: dict[str, Any]) -> FileMapping:
    """The mapping file the row was read with, as it is now (or the shipped one of that name, if the file is gone)."""
    reference = str(metadata["mapping"])
    if not Path(reference).exists():
        for shipped in shipped_mappings():
            mapping = resolve_mapping(shipped)
            if mapping.name == metadata.get("mappingName"):
                return mapping
    return resolve_mapping(reference)


def _raise_for_refusal(result: BatchResult) -> None:
    if result.errors:
        failure = result.errors[0]
        raise RuntimeError(f"rejected by the broker: {failure.error.status} {failure.error.title}: "
                           f"{failure.error.detail}")  # fmt: skip


def files_replay_handler(settings: FilesSettings) -> ReplayHandler:
    """The replay handler for file agent records (see `FileReplay`)."""
    return FileReplay(settings)

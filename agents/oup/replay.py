"""Replaying quarantined OUP records: map the flat JSON record again with the mapping as it is now, send it.

Three kinds of `agent="oup"` records (written by `agents/oup/connector.py`):
- records the mapping could not turn into entities: the flat JSON record, `metadata.mapping` (its
  path) and `mappingName` (older records without them were read with the shipped `oup` mapping),
  and `tenant`. The record is translated again with the current mapping file and sent;
- history pages the broker refused (`metadata.operation`, as for file records) are sent again;
- live entities the broker refused (`metadata.entity` and the tenant as `lane`) are sent again.
As for file records, an instance newer than the broker's current one becomes the current state,
an older one goes to the history only. Any failure raises: the record stays, with the new reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from agents.files.replay import FileReplay, current_mapping
from agents.files.settings import FilesSettings
from agents.files.translator import Entity, UnmappableRecord, compile_translator
from agents.oup.settings import OupSettings
from agents.quarantine import QuarantinedRecord, ReplayHandler

SHIPPED_MAPPING = "oup"


class OupReplay(FileReplay):
    """A `Quarantine.replay` handler for `agent="oup"` records (see the module docstring)."""

    async def __call__(self, record: QuarantinedRecord) -> None:
        metadata = record.metadata
        if "entity" in metadata and "operation" not in metadata:
            tenant = metadata.get("lane") or metadata.get("tenant") or None
            await self._deliver(metadata["entity"], tenant)
        elif "operation" in metadata:
            await super().__call__(record)
        else:
            payload = record.payload if isinstance(record.payload, str) else record.payload.decode("utf-8")
            for entity in self._map(payload, metadata):
                await self._deliver(entity, metadata.get("tenant"))

    def _map(self, raw: str, metadata: dict[str, Any]) -> list[Entity]:
        try:
            flat = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise UnmappableRecord(f"the record is not JSON: {error}") from None
        if not isinstance(flat, dict):
            raise UnmappableRecord(f"a record is a JSON object, not {type(flat).__name__}")
        reference = {"mapping": SHIPPED_MAPPING, "mappingName": SHIPPED_MAPPING, **metadata}
        return compile_translator(current_mapping(reference)).translate_record(flat)


def oup_replay_handler(settings: OupSettings) -> ReplayHandler:
    """The replay handler for OUP connector records (see `OupReplay`)."""
    return OupReplay(FilesSettings(broker_url=settings.broker_url, data_dir=settings.data_dir))

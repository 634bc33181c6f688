"""The IoT agent's measure path: raw device messages → registry → Smart Data Models entities → outbox or quarantine."""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agents.iot.payloads import (
    Measure,
    PayloadError,
    looks_like_json,
    parse_json_measures,
    parse_single_value,
    parse_ultralight,
)
from agents.iot.provisioning import Device
from agents.iot.registry import AlreadyProvisioned, Registry
from agents.iot.topics import Protocol
from agents.iot.translation import DeviceProfile, MappingError, device_profile, translate_measure
from agents.outbox import OutboxEntry
from agents.quarantine import Quarantine
from ngsi.errors import BadRequestData, NgsiError, ResourceNotFound

log = logging.getLogger(__name__)

AGENT = "iot"


@dataclass(frozen=True)
class RawMeasure:
    """A device message as it arrived, before anything is interpreted.

    `protocol` None means "decide from the payload" (legacy MQTT topics). `resource` is the HTTP
    path, which must match the config group's `resource`; MQTT messages match any resource.
    """

    transport: Literal["mqtt", "http"]
    source: str
    protocol: Protocol | None
    apikey: str
    device_id: str
    payload: bytes
    received_at: datetime
    attribute: str | None = None
    resource: str | None = None
    observed_at: datetime | None = None

    def replay_metadata(self) -> dict[str, Any]:
        """What the quarantine keeps to replay this message."""
        return {
            "transport": self.transport,
            "protocol": self.protocol,
            "apikey": self.apikey,
            "deviceId": self.device_id,
            "attribute": self.attribute,
            "resource": self.resource,
            "receivedAt": self.received_at.isoformat(),
            "observedAt": self.observed_at.isoformat() if self.observed_at else None,
        }

    @classmethod
    def from_replay_metadata(cls, source: str, payload: bytes, metadata: dict[str, Any]) -> RawMeasure:
        """The message back from what `replay_metadata` kept."""
        observed = metadata.get("observedAt")
        return cls(
            transport=metadata["transport"],
            source=source,
            protocol=metadata.get("protocol"),
            apikey=metadata["apikey"],
            device_id=metadata["deviceId"],
            payload=payload,
            received_at=datetime.fromisoformat(metadata["receivedAt"]),
            attribute=metadata.get("attribute"),
            resource=metadata.get("resource"),
            observed_at=datetime.fromisoformat(observed) if observed else None,
        )


@dataclass
class IngestResult:
    """Per message: how many entity updates went to the outbox, or the error that sent it to the quarantine."""

    queued: int = 0
    error: NgsiError | None = None
    entries: list[OutboxEntry] = field(default_factory=list)


class DeviceGroupNotFound(ResourceNotFound):
    """No config group (nor device with its own API key) for a measure's API key."""


class MeasureRefused(BadRequestData):
    """A measure that cannot be parsed or mapped."""


def _parse(raw: RawMeasure) -> list[Measure]:
    is_json = raw.protocol == "json" or (raw.protocol is None and looks_like_json(raw.payload))
    if raw.attribute is not None:
        return parse_single_value(raw.payload, raw.attribute, json=is_json)
    return parse_json_measures(raw.payload) if is_json else parse_ultralight(raw.payload)


class EntrySink(typing.Protocol):
    """Where mapped entries go: `put` returns once they are durable (agents.handoff.HandOff, agents.outbox.Outbox)."""

    async def put(self, entries: Sequence[OutboxEntry]) -> None: ...


class MeasureIngestor:
    """Turns raw messages into outbox entries, quarantining what cannot be mapped (with the reason)."""

    def __init__(self, registry: Registry, sink: EntrySink, quarantine: Quarantine, *, city: str) -> None:
        self.registry = registry
        self.sink = sink
        self.quarantine = quarantine
        self.city = city
        self._profiles: dict[tuple[str, str, str | None], tuple[DeviceProfile, str]] = {}
        self._generation = -1

    def translate(self, raw: RawMeasure) -> IngestResult:
        """One message as outbox entries (pure apart from registry reads and auto-provisioning)."""
        try:
            measures = _parse(raw)
        except (PayloadError, UnicodeDecodeError) as error:
            return IngestResult(error=MeasureRefused(str(error), name="WRONG_SYNTAX"))
        cache_key = (raw.apikey, raw.device_id, raw.resource)
        generation = self.registry.generation
        if generation != self._generation:
            self._profiles.clear()
            self._generation = generation
        cached = self._profiles.get(cache_key)
        if cached is not None:
            return self._entries(raw, measures, *cached)
        group = self.registry.group_for(raw.apikey, raw.resource)
        device = self.registry.device_for(raw.apikey, raw.device_id, group)
        if group is None and device is None:
            where = f" and resource {raw.resource!r}" if raw.resource else ""
            return IngestResult(
                error=DeviceGroupNotFound(
                    f"Couldn't find device group for API key {raw.apikey!r}{where}", name="DEVICE_GROUP_NOT_FOUND"
                )
            )
        if device is None and group is not None:
            if not group.item.autoprovision:
                return IngestResult(
                    error=ResourceNotFound(
                        f"Device {raw.device_id!r} is not provisioned and group {raw.apikey!r} does not autoprovision",
                        name="DEVICE_NOT_FOUND",
                    )
                )
            self._autoprovision(group.service, group.subservice, raw.device_id, group.item.entity_type)
        service = device.service if device is not None else group.service if group is not None else ""
        profile = device_profile(
            raw.device_id, group.item if group else None, device.item if device else None, service or self.city
        )
        if device is not None:
            self._profiles[cache_key] = (profile, service)
        return self._entries(raw, measures, profile, service)

    def _entries(self, raw: RawMeasure, measures: list[Measure], profile: DeviceProfile, service: str) -> IngestResult:
        entries: list[OutboxEntry] = []
        source = {"agent": AGENT, "source": raw.source, "payload": raw.payload.decode("utf-8", "replace"),
                  "metadata": {**raw.replay_metadata(), "tenant": service}}  # fmt: skip
        for measure in measures:
            if measure.observed_at is None and raw.observed_at is not None:
                measure = Measure(measure.values, raw.observed_at)
            try:
                entity = translate_measure(measure, profile, raw.received_at)
            except MappingError as error:
                return IngestResult(error=MeasureRefused(str(error), name="WRONG_SYNTAX"))
            entries.append(OutboxEntry(lane=service, key=profile.entity_id, payload=entity, source=source))
        return IngestResult(queued=len(entries), entries=entries)

    def _autoprovision(self, service: str, subservice: str, device_id: str, entity_type: str | None) -> None:
        # FIWARE IoT Agents register a device the first time a group with autoprovision sends for it.
        try:
            self.registry.add_devices(service, subservice, [Device(device_id=device_id, entity_type=entity_type)])
        except AlreadyProvisioned:
            pass

    async def ingest(self, raws: Sequence[RawMeasure]) -> list[IngestResult]:
        """Hand over what maps, quarantine the rest; returns once both are durable (broker, outbox, quarantine)."""
        results = [self.translate(raw) for raw in raws]
        refused = [(raw, result) for raw, result in zip(raws, results, strict=True) if result.error is not None]
        if refused:
            for raw, result in refused:
                log.info("measure quarantined source=%s reason=%s", raw.source, result.error)
            await asyncio.to_thread(
                self.quarantine.add_many,
                [
                    (AGENT, raw.source, _text(raw.payload), str(result.error), raw.replay_metadata())
                    for raw, result in refused
                ],
            )
        await self.sink.put([entry for result in results for entry in result.entries])
        return results


def _text(payload: bytes) -> str | bytes:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload

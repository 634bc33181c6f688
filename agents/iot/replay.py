"""Replaying quarantined IoT records: map them again with the current provisioning, send them straight to the broker."""

from __future__ import annotations

from agents.iot.measures import MeasureIngestor, RawMeasure
from agents.iot.registry import Registry
from agents.iot.settings import IotAgentSettings
from agents.outbox import BrokerUpsert, DeliveryUnavailable, Outbox, OutboxItem
from agents.quarantine import Quarantine, QuarantinedRecord, ReplayHandler


class IotReplay:
    """A `Quarantine.replay` handler for `agent="iot"` records.

    Records the broker refused carry the entity they became (`metadata.entity`): it is sent
    again as it was. Records the agent could not map are parsed and mapped again against the
    current registry (e.g. after the operator provisioned the missing group), then sent. Any
    refusal or an unreachable broker raises, so the record stays in the quarantine.
    """

    def __init__(self, settings: IotAgentSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_path)
        self.destination = BrokerUpsert(settings.broker_url, context=settings.iot_context)
        # Only `translate` is used: the outbox is never written during a replay.
        self._ingestor = MeasureIngestor(
            self.registry, Outbox(settings.agent_dir / "replay-outbox.sqlite"), Quarantine(settings.quarantine_path),
            city=settings.iot_city,
        )  # fmt: skip

    async def aclose(self) -> None:
        """Release the broker connections and files."""
        await self.destination.aclose()
        self.registry.close()

    async def __call__(self, record: QuarantinedRecord) -> None:
        metadata = record.metadata
        if "entity" in metadata:
            entities = [(str(metadata.get("lane", "")), metadata["entity"])]
        else:
            payload = record.payload.encode("utf-8") if isinstance(record.payload, str) else record.payload
            result = self._ingestor.translate(RawMeasure.from_replay_metadata(record.source, payload, metadata))
            if result.error is not None:
                raise result.error
            entities = [(entry.lane, entry.payload) for entry in result.entries]
        for number, (lane, entity) in enumerate(entities):
            item = OutboxItem(number, lane, str(entity.get("id")), entity, {}, 0.0, 0, False)
            try:
                report = await self.destination([item])
            except DeliveryUnavailable as error:
                raise RuntimeError(f"broker unavailable: {error}") from error
            if report.rejected:
                raise RuntimeError(f"rejected by the broker: {report.rejected[number]}")


def iot_replay_handler(settings: IotAgentSettings) -> ReplayHandler:
    """The replay handler for IoT agent records (see `IotReplay`)."""
    return IotReplay(settings)

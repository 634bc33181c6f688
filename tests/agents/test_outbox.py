"""The agents' outbox: durable, ordered per entity, at least once, backpressure, refusals quarantined, no duplicates."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.outbox import (
    BrokerUpsert,
    DeliveryReport,
    DeliveryUnavailable,
    Outbox,
    OutboxEntry,
    OutboxItem,
    OutboxRelay,
)
from agents.quarantine import Quarantine
from broker.embedded_postgres import free_port
from ngsi.client import AsyncBrokerClient

SDM_CONTEXT = "https://smartdatamodels.org/context.jsonld"


def entry(key: str, n: int, lane: str = "") -> OutboxEntry:
    return OutboxEntry(lane=lane, key=key, payload={"id": key, "n": n}, source={"source": f"test:{key}:{n}"})


class Destination:
    """A destination the test controls: records batches, can be down, refuses payloads with n < 0."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.down = False
        self.attempts_while_down = 0

    async def __call__(self, batch: list[OutboxItem]) -> DeliveryReport:
        if self.down:
            self.attempts_while_down += 1
            raise DeliveryUnavailable("connection refused", uncertain=False)
        self.batches.append([(item.key, item.payload["n"]) for item in batch])
        return DeliveryReport(
            delivered=[item.seq for item in batch if item.payload["n"] >= 0],
            rejected={item.seq: "negative" for item in batch if item.payload["n"] < 0},
        )

    def delivered(self) -> list[tuple[str, int]]:
        return [pair for batch in self.batches for pair in batch if pair[1] >= 0]


async def wait_for(condition: Any, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout_s}s")


async def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    await outbox.put([entry("a", 1), entry("b", 1), entry("a", 2)])
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")
    assert reopened.pending == 3
    first = reopened.next_batch(10, busy_seqs=set(), busy_keys=set())
    assert [(i.key, i.payload["n"]) for i in first] == [("a", 1), ("b", 1)]  # one entry per key per batch
    reopened.settle([i.seq for i in first])
    second = reopened.next_batch(10, busy_seqs=set(), busy_keys=set())
    assert [(i.key, i.payload["n"]) for i in second] == [("a", 2)]


def test_a_batch_holds_one_lane_and_skips_keys_in_flight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    asyncio.run(outbox.put([entry("a", 1, "madrid"), entry("b", 1, "lisbon"), entry("c", 1, "madrid")]))
    batch = outbox.next_batch(10, busy_seqs=set(), busy_keys=set())
    assert [(i.lane, i.key) for i in batch] == [("madrid", "a"), ("madrid", "c")]
    busy = outbox.next_batch(10, busy_seqs={i.seq for i in batch}, busy_keys={("madrid", "a"), ("madrid", "c")})
    assert [(i.lane, i.key) for i in busy] == [("lisbon", "b")]


async def test_relay_delivers_every_entry_in_order_per_key(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    destination = Destination()
    relay = OutboxRelay(outbox, destination, quarantine, agent="test", batch_size=7, concurrency=3)
    task = asyncio.create_task(relay.run())
    await outbox.put([entry(f"k{n % 5}", n) for n in range(200)])
    await wait_for(lambda: outbox.pending == 0)
    relay.stop()
    await task
    delivered = destination.delivered()
    assert sorted(n for _, n in delivered) == list(range(200))
    for key in {k for k, _ in delivered}:
        numbers = [n for k, n in delivered if k == key]
        assert numbers == sorted(numbers), f"{key} delivered out of order"
    assert all(len({k for k, _ in batch}) == len(batch) for batch in destination.batches)


async def test_refused_entries_go_to_the_quarantine_with_their_source(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    relay = OutboxRelay(outbox, Destination(), quarantine, agent="test")
    task = asyncio.create_task(relay.run())
    await outbox.put([entry("a", 1), entry("b", -1)])
    await wait_for(lambda: outbox.pending == 0)
    relay.stop()
    await task
    [record] = quarantine.list()
    assert record.agent == "test"
    assert record.source == "test:b:-1"
    assert "negative" in record.reason
    assert record.metadata["entity"] == {"id": "b", "n": -1}


async def test_unreachable_destination_is_retried_with_backoff_until_it_is_back(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    destination = Destination()
    destination.down = True
    relay = OutboxRelay(outbox, destination, Quarantine(tmp_path / "q.sqlite"), agent="test", min_backoff_s=0.05,
                        max_backoff_s=0.2)  # fmt: skip
    task = asyncio.create_task(relay.run())
    await outbox.put([entry("a", n) for n in range(5)])
    await wait_for(lambda: destination.attempts_while_down >= 3)
    assert not relay.available
    assert outbox.pending == 5
    destination.down = False
    await wait_for(lambda: outbox.pending == 0)
    relay.stop()
    await task
    assert destination.delivered() == [("a", n) for n in range(5)]
    assert relay.available


async def test_a_full_outbox_makes_producers_wait_instead_of_dropping(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_pending=10)
    destination = Destination()
    destination.down = True
    relay = OutboxRelay(outbox, destination, Quarantine(tmp_path / "q.sqlite"), agent="test", min_backoff_s=0.05,
                        max_backoff_s=0.1)  # fmt: skip
    task = asyncio.create_task(relay.run())
    await outbox.put([entry(f"k{n}", n) for n in range(10)])
    producer = asyncio.create_task(outbox.put([entry("late", 99)]))
    await asyncio.sleep(0.3)
    assert not producer.done(), "put returned although the outbox was full"
    destination.down = False
    await asyncio.wait_for(producer, 10)
    await wait_for(lambda: outbox.pending == 0)
    relay.stop()
    await task
    assert sorted(n for _, n in destination.delivered()) == [*range(10), 99]


def aqo(entity_id: str, value: float, observed: str) -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": "AirQualityObserved",
        "no2": {"type": "Property", "value": value, "observedAt": observed, "unitCode": "GQ"},
        "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": observed}},
    }


def item(seq: int, payload: dict[str, Any], *, uncertain: bool, lane: str) -> OutboxItem:
    return OutboxItem(seq, lane, payload["id"], payload, {}, 0.0, 1 if uncertain else 0, uncertain)


async def test_broker_upsert_does_not_resend_what_the_broker_already_applied(broker_url: str, tenant: str) -> None:
    destination = BrokerUpsert(broker_url, context=SDM_CONTEXT)
    entity_id = f"urn:ngsi-ld:AirQualityObserved:test:{uuid.uuid4().hex[:8]}"
    first = aqo(entity_id, 10, "2024-01-01T00:00:00.000Z")
    report = await destination([item(1, first, uncertain=False, lane=tenant)])
    assert report.delivered == [1]
    # The same entry again, as after a timeout whose outcome was unknown: read back, not written twice.
    again = await destination([item(1, first, uncertain=True, lane=tenant)])
    assert again.delivered == [1]
    # An uncertain entry the broker does not hold yet is written.
    second = aqo(entity_id, 11, "2024-01-01T01:00:00.000Z")
    assert (await destination([item(2, second, uncertain=True, lane=tenant)])).delivered == [2]
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=SDM_CONTEXT) as client:
        history = await client.get_temporal_entity(entity_id, attrs="no2")
    instances = history["no2"] if isinstance(history["no2"], list) else [history["no2"]]
    assert sorted(i["value"] for i in instances) == [10, 11]
    await destination.aclose()


async def test_broker_upsert_reports_refused_entities(broker_url: str, tenant: str) -> None:
    destination = BrokerUpsert(broker_url, context=SDM_CONTEXT)
    good = aqo(f"urn:ngsi-ld:AirQualityObserved:test:{uuid.uuid4().hex[:8]}", 1, "2024-01-01T00:00:00.000Z")
    bad = aqo("not a URI", 1, "2024-01-01T00:00:00.000Z")
    report = await destination(
        [item(1, good, uncertain=False, lane=tenant), item(2, bad, uncertain=False, lane=tenant)]
    )
    assert report.delivered == [1]
    assert list(report.rejected) == [2] and report.rejected[2].startswith("400")
    await destination.aclose()


async def test_unreachable_broker_is_unavailable_and_certainly_not_applied() -> None:
    destination = BrokerUpsert(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(DeliveryUnavailable) as raised:
        await destination([item(1, aqo("urn:ngsi-ld:X:1", 1, "2024-01-01T00:00:00.000Z"), uncertain=False, lane="")])
    assert raised.value.uncertain is False
    await destination.aclose()

"""Notifications whose rows travel in the outbox announcement, and those too big for it, arrive alike."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx


async def test_small_and_oversized_changes_are_both_notified_in_order(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_type = f"Probe{uuid.uuid4().hex[:8]}"
    subscribed = await client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}],
        "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}, "format": "keyValues"}})
    assert subscribed.status_code == 201, subscribed.text
    entity_id = f"urn:ngsi-ld:{entity_type}:1"
    # 1: fits an announcement; 2: one entity larger than any NOTIFY payload; 3: small again.
    notes = ["small", "x" * 20_000, "small again"]
    created = await client.post("/entities", json={"id": entity_id, "type": entity_type,
                                                   "note": {"type": "Property", "value": notes[0]}})
    assert created.status_code == 201, created.text
    for note in notes[1:]:
        answer = await client.patch(f"/entities/{entity_id}/attrs", json={"note": {"type": "Property", "value": note}})
        assert answer.status_code == 204, answer.text
    # A batch whose 60 rows together do not fit a payload either, and one whose 5 rows do.
    batch: list[dict[str, Any]] = [{"id": f"urn:ngsi-ld:{entity_type}:b{i}", "type": entity_type,
              "note": {"type": "Property", "value": f"batch {i} " + "y" * 200}} for i in range(60)]
    small: list[dict[str, Any]] = [{"id": f"urn:ngsi-ld:{entity_type}:s{i}", "type": entity_type,
              "note": {"type": "Property", "value": f"small {i}"}} for i in range(5)]
    for entities in (batch, small):
        upserted = await client.post("/entityOperations/upsert", json=entities)
        assert upserted.status_code in (201, 204), upserted.text

    def received_for(entity: str) -> list[str]:
        return [r.body["data"][0]["note"] for r in receiver.received if r.body["data"][0]["id"] == entity]

    await wait_for(lambda: len(received_for(entity_id)) >= 3
                   and all(received_for(str(e["id"])) for e in batch + small),
                   what="the three changes of one entity and both batches")
    assert received_for(entity_id) == notes, "each change once, in order, the oversized one whole"
    for i, sent in enumerate(batch):
        assert received_for(str(sent["id"])) == [f"batch {i} " + "y" * 200]
    for i, sent in enumerate(small):  # each row of one announcement carries its own entity
        assert received_for(str(sent["id"])) == [f"small {i}"]

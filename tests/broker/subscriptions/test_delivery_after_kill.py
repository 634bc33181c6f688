"""At-least-once delivery: notifications pending when the broker is killed with SIGKILL arrive after restart."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from broker.embedded_postgres import free_port

UPDATES = 25


async def test_pending_notifications_survive_sigkill_and_restart(
    create_database: Callable[[str], str], start_broker: Callable[..., Any], make_receiver: Callable[..., Any],
    wait_for: Callable[..., Any],
) -> None:
    database_url = create_database("kill")
    broker = start_broker(database_url)
    receiver_port = free_port()  # nothing listens here yet: the receiver is down
    entity_id = f"urn:ngsi-ld:AirQualityObserved:kill:{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=broker.url + "/ngsi-ld/v1", timeout=30) as client:
        created = await client.post("/entities", json={
            "id": entity_id, "type": "AirQualityObserved", "no2": {"type": "Property", "value": -1}})
        assert created.status_code == 201
        subscribed = await client.post("/subscriptions", json={
            "type": "Subscription", "entities": [{"id": entity_id, "type": "AirQualityObserved"}],
            "notificationTrigger": ["attributeUpdated"],
            "notification": {"endpoint": {"uri": f"http://127.0.0.1:{receiver_port}/notify"}}})
        assert subscribed.status_code == 201
        for value in range(UPDATES):
            response = await client.patch(f"/entities/{entity_id}/attrs",
                                          json={"no2": {"type": "Property", "value": value}})
            assert response.status_code == 204
    broker.kill()

    start_broker(database_url)  # same database; its notifier finds the outbox
    receiver = make_receiver(receiver_port)
    await wait_for(lambda: {r.body["data"][0]["no2"]["value"] for r in receiver.received} >= set(range(UPDATES)),
                   within=30, what=f"all {UPDATES} notifications after restart")
    values = [r.body["data"][0]["no2"]["value"] for r in receiver.received]
    assert set(values) == set(range(UPDATES)), "none missing"
    ids: dict[str, Any] = {}
    for r in receiver.received:
        ids.setdefault(r.body["id"], r.body["data"][0]["no2"]["value"])
        assert ids[r.body["id"]] == r.body["data"][0]["no2"]["value"], "a duplicate repeats its notification id"
    assert len(ids) == UPDATES
    first_seen = list(dict.fromkeys(values))
    assert first_seen == list(range(UPDATES)), "in order per subscription and entity"

"""Which subscriptions a write notifies when they are looked up by entity type, and when another broker changes them."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx


def unique_type(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:8]}"


async def subscribe(client: httpx.AsyncClient, uri: str, **members: Any) -> str:
    body = {"type": "Subscription", "notification": {"endpoint": {"uri": uri, "accept": "application/json"}},
            **members}
    response = await client.post("/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[-1])


def sent_to(receiver: Any, subscription_id: str) -> list[Any]:
    return [r for r in receiver.received if r.body["subscriptionId"] == subscription_id]


async def test_entity_of_two_types_notifies_each_matching_subscription_once(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    first, second, other = unique_type("Sensor"), unique_type("Station"), unique_type("Unrelated")
    watched = f"level{uuid.uuid4().hex[:6]}"
    by_first = await subscribe(client, receiver.url, entities=[{"type": first}])
    by_both = await subscribe(client, receiver.url, entities=[{"type": first}, {"type": second}])
    by_attribute = await subscribe(client, receiver.url, watchedAttributes=[watched])  # any type
    by_other = await subscribe(client, receiver.url, entities=[{"type": other}])
    entity_id = f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:10]}"
    created = await client.post("/entities", json={
        "id": entity_id, "type": [first, second], watched: {"type": "Property", "value": 1}})
    assert created.status_code == 201, created.text
    updated = await client.patch(f"/entities/{entity_id}/attrs", json={watched: {"type": "Property", "value": 2}})
    assert updated.status_code == 204, updated.text
    expected = {by_first: 2, by_both: 2, by_attribute: 2}
    # Each lane delivers in order: a duplicate of the first notification would come before the second.
    await wait_for(lambda: all(len(sent_to(receiver, sub)) >= n for sub, n in expected.items()),
                   what="the creation and the update at each matching subscription")
    counts = Counter(r.body["subscriptionId"] for r in receiver.received if r.body["data"][0]["id"] == entity_id)
    assert counts == Counter(expected), "each matching subscription once per change, the other type's none"
    assert by_other not in counts
    for sub in expected:
        values = [r.body["data"][0][watched]["value"] for r in sent_to(receiver, sub)]
        assert values == [1, 2]


async def test_subscription_made_through_another_broker_is_matched(
    create_database: Callable[[str], str], start_broker: Callable[..., Any], receiver: Any,
    wait_for: Callable[..., Any],
) -> None:
    database_url = create_database("two")
    writer, other = start_broker(database_url), start_broker(database_url)
    entity_type = unique_type("Meter")
    entity_id = f"urn:ngsi-ld:{entity_type}:1"
    async with httpx.AsyncClient(base_url=writer.url + "/ngsi-ld/v1", timeout=30) as to_writer, \
            httpx.AsyncClient(base_url=other.url + "/ngsi-ld/v1", timeout=30) as to_other:
        known = await subscribe(to_writer, receiver.url, entities=[{"type": entity_type}])
        created = await to_writer.post("/entities", json={"id": entity_id, "type": entity_type,
                                                           "reading": {"type": "Property", "value": 0}})
        assert created.status_code == 201, created.text
        await wait_for(lambda: sent_to(receiver, known), what="the writer's own subscription (its set is cached)")
        added = await subscribe(to_other, receiver.url, entities=[{"type": entity_type}],
                                watchedAttributes=["reading"])
        value = 0

        async def written_and_notified() -> bool:
            nonlocal value
            value += 1
            answer = await to_writer.patch(f"/entities/{entity_id}/attrs",
                                           json={"reading": {"type": "Property", "value": value}})
            assert answer.status_code == 204, answer.text
            return bool(sent_to(receiver, added))

        await wait_for(written_and_notified, within=15,
                       what="a write through the first broker to notify the subscription made through the second")

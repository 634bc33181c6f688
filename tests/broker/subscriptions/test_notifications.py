"""Notifications (GS CIM 009 5.11, 5.3.1) delivered by the running broker to real HTTP and MQTT receivers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"


def entity(entity_id: str, no2: float = 10.0) -> dict[str, Any]:
    return {"id": entity_id, "type": "AirQualityObserved",
            "no2": {"type": "Property", "value": no2, "unitCode": "GQ"},
            "name": {"type": "Property", "value": "station"}}


def new_id() -> str:
    return f"urn:ngsi-ld:AirQualityObserved:test:{uuid.uuid4().hex[:10]}"


async def subscribe(client: httpx.AsyncClient, uri: str, headers: dict[str, str] | None = None,
                    **members: Any) -> str:
    notification = {"endpoint": {"uri": uri, "accept": "application/json"}, **members.pop("notification", {})}
    body = {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}], "notification": notification,
            **members}
    response = await client.post("/subscriptions", json=body, headers=headers or {})
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[-1])


async def update_no2(client: httpx.AsyncClient, entity_id: str, value: float,
                     headers: dict[str, str] | None = None) -> None:
    response = await client.patch(f"/entities/{entity_id}/attrs", json={"no2": {"type": "Property", "value": value}},
                                  headers=headers or {})
    assert response.status_code == 204, response.text


async def test_update_notifies_http_receiver_with_envelope_and_link(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    sub_id = await subscribe(client, receiver.url, entities=[{"id": entity_id, "type": "AirQualityObserved"}])
    assert (await client.post("/entities", json=entity(entity_id))).status_code == 201
    await update_no2(client, entity_id, 42)
    await wait_for(lambda: len(receiver.received) >= 2, what="creation and update notifications")
    created, updated = receiver.received[:2]
    body = updated.body
    assert body["type"] == "Notification"
    assert body["id"].startswith("urn:ngsi-ld:Notification:")
    assert body["subscriptionId"] == sub_id
    assert body["notifiedAt"].endswith("Z")
    assert body["data"][0]["id"] == entity_id
    assert body["data"][0]["no2"]["value"] == 42
    assert created.body["data"][0]["no2"]["value"] == 10
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in updated.headers["link"]
    assert updated.headers["content-type"].startswith("application/json")

    async def counted() -> dict[str, Any] | None:
        status = dict((await client.get(f"/subscriptions/{sub_id}")).json())
        return status if status["notification"]["timesSent"] >= 2 else None

    status = await wait_for(counted, what="timesSent to count both notifications")
    assert status["notification"]["lastSuccess"]
    assert status["notification"]["status"] == "ok" and status["status"] == "active"


async def test_watched_attributes_and_q_filter_notifications(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    await subscribe(client, receiver.url, entities=[{"id": entity_id, "type": "AirQualityObserved"}],
                    watchedAttributes=["no2"], q="no2>40")
    assert (await client.post("/entities", json=entity(entity_id, 5))).status_code == 201
    name = {"name": {"type": "Property", "value": "renamed"}}
    assert (await client.patch(f"/entities/{entity_id}/attrs", json=name)).status_code == 204
    await update_no2(client, entity_id, 30)
    await update_no2(client, entity_id, 55)
    await wait_for(lambda: receiver.received, what="the no2>40 notification")
    # Later writes that do not match would have been queued before this one: order proves absence.
    await update_no2(client, entity_id, 60)
    await wait_for(lambda: len(receiver.received) >= 2, what="second matching notification")
    values = [r.body["data"][0]["no2"]["value"] for r in receiver.received]
    assert values == [55, 60]


async def test_formats_attributes_and_show_changes(
    client: httpx.AsyncClient, make_receiver: Callable[[], Any], wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    key_values, concise, changes = make_receiver(), make_receiver(), make_receiver()
    selector = [{"id": entity_id, "type": "AirQualityObserved"}]
    triggers = ["attributeUpdated"]
    await subscribe(client, key_values.url, entities=selector, notificationTrigger=triggers,
                    notification={"format": "keyValues", "attributes": ["no2"]})
    await subscribe(client, concise.url, entities=selector, notificationTrigger=triggers,
                    notification={"format": "concise"})
    await subscribe(client, changes.url, entities=selector, notificationTrigger=triggers,
                    notification={"showChanges": True})
    assert (await client.post("/entities", json=entity(entity_id, 7))).status_code == 201
    await update_no2(client, entity_id, 8)
    await wait_for(lambda: key_values.received and concise.received and changes.received,
                   what="three notifications")
    assert key_values.received[0].body["data"][0] == {"id": entity_id, "type": "AirQualityObserved", "no2": 8}
    concise_entity = concise.received[0].body["data"][0]
    assert concise_entity["no2"] == 8, "the PATCH replaced the attribute, unitCode included"
    assert changes.received[0].body["data"][0]["no2"]["previousValue"] == 7
    assert "previousValue" not in changes.received[0].body["data"][0]["name"], "name was not part of the update"


async def test_entity_deleted_trigger(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    await subscribe(client, receiver.url, entities=[{"id": entity_id, "type": "AirQualityObserved"}],
                    notificationTrigger=["entityDeleted"])
    assert (await client.post("/entities", json=entity(entity_id))).status_code == 201
    await update_no2(client, entity_id, 1)
    assert (await client.delete(f"/entities/{entity_id}")).status_code == 204
    await wait_for(lambda: receiver.received, what="deletion notification")
    assert len(receiver.received) == 1
    assert receiver.received[0].body["data"][0]["id"] == entity_id
    assert "deletedAt" in receiver.received[0].body["data"][0]


async def test_paused_subscription_does_not_notify(
    client: httpx.AsyncClient, make_receiver: Callable[[], Any], wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    paused, active = make_receiver(), make_receiver()
    selector = [{"id": entity_id, "type": "AirQualityObserved"}]
    await subscribe(client, paused.url, entities=selector, isActive=False)
    await subscribe(client, active.url, entities=selector)
    assert (await client.post("/entities", json=entity(entity_id))).status_code == 201
    await wait_for(lambda: active.received, what="notification of the active subscription")
    assert paused.received == []


async def test_tenant_subscription_sends_tenant_header(
    client: httpx.AsyncClient, receiver: Any, tenant: str, wait_for: Callable[..., Any]
) -> None:
    headers = {"NGSILD-Tenant": tenant}
    entity_id = new_id()
    assert (await client.post("/entities", json=entity(entity_id), headers=headers)).status_code == 201
    await subscribe(client, receiver.url, headers=headers, entities=[{"id": entity_id, "type": "AirQualityObserved"}])
    assert (await client.get("/subscriptions")).json() == [] or all(
        s["notification"]["endpoint"]["uri"] != receiver.url for s in (await client.get("/subscriptions")).json()
    )
    await update_no2(client, entity_id, 3, headers)
    await wait_for(lambda: receiver.received, what="tenant notification")
    assert receiver.received[0].headers["ngsild-tenant"] == tenant


async def test_failing_receiver_goes_failed_then_recovers_without_delaying_others(
    client: httpx.AsyncClient, make_receiver: Callable[[], Any], wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    broken, healthy = make_receiver(), make_receiver()
    broken.status = 500
    selector = [{"id": entity_id, "type": "AirQualityObserved"}]
    broken_id = await subscribe(client, broken.url, entities=selector)
    await subscribe(client, healthy.url, entities=selector)
    assert (await client.post("/entities", json=entity(entity_id, 0))).status_code == 201
    for value in range(1, 6):
        await update_no2(client, entity_id, value)
    await wait_for(lambda: len(healthy.received) == 6, what="all six notifications at the healthy receiver")

    async def status() -> dict[str, Any]:
        return dict((await client.get(f"/subscriptions/{broken_id}")).json())

    async def has_failed() -> dict[str, Any] | None:
        current = await status()
        return current if current["notification"].get("status") == "failed" else None

    failed = await wait_for(has_failed, within=15, what="status failed after repeated failures")
    # GS CIM 009 5.2.12: the subscription stays active; its notifications are the ones that failed.
    assert failed["status"] == "active"
    assert failed["notification"]["timesFailed"] >= 3
    assert failed["notification"]["lastFailure"]
    broken.status = 200
    await wait_for(lambda: len(broken.received) == 6, within=15, what="backlog delivered after recovery")
    values = [r.body["data"][0]["no2"]["value"] for r in broken.received]
    assert values == [0, 1, 2, 3, 4, 5], "in order per subscription and entity"

    async def recovered() -> bool:
        return (await status())["notification"]["status"] == "ok"

    await wait_for(recovered, what="notification status ok again after recovery")


async def test_mqtt_endpoint_gets_orion_ld_envelope(
    client: httpx.AsyncClient, mqtt_url: str, mqtt_listener: Callable[[str], Any], wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    topic = f"notify/{uuid.uuid4().hex[:8]}"
    listener = mqtt_listener(topic)
    sub_id = await subscribe(
        client, f"{mqtt_url}/{topic}", entities=[{"id": entity_id, "type": "AirQualityObserved"}],
        notification={"endpoint": {"uri": f"{mqtt_url}/{topic}", "accept": "application/json",
                                   "notifierInfo": [{"key": "MQTT-QoS", "value": "1"}]}},
    )
    assert (await client.post("/entities", json=entity(entity_id, 12))).status_code == 201
    await wait_for(lambda: listener.messages, what="MQTT notification")
    got_topic, payload, _ = listener.messages[0]
    assert got_topic == topic
    assert set(payload) == {"metadata", "body"}
    assert payload["metadata"]["Content-Type"] == "application/json"
    assert "Link" in payload["metadata"]
    assert payload["body"]["subscriptionId"] == sub_id
    assert payload["body"]["data"][0]["no2"]["value"] == 12


async def test_periodic_subscription_notifies_every_interval(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_id = new_id()
    assert (await client.post("/entities", json=entity(entity_id, 9))).status_code == 201
    await subscribe(client, receiver.url, entities=[{"id": entity_id, "type": "AirQualityObserved"}], timeInterval=1)
    await wait_for(lambda: len(receiver.received) >= 2, within=10, what="two periodic notifications")
    assert all(r.body["data"][0]["id"] == entity_id for r in receiver.received)


async def test_geo_q_notifies_only_entities_inside_the_area(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    kind = f"Station{uuid.uuid4().hex[:6]}"
    await subscribe(client, receiver.url, entities=[{"type": kind}],
                    geoQ={"geometry": "Polygon", "georel": "within",
                          "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]})
    for name, point in (("outside", [20, 20]), ("inside", [5, 5])):
        body = {"id": f"urn:ngsi-ld:{kind}:{name}", "type": kind,
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}}
        assert (await client.post("/entities", json=body)).status_code == 201
    await wait_for(lambda: receiver.received, what="notification of the entity inside the polygon")
    # The outside entity was written first: had it matched, its notification would have come first.
    assert receiver.entity_ids() == [f"urn:ngsi-ld:{kind}:inside"]


async def test_notifications_link_the_context_the_subscription_was_made_with(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    # An inline @context was used to compact the data while the Link named the core context: a receiver
    # expanding with the Link got other IRIs. It is now kept as ImplicitlyCreated and linked (as Orion-LD).
    entity_id = new_id()
    inline = [{"no2": "http://example.org/nitrogenDioxide"}, CORE]
    body = {"type": "Subscription", "entities": [{"id": entity_id, "type": "AirQualityObserved"}],
            "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}}, "@context": inline}
    created = await client.post("/subscriptions", json=body, headers={"Content-Type": "application/ld+json"})
    assert created.status_code == 201, created.text
    sub = (await client.get(created.headers["location"].removeprefix("/ngsi-ld/v1"))).json()
    linked = sub["jsonldContext"]
    served = await client.get(linked)
    assert served.status_code == 200 and served.json() == {"@context": inline}
    listed = (await client.get("/jsonldContexts", params={"kind": "ImplicitlyCreated"})).json()
    assert linked in listed
    full = {**entity(entity_id), "http://example.org/nitrogenDioxide": {"type": "Property", "value": 3}}
    del full["no2"]
    assert (await client.post("/entities", json=full)).status_code == 201
    await wait_for(lambda: len(receiver.received) >= 1, what="the creation notification")
    notification = receiver.received[0]
    assert f"<{linked}>" in notification.headers["link"]
    assert notification.body["data"][0]["no2"]["value"] == 3  # compacted with the inline term

    # jsonldContext names the @context of the notifications itself.
    other = new_id()
    await subscribe(client, receiver.url, entities=[{"id": other, "type": "AirQualityObserved"}],
                    jsonldContext=linked)
    assert (await client.post("/entities", json={**full, "id": other})).status_code == 201
    await wait_for(lambda: any(r.body["data"][0]["id"] == other for r in receiver.received),
                   what="the notification of the jsonldContext subscription")
    mine = next(r for r in receiver.received if r.body["data"][0]["id"] == other)
    assert f"<{linked}>" in mine.headers["link"] and mine.body["data"][0]["no2"]["value"] == 3

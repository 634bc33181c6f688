"""Subscription API (GS CIM 009 5.8): create, retrieve, list, update, delete, and precise 400s on bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

ENDPOINT = {"uri": "http://127.0.0.1:9/notify", "accept": "application/json"}


def subscription(**members: object) -> dict[str, object]:
    body: dict[str, object] = {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}],
                               "notification": {"endpoint": ENDPOINT}}
    body.update(members)
    return body


async def test_create_returns_201_with_location_and_retrieve_shows_status(client: httpx.AsyncClient) -> None:
    response = await client.post("/subscriptions", json=subscription(watchedAttributes=["no2"], q="no2>40"))
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith("/ngsi-ld/v1/subscriptions/urn:ngsi-ld:Subscription:")
    got = await client.get(location.removeprefix("/ngsi-ld/v1"))
    assert got.status_code == 200
    body = got.json()
    assert body["type"] == "Subscription"
    assert body["status"] == "active"
    assert body["isActive"] is True
    assert body["watchedAttributes"] == ["no2"]
    assert body["q"] == "no2>40"
    assert body["notification"]["endpoint"]["uri"] == ENDPOINT["uri"]


async def test_create_with_given_id_twice_is_409(client: httpx.AsyncClient) -> None:
    body = subscription(id="urn:ngsi-ld:Subscription:twice")
    assert (await client.post("/subscriptions", json=body)).status_code == 201
    again = await client.post("/subscriptions", json=body)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/AlreadyExists")


async def test_list_paginates_and_counts(client: httpx.AsyncClient, tenant: str) -> None:
    headers = {"NGSILD-Tenant": tenant}
    for _ in range(3):
        assert (await client.post("/subscriptions", json=subscription(), headers=headers)).status_code == 201
    page = await client.get("/subscriptions", params={"limit": 2, "count": "true"}, headers=headers)
    assert page.status_code == 200
    assert len(page.json()) == 2
    assert page.headers["ngsild-results-count"] == "3"
    rest = await client.get("/subscriptions", params={"limit": 2, "offset": 2}, headers=headers)
    assert len(rest.json()) == 1


async def test_update_pauses_and_delete_removes(client: httpx.AsyncClient) -> None:
    location = (await client.post("/subscriptions", json=subscription())).headers["location"]
    path = location.removeprefix("/ngsi-ld/v1")
    patched = await client.patch(path, json={"isActive": False, "throttling": 5})
    assert patched.status_code == 204, patched.text
    body = (await client.get(path)).json()
    assert body["status"] == "paused"
    assert body["throttling"] == 5
    assert (await client.delete(path)).status_code == 204
    assert (await client.get(path)).status_code == 404
    assert (await client.delete(path)).status_code == 404


async def test_expires_at_in_the_future_then_expired_status(client: httpx.AsyncClient) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    location = (await client.post("/subscriptions", json=subscription(expiresAt=soon))).headers["location"]
    path = location.removeprefix("/ngsi-ld/v1")
    assert (await client.get(path)).json()["status"] == "active"
    # Wait on the clock, not on the broker: the status is computed from expiresAt.
    expiry = datetime.fromisoformat(soon.replace("Z", "+00:00"))
    await asyncio.sleep(max((expiry - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert (await client.get(path)).json()["status"] == "expired"


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "Subscription", "entities": [{"type": "T"}], "notification": {}}, "notification.endpoint"),
        ({"type": "Subscription", "entities": [{"type": "T"}]}, "notification"),
        (subscription(notification={"endpoint": {"uri": "ftp://example.org/x"}}), "scheme"),
        (subscription(notification={"endpoint": {"uri": "mqtt://127.0.0.1:1883"}}), "topic"),
        (subscription(q="no2>>>"), "'q'"),
        (subscription(throttling=5, timeInterval=10), "'throttling' and 'timeInterval'"),
        (subscription(expiresAt="2001-01-01T00:00:00Z"), "'expiresAt'"),
        (subscription(notificationTrigger=["entityExploded"]), "'notificationTrigger'"),
        (subscription(entities=[{"type": "T", "idPattern": "("}]), "idPattern"),
        (subscription(notification={"endpoint": ENDPOINT, "format": "weird"}), "'notification.format'"),
        (subscription(throttling=-1), "'throttling'"),
        ({"type": "Subscription", "notification": {"endpoint": ENDPOINT}}, "'entities' or 'watchedAttributes'"),
        # These three were a 500: an unknown selector member was stored as given, a list as `accept` hashed.
        (subscription(entities=[{"type": "T", "typo": 1}]), "'entities[0]' has members"),
        (subscription(notification={"endpoint": {**ENDPOINT, "accept": ["application/json"]}}), "accept"),
        (subscription(notification={"endpoint": ENDPOINT, "x": nested(101)}), "deeper than 100 levels"),
    ],
)
async def test_invalid_subscription_is_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/subscriptions", json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]


async def test_invalid_patch_is_400_and_leaves_the_subscription(client: httpx.AsyncClient) -> None:
    location = (await client.post("/subscriptions", json=subscription())).headers["location"]
    path = location.removeprefix("/ngsi-ld/v1")
    response = await client.patch(path, json={"notification": {"endpoint": {"uri": "gopher://x/y"}}})
    assert response.status_code == 400
    assert (await client.get(path)).json()["notification"]["endpoint"]["uri"] == ENDPOINT["uri"]


async def test_listing_the_subscriptions_of_an_unknown_tenant_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/subscriptions", headers={"NGSILD-Tenant": "never_written_to"})
    assert response.status_code == 404 and response.json()["type"].endswith("/NonexistentTenant")


async def test_unknown_subscription_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/subscriptions/urn:ngsi-ld:Subscription:nope")
    assert response.status_code == 404
    assert response.json()["type"].endswith("/ResourceNotFound")


async def test_names_are_answered_in_the_requests_context(client: httpx.AsyncClient) -> None:
    # They were answered as written at creation, whatever @context the reader used (Orion-LD compacts them).
    context = {"@context": {"Room": "http://example.org/Room", "temperature": "http://example.org/temperature"}}
    url = (await client.post("/jsonldContexts", json=context)).headers["Location"]
    link = {"Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'}
    body = subscription(entities=[{"type": "Room"}], watchedAttributes=["temperature"],
                        notification={"endpoint": ENDPOINT, "attributes": ["temperature"]})
    location = (await client.post("/subscriptions", json=body, headers=link)).headers["location"]
    path = location.removeprefix("/ngsi-ld/v1")
    plain = (await client.get(path)).json()
    assert plain["entities"] == [{"type": "http://example.org/Room"}]
    assert plain["watchedAttributes"] == ["http://example.org/temperature"]
    assert plain["notification"]["attributes"] == ["http://example.org/temperature"]
    mine = (await client.get(path, headers=link)).json()
    assert mine["entities"] == [{"type": "Room"}] and mine["watchedAttributes"] == ["temperature"]

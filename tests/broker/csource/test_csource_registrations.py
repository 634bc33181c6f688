"""/csourceRegistrations over real HTTP, with registrations shaped like an IoT agent's for device commands."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

API = "/ngsi-ld/v1"
SDM = "https://smartdatamodels.org/dataModel.Environment/"
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"


def device_registration(device: str, commands: list[str], **extra: Any) -> dict[str, Any]:
    """What a FIWARE IoT agent registers for a device with commands (lazy attributes / commands)."""
    return {
        "type": "ContextSourceRegistration",
        "information": [
            {"entities": [{"type": "Device", "id": f"urn:ngsi-ld:Device:{device}"}], "propertyNames": commands}
        ],
        "mode": "exclusive",
        "operations": ["updateOps"],
        "endpoint": "http://iot-agent:4041",
        **extra,
    }


@pytest.fixture
async def client(broker_url: str, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker_url, timeout=30, headers={"NGSILD-Tenant": tenant}) as http:
        yield http


async def register(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post(f"{API}/csourceRegistrations", json=body)
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith(f"{API}/csourceRegistrations/")
    return location.rsplit("/", 1)[1]


async def test_register_retrieve_update_delete(client: httpx.AsyncClient) -> None:
    registration_id = await register(client, device_registration("lamp-1", ["switchOn", "switchOff"]))
    got = await client.get(f"{API}/csourceRegistrations/{registration_id}")
    assert got.status_code == 200
    body = got.json()
    assert body["id"] == registration_id
    assert body["information"] == [{"entities": [{"type": "Device", "id": "urn:ngsi-ld:Device:lamp-1"}],
                                    "propertyNames": ["switchOn", "switchOff"]}]  # fmt: skip
    assert body["endpoint"] == "http://iot-agent:4041" and body["mode"] == "exclusive"

    patched = await client.patch(f"{API}/csourceRegistrations/{registration_id}",
                                 json={"endpoint": "http://iot-agent-2:4041", "description": "moved"})  # fmt: skip
    assert patched.status_code == 204, patched.text
    assert (await client.patch(f"{API}/csourceRegistrations/{registration_id}", json={})).status_code == 400
    after = (await client.get(f"{API}/csourceRegistrations/{registration_id}", params={"options": "sysAttrs"})).json()
    assert after["endpoint"] == "http://iot-agent-2:4041" and after["description"] == "moved"
    assert after["information"] == body["information"]
    assert after["modifiedAt"] >= after["createdAt"]

    assert (await client.delete(f"{API}/csourceRegistrations/{registration_id}")).status_code == 204
    assert (await client.get(f"{API}/csourceRegistrations/{registration_id}")).status_code == 404
    assert (await client.delete(f"{API}/csourceRegistrations/{registration_id}")).status_code == 404


async def test_given_id_is_kept_and_a_second_registration_with_it_conflicts(client: httpx.AsyncClient) -> None:
    body = device_registration("lamp-2", ["switchOn"], id="urn:ngsi-ld:ContextSourceRegistration:lamp-2")
    assert await register(client, body) == "urn:ngsi-ld:ContextSourceRegistration:lamp-2"
    again = await client.post(f"{API}/csourceRegistrations", json=body)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/AlreadyExists")


async def test_list_filters_by_entity_id_type_and_attributes(client: httpx.AsyncClient) -> None:
    lamp = await register(client, device_registration("lamp-3", ["switchOn"]))
    valve = await register(client, device_registration("valve-1", ["open", "close"]))
    porto = {"type": "AirQualityObserved", "idPattern": "urn:ngsi-ld:AirQualityObserved:porto:.*"}
    sensors = await register(
        client,
        {
            "type": "ContextSourceRegistration",
            "information": [{"entities": [porto]}],
            "endpoint": "http://porto-platform:1026",
        },
    )

    async def listed(**params: str) -> list[str]:
        response = await client.get(f"{API}/csourceRegistrations", params=params)
        assert response.status_code == 200, response.text
        return sorted(r["id"] for r in response.json())

    assert await listed() == sorted([lamp, valve, sensors])
    assert await listed(type="Device") == sorted([lamp, valve])
    assert await listed(id="urn:ngsi-ld:Device:valve-1") == [valve]
    assert await listed(type="Device", attrs="close") == [valve]
    assert await listed(id="urn:ngsi-ld:AirQualityObserved:porto:boavista") == [sensors]
    assert await listed(type="AirQualityObserved", attrs="no2") == [sensors]  # no names = every attribute
    assert await listed(type="WeatherObserved") == []
    counted = await client.get(f"{API}/csourceRegistrations", params={"type": "Device", "count": "true", "limit": "1"})
    assert counted.headers["NGSILD-Results-Count"] == "2" and len(counted.json()) == 1


async def test_types_and_names_follow_the_request_context(client: httpx.AsyncClient) -> None:
    context = {"AirQualityObserved": SDM + "AirQualityObserved", "no2": SDM + "no2"}
    body = {**device_registration("x", ["no2"]), "@context": [context, CORE_CONTEXT]}
    body["information"] = [{"entities": [{"type": "AirQualityObserved"}], "propertyNames": ["no2"]}]
    response = await client.post(f"{API}/csourceRegistrations", json=body,
                                  headers={"Content-Type": "application/ld+json"})  # fmt: skip
    assert response.status_code == 201, response.text
    registration_id = response.headers["location"].rsplit("/", 1)[1]
    plain = (await client.get(f"{API}/csourceRegistrations/{registration_id}")).json()
    assert plain["information"] == [
        {"entities": [{"type": SDM + "AirQualityObserved"}], "propertyNames": [SDM + "no2"]}
    ]
    listed = await client.get(f"{API}/csourceRegistrations", params={"type": SDM + "AirQualityObserved"})
    assert [r["id"] for r in listed.json()] == [registration_id]


BAD_REGISTRATIONS = [
    ({"information": [{"entities": [{"type": "Device"}]}], "endpoint": "http://a:1"}, "type"),
    ({"type": "ContextSourceRegistration", "endpoint": "http://a:1"}, "information"),
    ({"type": "ContextSourceRegistration", "information": [], "endpoint": "http://a:1"}, "information"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}]}, "endpoint"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "not a uri"}, "endpoint"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"id": "urn:ngsi-ld:Device:1"}]}],
      "endpoint": "http://a:1"}, "type"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "mode": "sometimes"}, "mode"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "expiresAt": "soon"}, "expiresAt"),
    ({"type": "ContextSourceRegistration", "information": [{"propertyNames": "switchOn"}],
      "endpoint": "http://a:1"}, "propertyNames"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "location": {"type": "Point", "coordinates": "x"}}, "location"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "observationInterval": {"startAt": "2025-01-01T00:00:00Z",
                                                        "endAt": "2024-01-01T00:00:00Z"}}, "before its startAt"),
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "management": {"timeout": -5}}, "management"),
    # Kept as given, it was a 500 when stored (orjson writes at most 255 levels).
    ({"type": "ContextSourceRegistration", "information": [{"entities": [{"type": "Device"}]}],
      "endpoint": "http://a:1", "deep": functools.reduce(lambda value, _: [value], range(300), 1)},
     "deeper than 100 levels"),
]  # fmt: skip


@pytest.mark.parametrize("body,member", BAD_REGISTRATIONS)
async def test_bad_registrations_are_400_naming_the_member(
    client: httpx.AsyncClient, body: dict[str, Any], member: str
) -> None:
    response = await client.post(f"{API}/csourceRegistrations", json=body)
    assert response.status_code == 400, response.text
    assert member in response.json()["detail"]


async def test_unknown_registration_is_404(client: httpx.AsyncClient) -> None:
    await register(client, device_registration("lamp-9", ["switchOn"]))
    response = await client.get(f"{API}/csourceRegistrations/urn:ngsi-ld:ContextSourceRegistration:none")
    assert response.status_code == 404
    patched = await client.patch(f"{API}/csourceRegistrations/urn:ngsi-ld:ContextSourceRegistration:none",
                                 json={"endpoint": "http://a:1"})  # fmt: skip
    assert patched.status_code == 404


async def test_csf_filters_by_the_registrations_own_members_and_expired_ones_are_left_out(
        client: httpx.AsyncClient) -> None:
    # csf and expiry were ignored: every registration came back whatever was asked.
    lamp = await register(client, device_registration("lamp-csf", ["switchOn"], endpoint="http://agent-a:4041"))
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    fading = await register(client, device_registration("lamp-fading", ["switchOn"], expiresAt=soon))
    listed = await client.get(f"{API}/csourceRegistrations",
                              params={"type": "Device", "csf": 'endpoint=="http://agent-a:4041"'})
    assert listed.status_code == 200 and [r["id"] for r in listed.json()] == [lamp], listed.text
    bad = await client.get(f"{API}/csourceRegistrations", params={"type": "Device", "csf": "endpoint>>"})
    assert bad.status_code == 400 and bad.json()["parameter"] == "csf"
    # The expiry is a clock condition: wait for the clock, not for the broker.
    await asyncio.sleep(max((datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    ids = [r["id"] for r in (await client.get(f"{API}/csourceRegistrations", params={"type": "Device"})).json()]
    assert lamp in ids and fading not in ids
    past = await client.post(f"{API}/csourceRegistrations",
                             json=device_registration("lamp-past", ["switchOn"], expiresAt="2020-01-01T00:00:00Z"))
    assert past.status_code == 400 and past.json().get("attribute") == "expiresAt", past.text
    # Filters it does not evaluate are refused, not ignored.
    geo = await client.get(f"{API}/csourceRegistrations", params={"type": "Device", "georel": "near;maxDistance==1"})
    assert geo.status_code == 400 and geo.json()["parameter"] == "georel"

"""Entity CRUD over HTTP against the real broker (GS CIM 009 5.6, 5.7)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx

FIXTURES = Path(__file__).parent / "fixtures"
API = "/ngsi-ld/v1"
LD = {"Content-Type": "application/ld+json"}


def air_quality(entity_id: str) -> dict:
    entity = json.loads((FIXTURES / "AirQualityObserved-normalized.jsonld").read_text())
    entity["id"] = entity_id
    return entity


def new_id() -> str:
    return f"urn:ngsi-ld:AirQualityObserved:test:{uuid.uuid4().hex[:8]}"


async def test_created_smart_data_model_entity_reads_back(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    created = await http.post(f"{API}/entities", content=json.dumps(air_quality(entity_id)),
                              headers={**LD, "NGSILD-Tenant": tenant})
    assert created.status_code == 201, created.text
    assert created.headers["Location"].endswith(entity_id)
    context = air_quality(entity_id)["@context"]
    context_url = context[0] if isinstance(context, list) else context
    link = f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    got = await http.get(f"{API}/entities/{entity_id}", headers={"NGSILD-Tenant": tenant, "Link": link})
    assert got.status_code == 200
    body = got.json()
    assert body["id"] == entity_id and body["type"] == "AirQualityObserved"
    assert body["no2"]["value"] == air_quality(entity_id)["no2"]["value"]


async def test_duplicate_create_is_409(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    headers = {**LD, "NGSILD-Tenant": tenant}
    await http.post(f"{API}/entities", content=json.dumps(air_quality(entity_id)), headers=headers)
    again = await http.post(f"{API}/entities", content=json.dumps(air_quality(entity_id)), headers=headers)
    assert again.status_code == 409
    assert again.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/AlreadyExists"


async def test_unknown_tenant_read_is_404(http: httpx.AsyncClient, tenant: str) -> None:
    got = await http.get(f"{API}/entities/{new_id()}", headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 404
    assert got.json()["type"].endswith("NonexistentTenant")


async def test_update_and_delete_change_what_is_read(http: httpx.AsyncClient) -> None:
    entity_id = new_id()
    sensor = {"id": entity_id, "type": "Sensor", "temp": {"type": "Property", "value": 1}}
    await http.post(f"{API}/entities", json=sensor)
    patched = await http.patch(f"{API}/entities/{entity_id}/attrs", json={"temp": {"type": "Property", "value": 5}})
    assert patched.status_code == 204
    got = await http.get(f"{API}/entities/{entity_id}", params={"options": "keyValues"})
    assert got.json()["temp"] == 5
    # v1.8 calls the keyValues representation "simplified"; both names work in options and format.
    for params in ({"options": "simplified"}, {"format": "simplified"}, {"format": "keyValues"}):
        simplified = await http.get(f"{API}/entities/{entity_id}", params=params)
        assert simplified.status_code == 200 and simplified.json()["temp"] == 5, (params, simplified.text)
    listed = await http.get(f"{API}/entities", params={"type": "Sensor", "id": entity_id, "format": "simplified"})
    assert listed.json()[0]["temp"] == 5
    assert (await http.delete(f"{API}/entities/{entity_id}")).status_code == 204
    assert (await http.get(f"{API}/entities/{entity_id}")).status_code == 404


async def test_concurrent_first_writes_create_the_tenant_once(http: httpx.AsyncClient, tenant: str) -> None:
    ids = [new_id() for _ in range(6)]
    headers = {**LD, "NGSILD-Tenant": tenant}
    answers = await asyncio.gather(*(
        http.post(f"{API}/entities", content=json.dumps(air_quality(entity_id)), headers=headers) for entity_id in ids
    ))
    assert [answer.status_code for answer in answers] == [201] * 6
    listed = await http.get(f"{API}/entities", params={"id": ",".join(ids), "count": "true"},
                            headers={"NGSILD-Tenant": tenant})
    assert listed.headers["NGSILD-Results-Count"] == "6"


async def test_integers_within_64_bits_read_back_exactly_larger_ones_and_history_as_doubles(
    http: httpx.AsyncClient, tenant: str
) -> None:
    entity_id = new_id()
    # Python's json writes big integers digit for digit.
    body = json.dumps({"id": entity_id, "type": "Counter",
                       "total": {"type": "Property", "value": 18446744073709551615},
                       "low": {"type": "Property", "value": -9223372036854775808},
                       "huge": {"type": "Property", "value": 123456789012345678901234567890}})
    created = await http.post(f"{API}/entities", content=body,
                              headers={"Content-Type": "application/json", "NGSILD-Tenant": tenant})
    assert created.status_code == 201, created.text
    got = await http.get(f"{API}/entities/{entity_id}", headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 200
    read = json.loads(got.text)  # Python's parser keeps big integers exact: what the broker sent is what is checked
    assert read["total"]["value"] == 18446744073709551615 and isinstance(read["total"]["value"], int)
    assert read["low"]["value"] == -9223372036854775808
    assert isinstance(read["huge"]["value"], float)
    assert read["huge"]["value"] == float(123456789012345678901234567890)
    # History keeps numbers as doubles (TRoE's `number` column, as Orion-LD).
    temporal = await http.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "total"},
                              headers={"NGSILD-Tenant": tenant})
    assert temporal.status_code == 200, temporal.text
    instances = json.loads(temporal.text)["total"]
    instance = instances[0] if isinstance(instances, list) else instances
    assert instance["value"] == float(18446744073709551615) and isinstance(instance["value"], float)


async def test_type_on_get_and_delete_by_id_must_match_the_entity(http: httpx.AsyncClient) -> None:
    # GS CIM 009 5.7.1 / 5.6.6: ?type= selects; the delete used to remove an entity of another type.
    entity_id = new_id()
    assert (await http.post(f"{API}/entities", json={"id": entity_id, "type": ["Room", "Space"]})).status_code == 201
    assert (await http.get(f"{API}/entities/{entity_id}", params={"type": "Office"})).status_code == 404
    assert (await http.get(f"{API}/entities/{entity_id}", params={"type": "Office|Space"})).status_code == 200
    assert (await http.delete(f"{API}/entities/{entity_id}", params={"type": "Office"})).status_code == 404
    assert (await http.get(f"{API}/entities/{entity_id}")).status_code == 200
    assert (await http.delete(f"{API}/entities/{entity_id}", params={"type": "Room;Space"})).status_code == 204
    assert (await http.get(f"{API}/entities/{entity_id}")).status_code == 404


async def test_location_of_a_created_entity_can_be_followed_whatever_its_id(http: httpx.AsyncClient) -> None:
    entity_id = f"urn:ngsi-ld:Sensor:{uuid.uuid4().hex[:6]}:a%20b#frag?x=1"
    created = await http.post(f"{API}/entities", json={"id": entity_id, "type": "Sensor"})
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert "#" not in location and "?" not in location
    followed = await http.get(location)
    assert followed.status_code == 200 and followed.json()["id"] == entity_id, followed.text


async def test_scope_and_type_change_by_every_write_that_gives_them(http: httpx.AsyncClient) -> None:
    # They were dropped (204, nothing changed) unless an attribute changed in the same write.
    entity_id = new_id()
    assert (await http.post(f"{API}/entities", json={"id": entity_id, "type": "Bin", "scope": "/A"})).status_code == 201

    async def scope_and_type() -> tuple[object, object]:
        body = (await http.get(f"{API}/entities/{entity_id}")).json()
        return body.get("scope"), body["type"]

    assert (await http.put(f"{API}/entities/{entity_id}", json={"type": "Container"})).status_code == 204
    assert await scope_and_type() == (None, "Container")  # a replace without scope has none
    assert (await http.post(f"{API}/entities/{entity_id}/attrs", json={"scope": "/B"})).status_code == 204
    assert (await http.post(f"{API}/entities/{entity_id}/attrs", json={"scope": ["/C"]})).status_code == 204
    assert await scope_and_type() == (["/B", "/C"], "Container")  # an append adds scopes (GS CIM 009 4.18)
    assert (await http.patch(f"{API}/entities/{entity_id}", json={"scope": "/D"})).status_code == 204
    assert await scope_and_type() == ("/D", "Container")  # a merge replaces them
    upserted = await http.post(f"{API}/entityOperations/upsert", params={"options": "update"},
                               json=[{"id": entity_id, "type": "Bin", "scope": "/E"}])
    assert upserted.status_code == 204, upserted.text
    assert await scope_and_type() == (["/D", "/E"], ["Container", "Bin"])
    assert (await http.patch(f"{API}/entities/{entity_id}", json={"scope": "urn:ngsi-ld:null"})).status_code == 204
    assert (await scope_and_type())[0] is None
    replaced = await http.post(f"{API}/entityOperations/upsert", json=[{"id": entity_id, "type": "Crate"}])
    assert replaced.status_code == 204 and await scope_and_type() == (None, "Crate")


async def test_projections_that_are_not_applied_are_refused_and_lang_q0_is_not_acceptable(
        http: httpx.AsyncClient) -> None:
    entity_id = new_id()
    entity = {"id": entity_id, "type": "Place", "a": {"type": "Property", "value": 1, "sub": {"value": 2}},
              "name": {"type": "LanguageProperty", "languageMap": {"de": "Platz", "en": "Square"}}}
    assert (await http.post(f"{API}/entities", json=entity)).status_code == 201
    # Nested projections used to answer {} and pick with omit to be taken silently.
    for params, parameter in (({"pick": "a{sub}"}, "pick"), ({"pick": "a", "omit": "name"}, "omit")):
        got = await http.get(f"{API}/entities/{entity_id}", params=params)
        assert got.status_code == 400 and got.json()["parameter"] == parameter, got.text
    # RFC 9110 12.4.2: a language with q=0 is not acceptable; the next one is taken.
    named = await http.get(f"{API}/entities/{entity_id}", params={"lang": "de;q=0,en;q=0.5", "attrs": "name"})
    assert named.json()["name"]["value"] == "Square"

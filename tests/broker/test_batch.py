"""Batch entity operations over HTTP (GS CIM 009 5.6.7-5.6.10, 5.6.20)."""

from __future__ import annotations

import json
import uuid

import httpx

API = "/ngsi-ld/v1"


def sensor(entity_id: str, value: float) -> dict:
    return {"id": entity_id, "type": "Sensor", "temperature": {"type": "Property", "value": value}}


def new_id() -> str:
    return f"urn:ngsi-ld:Sensor:{uuid.uuid4().hex[:10]}"


async def test_batch_create_returns_ids_and_reports_bad_entities(http: httpx.AsyncClient, tenant: str) -> None:
    good = [new_id(), new_id()]
    payload = [sensor(good[0], 1), {"id": "not a uri", "type": "Sensor"}, sensor(good[1], 2)]
    got = await http.post(f"{API}/entityOperations/create", json=payload, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 207, got.text
    body = got.json()
    assert body["success"] == good
    assert body["errors"][0]["entityId"] == "not a uri"
    assert body["errors"][0]["error"]["status"] == 400
    listed = await http.get(f"{API}/entities", params={"type": "Sensor", "count": "true"},
                            headers={"NGSILD-Tenant": tenant})
    assert listed.headers["NGSILD-Results-Count"] == "2"


async def test_batch_create_of_existing_entity_fails_only_that_one(http: httpx.AsyncClient, tenant: str) -> None:
    existing, fresh = new_id(), new_id()
    headers = {"NGSILD-Tenant": tenant}
    await http.post(f"{API}/entities", json=sensor(existing, 1), headers=headers)
    got = await http.post(f"{API}/entityOperations/create", json=[sensor(existing, 5), sensor(fresh, 6)],
                          headers=headers)
    assert got.status_code == 207
    assert got.json()["success"] == [fresh]
    assert got.json()["errors"][0]["error"]["type"].endswith("AlreadyExists")


async def test_upsert_applies_repeated_ids_in_order(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    headers = {"NGSILD-Tenant": tenant}
    got = await http.post(f"{API}/entityOperations/upsert", params={"options": "update"},
                          json=[sensor(entity_id, 1), sensor(entity_id, 2), sensor(entity_id, 3)], headers=headers)
    assert got.status_code in (201, 204), got.text
    read = await http.get(f"{API}/entities/{entity_id}", params={"options": "keyValues"}, headers=headers)
    assert read.json()["temperature"] == 3


async def test_batch_update_and_delete(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id, missing = new_id(), new_id()
    headers = {"NGSILD-Tenant": tenant}
    await http.post(f"{API}/entities", json=sensor(entity_id, 1), headers=headers)
    updated = await http.post(f"{API}/entityOperations/update", json=[sensor(entity_id, 9), sensor(missing, 1)],
                              headers=headers)
    assert updated.status_code == 207
    assert updated.json()["errors"][0]["entityId"] == missing
    read = await http.get(f"{API}/entities/{entity_id}", params={"options": "keyValues"}, headers=headers)
    assert read.json()["temperature"] == 9
    # GS CIM 009 5.6.9 runs Append Entity Attributes per entity: a new attribute is added (it was dropped),
    # and with noOverwrite the existing ones stay as they are.
    added = await http.post(f"{API}/entityOperations/update", headers=headers, json=[
        {"id": entity_id, "type": "Sensor", "humidity": {"type": "Property", "value": 55}}])
    assert added.status_code == 204, added.text
    kept = await http.post(f"{API}/entityOperations/update", params={"options": "noOverwrite"}, headers=headers,
                           json=[{**sensor(entity_id, 1), "battery": {"type": "Property", "value": 80}}])
    assert kept.status_code == 204, kept.text
    read = await http.get(f"{API}/entities/{entity_id}", params={"options": "keyValues"}, headers=headers)
    assert {k: read.json().get(k) for k in ("temperature", "humidity", "battery")} == {
        "temperature": 9, "humidity": 55, "battery": 80}
    deleted = await http.post(f"{API}/entityOperations/delete", json=[entity_id], headers=headers)
    assert deleted.status_code == 204
    assert (await http.get(f"{API}/entities/{entity_id}", headers=headers)).status_code == 404


async def test_jsonld_batch_expands_each_entity_with_its_own_context(http: httpx.AsyncClient, tenant: str) -> None:
    env = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
    weather = "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"
    air_id = f"urn:ngsi-ld:AirQualityObserved:{uuid.uuid4().hex[:8]}"
    weather_id = f"urn:ngsi-ld:WeatherObserved:{uuid.uuid4().hex[:8]}"
    payload = [
        {"id": air_id, "type": "AirQualityObserved", "no2": {"type": "Property", "value": 41}, "@context": [env]},
        {"id": weather_id, "type": "WeatherObserved", "temperature": {"type": "Property", "value": 7.5},
         "@context": [weather]},
    ]
    headers = {"NGSILD-Tenant": tenant, "Content-Type": "application/ld+json"}
    got = await http.post(f"{API}/entityOperations/upsert", content=json.dumps(payload), headers=headers)
    assert got.status_code == 201, got.text
    link = f'<{weather}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    found = await http.get(f"{API}/entities", params={"type": "WeatherObserved", "q": "temperature>7"},
                           headers={"NGSILD-Tenant": tenant, "Link": link})
    assert [e["id"] for e in found.json()] == [weather_id]
    missing = [{"id": air_id, "type": "AirQualityObserved", "@context": [env]}, {"id": weather_id, "type": "T"}]
    refused = await http.post(f"{API}/entityOperations/upsert", content=json.dumps(missing), headers=headers)
    assert refused.status_code == 400
    assert "entity 1" in refused.json()["detail"]

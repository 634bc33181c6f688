"""Type and attribute discovery over HTTP (GS CIM 009 5.7.5-5.7.8)."""

from __future__ import annotations

import httpx

API = "/ngsi-ld/v1"


async def seed(http: httpx.AsyncClient, tenant: str) -> None:
    entities = [
        {"id": "urn:ngsi-ld:Room:1", "type": "Room", "temperature": {"type": "Property", "value": 20}},
        {"id": "urn:ngsi-ld:Room:2", "type": "Room", "humidity": {"type": "Property", "value": 40}},
        {"id": "urn:ngsi-ld:Door:1", "type": "Door", "open": {"type": "Property", "value": True}},
    ]
    got = await http.post(f"{API}/entityOperations/create", json=entities, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 201, got.text


async def test_types_list_and_details(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    headers = {"NGSILD-Tenant": tenant}
    listed = (await http.get(f"{API}/types", headers=headers)).json()
    assert listed["type"] == "EntityTypeList"
    assert sorted(listed["typeList"]) == ["Door", "Room"]
    detailed = (await http.get(f"{API}/types", params={"details": "true"}, headers=headers)).json()
    room = next(t for t in detailed if t["typeName"] == "Room")
    assert room["type"] == "EntityType" and sorted(room["attributeNames"]) == ["humidity", "temperature"]


async def test_type_info_counts_entities(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    info = (await http.get(f"{API}/types/Room", headers={"NGSILD-Tenant": tenant})).json()
    assert info["type"] == "EntityTypeInfo" and info["entityCount"] == 2
    assert {a["attributeName"] for a in info["attributeDetails"]} == {"humidity", "temperature"}
    missing = await http.get(f"{API}/types/Nothing", headers={"NGSILD-Tenant": tenant})
    assert missing.status_code == 404


async def test_attributes_list_and_one_attribute(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    headers = {"NGSILD-Tenant": tenant}
    listed = (await http.get(f"{API}/attributes", headers=headers)).json()
    assert sorted(listed["attributeList"]) == ["humidity", "open", "temperature"]
    one = (await http.get(f"{API}/attributes/temperature", headers=headers)).json()
    assert one["type"] == "Attribute" and one["typeNames"] == ["Room"]
    # GS CIM 009 5.2.28: how many instances carry the name, and as which attribute types.
    assert one["attributeCount"] == 1 and one["attributeTypes"] == ["Property"]
    detailed = (await http.get(f"{API}/attributes", params={"details": "true"}, headers=headers)).json()
    assert {a["attributeName"]: a["attributeCount"] for a in detailed} == {"humidity": 1, "open": 1, "temperature": 1}


async def test_discovery_as_json_ld_carries_its_context(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    headers = {"NGSILD-Tenant": tenant, "Accept": "application/ld+json"}
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    for path, params in (("/types", {}), ("/types/Room", {}), ("/attributes", {}), ("/attributes/temperature", {}),
                         ("/types", {"details": "true"})):
        got = await http.get(f"{API}{path}", params=params, headers=headers)
        assert got.status_code == 200 and got.headers["content-type"].startswith("application/ld+json"), got.text
        bodies = got.json() if isinstance(got.json(), list) else [got.json()]
        assert all(body["@context"] == core for body in bodies), (path, got.text)

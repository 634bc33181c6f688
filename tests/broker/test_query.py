"""GET /entities with type, q, id, idPattern, paging and count (GS CIM 009 5.7.2)."""

from __future__ import annotations

import httpx

API = "/ngsi-ld/v1"


async def seed(http: httpx.AsyncClient, tenant: str) -> None:
    entities = [
        {"id": f"urn:ngsi-ld:Station:{n}", "type": "Station", "no2": {"type": "Property", "value": n * 10}}
        for n in range(1, 6)
    ]
    got = await http.post(f"{API}/entityOperations/create", json=entities, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 201, got.text


async def test_type_and_q_select_matching_entities(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    got = await http.get(f"{API}/entities", params={"type": "Station", "q": "no2>25", "options": "keyValues"},
                         headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 200, got.text
    assert sorted(e["no2"] for e in got.json()) == [30, 40, 50]


async def test_paging_and_count(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    got = await http.get(f"{API}/entities", params={"type": "Station", "limit": 2, "offset": 1, "count": "true"},
                         headers={"NGSILD-Tenant": tenant})
    assert len(got.json()) == 2
    assert got.headers["NGSILD-Results-Count"] == "5"
    only_count = await http.get(f"{API}/entities", params={"type": "Station", "limit": 0, "count": "true"},
                                headers={"NGSILD-Tenant": tenant})
    assert only_count.json() == [] and only_count.headers["NGSILD-Results-Count"] == "5"


async def test_id_pattern_and_geojson(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    got = await http.get(f"{API}/entities", params={"idPattern": "Station:[12]$"},
                         headers={"NGSILD-Tenant": tenant, "Accept": "application/geo+json"})
    assert got.headers["content-type"].startswith("application/geo+json")
    assert {f["id"] for f in got.json()["features"]} == {"urn:ngsi-ld:Station:1", "urn:ngsi-ld:Station:2"}


async def test_query_without_filter_is_400(http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{API}/entities")).status_code == 400


async def test_invalid_q_is_400_naming_q(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    got = await http.get(f"{API}/entities", params={"type": "Station", "q": "no2>>"},
                         headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 400
    assert "q" in got.text


async def seed_places(http: httpx.AsyncClient, tenant: str) -> None:
    places = [("a", [-3.700, 40.420]), ("b", [-3.705, 40.421]), ("c", [-3.800, 40.500])]
    entities = [{"id": f"urn:ngsi-ld:Place:{name}", "type": "Place",
                 "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}}
                for name, point in places]
    got = await http.post(f"{API}/entityOperations/create", json=entities, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 201, got.text


async def test_geojson_features_keep_their_geometry_under_attrs_and_carry_the_context(
        http: httpx.AsyncClient, tenant: str) -> None:
    await seed_places(http, tenant)
    await http.post(f"{API}/entities/urn:ngsi-ld:Place:a/attrs", json={"name": {"type": "Property", "value": "A"}},
                    headers={"NGSILD-Tenant": tenant})
    headers = {"NGSILD-Tenant": tenant, "Accept": "application/geo+json"}
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    listed = await http.get(f"{API}/entities", params={"type": "Place", "attrs": "name"}, headers=headers)
    assert listed.status_code == 200, listed.text
    features = {feature["id"]: feature for feature in listed.json()["features"]}
    # GS CIM 009 6.3.15: the geometry is the location's value even when attrs leaves it out of properties.
    assert features["urn:ngsi-ld:Place:a"]["geometry"] == {"type": "Point", "coordinates": [-3.7, 40.42]}
    assert features["urn:ngsi-ld:Place:a"]["properties"] == {"type": "Place", "name": {"type": "Property",
                                                                                      "value": "A"}}
    assert all(feature["@context"] == core for feature in features.values())
    one = await http.get(f"{API}/entities/urn:ngsi-ld:Place:b", params={"attrs": "name"}, headers=headers)
    assert one.json()["geometry"]["coordinates"] == [-3.705, 40.421] and one.json()["@context"] == core


async def test_near_returns_close_entities_nearest_first(http: httpx.AsyncClient, tenant: str) -> None:
    await seed_places(http, tenant)
    got = await http.get(f"{API}/entities", headers={"NGSILD-Tenant": tenant}, params={
        "type": "Place", "georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": "[-3.704,40.421]"})
    assert got.status_code == 200, got.text
    assert [e["id"] for e in got.json()] == ["urn:ngsi-ld:Place:b", "urn:ngsi-ld:Place:a"]


async def test_within_polygon_via_post_query(http: httpx.AsyncClient, tenant: str) -> None:
    await seed_places(http, tenant)
    polygon = [[[-3.71, 40.41], [-3.69, 40.41], [-3.69, 40.43], [-3.71, 40.43], [-3.71, 40.41]]]
    got = await http.post(f"{API}/entityOperations/query", params={"count": "true"}, headers={"NGSILD-Tenant": tenant},
                          json={"type": "Query", "entities": [{"type": "Place"}],
                                "geoQ": {"georel": "within", "geometry": "Polygon", "coordinates": polygon}})
    assert got.status_code == 200, got.text
    assert sorted(e["id"] for e in got.json()) == ["urn:ngsi-ld:Place:a", "urn:ngsi-ld:Place:b"]
    assert got.headers["NGSILD-Results-Count"] == "2"


async def test_post_query_matches_any_of_its_entity_selectors(http: httpx.AsyncClient, tenant: str) -> None:
    await seed(http, tenant)
    await seed_places(http, tenant)
    headers = {"NGSILD-Tenant": tenant}
    query = {"type": "Query", "entities": [{"type": "Place", "idPattern": ":[ab]$"}, {"id": "urn:ngsi-ld:Station:3",
                                                                                       "type": "Station"}]}
    got = await http.post(f"{API}/entityOperations/query", params={"count": "true"}, headers=headers, json=query)
    assert got.status_code == 200, got.text
    assert sorted(e["id"] for e in got.json()) == [
        "urn:ngsi-ld:Place:a", "urn:ngsi-ld:Place:b", "urn:ngsi-ld:Station:3"]
    assert got.headers["NGSILD-Results-Count"] == "3"
    # The other terms of the Query apply to every selector's entities.
    with_q = await http.post(f"{API}/entityOperations/query", headers=headers, json={
        "type": "Query", "entities": [{"type": "Station", "id": "urn:ngsi-ld:Station:1"}, {"type": "Station",
                                                                                          "idPattern": ":[45]$"}],
        "q": "no2>=40"})
    assert sorted(e["id"] for e in with_q.json()) == ["urn:ngsi-ld:Station:4", "urn:ngsi-ld:Station:5"]
    bad = await http.post(f"{API}/entityOperations/query", headers=headers,
                          json={"type": "Query", "entities": [{"type": "Station"}, {"type": ["Place"]}]})
    assert bad.status_code == 400 and "entities[1].type" in bad.json()["detail"]


async def test_invalid_geometry_in_query_is_400_naming_it(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={
        "type": "Place", "georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "[200"})
    assert got.status_code == 400
    assert got.json().get("parameter") == "coordinates" or "coordinates" in got.json()["detail"]


async def test_scope_q_selects_by_scope_hierarchy(http: httpx.AsyncClient, tenant: str) -> None:
    entities = [
        {"id": "urn:ngsi-ld:Bin:1", "type": "Bin", "scope": "/Madrid/Centro"},
        {"id": "urn:ngsi-ld:Bin:2", "type": "Bin", "scope": ["/Madrid/Retiro/Norte"]},
        {"id": "urn:ngsi-ld:Bin:3", "type": "Bin", "scope": "/Oslo"},
    ]
    headers = {"NGSILD-Tenant": tenant}
    assert (await http.post(f"{API}/entityOperations/create", json=entities, headers=headers)).status_code == 201

    async def ids(scope_q: str) -> list[str]:
        got = await http.get(f"{API}/entities", params={"type": "Bin", "scopeQ": scope_q}, headers=headers)
        assert got.status_code == 200, got.text
        return sorted(e["id"] for e in got.json())

    assert await ids("/Madrid/#") == ["urn:ngsi-ld:Bin:1", "urn:ngsi-ld:Bin:2"]
    assert await ids("/Madrid/+") == ["urn:ngsi-ld:Bin:1"]
    assert await ids("/Oslo,/Madrid/Centro") == ["urn:ngsi-ld:Bin:1", "urn:ngsi-ld:Bin:3"]
    bad = await http.get(f"{API}/entities", params={"type": "Bin", "scopeQ": "Madrid"}, headers=headers)
    assert bad.status_code == 400


async def test_expand_values_compares_vocab_terms_as_the_context_expands_them(http: httpx.AsyncClient,
                                                                              tenant: str) -> None:
    # As Orion-LD and the FIWARE VocabularyProperty tutorial do: q on a vocab with expandValues=<attribute>.
    context = {"@context": {"barn": "https://wiki.openstreetmap.org/wiki/Tag:building%3Dbarn",
                            "category": "https://uri.fiware.org/ns/dataModels#category"}}
    url = (await http.post(f"{API}/jsonldContexts", json=context)).headers["Location"]
    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    headers = {"NGSILD-Tenant": tenant, "Link": link}
    barn = {"id": "urn:ngsi-ld:Building:barn002", "type": "Building",
            "category": {"type": "VocabularyProperty", "vocab": "barn"}}
    assert (await http.post(f"{API}/entities", json=barn, headers=headers)).status_code == 201
    query = {"type": "Building", "q": 'category=="barn"'}
    assert (await http.get(f"{API}/entities", params=query, headers=headers)).json() == []
    found = await http.get(f"{API}/entities", params={**query, "expandValues": "category"}, headers=headers)
    assert found.status_code == 200 and [e["id"] for e in found.json()] == [barn["id"]], found.text
    assert found.json()[0]["category"]["vocab"] == "barn"

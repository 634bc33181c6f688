"""Bad input gets a precise 4xx ProblemDetails, never a 500."""

from __future__ import annotations

import httpx

API = "/ngsi-ld/v1"


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", content=b"{not json", headers={"Content-Type": "application/json"})
    assert got.status_code == 400


async def test_wrong_content_type_is_415(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", content=b"{}", headers={"Content-Type": "text/plain"})
    assert got.status_code == 415


async def test_entity_id_must_be_a_uri(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", json={"id": "not a uri", "type": "T"})
    assert got.status_code == 400


async def test_update_of_missing_entity_is_404(http: httpx.AsyncClient) -> None:
    got = await http.patch(f"{API}/entities/urn:ngsi-ld:T:missing/attrs", json={"a": {"type": "Property", "value": 1}})
    assert got.status_code == 404


async def test_limit_over_maximum_is_403(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={"type": "T", "limit": 5000})
    assert got.status_code == 403
    assert got.json()["type"].endswith("TooManyResults")


async def test_payload_over_limit_is_413(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", content=b"[" + b"1," * 600_000 + b"1]",
                          headers={"Content-Type": "application/json"})
    assert got.status_code == 413


async def test_context_in_body_with_plain_json_is_400(http: httpx.AsyncClient) -> None:
    entity = {"id": "urn:ngsi-ld:T:ctx", "type": "T", "@context": "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"}
    got = await http.post(f"{API}/entities", json=entity)
    assert got.status_code == 400


async def test_link_header_with_json_ld_is_400(http: httpx.AsyncClient) -> None:
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    entity = {"id": "urn:ngsi-ld:T:link", "type": "T", "@context": core}
    got = await http.post(f"{API}/entities", json=entity, headers={
        "Content-Type": "application/ld+json",
        "Link": f'<{core}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'})
    assert got.status_code == 400


async def test_unsupported_accept_is_406(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={"type": "T"}, headers={"Accept": "text/csv"})
    assert got.status_code == 406


async def test_missing_type_is_400(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", json={"id": "urn:ngsi-ld:T:notype"})
    assert got.status_code == 400


async def test_reserved_attribute_name_is_400(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", json={"id": "urn:ngsi-ld:T:reserved", "type": "T",
                                                   "observedAt": {"type": "Property", "value": 1}})
    assert got.status_code == 400


async def test_invalid_geometry_is_400_naming_the_attribute(http: httpx.AsyncClient) -> None:
    entity = {"id": "urn:ngsi-ld:T:geo", "type": "T",
              "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": ["x", 1]}}}
    got = await http.post(f"{API}/entities", json=entity)
    assert got.status_code == 400
    assert "location" in got.text


async def test_invalid_q_is_400(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={"type": "T", "q": "temperature=="})
    assert got.status_code == 400


async def test_invalid_tenant_name_is_400(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={"type": "T"}, headers={"NGSILD-Tenant": "bad tenant!"})
    assert got.status_code == 400


async def test_non_integer_limit_is_400_naming_limit(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities", params={"type": "T", "limit": "many"})
    assert got.status_code == 400
    assert "limit" in got.json()["detail"] and got.json()["parameter"] == "limit"
    negative = await http.get(f"{API}/entities", params={"type": "T", "offset": -1})
    assert negative.status_code == 400 and negative.json()["parameter"] == "offset"


async def test_a_method_the_path_does_not_allow_is_405_naming_the_allowed_ones(http: httpx.AsyncClient) -> None:
    got = await http.delete(f"{API}/entities")
    assert got.status_code == 405
    assert got.json()["type"].endswith("MethodNotAllowed")
    assert set(got.headers["Allow"].split(", ")) == {"GET", "POST"}


async def test_trailing_slash_is_tolerated(http: httpx.AsyncClient) -> None:
    got = await http.get(f"{API}/entities/", params={"type": "T"})
    assert got.status_code == 200


async def test_batch_payload_that_is_not_an_array_is_400(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entityOperations/create", json={"id": "urn:ngsi-ld:T:1", "type": "T"})
    assert got.status_code == 400


async def test_nul_characters_are_400_not_500(http: httpx.AsyncClient) -> None:
    in_query = await http.get(f"{API}/entities", params={"type": "T", "q": 'x=="\x00"'})
    assert in_query.status_code == 400
    in_body = await http.post(f"{API}/entities", content=b'{"id":"urn:a:nul","type":"T","x":"a\\u0000b"}',
                              headers={"Content-Type": "application/json"})
    assert in_body.status_code == 400


# PostgreSQL cannot index these lengths: they failed at INSERT with a 500 (ngsi/forms.py MAX_ID_BYTES).
TOO_LONG_ID = "urn:ngsi-ld:Station:" + "x" * 1100
TOO_LONG_INSTANCE_ID = "urn:ngsi-ld:instance:" + "ab" * 3000


def assert_too_long(got: httpx.Response, field: str, limit: int) -> None:
    assert got.status_code == 400, got.text
    problem = got.json()
    assert problem["type"].endswith("BadRequestData")
    assert field in problem["detail"] and f"at most {limit} bytes" in problem["detail"], problem


async def test_an_over_long_entity_id_is_400_naming_the_limit(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/entities", json={"id": TOO_LONG_ID, "type": "Station"})
    assert_too_long(got, "entity id", 1024)
    assert (await http.post(f"{API}/entities", json={"id": TOO_LONG_ID[:1024], "type": "Station"})).status_code == 201


async def test_an_over_long_instance_id_or_dataset_id_is_400(http: httpx.AsyncClient) -> None:
    entity_id = "urn:ngsi-ld:Station:long-instance-ids"
    no2 = {"type": "Property", "value": 1, "instanceId": TOO_LONG_INSTANCE_ID}
    assert_too_long(await http.post(f"{API}/entities", json={"id": entity_id, "type": "Station", "no2": no2}),
                    "instanceId", 2048)
    assert (await http.post(f"{API}/entities", json={"id": entity_id, "type": "Station"})).status_code == 201
    # The attribute PATCH and append refuse it too, and the entity is left as it was.
    assert_too_long(await http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": no2}), "instanceId", 2048)
    dataset = {"type": "Property", "value": 1, "datasetId": "urn:ngsi-ld:Dataset:" + "d" * 1100}
    assert_too_long(await http.post(f"{API}/entities/{entity_id}/attrs", json={"no2": dataset}), "datasetId", 1024)
    assert "no2" not in (await http.get(f"{API}/entities/{entity_id}")).json()


async def test_an_over_long_id_in_a_batch_is_an_error_entry_of_its_own(http: httpx.AsyncClient) -> None:
    good = "urn:ngsi-ld:Station:batch-beside-a-long-one"
    bad_instance = {"id": "urn:ngsi-ld:Station:batch-long-instance", "type": "Station",
                    "no2": {"type": "Property", "value": 1, "instanceId": TOO_LONG_INSTANCE_ID}}
    got = await http.post(f"{API}/entityOperations/upsert",
                          json=[{"id": good, "type": "Station"}, {"id": TOO_LONG_ID, "type": "Station"}, bad_instance])
    assert got.status_code == 207, got.text
    result = got.json()
    assert result["success"] == [good]
    errors = {error["entityId"]: error["error"] for error in result["errors"]}
    assert set(errors) == {TOO_LONG_ID, bad_instance["id"]}
    assert all(error["status"] == 400 and "at most" in error["detail"] for error in errors.values())
    long_delete = await http.post(f"{API}/entityOperations/delete", json=[TOO_LONG_ID])
    assert long_delete.status_code == 207 and "at most 1024 bytes" in long_delete.text


def nested(levels: int) -> object:
    """A value of `levels` nested arrays around 1."""
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_values_nested_deeper_than_the_limit_are_400_and_the_deepest_allowed_reads_back(
        http: httpx.AsyncClient) -> None:
    # Nesting past what the storage and the answers can hold was a 500 (orjson writes at most 255 levels).
    entity_id = "urn:ngsi-ld:Deep:values"
    deepest = {"id": entity_id, "type": "Deep", "a": {"type": "Property", "value": nested(100)}}
    assert (await http.post(f"{API}/entities", json=deepest)).status_code == 201
    as_geojson = await http.get(f"{API}/entities", params={"type": "Deep"}, headers={"Accept": "application/geo+json"})
    assert as_geojson.status_code == 200 and as_geojson.json()["features"][0]["properties"]["a"]["value"] == nested(100)
    too_deep = {"type": "Property", "value": nested(101)}
    writes = [
        http.post(f"{API}/entities", json={"id": "urn:ngsi-ld:Deep:other", "type": "Deep", "a": too_deep}),
        http.patch(f"{API}/entities/{entity_id}/attrs", json={"a": too_deep}),
        http.patch(f"{API}/entities/{entity_id}", json={"a": {"type": "Property", "value": 1, "s": too_deep}}),
        http.post(f"{API}/entities/{entity_id}/attrs",
                  json={"b": {"type": "JsonProperty", "json": {"x": nested(100)}}}),
        http.post(f"{API}/entities/{entity_id}/attrs", json={"b": {"type": "Property", "value": 1,
                                                                    "previousValue": nested(101)}}),
    ]
    for write in writes:
        got = await write
        assert got.status_code == 400, got.text
        assert "deeper than 100 levels" in got.json()["detail"]
    in_batch = await http.post(f"{API}/entityOperations/upsert", json=[
        {"id": "urn:ngsi-ld:Deep:batch-ok", "type": "Deep"},
        {"id": "urn:ngsi-ld:Deep:batch-deep", "type": "Deep", "a": too_deep},
    ])
    assert in_batch.status_code == 207 and in_batch.json()["success"] == ["urn:ngsi-ld:Deep:batch-ok"]
    assert (await http.get(f"{API}/entities/{entity_id}")).json()["a"]["value"] == nested(100)


async def test_sub_attributes_nested_deeper_than_the_limit_are_400(http: httpx.AsyncClient) -> None:
    def chain(levels: int) -> dict[str, object]:
        attribute: dict[str, object] = {"type": "Property", "value": 1}
        for _ in range(levels):
            attribute = {"type": "Property", "value": 1, "s": attribute}
        return attribute

    allowed = await http.post(f"{API}/entities", json={"id": "urn:ngsi-ld:Deep:subs", "type": "Deep", "a": chain(20)})
    assert allowed.status_code == 201, allowed.text
    refused = await http.post(f"{API}/entities", json={"id": "urn:ngsi-ld:Deep:subs2", "type": "Deep", "a": chain(21)})
    assert refused.status_code == 400 and "deeper than 20 levels" in refused.json()["detail"]

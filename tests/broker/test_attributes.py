"""Attribute-level operations on one entity (GS CIM 009 5.6.2-5.6.5, 5.6.17-5.6.19) and their history."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
import psycopg

from tests.broker.test_group_commit import tenant_database_url

API = "/ngsi-ld/v1"


def new_id() -> str:
    return f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:10]}"


async def create(http: httpx.AsyncClient, tenant: str, entity_id: str) -> None:
    entity = {
        "id": entity_id, "type": "Station",
        "no2": {"type": "Property", "value": 10, "unitCode": "GQ",
                "reliability": {"type": "Property", "value": 0.9}},
        "name": {"type": "Property", "value": "Central"},
    }  # fmt: skip
    got = await http.post(f"{API}/entities", json=entity, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 201, got.text


async def read(http: httpx.AsyncClient, tenant: str, entity_id: str, **params: str) -> dict:
    got = await http.get(f"{API}/entities/{entity_id}", params=params, headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 200, got.text
    return got.json()


async def test_append_with_no_overwrite_reports_existing_attributes(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    got = await http.post(f"{API}/entities/{entity_id}/attrs", params={"options": "noOverwrite"},
                          json={"no2": {"type": "Property", "value": 99}, "pm10": {"type": "Property", "value": 5}},
                          headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 207
    assert got.json()["notUpdated"][0]["attributeName"] == "no2"
    typo = await http.post(f"{API}/entities/{entity_id}/attrs", params={"options": "noOverwrit"},
                           json={"no2": {"type": "Property", "value": 99}}, headers={"NGSILD-Tenant": tenant})
    assert typo.status_code == 400 and typo.json()["parameter"] == "options"
    assert (await read(http, tenant, entity_id, options="keyValues"))["no2"] == 10
    body = await read(http, tenant, entity_id, options="keyValues")
    assert body["no2"] == 10 and body["pm10"] == 5


async def test_update_attrs_reports_missing_ones(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    got = await http.patch(f"{API}/entities/{entity_id}/attrs",
                           json={"no2": {"type": "Property", "value": 11}, "o3": {"type": "Property", "value": 1}},
                           headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 207
    assert [n["attributeName"] for n in got.json()["notUpdated"]] == ["o3"]
    assert (await read(http, tenant, entity_id, options="keyValues"))["no2"] == 11


async def test_merge_patch_deletes_with_ngsi_ld_null(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    got = await http.patch(f"{API}/entities/{entity_id}",
                           json={"name": "urn:ngsi-ld:null", "no2": {"value": 12}},
                           headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 204, got.text
    body = await read(http, tenant, entity_id)
    assert "name" not in body
    assert body["no2"]["value"] == 12 and body["no2"]["unitCode"] == "GQ"
    assert body["no2"]["reliability"]["value"] == 0.9


async def test_merge_changes_only_the_members_a_fragment_gives(http: httpx.AsyncClient, tenant: str) -> None:
    # A fragment without a value used to become the attribute's value ({"value": {"unitCode": ...}}).
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    address = {"type": "Property", "value": {"streetAddress": "Rue 1", "postalCode": "1000", "locality": "X"}}
    assert (await http.post(f"{API}/entities/{entity_id}/attrs", json={"address": address},
                            headers=headers)).status_code == 204
    merged = await http.patch(f"{API}/entities/{entity_id}", headers=headers, json={
        "no2": {"unitCode": "GP", "reliability": {"value": 0.5}},
        "address": {"type": "Property", "value": {"postalCode": "2000", "locality": "urn:ngsi-ld:null"}},
    })
    assert merged.status_code == 204, merged.text
    body = await read(http, tenant, entity_id)
    assert body["no2"] == {"type": "Property", "value": 10, "unitCode": "GP",
                           "reliability": {"type": "Property", "value": 0.5}}
    # GS CIM 009 5.5.12: a merge goes into JSON object values too; the NGSI-LD Null removes a key.
    assert body["address"]["value"] == {"streetAddress": "Rue 1", "postalCode": "2000"}
    removed = await http.patch(f"{API}/entities/{entity_id}", headers=headers,
                               json={"no2": {"reliability": "urn:ngsi-ld:null", "unitCode": "urn:ngsi-ld:null"}})
    assert removed.status_code == 204, removed.text
    assert (await read(http, tenant, entity_id))["no2"] == {"type": "Property", "value": 10}
    # A fragment that changes members cannot make an attribute that is not there.
    missing = await http.patch(f"{API}/entities/{entity_id}", headers=headers, json={"o3": {"unitCode": "GQ"}})
    assert missing.status_code == 400 and "needs its value" in missing.json()["detail"]
    assert "o3" not in await read(http, tenant, entity_id)


async def test_an_attribute_type_never_changes_by_merge_or_partial_update(http: httpx.AsyncClient,
                                                                          tenant: str) -> None:
    # It used to leave a Property holding `object` (or a Relationship holding `value`).
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    relationship = {"type": "Relationship", "object": "urn:ngsi-ld:Station:other"}
    attempts = [
        http.patch(f"{API}/entities/{entity_id}/attrs/no2", json=relationship, headers=headers),
        http.patch(f"{API}/entities/{entity_id}", json={"no2": relationship}, headers=headers),
        http.post(f"{API}/entityOperations/merge", json=[{"id": entity_id, "type": "Station", "no2": relationship}],
                  headers=headers),
    ]
    answers = [await attempt for attempt in attempts]
    assert [answer.status_code for answer in answers[:2]] == [400, 400], [a.text for a in answers]
    assert "cannot change to Relationship" in answers[0].json()["detail"]
    assert answers[2].status_code == 207 and "cannot change" in answers[2].json()["errors"][0]["error"]["detail"]
    assert (await read(http, tenant, entity_id))["no2"]["value"] == 10


async def test_ngsi_ld_null_removes_members_in_partial_updates_and_is_refused_elsewhere(
        http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    null = "urn:ngsi-ld:null"
    # GS CIM 009 5.5.4: anywhere but a merge or partial update fragment it is BadRequestData (it was stored).
    refused = [
        http.post(f"{API}/entities", headers=headers,
                  json={"id": new_id(), "type": "Station", "a": {"type": "Property", "value": null}}),
        http.post(f"{API}/entities/{entity_id}/attrs", json={"c": null}, headers=headers),
        http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": null}, headers=headers),
        http.post(f"{API}/entityOperations/upsert", headers=headers, json=[
            {"id": entity_id, "type": "Station", "no2": {"type": "Property", "value": 1, "unitCode": null}}]),
        # A partial update changes an attribute, it does not remove it.
        http.patch(f"{API}/entities/{entity_id}/attrs/no2", json={"value": null}, headers=headers),
    ]
    for attempt in refused:
        answer = await attempt
        assert answer.status_code in (400, 207), answer.text
        detail = answer.json()["errors"][0]["error"]["detail"] if answer.status_code == 207 else answer.json()["detail"]
        assert null in detail or "cannot remove" in detail, detail
    assert (await read(http, tenant, entity_id))["no2"]["unitCode"] == "GQ"
    # In a partial attribute update it removes the member it is given for.
    patched = await http.patch(f"{API}/entities/{entity_id}/attrs/no2", json={"unitCode": null}, headers=headers)
    assert patched.status_code == 204, patched.text
    assert "unitCode" not in (await read(http, tenant, entity_id))["no2"]
    # One language of a LanguageProperty, then the whole attribute ({"@none": null}, GS CIM 009 4.6.5).
    street = {"type": "LanguageProperty", "languageMap": {"fr": "Grand Place", "nl": "Grote Markt"}}
    assert (await http.post(f"{API}/entities/{entity_id}/attrs", json={"street": street},
                            headers=headers)).status_code == 204
    merged = await http.patch(f"{API}/entities/{entity_id}", headers=headers,
                              json={"street": {"type": "LanguageProperty", "languageMap": {"nl": null, "de": "Markt"}}})
    assert merged.status_code == 204, merged.text
    assert (await read(http, tenant, entity_id))["street"]["languageMap"] == {"fr": "Grand Place", "de": "Markt"}
    gone = await http.patch(f"{API}/entities/{entity_id}", headers=headers,
                            json={"street": {"type": "LanguageProperty", "languageMap": {"@none": null}}})
    assert gone.status_code == 204 and "street" not in await read(http, tenant, entity_id)


async def test_partial_attribute_update_and_replace(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    patched = await http.patch(f"{API}/entities/{entity_id}/attrs/no2", json={"value": 33}, headers=headers)
    assert patched.status_code == 204, patched.text
    assert (await read(http, tenant, entity_id))["no2"]["unitCode"] == "GQ"
    replaced = await http.put(f"{API}/entities/{entity_id}/attrs/no2",
                              json={"type": "Property", "value": 44}, headers=headers)
    assert replaced.status_code == 204, replaced.text
    no2 = (await read(http, tenant, entity_id))["no2"]
    assert no2 == {"type": "Property", "value": 44}
    missing = await http.patch(f"{API}/entities/{entity_id}/attrs/o3", json={"value": 1}, headers=headers)
    assert missing.status_code == 404


async def test_multi_attribute_delete_by_dataset_id(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    extra = {"no2": [{"type": "Property", "value": 1, "datasetId": "urn:ngsi-ld:Dataset:a"},
                     {"type": "Property", "value": 2, "datasetId": "urn:ngsi-ld:Dataset:b"}]}
    assert (await http.post(f"{API}/entities/{entity_id}/attrs", json=extra, headers=headers)).status_code == 204
    assert len((await read(http, tenant, entity_id))["no2"]) == 3
    got = await http.delete(f"{API}/entities/{entity_id}/attrs/no2",
                            params={"datasetId": "urn:ngsi-ld:Dataset:a"}, headers=headers)
    assert got.status_code == 204
    assert len((await read(http, tenant, entity_id))["no2"]) == 2
    got = await http.delete(f"{API}/entities/{entity_id}/attrs/no2", params={"deleteAll": "true"}, headers=headers)
    assert got.status_code == 204
    assert "no2" not in await read(http, tenant, entity_id)


async def test_replace_entity_and_sys_attrs(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    replacement = {"type": "Station", "o3": {"type": "Property", "value": 3}}
    got = await http.put(f"{API}/entities/{entity_id}", json=replacement, headers=headers)
    assert got.status_code == 204, got.text
    body = await read(http, tenant, entity_id, options="sysAttrs")
    assert set(body) >= {"id", "type", "o3", "createdAt", "modifiedAt"} and "no2" not in body
    assert body["createdAt"] <= body["modifiedAt"]


async def test_post_query_selects_like_get(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    got = await http.post(f"{API}/entityOperations/query", params={"options": "keyValues"},
                          json={"type": "Query", "entities": [{"type": "Station"}], "q": "no2==10"},
                          headers={"NGSILD-Tenant": tenant})
    assert got.status_code == 200, got.text
    assert [e["id"] for e in got.json()] == [entity_id]


async def test_every_write_is_in_the_history(http: httpx.AsyncClient, tenant: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    for value in (20, 30):
        await http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": {"type": "Property", "value": value}},
                         headers=headers)
    got = await http.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "no2"}, headers=headers)
    assert got.status_code == 200, got.text
    values = [instance["value"] for instance in got.json()["no2"]]
    assert sorted(values) == [10, 20, 30]


async def test_append_adds_the_fragments_entity_types_and_refuses_id_or_type_as_attributes(
        http: httpx.AsyncClient, tenant: str, postgres_url: str) -> None:
    entity_id = new_id()
    await create(http, tenant, entity_id)
    headers = {"NGSILD-Tenant": tenant}
    # GS CIM 009 5.6.3.4: types of the fragment that the entity lacks are added (they were ignored).
    appended = await http.post(f"{API}/entities/{entity_id}/attrs", headers=headers,
                               json={"type": "Sensor", "pm10": {"type": "Property", "value": 3}})
    assert appended.status_code == 204, appended.text
    assert (await read(http, tenant, entity_id))["type"] == ["Station", "Sensor"]
    merged = await http.patch(f"{API}/entities/{entity_id}", headers=headers, json={"type": "Device"})
    assert merged.status_code == 204, merged.text
    # A new type is no attribute: the history got no deletion row for an attribute called "type".
    async with await psycopg.AsyncConnection.connect(await tenant_database_url(postgres_url, tenant)) as conn:
        rows = await (await conn.execute("SELECT id, opMode::text FROM attributes WHERE entityId = %s ORDER BY ts",
                                         (entity_id,))).fetchall()
    assert ("type", "Delete") not in rows and len(rows) == 3, rows  # no2 and name created, pm10 appended
    for member in ("id", "type"):
        refused = await http.post(f"{API}/entities/{entity_id}/attrs", headers=headers,
                                  json={member: {"type": "Property", "value": 1}})
        assert refused.status_code == 400 and f"'{member}' is the entity's {member}" in refused.json()["detail"]


async def test_merge_adds_an_attribute_whose_value_is_an_array_of_arrays(http: httpx.AsyncClient, tenant: str) -> None:
    # Found by the fuzz run: an array value whose first item is an array was taken for sub-attribute instances.
    entity_id = new_id()
    await create(http, tenant, entity_id)
    value = [[], [None, [False]], {}]
    merged = await http.patch(f"{API}/entities/{entity_id}", json={"matrix": value}, headers={"NGSILD-Tenant": tenant})
    assert merged.status_code == 204, merged.text
    assert (await read(http, tenant, entity_id))["matrix"]["value"] == value


async def test_an_attribute_named_by_its_full_iri_in_the_path(http: httpx.AsyncClient, tenant: str) -> None:
    # The percent-encoded slashes of an IRI were decoded before routing: the PATCH went to the merge of an
    # entity called "<id>/attrs/https://..." and the DELETE to the deletion of such an entity.
    entity_id = new_id()
    headers = {"NGSILD-Tenant": tenant}
    iri = "https://example.org/vocab/temperature"
    created = await http.post(f"{API}/entities", headers=headers,
                              json={"id": entity_id, "type": "Station", iri: {"type": "Property", "value": 20}})
    assert created.status_code == 201, created.text
    path = f"{API}/entities/{entity_id}/attrs/{quote(iri, safe='')}"
    patched = await http.patch(path, json={"value": 55}, headers=headers)
    assert patched.status_code == 204, patched.text
    assert (await read(http, tenant, entity_id))[iri]["value"] == 55
    assert (await http.delete(path, headers=headers)).status_code == 204
    assert iri not in await read(http, tenant, entity_id)


async def test_a_write_to_one_dataset_adds_history_for_that_dataset_only(http: httpx.AsyncClient, tenant: str,
                                                                         postgres_url: str) -> None:
    # Every write re-recorded the attribute's other datasets: duplicate rows that doubled sums and counts.
    entity_id = new_id()
    headers = {"NGSILD-Tenant": tenant}
    dataset = "urn:ngsi-ld:Dataset:a"
    created = await http.post(f"{API}/entities", headers=headers, json={
        "id": entity_id, "type": "Station",
        "p": [{"type": "Property", "value": 1, "datasetId": dataset}, {"type": "Property", "value": 2}]})
    assert created.status_code == 201, created.text
    writes = [
        http.patch(f"{API}/entities/{entity_id}/attrs", headers=headers,
                   json={"p": {"type": "Property", "value": 3, "datasetId": dataset}}),
        http.patch(f"{API}/entities/{entity_id}/attrs/p", headers=headers, json={"value": 4, "datasetId": dataset}),
        http.post(f"{API}/entityOperations/upsert", params={"options": "update"}, headers=headers, json=[
            {"id": entity_id, "type": "Station", "p": {"type": "Property", "value": 5, "datasetId": dataset}}]),
        http.delete(f"{API}/entities/{entity_id}/attrs/p", params={"datasetId": dataset}, headers=headers),
    ]
    for write in writes:
        assert (await write).status_code == 204
    async with await psycopg.AsyncConnection.connect(await tenant_database_url(postgres_url, tenant)) as conn:
        rows = await (await conn.execute(
            "SELECT opMode::text, datasetId, number FROM attributes WHERE entityId = %s AND id LIKE %s"
            " ORDER BY ts, datasetId NULLS LAST",
            (entity_id, "%/p"))).fetchall()
    assert rows == [("Create", dataset, 1.0), ("Create", None, 2.0), ("Update", dataset, 3.0),
                    ("Update", dataset, 4.0), ("Update", dataset, 5.0), ("Delete", dataset, None)], rows


async def test_the_dataset_id_parameter_selects_the_instance_read_or_written(http: httpx.AsyncClient,
                                                                             tenant: str) -> None:
    # The parameter was ignored: a PUT meant for one dataset replaced the default instance.
    entity_id = new_id()
    headers = {"NGSILD-Tenant": tenant}
    dataset = "urn:ngsi-ld:Dataset:a"
    created = await http.post(f"{API}/entities", headers=headers, json={
        "id": entity_id, "type": "Station",
        "t": [{"type": "Property", "value": 1, "datasetId": dataset}, {"type": "Property", "value": 2}]})
    assert created.status_code == 201, created.text
    put = await http.put(f"{API}/entities/{entity_id}/attrs/t", params={"datasetId": dataset}, headers=headers,
                         json={"type": "Property", "value": 22})
    assert put.status_code == 204, put.text
    only_a = (await http.get(f"{API}/entities/{entity_id}", params={"datasetId": dataset}, headers=headers)).json()
    assert only_a["t"]["value"] == 22 and only_a["t"]["datasetId"] == dataset
    default = (await http.get(f"{API}/entities/{entity_id}", params={"datasetId": "@none"}, headers=headers)).json()
    assert default["t"] == {"type": "Property", "value": 2}
    patched = await http.patch(f"{API}/entities/{entity_id}/attrs/t", params={"datasetId": dataset},
                               headers=headers, json={"value": 23})
    assert patched.status_code == 204
    one = await http.get(f"{API}/entities/{entity_id}/attrs/t", params={"datasetId": dataset}, headers=headers)
    assert one.json()["value"] == 23
    clash = await http.put(f"{API}/entities/{entity_id}/attrs/t", params={"datasetId": dataset}, headers=headers,
                           json={"type": "Property", "value": 9, "datasetId": "urn:ngsi-ld:Dataset:b"})
    assert clash.status_code == 400 and clash.json()["parameter"] == "datasetId"

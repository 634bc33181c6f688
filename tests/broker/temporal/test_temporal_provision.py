"""Temporal provision over real HTTP: create, append, modify and delete instances, attributes and entities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

API = "/ngsi-ld/v1"
ENTITY = "urn:ngsi-ld:AirQualityObserved:porto:boavista"


@pytest.fixture
async def client(broker_url: str, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=broker_url, timeout=30, headers={"NGSILD-Tenant": tenant}) as http:
        yield http


def reading(value: Any, hour: int, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, "observedAt": f"2024-03-15T{hour:02d}:00:00.000Z", **extra}


async def history(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/temporal/entities/{ENTITY}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_create_then_add_instances_is_201_then_204(client: httpx.AsyncClient) -> None:
    first = {"id": ENTITY, "type": "AirQualityObserved", "no2": [reading(21.5, 10), reading(23, 11)]}
    assert (await client.post(f"{API}/temporal/entities", json=first)).status_code == 201
    again = {"id": ENTITY, "type": "AirQualityObserved", "no2": reading(25, 12)}
    assert (await client.post(f"{API}/temporal/entities", json=again)).status_code == 204
    assert [i["value"] for i in (await history(client))["no2"]] == [21.5, 23, 25]
    # An attribute is an array of instances in any form (4.5.7): [1, 2] is two instances, [] none.
    concise = {"id": ENTITY, "type": "AirQualityObserved", "o3": [1, 2], "so2": []}
    assert (await client.post(f"{API}/temporal/entities", json=concise)).status_code == 204
    held = await history(client)
    assert sorted(i["value"] for i in held["o3"]) == [1, 2] and "so2" not in held


async def test_every_attribute_kind_comes_back_as_it_went_in(client: httpx.AsyncClient) -> None:
    entity = {
        "id": ENTITY,
        "type": "AirQualityObserved",
        "refDevice": [{"type": "Relationship", "object": "urn:ngsi-ld:Device:aq-1",
                       "observedAt": "2024-03-15T10:00:00.000Z"}],
        "location": [{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.6291, 41.1579]},
                      "observedAt": "2024-03-15T10:00:00.000Z"}],
        "name": [{"type": "LanguageProperty", "languageMap": {"en": "Boavista", "pt": "Boavista"},
                  "observedAt": "2024-03-15T10:00:00.000Z"}],
        "raining": [reading(False, 10)],
        "airQualityLevel": [reading("moderate", 10)],
        "measuredAt": [reading({"@type": "DateTime", "@value": "2024-03-15T09:58:00.000Z"}, 10)],
        "no2": [reading(30, 10, unitCode="GQ",
                        reliability={"type": "Property", "value": 0.9})],
    }  # fmt: skip
    assert (await client.post(f"{API}/temporal/entities", json=entity)).status_code == 201
    got = await history(client)
    assert got["refDevice"][0]["type"] == "Relationship"
    assert got["refDevice"][0]["object"] == "urn:ngsi-ld:Device:aq-1"
    assert got["location"][0]["type"] == "GeoProperty"
    assert got["location"][0]["value"] == {"type": "Point", "coordinates": [-8.6291, 41.1579]}
    assert got["name"][0] == {**got["name"][0], "type": "LanguageProperty",
                              "languageMap": {"en": "Boavista", "pt": "Boavista"}}  # fmt: skip
    assert got["raining"][0]["value"] is False
    assert got["airQualityLevel"][0]["value"] == "moderate"
    assert got["measuredAt"][0]["value"] == {"@type": "DateTime", "@value": "2024-03-15T09:58:00.000Z"}
    assert got["no2"][0]["unitCode"] == "GQ"
    assert got["no2"][0]["reliability"]["value"] == 0.9
    simplified = await history(client, options="temporalValues", attrs="refDevice")
    assert simplified["refDevice"] == {
        "type": "Relationship",
        "objects": [["urn:ngsi-ld:Device:aq-1", "2024-03-15T10:00:00.000Z"]],
    }


async def test_modify_one_instance_by_its_instance_id(client: httpx.AsyncClient) -> None:
    body = {"id": ENTITY, "type": "AirQualityObserved", "no2": [reading(21, 10), reading(99, 11)]}
    assert (await client.post(f"{API}/temporal/entities", json=body)).status_code == 201
    wrong = (await history(client))["no2"][1]
    patched = await client.patch(
        f"{API}/temporal/entities/{ENTITY}/attrs/no2/{wrong['instanceId']}", json={"no2": reading(22, 11)}
    )
    assert patched.status_code == 204, patched.text
    assert [(i["value"], i["instanceId"]) for i in (await history(client))["no2"]] == [
        (21, (await history(client))["no2"][0]["instanceId"]),
        (22, wrong["instanceId"]),
    ]
    missing = await client.patch(f"{API}/temporal/entities/{ENTITY}/attrs/no2/urn:ngsi-ld:instance:none",
                                 json={"no2": reading(1, 1)})  # fmt: skip
    assert missing.status_code == 404


async def test_delete_an_instance_an_attribute_and_the_entity(client: httpx.AsyncClient) -> None:
    body = {
        "id": ENTITY, "type": "AirQualityObserved",
        "no2": [reading(1, 10), reading(2, 11), reading(3, 12)],
        "pm10": [reading(10, 10), reading(11, 10, datasetId="urn:ngsi-ld:Dataset:b")],
        "o3": [reading(50, 10)],
    }  # fmt: skip
    assert (await client.post(f"{API}/temporal/entities", json=body)).status_code == 201
    middle = (await history(client))["no2"][1]["instanceId"]
    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}/attrs/no2/{middle}")).status_code == 204
    assert [i["value"] for i in (await history(client))["no2"]] == [1, 3]
    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}/attrs/no2/{middle}")).status_code == 404

    # GS CIM 009 5.6.17: without datasetId only the default instances go; deleteAll takes every dataset.
    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}/attrs/pm10")).status_code == 204
    assert [i.get("datasetId") for i in (await history(client))["pm10"]] == ["urn:ngsi-ld:Dataset:b"]
    deleted = await client.delete(f"{API}/temporal/entities/{ENTITY}/attrs/pm10", params={"deleteAll": "true"})
    assert deleted.status_code == 204
    assert "pm10" not in await history(client)
    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}/attrs/pm10")).status_code == 404

    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}")).status_code == 204
    assert (await client.get(f"{API}/temporal/entities/{ENTITY}")).status_code == 404
    assert (await client.delete(f"{API}/temporal/entities/{ENTITY}")).status_code == 404


async def test_history_written_by_entity_updates_is_served(client: httpx.AsyncClient) -> None:
    entity = {"id": ENTITY, "type": "AirQualityObserved", "no2": reading(40, 10)}
    created = await client.post(f"{API}/entities", json=entity)
    assert created.status_code == 201, created.text
    updated = await client.patch(f"{API}/entities/{ENTITY}/attrs", json={"no2": reading(45, 11)})
    assert updated.status_code == 204, updated.text
    got = await history(client, attrs="no2")
    assert [(i["value"], i["observedAt"]) for i in got["no2"]] == [
        (40, "2024-03-15T10:00:00.000Z"), (45, "2024-03-15T11:00:00.000Z"),
    ]  # fmt: skip


BAD_BODIES = [
    ({"type": "AirQualityObserved", "no2": reading(1, 1)}, 400),
    ({"id": "not a uri", "type": "AirQualityObserved", "no2": reading(1, 1)}, 400),
    ({"id": ENTITY, "no2": reading(1, 1)}, 400),
    ({"id": ENTITY, "type": "AirQualityObserved", "no2": {"type": "Property", "value": 1, "observedAt": "noon"}}, 400),
    ({"id": ENTITY, "type": "AirQualityObserved", "no2": {"type": "Relationship", "object": "nope nope"}}, 400),
    ({"id": ENTITY, "type": "AirQualityObserved", "no2": {"type": "Wobble", "value": 1}}, 400),
    ([{"id": ENTITY}], 400),
]


@pytest.mark.parametrize("body,status", BAD_BODIES)
async def test_bad_temporal_payloads_are_4xx_never_500(client: httpx.AsyncClient, body: Any, status: int) -> None:
    response = await client.post(f"{API}/temporal/entities", json=body)
    assert response.status_code == status, response.text
    assert response.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


async def test_q_and_geo_queries_select_entities_by_their_current_state(client: httpx.AsyncClient) -> None:
    stations = {"boavista": ([-8.6291, 41.1579], 52), "matosinhos": ([-8.6895, 41.1844], 18)}
    for name, (point, no2) in stations.items():
        entity = {"id": f"urn:ngsi-ld:AirQualityObserved:porto:{name}", "type": "AirQualityObserved",
                  "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}},
                  "no2": reading(no2, 10)}  # fmt: skip
        assert (await client.post(f"{API}/entities", json=entity)).status_code == 201

    async def selected(**params: str) -> list[str]:
        response = await client.get(f"{API}/temporal/entities", params={"type": "AirQualityObserved", **params})
        assert response.status_code == 200, response.text
        return [entity["id"].rsplit(":", 1)[1] for entity in response.json()]

    assert await selected(q="no2>40") == ["boavista"]
    assert await selected(q="no2<40;no2>10") == ["matosinhos"]
    near = {"georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": "[-8.63,41.158]"}
    assert await selected(**near) == ["boavista"]
    assert await selected(q="no2>40", georel="near;maxDistance==2000", geometry="Point",
                          coordinates="[-8.69,41.184]") == []  # fmt: skip
    bad = await client.get(f"{API}/temporal/entities", params={"type": "AirQualityObserved", "q": "no2>>"})
    assert bad.status_code == 400


async def test_timeproperty_modified_at_filters_by_write_time(client: httpx.AsyncClient) -> None:
    body = {"id": ENTITY, "type": "AirQualityObserved", "no2": [reading(1, 10), reading(2, 11)]}
    assert (await client.post(f"{API}/temporal/entities", json=body)).status_code == 201
    recent = {"timerel": "after", "timeAt": "2025-01-01T00:00:00Z"}
    by_write = await history(client, timeproperty="modifiedAt", options="sysAttrs", **recent)
    assert [i["value"] for i in by_write["no2"]] == [1, 2]
    assert all(i["modifiedAt"] >= "2025" for i in by_write["no2"])
    assert "no2" not in await history(client, **recent)  # observedAt (the default) is 2024-03-15


async def test_plain_instances_with_awkward_text_offsets_and_datasets_read_back_exactly(
    client: httpx.AsyncClient,
) -> None:
    # The backfill path writes plain Property instances as COPY text: escapes, offsets and NULLs must hold.
    first = {"id": ENTITY, "type": "AirQualityObserved", "no2": reading(1, 0)}
    assert (await client.post(f"{API}/temporal/entities", json=first)).status_code == 201
    awkward = "tab\there, newline\nthere, back\\slash \\N and a quote \" — ünïcode"
    appended = {
        "note": [reading(awkward, 1, unitCode="a\tb\\c")],
        "raining": [reading(True, 2)],
        "no2": [
            reading(1e16, 3),
            reading(-0.5, 4, datasetId="urn:ngsi-ld:Dataset:tube"),
            {"type": "Property", "value": 7, "observedAt": "2024-03-15T07:30:00+02:00"},
            {"type": "Property", "value": 8, "observedAt": "2024-03-15T06:00:00.123456Z"},
            {"type": "Property", "value": 9},
        ],
    }
    response = await client.post(f"{API}/temporal/entities/{ENTITY}/attrs", json=appended)
    assert response.status_code == 204, response.text
    got = await history(client)
    assert got["note"][0]["value"] == awkward
    assert got["note"][0]["unitCode"] == "a\tb\\c"
    assert got["raining"][0]["value"] is True
    by_value = {instance["value"]: instance for instance in got["no2"]}
    assert set(by_value) == {1, 1e16, -0.5, 7, 8, 9}
    assert by_value[-0.5]["datasetId"] == "urn:ngsi-ld:Dataset:tube"
    assert by_value[7]["observedAt"] == "2024-03-15T05:30:00.000Z"
    assert by_value[8]["observedAt"] == "2024-03-15T06:00:00.123Z"
    assert "observedAt" not in by_value[9]


async def test_an_impossible_observed_at_on_the_backfill_path_is_400(client: httpx.AsyncClient) -> None:
    first = {"id": ENTITY, "type": "AirQualityObserved", "no2": reading(1, 0)}
    assert (await client.post(f"{API}/temporal/entities", json=first)).status_code == 201
    for stamp in ("2024-02-30T00:00:00.000Z", "yesterday", "2024-03-15T25:00:00Z"):
        body = {"no2": [{"type": "Property", "value": 2, "observedAt": stamp}]}
        response = await client.post(f"{API}/temporal/entities/{ENTITY}/attrs", json=body)
        assert response.status_code == 400, (stamp, response.text)
    assert [i["value"] for i in (await history(client))["no2"]] == [1]

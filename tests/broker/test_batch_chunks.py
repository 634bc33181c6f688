"""Large batches, stored chunk by chunk, answer and store exactly what one transaction over the whole batch would."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

API = "/ngsi-ld/v1"


def station(entity_id: str, no2: float) -> dict[str, Any]:
    return {"id": entity_id, "type": "Station", "no2": {"type": "Property", "value": no2}}


async def test_a_batch_of_several_hundred_entities_is_applied_in_order_with_its_errors(
    http: httpx.AsyncClient, tenant: str
) -> None:
    headers = {"NGSILD-Tenant": tenant}
    prefix = f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{n:03d}" for n in range(300)]  # above CHUNKED_FROM: stored in chunks
    payload: list[Any] = [station(entity_id, n) for n, entity_id in enumerate(ids)]
    payload[180] = station(ids[5], 1005)  # the same entity again, two chunks later: applied after the first
    payload[130] = {"id": ids[130], "type": "Station", "no2": {"type": "Property"}}  # no value
    payload[220] = station("not a uri", 220)
    got = await http.post(f"{API}/entityOperations/upsert", json=payload, headers=headers)
    assert got.status_code == 207, got.text
    body = got.json()
    assert [error["entityId"] for error in body["errors"]] == [ids[130], "not a uri"]
    expected_success = [entity_id for n, entity_id in enumerate(ids) if n not in (130, 180, 220)]
    expected_success.insert(179, ids[5])
    assert body["success"] == expected_success

    listed = await http.get(f"{API}/entities", params={"idPattern": f"^{prefix}", "limit": "1000",
                                                       "options": "keyValues"}, headers=headers)
    stored = {entity["id"]: entity["no2"] for entity in listed.json()}
    assert len(stored) == 297
    assert stored[ids[5]] == 1005 and stored[ids[299]] == 299
    history = await http.get(f"{API}/temporal/entities/{ids[5]}", params={"attrs": "no2"}, headers=headers)
    instances = history.json()["no2"]
    assert sorted(instance["value"] for instance in instances) == [5, 1005]

    updated = await http.post(f"{API}/entityOperations/update",
                              json=[station(entity_id, -1) for entity_id in ids[:200]], headers=headers)  # one chunk
    assert updated.status_code == 207, updated.text  # 130 and 180 were never created
    assert sorted(error["entityId"] for error in updated.json()["errors"]) == [ids[130], ids[180]]
    deleted = await http.post(f"{API}/entityOperations/delete", json=ids, headers=headers)
    assert deleted.status_code == 207, deleted.text
    assert sorted(error["entityId"] for error in deleted.json()["errors"]) == [ids[130], ids[180], ids[220]]
    left = await http.get(f"{API}/entities", params={"idPattern": f"^{prefix}"}, headers=headers)
    assert left.json() == []

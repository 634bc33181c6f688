"""Single-entity writes after failed ones: a refused write leaves nothing behind and never breaks the next ones."""

from __future__ import annotations

import uuid

import httpx

API = "/ngsi-ld/v1"


def station(entity_id: str, no2: float) -> dict:
    return {"id": entity_id, "type": "Station", "no2": {"type": "Property", "value": no2}}


async def test_writes_keep_working_after_refused_writes_on_every_pooled_connection(
    http: httpx.AsyncClient, tenant: str
) -> None:
    headers = {"NGSILD-Tenant": tenant}
    entity_id = f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:10]}"
    got = await http.post(f"{API}/entities", json=station(entity_id, 1), headers=headers)
    assert got.status_code == 201, got.text
    # More rounds than the broker has pooled connections: each refused write rolls back a transaction
    # on one of them, and the next writes must find every connection ready.
    for value in range(2, 32):
        refused = await http.patch(f"{API}/entities/{entity_id}/attrs/pm25",
                                   json={"type": "Property", "value": value}, headers=headers)
        assert refused.status_code == 404, refused.text
        updated = await http.post(f"{API}/entityOperations/upsert?options=update",
                                  json=[station(entity_id, value)], headers=headers)
        assert updated.status_code == 204, updated.text
        patched = await http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": {"type": "Property",
                                   "value": value + 0.5}}, headers=headers)
        assert patched.status_code == 204, patched.text
    entity = (await http.get(f"{API}/entities/{entity_id}", headers=headers)).json()
    assert entity["no2"]["value"] == 31.5
    assert "pm25" not in entity
    history = await http.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "no2", "lastN": "100"},
                             headers=headers)
    assert history.status_code == 200, history.text
    values = sorted(instance["value"] for instance in history.json()["no2"])
    assert values == sorted([1] + [v for v in range(2, 32)] + [v + 0.5 for v in range(2, 32)])


async def test_a_refused_single_upsert_writes_no_history(http: httpx.AsyncClient, tenant: str) -> None:
    headers = {"NGSILD-Tenant": tenant}
    other, entity_id = (f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:10]}" for _ in range(2))
    assert (await http.post(f"{API}/entities", json=station(other, 1), headers=headers)).status_code == 201
    missing = await http.post(f"{API}/entityOperations/update", json=[station(entity_id, 7)], headers=headers)
    assert missing.status_code == 207, missing.text
    assert missing.json()["errors"][0]["error"]["status"] == 404
    history = await http.get(f"{API}/temporal/entities/{entity_id}", headers=headers)
    assert history.status_code == 404, history.text


async def test_an_instance_sent_again_with_its_instance_id_replaces_its_history_row(
    http: httpx.AsyncClient, tenant: str
) -> None:
    """A client's resend (an IoT agent after a restart) or recomputed value (a KPI window) is one history row."""
    headers = {"NGSILD-Tenant": tenant}
    entity_id, other = (f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:10]}" for _ in range(2))
    instance_id = f"urn:ngsi-ld:instance:{uuid.uuid4().hex}"

    def measured(value: float, *, of: str = entity_id, instance: str = instance_id) -> dict:
        return {"id": of, "type": "Station", "no2": {
            "type": "Property", "value": value, "observedAt": "2026-01-01T10:00:00.000Z", "instanceId": instance,
            "unitCode": "GQ", "quality": {"type": "Property", "value": f"checked {value}"},
        }}

    for body in (measured(40), measured(41, of=other)):
        assert (await http.post(f"{API}/entities", json=body, headers=headers)).status_code == 201
    # Sent again unchanged (batch upsert), then with a corrected value (attribute PATCH), then an
    # unrelated second instance: the corrected value is the only row under that id.
    upserted = await http.post(f"{API}/entityOperations/upsert?options=update", json=[measured(40)], headers=headers)
    assert upserted.status_code == 204, upserted.text
    patched = await http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": measured(42)["no2"]},
                               headers=headers)
    assert patched.status_code == 204, patched.text
    newer = measured(43, instance=f"urn:ngsi-ld:instance:{uuid.uuid4().hex}")
    newer["no2"]["observedAt"] = "2026-01-01T11:00:00.000Z"
    assert (await http.patch(f"{API}/entities/{entity_id}/attrs", json={"no2": newer["no2"]},
                             headers=headers)).status_code == 204

    async def history_of(of: str) -> list[dict]:
        got = await http.get(f"{API}/temporal/entities/{of}", params={"attrs": "no2", "lastN": "100"},
                             headers=headers)
        assert got.status_code == 200, got.text
        return sorted(got.json()["no2"], key=lambda instance: instance["observedAt"])

    rows = await history_of(entity_id)
    assert [(row["value"], row["observedAt"]) for row in rows] == [
        (42, "2026-01-01T10:00:00.000Z"), (43, "2026-01-01T11:00:00.000Z")
    ]
    assert rows[0]["instanceId"] == instance_id
    assert rows[0]["unitCode"] == "GQ"
    assert rows[0]["quality"]["value"] == "checked 42"  # its sub-property is the replacing row's, once
    # Another entity's instance under the same id is never touched.
    assert [row["value"] for row in await history_of(other)] == [41]


async def test_one_batch_holding_the_same_instance_twice_keeps_the_later_one(
    http: httpx.AsyncClient, tenant: str
) -> None:
    """A coalesced batch may carry a device's measure and its resend: one row, the later value, no error."""
    headers = {"NGSILD-Tenant": tenant}
    entity_id = f"urn:ngsi-ld:Station:{uuid.uuid4().hex[:10]}"
    instance_id = f"urn:ngsi-ld:instance:{uuid.uuid4().hex}"

    def measured(value: float) -> dict:
        return {"id": entity_id, "type": "Station", "no2": {
            "type": "Property", "value": value, "observedAt": "2026-01-01T10:00:00.000Z", "instanceId": instance_id,
            "quality": {"type": "Property", "value": f"checked {value}"},
        }}

    written = await http.post(f"{API}/entityOperations/upsert", json=[measured(40), measured(41)], headers=headers)
    assert written.status_code == 201, written.text
    got = await http.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "no2"}, headers=headers)
    assert got.status_code == 200, got.text
    rows = got.json()["no2"]
    rows = rows if isinstance(rows, list) else [rows]
    assert [(row["value"], row["instanceId"], row["quality"]["value"]) for row in rows] == [
        (41, instance_id, "checked 41")
    ]

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

"""Service endpoints every deployment probes: /health and Orion-LD-shaped /version, routing tolerance."""

from __future__ import annotations

import httpx


async def test_health_says_ok(http: httpx.AsyncClient) -> None:
    got = await http.get("/health")
    assert got.status_code == 200 and got.json()["status"] == "ok"


async def test_version_is_shaped_like_orion_ld(http: httpx.AsyncClient) -> None:
    got = await http.get("/version/")
    assert got.status_code == 200
    body = got.json()
    assert "Orion-LD version" in body and body["Core Context"].startswith("https://uri.etsi.org/ngsi-ld/")


async def test_unknown_path_is_a_problem_details_404(http: httpx.AsyncClient) -> None:
    got = await http.get("/ngsi-ld/v1/nothing-here")
    assert got.status_code == 404
    assert got.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


async def test_json_responses_carry_the_context_link(http: httpx.AsyncClient) -> None:
    got = await http.get("/ngsi-ld/v1/entities", params={"type": "Nothing"})
    assert got.status_code == 200
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in got.headers["Link"]

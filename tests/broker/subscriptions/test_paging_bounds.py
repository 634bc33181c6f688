"""Subscription listing bounds: offsets beyond PostgreSQL's bigint are a precise 400, never a 500."""

from __future__ import annotations

import httpx

BIGINT_MAX = 2**63 - 1


async def test_an_offset_above_bigint_is_400_naming_offset(client: httpx.AsyncClient) -> None:
    response = await client.get("/subscriptions", params={"offset": "6526263862256395607867392"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"].endswith("/BadRequestData")
    assert "offset" in body["detail"]


async def test_the_largest_bigint_offset_is_an_empty_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/subscriptions", params={"offset": str(BIGINT_MAX), "limit": 5})
    assert response.status_code == 200, response.text
    assert response.json() == []

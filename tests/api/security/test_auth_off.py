"""With `CLIMABOROUGH_AUTH=off` the gateway says so loudly, forwards without a token, and still refuses path tricks."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from api.gateway import GatewaySettings, create_gateway_app
from tests.api.security.conftest import serve, stop


async def test_auth_off_is_announced_and_open_but_paths_are_still_checked(
    broker_url: str, http: httpx.AsyncClient, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_gateway_app(GatewaySettings(auth="off", broker_url=broker_url))
    assert "AUTHENTICATION IS OFF" in caplog.text
    server, task, url = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as gateway:
            new = {"id": f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:8]}", "type": "Thing"}
            answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers={"NGSILD-Tenant": tenant})
            assert answer.status_code == 201, answer.text
            assert (
                await http.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={"NGSILD-Tenant": tenant})
            ).status_code == 200
            refused = await gateway.get("/ngsi-ld/v1/entities%2F..%2Fx", headers={"NGSILD-Tenant": tenant})
            assert refused.status_code == 400
    finally:
        await stop(server, task)

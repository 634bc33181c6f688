"""The IoT agent's provisioning API behind the same authenticator: tokens, tenants (`fiware-service`) and roles."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends

from agents.iot.north import create_north_app
from agents.iot.registry import Registry
from agents.iot.settings import IotAgentSettings
from api.auth import Access, AuthSettings, require_tenant_access
from api.auth.keycloak import KeycloakAuthenticator
from tests.api.security.conftest import serve, stop
from tests.api.security.issuer import CLIENT_ID, LocalIssuer

GROUP = {"groups": [{"apikey": "key1", "resource": "/iot/d", "entity_type": "AirQualityObserved"}]}


@pytest.fixture
async def provisioning(issuer: LocalIssuer) -> AsyncIterator[httpx.AsyncClient]:
    folder = Path(tempfile.mkdtemp(prefix="climaborough-iot-auth-"))
    settings = IotAgentSettings(data_dir=folder)
    settings.agent_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.registry_path)
    authenticator = KeycloakAuthenticator(
        AuthSettings(
            auth="keycloak", keycloak_url=issuer.url, keycloak_realm=issuer.realm, keycloak_client_id=CLIENT_ID
        )
    )
    access = require_tenant_access(authenticator, tenant_header="fiware-service", write_access=Access.ADMINISTER)
    server, task, url = await serve(create_north_app(settings, registry, access=[Depends(access)]))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client
    await stop(server, task)
    await authenticator.aclose()
    registry.close()
    shutil.rmtree(folder, ignore_errors=True)


def headers(token: str | None, service: str) -> dict[str, str]:
    sent = {"fiware-service": service, "fiware-servicepath": "/"}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return sent


async def groups_in(client: httpx.AsyncClient, issuer: LocalIssuer, service: str) -> int:
    token = issuer.token(roles=["city-admin"], tenants=[service])
    answer = await client.get("/iot/groups", headers=headers(token, service))
    assert answer.status_code == 200, answer.text
    return int(answer.json()["count"])


async def test_provisioning_needs_a_valid_token(provisioning: httpx.AsyncClient, issuer: LocalIssuer) -> None:
    for token in (None, "garbage", LocalIssuer.unsigned(issuer.claims(roles=["city-admin"], tenants=["rome"]))):
        answer = await provisioning.post("/iot/groups", json=GROUP, headers=headers(token, "rome"))
        assert answer.status_code == 401, answer.text
    assert await groups_in(provisioning, issuer, "rome") == 0
    assert (await provisioning.get("/health")).status_code == 200  # health stays open for probes


async def test_only_a_city_admin_of_that_service_provisions(
    provisioning: httpx.AsyncClient, issuer: LocalIssuer
) -> None:
    viewer = issuer.token(roles=["viewer"], tenants=["rome"])
    provider = issuer.token(roles=["solution-provider"], tenants=["rome"], entity_types=["AirQualityObserved"])
    other_city = issuer.token(roles=["city-admin"], tenants=["milan"])
    for token in (viewer, provider, other_city):
        answer = await provisioning.post("/iot/groups", json=GROUP, headers=headers(token, "rome"))
        assert answer.status_code == 403, answer.text
    assert await groups_in(provisioning, issuer, "rome") == 0
    admin = issuer.token(roles=["city-admin"], tenants=["rome"])
    assert (await provisioning.post("/iot/groups", json=GROUP, headers=headers(admin, "rome"))).status_code == 201
    # Reading is for every role of the city; another city sees nothing of it.
    assert (await provisioning.get("/iot/groups", headers=headers(viewer, "rome"))).json()["count"] == 1
    assert (await provisioning.get("/iot/groups", headers=headers(other_city, "rome"))).status_code == 403

"""The real commands wire authentication in: `climaborough api` (platform API and gateway) and `climaborough agent iot`.

Each service runs as the user starts it (a subprocess of the `climaborough` CLI, configured by the
environment) against the local OpenID issuer and the real broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.embedded_postgres import free_port
from tests.agents.iot.iot_services import REPO, ServiceProcess
from tests.api.security.issuer import CLIENT_ID, LocalIssuer

GROUP = {"groups": [{"apikey": "wiring1", "resource": "/iot/d", "entity_type": "AirQualityObserved"}]}
WHAT_IF = {"station": "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin", "horizon": 24, "scenario": []}
# Every platform API data route and the gateway; /health and /version stay open for probes.
PROTECTED = [
    ("GET", "/kpis"),
    ("GET", "/kpis/urn:ngsi-ld:KeyPerformanceIndicator:x"),
    ("GET", "/twin/models"),
    ("GET", "/twin/forecast/Aotizhongxin"),
    ("POST", "/twin/what-if"),
    ("GET", "/ngsi-ld/v1/entities?type=Thing"),
    ("POST", "/ngsi-ld/v1/entities"),
]


def keycloak_env(issuer: LocalIssuer) -> dict[str, str]:
    return {
        "CLIMABOROUGH_AUTH": "keycloak",
        "CLIMABOROUGH_KEYCLOAK_URL": issuer.url,
        "CLIMABOROUGH_KEYCLOAK_REALM": issuer.realm,
        "CLIMABOROUGH_KEYCLOAK_CLIENT_ID": CLIENT_ID,
    }


def start_api(folder: Path, broker_url: str, tenant: str, auth_env: dict[str, str]) -> tuple[ServiceProcess, str]:
    """`climaborough api` on a free port, bound to `tenant`, configured only through the environment."""
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("CLIMABOROUGH_")},
        "CLIMABOROUGH_BROKER_URL": broker_url,
        "CLIMABOROUGH_TENANT": tenant,
        "CLIMABOROUGH_DATA_DIR": str(folder),
        "PYTHONUNBUFFERED": "1",
        **auth_env,
    }
    argv = [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess(argv=argv, env=env, health_urls=[f"{url}/health"], log_path=folder / "api.log")
    return service.start(), url


def start_iot_agent(folder: Path, broker_url: str, auth_env: dict[str, str]) -> tuple[ServiceProcess, str]:
    """`climaborough agent iot` on free ports without MQTT; returns it and its provisioning URL."""
    north, south = free_port(), free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("CLIMABOROUGH_")},
        "PYTHONUNBUFFERED": "1",
        **auth_env,
    }
    argv = [
        sys.executable, "-m", "cli.main", "agent", "iot", "--broker-url", broker_url, "--mqtt-url", "",
        "--north-port", str(north), "--south-port", str(south), "--host", "127.0.0.1", "--data-dir", str(folder),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{north}"
    service = ServiceProcess(argv=argv, env=env, health_urls=[f"{url}/health"], log_path=folder / "agent.log")
    return service.start(), url


@pytest.fixture(scope="module")
def api_tenant() -> str:
    return f"wiring{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def platform_api(
    issuer: LocalIssuer, broker_url: str, api_tenant: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    # The tenant exists in the broker before the API reads it.
    thing = {"id": f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:8]}", "type": "Thing"}
    created = httpx.post(f"{broker_url}/ngsi-ld/v1/entities", json=thing, headers={"NGSILD-Tenant": api_tenant})
    assert created.status_code == 201, created.text
    service, url = start_api(tmp_path_factory.mktemp("api"), broker_url, api_tenant, keycloak_env(issuer))
    yield url
    service.stop()


@pytest.fixture(scope="module")
def iot_agent(issuer: LocalIssuer, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service, url = start_iot_agent(tmp_path_factory.mktemp("iot"), broker_url, keycloak_env(issuer))
    yield url
    service.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert answer.json()["status"] == 401


async def test_platform_api_and_gateway_refuse_requests_without_a_valid_token(
    platform_api: str, issuer: LocalIssuer, api_tenant: str, http: httpx.AsyncClient
) -> None:
    forged = LocalIssuer.unsigned(issuer.claims(roles=["city-admin"], tenants=[api_tenant]))
    expired = issuer.token(roles=["city-admin"], tenants=[api_tenant], lifetime_s=-60)
    new = {"id": f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:8]}", "type": "Thing"}
    async with httpx.AsyncClient(base_url=platform_api, timeout=30) as client:
        for method, path in PROTECTED:
            body = WHAT_IF if path == "/twin/what-if" else new if method == "POST" else None
            for headers in ({}, bearer("garbage"), bearer(forged), bearer(expired)):
                headers = {**headers, "NGSILD-Tenant": api_tenant}
                assert_unauthorized(await client.request(method, path, json=body, headers=headers))
        # Probes stay open, and say that authentication is on.
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/version")).json()["auth"] == "keycloak"
    # Nothing got through to the broker.
    missing = await http.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={"NGSILD-Tenant": api_tenant})
    assert missing.status_code == 404


async def test_city_admin_reads_the_platform_api_and_writes_through_the_gateway(
    platform_api: str, issuer: LocalIssuer, api_tenant: str, http: httpx.AsyncClient
) -> None:
    admin = bearer(issuer.token(roles=["city-admin"], tenants=[api_tenant]))
    new = {"id": f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:8]}", "type": "Thing"}
    async with httpx.AsyncClient(base_url=platform_api, timeout=30) as client:
        kpis = await client.get("/kpis", headers=admin)
        assert kpis.status_code == 200, kpis.text
        assert kpis.json() == []
        models = await client.get("/twin/models", headers=admin)
        assert models.status_code == 200 and models.json() == [], models.text
        # Past authentication: the twin answers about the question itself (no model is trained here).
        what_if = await client.post("/twin/what-if", json=WHAT_IF, headers=admin)
        assert what_if.status_code not in (401, 403, 500), what_if.text
        created = await client.post("/ngsi-ld/v1/entities", json=new, headers={**admin, "NGSILD-Tenant": api_tenant})
        assert created.status_code == 201, created.text
        read = await client.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={**admin, "NGSILD-Tenant": api_tenant})
        assert read.status_code == 200 and read.json()["id"] == new["id"]
    stored = await http.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={"NGSILD-Tenant": api_tenant})
    assert stored.status_code == 200


async def test_viewer_reads_and_asks_what_if_but_may_not_write_and_other_cities_are_refused(
    platform_api: str, issuer: LocalIssuer, api_tenant: str, http: httpx.AsyncClient
) -> None:
    viewer = bearer(issuer.token(roles=["viewer"], tenants=[api_tenant]))
    other_city = bearer(issuer.token(roles=["city-admin"], tenants=["elsewhere"]))
    new = {"id": f"urn:ngsi-ld:Thing:{uuid.uuid4().hex[:8]}", "type": "Thing"}
    async with httpx.AsyncClient(base_url=platform_api, timeout=30) as client:
        assert (await client.get("/kpis", headers=viewer)).status_code == 200
        assert (await client.get("/twin/models", headers=viewer)).status_code == 200
        # A what-if question changes nothing: planners with read access may ask it.
        asked = await client.post("/twin/what-if", json=WHAT_IF, headers=viewer)
        assert asked.status_code not in (401, 403, 500), asked.text
        written = await client.post("/ngsi-ld/v1/entities", json=new, headers={**viewer, "NGSILD-Tenant": api_tenant})
        assert written.status_code == 403, written.text
        # A city admin of another tenant may not read this API's tenant, neither directly nor through the gateway.
        assert (await client.get("/kpis", headers=other_city)).status_code == 403
        listed = await client.get(
            "/ngsi-ld/v1/entities?type=Thing", headers={**other_city, "NGSILD-Tenant": api_tenant}
        )
        assert listed.status_code == 403
    missing = await http.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={"NGSILD-Tenant": api_tenant})
    assert missing.status_code == 404


def provisioning_headers(service: str, token: str | None = None) -> dict[str, str]:
    headers = {"fiware-service": service, "fiware-servicepath": "/"}
    return {**headers, **bearer(token)} if token else headers


async def test_iot_agent_started_by_the_cli_provisions_only_for_a_city_admin(
    iot_agent: str, issuer: LocalIssuer
) -> None:
    service = f"city{uuid.uuid4().hex[:8]}"
    viewer = issuer.token(roles=["viewer"], tenants=[service])
    admin = issuer.token(roles=["city-admin"], tenants=[service])
    async with httpx.AsyncClient(base_url=iot_agent, timeout=30) as client:
        for token in (None, "garbage"):
            assert_unauthorized(
                await client.post("/iot/groups", json=GROUP, headers=provisioning_headers(service, token))
            )
        assert_unauthorized(await client.get("/iot/groups", headers=provisioning_headers(service)))
        refused = await client.post("/iot/groups", json=GROUP, headers=provisioning_headers(service, viewer))
        assert refused.status_code == 403, refused.text
        assert (await client.get("/iot/groups", headers=provisioning_headers(service, viewer))).json()["count"] == 0
        created = await client.post("/iot/groups", json=GROUP, headers=provisioning_headers(service, admin))
        assert created.status_code == 201, created.text
        assert (await client.get("/iot/groups", headers=provisioning_headers(service, viewer))).json()["count"] == 1
        assert (await client.get("/health")).status_code == 200


def test_python_m_agents_iot_refuses_to_run_with_keycloak(issuer: LocalIssuer, tmp_path: Path) -> None:
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("CLIMABOROUGH_")},
        **keycloak_env(issuer),
        "CLIMABOROUGH_DATA_DIR": str(tmp_path),
        "CLIMABOROUGH_MQTT_URL": "",
        "CLIMABOROUGH_IOT_NORTH_PORT": str(free_port()),
        "CLIMABOROUGH_IOT_SOUTH_PORT": str(free_port()),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "agents.iot"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode != 0
    assert "CLIMABOROUGH_AUTH=keycloak" in finished.stderr and "climaborough agent iot" in finished.stderr


async def test_with_auth_off_both_services_start_open_and_say_so(
    broker_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    tenant = f"wiringoff{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/ngsi-ld/v1/entities", json={"id": "urn:ngsi-ld:Thing:off", "type": "Thing"}, headers={"NGSILD-Tenant": tenant}
    )
    assert created.status_code == 201, created.text
    off = {"CLIMABOROUGH_AUTH": "off"}
    (tmp_path / "api").mkdir()
    (tmp_path / "iot").mkdir()
    api, api_url = start_api(tmp_path / "api", broker_url, tenant, off)
    try:
        agent, agent_url = start_iot_agent(tmp_path / "iot", broker_url, off)
        try:
            assert "AUTHENTICATION IS OFF" in api.log()
            assert "AUTHENTICATION IS OFF" in agent.log()
            async with httpx.AsyncClient(timeout=30) as client:
                assert (await client.get(f"{api_url}/kpis")).status_code == 200
                assert (await client.get(f"{api_url}/version")).json()["auth"] == "off"
                through = await client.get(f"{api_url}/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:off",
                                           headers={"NGSILD-Tenant": tenant})  # fmt: skip
                assert through.status_code == 200, through.text
                provisioned = await client.post(
                    f"{agent_url}/iot/groups", json=GROUP, headers=provisioning_headers("opencity")
                )
                assert provisioned.status_code == 201, provisioned.text
        finally:
            agent.stop()
    finally:
        api.stop()

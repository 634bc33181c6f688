"""The gateway in front of the real broker: every attack is refused and leaves the broker untouched; each role works."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.api.security.issuer import LocalIssuer

SDM = "https://smartdatamodels.org/context.jsonld"
LINK = f'<{SDM}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


def entity(kind: str = "AirQualityObserved") -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:{kind}:test:{uuid.uuid4().hex[:10]}",
        "type": kind,
        "no2": {"type": "Property", "value": 22},
    }


def bearer(token: str, tenant: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Link": LINK, **extra}
    if tenant is not None:
        headers["NGSILD-Tenant"] = tenant
    return headers


async def stored(http: httpx.AsyncClient, tenant: str, entity_id: str) -> bool:
    """Whether the broker itself (not through the gateway) has the entity."""
    answer = await http.get(f"/ngsi-ld/v1/entities/{entity_id}", headers={"NGSILD-Tenant": tenant})
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


def admin(issuer: LocalIssuer, tenant: str) -> str:
    return issuer.token(roles=["city-admin"], tenants=[tenant])


def provider(issuer: LocalIssuer, tenant: str, subject: str | None = None) -> str:
    return issuer.token(roles=["solution-provider"], tenants=[tenant], entity_types=["AirQualityObserved"],
                        subject=subject)  # fmt: skip


# ---- tokens ------------------------------------------------------------------------------------


def bad_tokens(issuer: LocalIssuer, tenant: str) -> dict[str, str | None]:
    now = int(time.time())
    claims = issuer.claims(roles=["city-admin"], tenants=[tenant])
    return {
        "no token": None,
        "malformed": "not-a-jwt",
        "expired": issuer.sign({**claims, "exp": now - 30, "iat": now - 600}),
        "not yet valid": issuer.sign({**claims, "nbf": now + 300}),
        "wrong signature": issuer.sign(claims, key=LocalIssuer.new_key(), kid=issuer.signing_keys[-1]["kid"]),
        "wrong issuer": issuer.sign({**claims, "iss": f"{issuer.url}/realms/evil"}),
        "wrong audience": issuer.sign({**claims, "azp": "other", "aud": "other"}),
        "alg none": LocalIssuer.unsigned(claims),
        "unknown kid": issuer.sign(claims, key=LocalIssuer.new_key(), kid="not-in-the-set"),
    }


@pytest.mark.parametrize(
    "case",
    ["no token", "malformed", "expired", "not yet valid", "wrong signature", "wrong issuer", "wrong audience",
     "alg none", "unknown kid"],
)  # fmt: skip
async def test_a_write_with_a_bad_token_is_401_and_writes_nothing(
    case: str, gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    token = bad_tokens(issuer, tenant)[case]
    new = entity()
    headers = {"Link": LINK, "NGSILD-Tenant": tenant}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["status"] == 401
    assert not await stored(http, tenant, str(new["id"]))


# ---- tenants and roles -------------------------------------------------------------------------


async def test_a_tenant_not_in_the_token_is_403_and_writes_nothing(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    new = entity()
    token = admin(issuer, "some-other-city")
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=bearer(token, tenant))
    assert answer.status_code == 403, answer.text
    assert not await stored(http, tenant, str(new["id"]))
    # The same token without a header asks for the default tenant, which it is not granted either.
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=bearer(token))
    assert answer.status_code == 403, answer.text
    assert (await http.get(f"/ngsi-ld/v1/entities/{new['id']}")).status_code == 404


async def test_two_tenant_headers_are_refused(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    new = entity()
    headers = [("Authorization", f"Bearer {admin(issuer, tenant)}"), ("Link", LINK), ("NGSILD-Tenant", tenant),
               ("NGSILD-Tenant", "victim")]  # fmt: skip
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=headers)
    assert answer.status_code == 400, answer.text
    assert not await stored(http, tenant, str(new["id"]))


async def test_a_viewer_reads_but_every_write_is_403(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    existing = entity()
    assert (
        await http.post("/ngsi-ld/v1/entities", json=existing, headers={"NGSILD-Tenant": tenant, "Link": LINK})
    ).status_code == 201
    viewer = issuer.token(roles=["viewer"], tenants=[tenant])
    read = await gateway.get(f"/ngsi-ld/v1/entities/{existing['id']}", headers=bearer(viewer, tenant))
    assert read.status_code == 200 and read.json()["id"] == existing["id"]
    query = {"type": "Query", "entities": [{"type": "AirQualityObserved"}]}
    found = await gateway.post("/ngsi-ld/v1/entityOperations/query", json=query, headers=bearer(viewer, tenant))
    assert found.status_code == 200 and [e["id"] for e in found.json()] == [existing["id"]]
    new = entity()
    attempts = [
        ("POST", "/ngsi-ld/v1/entities", new),
        ("PATCH", f"/ngsi-ld/v1/entities/{existing['id']}/attrs", {"no2": {"type": "Property", "value": 99}}),
        ("DELETE", f"/ngsi-ld/v1/entities/{existing['id']}", None),
        ("POST", "/ngsi-ld/v1/entityOperations/upsert", [new]),
        ("POST", "/ngsi-ld/v1/subscriptions", {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}],
                                               "notification": {"endpoint": {"uri": "http://127.0.0.1:9/x"}}}),
    ]  # fmt: skip
    for method, path, body in attempts:
        answer = await gateway.request(method, path, json=body, headers=bearer(viewer, tenant))
        assert answer.status_code == 403, (method, path, answer.text)
    assert not await stored(http, tenant, str(new["id"]))
    still = (
        await http.get(f"/ngsi-ld/v1/entities/{existing['id']}", headers={"NGSILD-Tenant": tenant, "Link": LINK})
    ).json()
    assert still["no2"]["value"] == 22


async def test_role_or_tenant_escalation_through_headers_is_ignored(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    viewer = issuer.token(roles=["viewer"], tenants=[tenant])
    new = entity()
    sneaky = {"X-Roles": "city-admin", "X-User-Roles": "city-admin", "X-Forwarded-User": "admin",
              "Fiware-Service": tenant, "X-Tenant": tenant}  # fmt: skip
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=bearer(viewer, tenant, **sneaky))
    assert answer.status_code == 403, answer.text
    assert not await stored(http, tenant, str(new["id"]))
    # An admin of one city cannot reach another through Fiware-Service (Orion-LD reads it as the tenant).
    other = f"{tenant}x"
    answer = await gateway.post("/ngsi-ld/v1/entities", json=new,
                                headers=bearer(admin(issuer, tenant), tenant, **{"Fiware-Service": other}))  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert await stored(http, tenant, str(new["id"]))
    assert (await http.get(f"/ngsi-ld/v1/entities/{new['id']}", headers={"NGSILD-Tenant": other})).status_code == 404


async def test_a_city_admin_creates_reads_and_deletes_in_its_tenant(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    token = admin(issuer, tenant)
    new = entity("WeatherObserved")
    created = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=bearer(token, tenant.upper()))
    assert created.status_code == 201, created.text
    assert await stored(http, tenant, str(new["id"]))
    listed = await gateway.get("/ngsi-ld/v1/entities", params={"type": "WeatherObserved", "count": "true"},
                               headers=bearer(token, tenant))  # fmt: skip
    assert listed.status_code == 200 and listed.headers["ngsild-results-count"] == "1"
    deleted = await gateway.delete(f"/ngsi-ld/v1/entities/{new['id']}", headers=bearer(token, tenant))
    assert deleted.status_code == 204, deleted.text
    assert not await stored(http, tenant, str(new["id"]))


async def test_the_default_tenant_only_if_the_token_grants_it(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer
) -> None:
    new = entity()
    token = issuer.token(roles=["city-admin"], tenants=["default"])
    created = await gateway.post("/ngsi-ld/v1/entities", json=new, headers=bearer(token))
    assert created.status_code == 201, created.text
    assert (await http.get(f"/ngsi-ld/v1/entities/{new['id']}")).status_code == 200
    await http.delete(f"/ngsi-ld/v1/entities/{new['id']}")


# ---- solution providers: entity types and subscriptions ----------------------------------------


async def test_a_provider_writes_only_its_granted_types(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    token = provider(issuer, tenant)
    mine = entity("AirQualityObserved")
    assert (await gateway.post("/ngsi-ld/v1/entities", json=mine, headers=bearer(token, tenant))).status_code == 201
    change = {"no2": {"type": "Property", "value": 30}}
    patched = await gateway.patch(
        f"/ngsi-ld/v1/entities/{mine['id']}/attrs", json=change, headers=bearer(token, tenant)
    )
    assert patched.status_code == 204, patched.text
    # Not granted: another type, sent short, as a full IRI, or in a batch.
    foreign = entity("WeatherObserved")
    iri = {**entity("X"), "type": "https://smartdatamodels.org/dataModel.Weather/WeatherObserved"}
    for method, path, body in [("POST", "/ngsi-ld/v1/entities", foreign), ("POST", "/ngsi-ld/v1/entities", iri),
                               ("POST", "/ngsi-ld/v1/entityOperations/upsert", [entity(), foreign])]:  # fmt: skip
        answer = await gateway.request(method, path, json=body, headers=bearer(token, tenant))
        assert answer.status_code == 403, answer.text
    assert not await stored(http, tenant, str(foreign["id"]))
    assert not await stored(http, tenant, str(iri["id"]))
    # Deleting is for city admins.
    answer = await gateway.delete(f"/ngsi-ld/v1/entities/{mine['id']}", headers=bearer(token, tenant))
    assert answer.status_code == 403
    assert await stored(http, tenant, str(mine["id"]))


async def test_a_provider_cannot_change_an_entity_of_a_type_it_is_not_granted(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    theirs = entity("WeatherObserved")
    headers = {"NGSILD-Tenant": tenant, "Link": LINK}
    assert (await http.post("/ngsi-ld/v1/entities", json=theirs, headers=headers)).status_code == 201
    token = provider(issuer, tenant)
    change = {"no2": {"type": "Property", "value": 999}}
    attempts = [
        ("PATCH", f"/ngsi-ld/v1/entities/{theirs['id']}/attrs", change),
        ("POST", f"/ngsi-ld/v1/entities/{theirs['id']}/attrs", change),
        # Upsert under a granted type would add that type to the other entity and overwrite it.
        ("POST", "/ngsi-ld/v1/entityOperations/upsert", [{**theirs, "type": "AirQualityObserved", **change}]),
        ("POST", "/ngsi-ld/v1/entityOperations/update", [{**theirs, "type": "AirQualityObserved", **change}]),
    ]
    for method, path, body in attempts:
        answer = await gateway.request(method, path, json=body, headers=bearer(token, tenant))
        assert answer.status_code == 403, (method, path, answer.text)
    after = (await http.get(f"/ngsi-ld/v1/entities/{theirs['id']}", headers=headers)).json()
    assert after["no2"]["value"] == 22 and after["type"] == "WeatherObserved"


SUBSCRIPTION = {"type": "Subscription", "entities": [{"type": "AirQualityObserved"}],
                "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}}}  # fmt: skip


async def test_providers_manage_only_their_own_subscriptions(
    gateway: httpx.AsyncClient, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    alice = provider(issuer, tenant, subject="alice")
    bob = provider(issuer, tenant, subject="bob")
    created = await gateway.post("/ngsi-ld/v1/subscriptions", json=SUBSCRIPTION, headers=bearer(alice, tenant))
    assert created.status_code == 201, created.text
    alice_id = created.headers["location"].rsplit("/", 1)[-1]
    # Bob can neither see, change nor delete Alice's subscription, nor create one under her name.
    assert (await gateway.get(f"/ngsi-ld/v1/subscriptions/{alice_id}", headers=bearer(bob, tenant))).status_code == 403
    patch = {"notification": {"endpoint": {"uri": "http://127.0.0.1:9/stolen"}}}
    answer = await gateway.patch(f"/ngsi-ld/v1/subscriptions/{alice_id}", json=patch, headers=bearer(bob, tenant))
    assert answer.status_code == 403
    assert (
        await gateway.delete(f"/ngsi-ld/v1/subscriptions/{alice_id}", headers=bearer(bob, tenant))
    ).status_code == 403
    spoof = {**SUBSCRIPTION, "id": alice_id.rsplit(":", 1)[0] + ":mine"}
    assert (await gateway.post("/ngsi-ld/v1/subscriptions", json=spoof, headers=bearer(bob, tenant))).status_code == 403
    stored_sub = await http.get(f"/ngsi-ld/v1/subscriptions/{alice_id}", headers={"NGSILD-Tenant": tenant})
    assert stored_sub.status_code == 200
    assert stored_sub.json()["notification"]["endpoint"]["uri"] == "http://127.0.0.1:9/notify"
    # Listing shows each provider its own; the city admin sees all.
    bob_created = await gateway.post("/ngsi-ld/v1/subscriptions", json=SUBSCRIPTION, headers=bearer(bob, tenant))
    assert bob_created.status_code == 201
    bob_id = bob_created.headers["location"].rsplit("/", 1)[-1]
    bobs_list = await gateway.get("/ngsi-ld/v1/subscriptions", headers=bearer(bob, tenant))
    assert [s["id"] for s in bobs_list.json()] == [bob_id]
    admins_list = await gateway.get("/ngsi-ld/v1/subscriptions", headers=bearer(admin(issuer, tenant), tenant))
    assert {s["id"] for s in admins_list.json()} == {alice_id, bob_id}
    # Alice deletes her own; the city admin deletes Bob's.
    assert (
        await gateway.delete(f"/ngsi-ld/v1/subscriptions/{alice_id}", headers=bearer(alice, tenant))
    ).status_code == 204
    answer = await gateway.delete(f"/ngsi-ld/v1/subscriptions/{bob_id}", headers=bearer(admin(issuer, tenant), tenant))
    assert answer.status_code == 204
    assert (await http.get("/ngsi-ld/v1/subscriptions", headers={"NGSILD-Tenant": tenant})).json() == []


# ---- path tricks -------------------------------------------------------------------------------


async def raw_request(base_url: str, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Send a request line exactly as written (httpx would normalise the path) and return the status."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {address.netloc}", "Connection: close",
             f"Content-Length: {len(body)}", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items())]  # fmt: skip
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 20)
    writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    [
        "/ngsi-ld/v1/../v1/entities",
        "/ngsi-ld/v1/entities/../entities",
        "/ngsi-ld/v1/%2e%2e/v1/entities",
        "/ngsi-ld/v1/entities%2F",
        "/ngsi-ld/v1/entities%2f",
        "/ngsi-ld/v1/x/..%2F..%2Fv1%2Fentities",
        "/ngsi-ld/v1//entities",
        "//ngsi-ld/v1/entities",
        "/ngsi-ld/v1/entities%5C",
        "/ngsi-ld/v1\\entities",
        "/ngsi-ld/v1/entities%252F",
        "/ngsi-ld/v2/entities",
        "/ngsi-ld/%76%31/entities",
    ],
)
async def test_path_tricks_are_refused_and_write_nothing(
    target: str, gateway_url: str, http: httpx.AsyncClient, issuer: LocalIssuer, tenant: str
) -> None:
    new = entity()
    headers = {"Authorization": f"Bearer {admin(issuer, tenant)}", "NGSILD-Tenant": tenant, "Link": LINK}
    status = await raw_request(gateway_url, "POST", target, headers, orjson.dumps(new))
    assert status in (400, 404), (target, status)
    assert not await stored(http, tenant, str(new["id"]))

"""The shipped Keycloak realm gives tokens exactly the claims, roles and client the platform checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from api.auth import AuthSettings, Role
from api.auth.policy import TENANT_NAME

REALM_FILE = Path(__file__).resolve().parents[3] / "broker_config" / "keycloak" / "climaborough-realm.json"


def realm() -> dict[str, Any]:
    return json.loads(REALM_FILE.read_text())


def test_the_realm_defines_the_platform_roles_and_the_default_client() -> None:
    exported = realm()
    defaults = AuthSettings(_env_file=None)  # type: ignore[call-arg]
    assert exported["realm"] == defaults.keycloak_realm
    assert {role["name"] for role in exported["roles"]["realm"]} == {role.value for role in Role}
    client = next(c for c in exported["clients"] if c["clientId"] == defaults.keycloak_client_id)
    mappers = {m["config"].get("claim.name"): m for m in client["protocolMappers"]}
    for claim in ("tenants", "entityTypes"):
        assert mappers[claim]["protocolMapper"] == "oidc-usermodel-attribute-mapper"
        assert mappers[claim]["config"]["user.attribute"] == claim
        assert mappers[claim]["config"]["multivalued"] == "true"
        assert mappers[claim]["config"]["access.token.claim"] == "true"
    audience = next(m for m in client["protocolMappers"] if m["protocolMapper"] == "oidc-audience-mapper")
    assert audience["config"]["included.client.audience"] == defaults.keycloak_client_id


def test_sample_users_have_one_platform_role_valid_tenants_and_only_temporary_passwords() -> None:
    known = {role.value for role in Role}
    users = [u for u in realm()["users"] if "serviceAccountClientId" not in u]
    assert len(users) >= 6
    for user in users:
        assert len(known & set(user["realmRoles"])) == 1, user["username"]
        assert user["attributes"]["tenants"] and all(TENANT_NAME.fullmatch(t) for t in user["attributes"]["tenants"])
        assert all(credential["temporary"] for credential in user["credentials"]), user["username"]
    for client in realm()["clients"]:
        secret = client.get("secret")
        assert secret is None or secret.startswith("${"), "client secrets come from the environment"

"""Access tokens are checked like Keycloak's own adapters would, minus python-keycloak 7's lax defaults."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from jwcrypto import jwk, jwt
from keycloak import KeycloakOpenID

from api.auth import AuthSettings, IdentityProviderUnavailable, Role, Unauthorized, principal_from_claims
from api.auth.keycloak import KeycloakAuthenticator
from tests.api.security.issuer import CLIENT_ID, LocalIssuer


def settings_for(issuer: LocalIssuer, **extra: object) -> AuthSettings:
    return AuthSettings(
        auth="keycloak", keycloak_url=issuer.url, keycloak_realm=issuer.realm, keycloak_client_id=CLIENT_ID,
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
async def checker(issuer: LocalIssuer) -> AsyncIterator[KeycloakAuthenticator]:
    authenticator = KeycloakAuthenticator(settings_for(issuer))
    yield authenticator
    await authenticator.aclose()


def expired_claims(issuer: LocalIssuer, seconds_ago: int) -> dict[str, object]:
    now = int(time.time())
    return issuer.claims(roles=["viewer"], tenants=["rome"], exp=now - seconds_ago, iat=now - 600)


async def refused(checker: KeycloakAuthenticator, token: str, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        await checker.claims(token)
    assert reason in caught.value.detail


async def test_a_valid_token_gives_roles_tenants_and_granted_types(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    token = issuer.token(roles=["solution-provider"], tenants=["Bologna", "rome"], entity_types=["AirQualityObserved"])
    principal = principal_from_claims(await checker.claims(token))
    assert principal.roles == {Role.SOLUTION_PROVIDER}
    assert principal.tenants == {"bologna", "rome"}
    assert principal.entity_types == {"AirQualityObserved"}


async def test_a_token_expired_one_second_ago_is_refused_although_python_keycloak_would_take_it(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    token = issuer.sign(expired_claims(issuer, seconds_ago=30))
    # The pitfall: python-keycloak 7 allows 60 s after expiry unless told otherwise.
    lax = KeycloakOpenID(server_url=issuer.url + "/", realm_name=issuer.realm, client_id=CLIENT_ID)
    key = jwk.JWK(**issuer.signing_keys[-1].export_public(as_dict=True))
    assert (await lax.a_decode_token(token, key=key))["sub"]
    await lax.connection.aclose()
    await refused(checker, token, "Expired")
    await refused(checker, issuer.sign(expired_claims(issuer, seconds_ago=1 + 5)), "Expired")


async def test_a_check_claims_without_exp_would_turn_expiry_off_ours_always_checks_it(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    token = issuer.sign(expired_claims(issuer, seconds_ago=3600))
    lax = KeycloakOpenID(server_url=issuer.url + "/", realm_name=issuer.realm, client_id=CLIENT_ID)
    key = jwk.JWK(**issuer.signing_keys[-1].export_public(as_dict=True))
    # The pitfall: naming only `iss` in check_claims silently disables the expiry check.
    assert (await lax.a_decode_token(token, key=key, check_claims={"iss": issuer.issuer}))["sub"]
    await lax.connection.aclose()
    await refused(checker, token, "Expired")


async def test_only_the_configured_clock_skew_is_allowed_after_expiry(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    assert checker.settings.auth_clock_skew_s == 5
    assert (await checker.claims(issuer.sign(expired_claims(issuer, seconds_ago=2))))["sub"]
    await refused(checker, issuer.sign(expired_claims(issuer, seconds_ago=8)), "Expired")


async def test_a_token_without_exp_is_refused(checker: KeycloakAuthenticator, issuer: LocalIssuer) -> None:
    claims = issuer.claims(roles=["viewer"], tenants=["rome"])
    del claims["exp"]
    await refused(checker, issuer.sign(claims), "exp")


async def test_a_token_not_yet_valid_is_refused(checker: KeycloakAuthenticator, issuer: LocalIssuer) -> None:
    now = int(time.time())
    await refused(checker, issuer.sign(issuer.claims(roles=["viewer"], tenants=["rome"], nbf=now + 120)), "nbf")
    await refused(checker, issuer.sign(issuer.claims(roles=["viewer"], tenants=["rome"], iat=now + 120)), "iat")


async def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    forged = issuer.sign(issuer.claims(roles=["city-admin"], tenants=["rome"]), key=LocalIssuer.new_key(),
                         kid=issuer.signing_keys[-1]["kid"])  # fmt: skip
    await refused(checker, forged, "invalid token")


async def test_wrong_issuer_and_wrong_audience_are_refused(checker: KeycloakAuthenticator, issuer: LocalIssuer) -> None:
    other_realm = issuer.claims(roles=["viewer"], tenants=["rome"], iss=f"{issuer.url}/realms/other")
    await refused(checker, issuer.sign(other_realm), "iss")
    other_client = issuer.claims(roles=["viewer"], tenants=["rome"], azp="another-client", aud="account")
    await refused(checker, issuer.sign(other_client), "aud/azp")
    # The client id in `aud` (an audience mapper) is enough, whoever the authorized party is.
    audience = issuer.claims(roles=["viewer"], tenants=["rome"], azp="grafana", aud=["account", CLIENT_ID])
    assert (await checker.claims(issuer.sign(audience)))["azp"] == "grafana"


async def test_alg_none_and_hmac_with_the_public_key_are_refused(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    claims = issuer.claims(roles=["city-admin"], tenants=["rome"])
    kid = issuer.signing_keys[-1]["kid"]
    await refused(checker, LocalIssuer.unsigned(claims), "'none'")
    await refused(checker, LocalIssuer.unsigned(claims, {"alg": "none", "kid": kid}), "'none'")
    # Algorithm confusion: HS256 keyed with the realm's public key (which anyone can download).
    public_pem = issuer.signing_keys[-1].export_to_pem()
    secret = jwk.JWK(kty="oct", k=jwk.base64url_encode(public_pem))
    confused = jwt.JWT(header={"alg": "HS256", "kid": kid}, claims=claims)
    confused.make_signed_token(secret)
    await refused(checker, confused.serialize(), "'HS256'")


async def test_malformed_tokens_and_non_access_tokens_are_refused(
    checker: KeycloakAuthenticator, issuer: LocalIssuer
) -> None:
    for garbage in ("", "abc", "a.b", "a.b.c.d.e", "!!!.???.***", "eyJhbGciOiJSUzI1NiJ9.e30"):
        with pytest.raises(Unauthorized):
            await checker.claims(garbage)
    refresh = issuer.claims(roles=["city-admin"], tenants=["rome"], typ="Refresh")
    await refused(checker, issuer.sign(refresh), "not an access token")


async def test_the_key_set_is_downloaded_once_and_reused(issuer: LocalIssuer) -> None:
    checker = KeycloakAuthenticator(settings_for(issuer))
    before = issuer.cert_fetches
    for _ in range(20):
        await checker.claims(issuer.token(roles=["viewer"], tenants=["rome"]))
    assert issuer.cert_fetches - before == 1
    await checker.aclose()


async def test_an_unknown_kid_refreshes_the_key_set_so_rotated_keys_work(issuer: LocalIssuer) -> None:
    checker = KeycloakAuthenticator(settings_for(issuer, auth_jwks_refresh_interval_s=0))
    await checker.claims(issuer.token(roles=["viewer"], tenants=["rome"]))
    before = issuer.cert_fetches
    issuer.rotate()
    assert (await checker.claims(issuer.token(roles=["viewer"], tenants=["rome"])))["sub"]
    assert issuer.cert_fetches - before == 1
    await checker.aclose()


async def test_tokens_with_made_up_key_ids_cannot_flood_keycloak(issuer: LocalIssuer) -> None:
    checker = KeycloakAuthenticator(settings_for(issuer, auth_jwks_refresh_interval_s=60))
    await checker.claims(issuer.token(roles=["viewer"], tenants=["rome"]))
    before = issuer.cert_fetches
    stranger = LocalIssuer.new_key()
    for _ in range(25):
        token = issuer.sign(issuer.claims(roles=["city-admin"], tenants=["rome"]), key=stranger, kid=uuid.uuid4().hex)
        await refused(checker, token, "not one of the realm's signing keys")
    assert issuer.cert_fetches - before <= 1
    await checker.aclose()


async def test_an_unreachable_identity_provider_is_503_not_a_crash(issuer: LocalIssuer) -> None:
    checker = KeycloakAuthenticator(settings_for(issuer))
    issuer.available = False
    try:
        with pytest.raises(IdentityProviderUnavailable):
            await checker.claims(issuer.token(roles=["viewer"], tenants=["rome"]))
    finally:
        issuer.available = True
        await checker.aclose()

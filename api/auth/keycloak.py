"""Keycloak bearer tokens checked with python-keycloak against the realm's cached key set (JWKS).

python-keycloak 7 has three traps this module closes: `decode_token` downloads the key set on
every call unless given a key (we cache it and refresh only on an unknown `kid`, rate-limited);
it allows 60 s past `exp` by default (we pass our own small clock skew); and a `check_claims`
without `exp` turns expiry checking off (ours always names `exp`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any

from fastapi import Request
from jwcrypto import jwk
from keycloak import KeycloakOpenID

from api.auth.authenticator import bearer_token
from api.auth.errors import IdentityProviderUnavailable, Unauthorized
from api.auth.principal import Principal, principal_from_claims
from api.auth.settings import AuthSettings

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPE = "Bearer"
"""Keycloak's `typ` claim of access tokens (ID tokens say `ID`, refresh tokens `Refresh`)."""


class RealmKeys:
    """The realm's signing keys by key id, downloaded once and again only for an unknown `kid`.

    Refreshes are single-flight and at most one per `min_interval_s`, so a stream of tokens
    with made-up key ids costs Keycloak one request per interval, not one per token.
    """

    def __init__(self, openid: KeycloakOpenID, *, min_interval_s: float) -> None:
        self._openid = openid
        self._min_interval_s = min_interval_s
        self._keys: dict[str, jwk.JWK] = {}
        self._last_fetch = float("-inf")
        self._loaded = False
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many times the key set was downloaded (observable for tests and /health)."""

    async def key(self, kid: str) -> jwk.JWK:
        """The verification key named `kid`; `Unauthorized` when the realm has none by that id."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._keys.get(kid)
            if found is None and (not self._loaded or time.monotonic() - self._last_fetch >= self._min_interval_s):
                await self._refresh()
                found = self._keys.get(kid)
        if found is None:
            raise Unauthorized(f"the token's key id {kid!r} is not one of the realm's signing keys")
        return found

    async def _refresh(self) -> None:
        self._last_fetch = time.monotonic()
        self.fetches += 1
        try:
            document = await self._openid.a_certs()
        except Exception as error:  # any transport or HTTP failure of the identity provider
            log.warning("jwks fetch failed error=%r", error)
            if not self._loaded:
                raise IdentityProviderUnavailable(f"cannot fetch the realm's signing keys: {error}") from error
            return
        keys: dict[str, jwk.JWK] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or not entry.get("kid"):
                continue
            try:
                keys[str(entry["kid"])] = jwk.JWK(**entry)
            except Exception as error:  # one malformed key must not hide the others
                log.warning("jwks key skipped kid=%s error=%r", entry.get("kid"), error)
        self._keys = keys
        self._loaded = True
        log.info("jwks loaded kids=%s", sorted(keys))


class KeycloakAuthenticator:
    """The enabled implementation: RS256 access tokens of one Keycloak realm, for one client."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._openid = KeycloakOpenID(
            server_url=settings.keycloak_url.rstrip("/") + "/",
            realm_name=settings.keycloak_realm,
            client_id=settings.keycloak_client_id,
            timeout=10,
        )
        self.keys = RealmKeys(self._openid, min_interval_s=settings.auth_jwks_refresh_interval_s)
        log.info(
            "keycloak auth on issuer=%s client_id=%s algorithms=%s",
            settings.issuer, settings.keycloak_client_id, ",".join(settings.auth_algorithms),
        )  # fmt: skip

    async def principal(self, request: Request) -> Principal:
        return principal_from_claims(await self.claims(bearer_token(request)))

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token; `Unauthorized` naming the first check that failed."""
        header = _jose_header(token)
        algorithm = header.get("alg")
        if algorithm not in self.settings.auth_algorithms:
            allowed = ", ".join(self.settings.auth_algorithms)
            raise Unauthorized(f"token algorithm {algorithm!r} is not allowed (allowed: {allowed})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token has no key id ('kid')")
        key = await self.keys.key(kid)
        skew = self.settings.auth_clock_skew_s
        try:
            claims: dict[str, Any] = await self._openid.a_decode_token(
                token,
                key=key,
                algs=list(self.settings.auth_algorithms),
                # `exp` must be named here: without it jwcrypto skips the expiry check.
                check_claims={"exp": None, "iss": self.settings.issuer},
                leeway=skew,
                expected_type="JWS",
                strict_serialization=True,
            )
        except Exception as error:  # jwcrypto raises many types; every one means "not valid"
            raise Unauthorized(f"invalid token: {_reason(error)}") from error
        self._check_claims(claims, skew)
        return claims

    def _check_claims(self, claims: dict[str, Any], skew: float) -> None:
        """What jwcrypto leaves to us: `nbf`, `iat`, token type, subject, audience or authorized party."""
        now = time.time()
        not_before = claims.get("nbf")
        if not_before is not None and (not isinstance(not_before, int | float) or not_before > now + skew):
            raise Unauthorized("the token is not valid yet (nbf)")
        issued_at = claims.get("iat")
        if issued_at is not None and (not isinstance(issued_at, int | float) or issued_at > now + skew):
            raise Unauthorized("the token was issued in the future (iat)")
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise Unauthorized(f"not an access token (typ {claims.get('typ')!r}, expected {ACCESS_TOKEN_TYPE!r})")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthorized("the token has no subject (sub)")
        client_id = self.settings.keycloak_client_id
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if client_id not in audiences and claims.get("azp") != client_id:
            raise Unauthorized(f"the token is not meant for client {client_id!r} (aud/azp)")

    async def aclose(self) -> None:
        await self._openid.connection.aclose()


def _jose_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS (three base64url parts), before any key is looked up."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise Unauthorized("malformed token: expected a compact JWS (header.payload.signature)")
    try:
        encoded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as error:
        raise Unauthorized("malformed token: the header is not base64url JSON") from error
    if not isinstance(header, dict):
        raise Unauthorized("malformed token: the header is not a JSON object")
    return header


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."

"""The one authentication interface, chosen once per service from `CLIMABOROUGH_AUTH`: Keycloak or off."""

from __future__ import annotations

import logging
from typing import Protocol

from fastapi import Request

from api.auth.errors import Unauthorized
from api.auth.principal import Principal, Role
from api.auth.settings import AuthSettings

log = logging.getLogger(__name__)


class Authenticator(Protocol):
    """Turns a request's bearer token into a `Principal`, or raises `Unauthorized`."""

    settings: AuthSettings

    async def principal(self, request: Request) -> Principal:
        """The caller of `request` (usable as a FastAPI dependency)."""
        ...

    async def aclose(self) -> None:
        """Release HTTP clients."""
        ...


class AuthOff:
    """The disabled implementation: every caller is an unrestricted city administrator.

    Handlers and the gateway run the same policy code; it simply never refuses.
    """

    def __init__(self, settings: AuthSettings, *, service: str) -> None:
        self.settings = settings
        self._principal = Principal(
            subject="anonymous",
            issuer="",
            roles=frozenset({Role.CITY_ADMIN}),
            tenants=frozenset(),
            all_tenants=True,
            all_entity_types=True,
        )
        log.warning(
            "AUTHENTICATION IS OFF service=%s: every request is accepted without a token "
            "(set CLIMABOROUGH_AUTH=keycloak anywhere but a laptop bound to 127.0.0.1)",
            service,
        )

    async def principal(self, request: Request) -> Principal:
        return self._principal

    async def aclose(self) -> None:
        return None


def bearer_token(request: Request) -> str:
    """The token of the one `Authorization: Bearer ...` header (RFC 6750 2.1), else `Unauthorized`."""
    values = request.headers.getlist("authorization")
    if not values:
        raise Unauthorized("no bearer token: send 'Authorization: Bearer <access token>'")
    if len(values) > 1:
        raise Unauthorized("more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <access token>'")
    return token


def authenticator_from_settings(settings: AuthSettings, *, service: str) -> Authenticator:
    """The authenticator `settings.auth` names; `off` logs a loud warning naming `service`."""
    if settings.auth == "keycloak":
        from api.auth.keycloak import KeycloakAuthenticator

        return KeycloakAuthenticator(settings)
    return AuthOff(settings, service=service)

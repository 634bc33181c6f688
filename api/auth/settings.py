"""Authentication settings of every service that checks tokens: `CLIMABOROUGH_AUTH` and the Keycloak variables."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    """Which authenticator a service uses and how it reaches the Keycloak realm.

    `auth` picks the implementation once (`off` or `keycloak`). `keycloak_url` is where the
    service fetches the realm's keys; `keycloak_issuer` is the `iss` tokens must carry when
    the public URL differs from the internal one (Docker), else `<keycloak_url>/realms/<realm>`.
    `keycloak_client_id` must be in the token's `aud` or be its `azp`. `auth_clock_skew_s` is
    the only slack allowed on `exp`/`nbf`/`iat`; `auth_jwks_refresh_interval_s` is the least time
    between two key-set downloads caused by unknown key ids (so forged `kid`s cannot flood
    Keycloak). `auth_default_tenant` is the name a `tenants` claim uses for the default tenant
    (requests without `NGSILD-Tenant`).
    """

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    auth: Literal["off", "keycloak"] = "off"
    keycloak_url: str = "http://127.0.0.1:8080"
    keycloak_realm: str = "climaborough"
    keycloak_client_id: str = "climaborough"
    keycloak_issuer: str | None = None
    auth_clock_skew_s: float = 5.0
    auth_jwks_refresh_interval_s: float = 30.0
    auth_default_tenant: str = "default"
    auth_algorithms: tuple[str, ...] = ("RS256",)

    @property
    def issuer(self) -> str:
        """The `iss` every accepted token must carry."""
        return self.keycloak_issuer or f"{self.keycloak_url.rstrip('/')}/realms/{self.keycloak_realm}"

"""Who is calling: subject, roles and tenants read from a validated token, and what each role may do."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """The realm roles the platform knows (Keycloak `realm_access.roles`)."""

    CITY_ADMIN = "city-admin"
    SOLUTION_PROVIDER = "solution-provider"
    VIEWER = "viewer"


class Access(StrEnum):
    """What a request does to a tenant's data."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    SUBSCRIPTIONS = "subscriptions"
    ADMINISTER = "administer"
    """Tenant set-up: device provisioning, context source registrations, hosted @contexts."""


ROLE_ACCESS: dict[Role, frozenset[Access]] = {
    Role.CITY_ADMIN: frozenset(Access),
    # Writes only of its granted entity types and only its own subscriptions: the gateway
    # narrows these two further per request.
    Role.SOLUTION_PROVIDER: frozenset({Access.READ, Access.WRITE, Access.SUBSCRIPTIONS}),
    Role.VIEWER: frozenset({Access.READ}),
}


@dataclass(frozen=True)
class Principal:
    """The caller as the token describes it.

    `tenants` are lower-cased tenant names (the broker lower-cases them too); `all_tenants`
    and `all_entity_types` are only set by the disabled authenticator. `entity_types` are the
    type names or IRIs a solution provider may write (claim `entityTypes`).
    """

    subject: str
    issuer: str
    roles: frozenset[Role]
    tenants: frozenset[str]
    entity_types: frozenset[str] = frozenset()
    all_tenants: bool = False
    all_entity_types: bool = False
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def may(self, access: Access) -> bool:
        """Whether any of the caller's roles allows `access`."""
        return any(access in ROLE_ACCESS[role] for role in self.roles)

    def has_tenant(self, tenant: str) -> bool:
        """Whether the caller may use `tenant` (already lower-cased)."""
        return self.all_tenants or tenant in self.tenants

    @property
    def is_city_admin(self) -> bool:
        return Role.CITY_ADMIN in self.roles

    @property
    def owner_tag(self) -> str:
        """A stable, opaque tag of this caller for naming what it owns (its subscriptions).

        Derived from issuer and subject (Keycloak's user id), so it survives renames and
        cannot be chosen by the caller.
        """
        digest = hashlib.sha256(f"{self.issuer}\n{self.subject}".encode()).hexdigest()
        return f"owner-{digest[:24]}"


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """The principal of a validated token: roles the platform knows, tenants, granted entity types.

    Unknown roles are ignored; a `tenants` claim that is not a list of strings grants nothing.
    """
    realm_access = claims.get("realm_access")
    raw_roles = realm_access.get("roles") if isinstance(realm_access, dict) else None
    known = {role.value: role for role in Role}
    roles = frozenset(known[name] for name in _strings(raw_roles) if name in known)
    tenants = frozenset(name.lower() for name in _strings(claims.get("tenants")))
    entity_types = frozenset(_strings(claims.get("entityTypes")))
    return Principal(
        subject=str(claims.get("sub") or ""),
        issuer=str(claims.get("iss") or ""),
        roles=roles,
        tenants=tenants,
        entity_types=entity_types,
        claims=claims,
    )


def _strings(value: Any) -> list[str]:
    """A claim as a list of strings: Keycloak sends a single-valued attribute as a string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []

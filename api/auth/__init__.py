"""Authentication (Keycloak bearer tokens or off) and the tenant/role policy every protected API applies."""

from api.auth.authenticator import Authenticator, AuthOff, authenticator_from_settings, bearer_token
from api.auth.errors import Forbidden, IdentityProviderUnavailable, Unauthorized
from api.auth.policy import authorize, requested_tenant, require_tenant_access
from api.auth.principal import Access, Principal, Role, principal_from_claims
from api.auth.problems import problem_response
from api.auth.settings import AuthSettings

__all__ = [
    "Access",
    "AuthOff",
    "AuthSettings",
    "Authenticator",
    "Forbidden",
    "IdentityProviderUnavailable",
    "Principal",
    "Role",
    "Unauthorized",
    "authenticator_from_settings",
    "authorize",
    "bearer_token",
    "principal_from_claims",
    "problem_response",
    "requested_tenant",
    "require_tenant_access",
]

"""Tenant and role checks every protected API runs, and the FastAPI dependency that applies them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import Request

from api.auth.authenticator import Authenticator
from api.auth.errors import Forbidden
from api.auth.principal import Access, Principal
from ngsi.errors import BadRequestData

TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")
"""Tenant names the broker accepts (docs/internals.md "Tenants")."""

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def requested_tenant(request: Request, header: str, *, default_tenant: str) -> str:
    """The tenant a request asks for (lower-cased), `default_tenant` without the header.

    Exactly one header is accepted: with two, a checker and the service behind it could read
    different ones.
    """
    values = request.headers.getlist(header)
    if len(values) > 1:
        raise BadRequestData(f"more than one {header} header", title="Invalid tenant")
    value = values[0].strip() if values else ""
    if not value:
        return default_tenant
    if not TENANT_NAME.fullmatch(value):
        raise BadRequestData(f"Invalid {header} {value!r}: use 1 to 48 letters, digits, '_' or '-'",
                             title="Invalid tenant name")  # fmt: skip
    return value.lower()


def authorize(principal: Principal, tenant: str, access: Access) -> None:
    """`Forbidden` unless the caller may use `tenant` and one of its roles allows `access`."""
    if not principal.has_tenant(tenant):
        raise Forbidden(f"tenant {tenant!r} is not granted to this caller", tenant=tenant)
    if not principal.may(access):
        roles = ", ".join(sorted(role.value for role in principal.roles)) or "none"
        raise Forbidden(f"{access.value} access is not allowed to roles: {roles}", tenant=tenant)


def require_tenant_access(
    authenticator: Authenticator,
    *,
    tenant_header: str | None = None,
    fixed_tenant: str | None = None,
    write_access: Access = Access.WRITE,
) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: authenticate, then allow reads (GET/HEAD/OPTIONS) to every role and
    other methods to roles with `write_access`, always within the caller's tenants.

    The tenant is the one `tenant_header` names (IoT agent provisioning: `fiware-service`), or
    `fixed_tenant` for a service bound to one tenant (the platform API's `CLIMABOROUGH_TENANT`),
    the default tenant when neither is given. The gateway applies finer NGSI-LD rules itself.
    """
    default_tenant = authenticator.settings.auth_default_tenant

    async def tenant_access(request: Request) -> Principal:
        principal = await authenticator.principal(request)
        if tenant_header is not None:
            tenant = requested_tenant(request, tenant_header, default_tenant=default_tenant)
        else:
            tenant = (fixed_tenant or default_tenant).lower()
        access = Access.READ if request.method in READ_METHODS else write_access
        authorize(principal, tenant, access)
        return principal

    return tenant_access

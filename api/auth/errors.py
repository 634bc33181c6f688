"""Authentication and authorization failures, in the project's one error hierarchy (`ngsi.errors.NgsiError`)."""

from __future__ import annotations

from ngsi.errors import NgsiError

# GS CIM 009 Table 5.5.2-1 has no error type for 401/403; these keep the same ProblemDetails
# shape and URI family so that clients parse them like every other NGSI-LD error.


class Unauthorized(NgsiError):
    """No bearer token, or one that is not valid (bad signature, expired, wrong issuer or audience)."""

    status = 401
    title = "Unauthorized"

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` value (RFC 6750 3)."""
        description = self.detail.replace('"', "'")
        return f'Bearer error="invalid_token", error_description="{description}"'


class Forbidden(NgsiError):
    """A valid token whose roles or tenants do not allow this request."""

    status = 403
    title = "Forbidden"


class IdentityProviderUnavailable(NgsiError):
    """The realm's key set could not be fetched and no cached key can check the token."""

    status = 503
    title = "Identity provider unavailable"

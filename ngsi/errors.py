"""NGSI-LD error hierarchy: each error knows its HTTP status and renders as RFC 7807 ProblemDetails."""

from __future__ import annotations

from typing import Any, ClassVar

ETSI_ERRORS_BASE = "https://uri.etsi.org/ngsi-ld/errors/"

PROBLEM_JSON = "application/json"
"""Media type of error bodies; Orion-LD answers errors as plain JSON (RFC 7807 allows problem+json too)."""


class NgsiError(Exception):
    """Base of every error the NGSI-LD API reports.

    `detail` says precisely what was wrong (which attribute, which value). Extra keyword
    arguments become extra ProblemDetails members (RFC 7807 3.2), e.g. `attribute="no2"`.
    """

    status: int = 500
    type: str = ETSI_ERRORS_BASE + "InternalError"
    title: str = "Internal error"
    name: ClassVar[str] = "InternalError"

    def __init__(
        self,
        detail: str = "",
        *,
        title: str | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        """Return the RFC 7807 body: type, title, status, detail, plus any extra members."""
        problem: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        for key, value in self.extra.items():
            if key not in problem and value is not None:
                problem[key] = value
        return problem

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, detail={self.detail!r})"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__
        if "type" not in cls.__dict__:
            cls.type = ETSI_ERRORS_BASE + cls.__name__


# GS CIM 009 v1.8 5.5.2 (Table 5.5.2-1): the ETSI error types and their HTTP status codes.


class InvalidRequest(NgsiError):
    """The request is not well formed: invalid JSON, bad query parameters, wrong headers."""

    status = 400
    title = "Invalid request"


class BadRequestData(NgsiError):
    """The request is well formed but its content breaks NGSI-LD rules."""

    status = 400
    title = "Bad request data"


class AlreadyExists(NgsiError):
    """The entity, subscription or registration being created exists already."""

    status = 409
    title = "Already exists"


class OperationNotSupported(NgsiError):
    """The operation is not supported by this broker or on this resource."""

    status = 422
    title = "Operation not supported"


class ResourceNotFound(NgsiError):
    """The referred entity, attribute, subscription or context does not exist."""

    status = 404
    title = "Resource not found"


class InternalError(NgsiError):
    """Something broke inside the broker; never used for bad input."""

    status = 500
    title = "Internal error"


class TooComplexQuery(NgsiError):
    """The query is too complex to be answered."""

    status = 403
    title = "Too complex query"


class TooManyResults(NgsiError):
    """The query would give more results than the broker is willing to return."""

    status = 403
    title = "Too many results"


class LdContextNotAvailable(NgsiError):
    """A remote JSON-LD @context could not be retrieved.

    GS CIM 009 5.5.2: 503; callers may pass `status=504` when the fetch timed out
    (gateway timeout).
    """

    status = 503
    title = "JSON-LD @context not available"


class NoMultiTenantSupport(NgsiError):
    """The broker does not support tenants."""

    status = 501
    title = "No multi-tenant support"


class NonexistentTenant(NgsiError):
    """The tenant named in NGSILD-Tenant does not exist (reads never create tenants)."""

    status = 404
    title = "Nonexistent tenant"


# HTTP-level errors (GS CIM 009 6.3.4-6.3.6), reported with URIs of the same family.


class UnsupportedMediaType(NgsiError):
    """The request body's Content-Type is not application/json, application/ld+json or merge-patch."""

    status = 415
    title = "Unsupported media type"


class NotAcceptable(NgsiError):
    """No representation matches the request's Accept header."""

    status = 406
    title = "Not acceptable"


class PayloadTooLarge(NgsiError):
    """The request body is larger than the broker accepts."""

    status = 413
    title = "Payload too large"


class MethodNotAllowed(NgsiError):
    """The HTTP method is not allowed on this resource."""

    status = 405
    title = "Method not allowed"


class Conflict(NgsiError):
    """The request conflicts with the current state of the resource (e.g. a hosted context in use)."""

    status = 409
    title = "Conflict"


ERROR_TYPES: dict[str, type[NgsiError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        BadRequestData,
        AlreadyExists,
        OperationNotSupported,
        ResourceNotFound,
        InternalError,
        TooComplexQuery,
        TooManyResults,
        LdContextNotAvailable,
        NoMultiTenantSupport,
        NonexistentTenant,
        UnsupportedMediaType,
        NotAcceptable,
        PayloadTooLarge,
        MethodNotAllowed,
        Conflict,
    )
}
"""Error classes by ETSI name, e.g. for a client that turns a ProblemDetails body back into an exception."""


def error_from_problem(problem: dict[str, Any], status: int | None = None) -> NgsiError:
    """Rebuild an `NgsiError` from a ProblemDetails body (as a client receives it)."""
    type_uri = str(problem.get("type", ""))
    name = type_uri.rsplit("/", 1)[-1]
    cls = ERROR_TYPES.get(name, NgsiError)
    extra = {k: v for k, v in problem.items() if k not in {"type", "title", "status", "detail"}}
    error = cls(
        str(problem.get("detail") or problem.get("title") or ""),
        title=problem.get("title") or None,
        status=status or problem.get("status") or None,
        **extra,
    )
    if cls is NgsiError and type_uri:
        error.type = type_uri
    return error

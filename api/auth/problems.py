"""ProblemDetails answers for errors raised while authenticating and authorizing (401 adds its Bearer challenge)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from api.auth.errors import Unauthorized
from ngsi.errors import PROBLEM_JSON, NgsiError


def problem_response(error: NgsiError) -> JSONResponse:
    """`error` as an RFC 7807 body; `Unauthorized` also gets `WWW-Authenticate` (RFC 6750 3)."""
    headers = {"WWW-Authenticate": error.challenge} if isinstance(error, Unauthorized) else None
    return JSONResponse(error.to_problem(), status_code=error.status, headers=headers, media_type=PROBLEM_JSON)

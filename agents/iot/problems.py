"""Error answers of the agent's HTTP APIs: ProblemDetails that also carry FIWARE IoT Agent `name` and `message`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ngsi.errors import BadRequestData, NgsiError


def problem_response(error: NgsiError) -> JSONResponse:
    """The error as ProblemDetails plus `{"name": ..., "message": ...}` as FIWARE IoT Agents answer."""
    body = error.to_problem()
    body.setdefault("name", type(error).__name__)
    body["message"] = error.detail
    # A 401 carries its Bearer challenge (RFC 6750 3); the error names it, as agents/ does not import api/.
    challenge = getattr(error, "challenge", None)
    headers = {"WWW-Authenticate": challenge} if isinstance(challenge, str) else None
    return JSONResponse(body, status_code=error.status, headers=headers)


def validation_problem(error: ValidationError | RequestValidationError, what: str) -> BadRequestData:
    """A pydantic validation failure as a 400 naming the first field that is wrong."""
    first: dict[str, Any] = dict(error.errors()[0]) if error.errors() else {}
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "invalid")
    return BadRequestData(f"{what}: {location}: {message}" if location else f"{what}: {message}", name="WRONG_SYNTAX")


def install_problem_handlers(app: FastAPI) -> None:
    """Every NgsiError and request validation error becomes a precise 4xx answer, never a 500."""

    async def on_ngsi_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, NgsiError)
        return problem_response(error)

    async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return problem_response(validation_problem(error, "invalid request"))

    app.add_exception_handler(NgsiError, on_ngsi_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)

"""The platform API app (FastAPI, :8000): twin and KPI slices and the NGSI-LD gateway behind one authenticator."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import Access, authenticator_from_settings, problem_response, require_tenant_access
from api.gateway import install_gateway
from api.kpi.routes import router as kpi_router
from api.kpi.service import KpiApi
from api.settings import ApiSettings
from api.twin.routes import router as twin_router
from api.twin.service import TwinApi
from ngsi.client import AsyncBrokerClient
from ngsi.errors import BadRequestData, InternalError, MethodNotAllowed, NgsiError, ResourceNotFound
from smart_data_models.models import KPI_CONTEXT
from twin.service import StationReader
from twin.store import ModelStore

log = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the API; broker clients open in the lifespan.

    One authenticator (`CLIMABOROUGH_AUTH`) guards the twin and KPI routes, bound to
    `settings.tenant` (reads for every role of the city, and so is a what-if question: it changes
    nothing; POST elsewhere for writers), and the gateway
    (`/ngsi-ld/...` proxied to `settings.broker_url`); `/health` and `/version` stay open.
    """
    started_at = datetime.now(UTC)
    authenticator = authenticator_from_settings(settings, service="api")
    access = require_tenant_access(authenticator, fixed_tenant=settings.tenant, write_access=Access.WRITE)
    # POST /twin/what-if computes an answer and stores nothing: every role of the city may ask.
    ask = require_tenant_access(authenticator, fixed_tenant=settings.tenant, write_access=Access.READ)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = settings.api_request_timeout_s
        reader = StationReader(settings.broker_url, tenant=settings.tenant, timeout=timeout)
        kpi_client = AsyncBrokerClient(
            settings.broker_url, tenant=settings.tenant, context=KPI_CONTEXT, timeout=timeout
        )
        app.state.twin = TwinApi(ModelStore(settings.model_dir), reader, settings.twin_target)
        app.state.kpi = KpiApi(kpi_client)
        try:
            yield
        finally:
            await reader.aclose()
            await kpi_client.aclose()
            await gateway.broker.aclose()
            await gateway.contexts.aclose()
            await authenticator.aclose()

    app = FastAPI(
        title="climaborough platform API",
        version=API_VERSION,
        description="Digital twin what-if scenarios and forecasts, KPIs; NGSI-LD ProblemDetails errors.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    guarded = [Depends(access)]
    app.include_router(twin_router, dependencies=[Depends(ask)])
    app.include_router(kpi_router, dependencies=guarded)
    gateway = install_gateway(app, settings, authenticator)

    @app.exception_handler(NgsiError)
    async def ngsi_error(request: Request, error: NgsiError) -> Response:
        return problem_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"Invalid {where}: {first.get('msg', 'invalid value')}"
        return problem_response(BadRequestData(detail, parameter=where))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            return problem_response(ResourceNotFound(f"No such resource: {request.url.path}"))
        if error.status_code == 405:
            return problem_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return problem_response(NgsiError(str(error.detail), status=error.status_code))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error method=%s path=%s", request.method, request.url.path)
        return problem_response(InternalError(f"{type(error).__name__}: {error}"))

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round((datetime.now(UTC) - started_at).total_seconds(), 3)}

    @app.get("/version", tags=["service"])
    async def version() -> dict[str, Any]:
        return {"name": "climaborough-api", "version": API_VERSION, "broker": settings.broker_url,
                "auth": settings.auth}  # fmt: skip

    return app

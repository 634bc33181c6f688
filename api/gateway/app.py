"""The gateway as an app of its own (`create_gateway_app(settings)`), and `install_gateway` for the platform API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.auth.authenticator import Authenticator, authenticator_from_settings
from api.auth.problems import problem_response
from api.gateway.proxy import BrokerProxy
from api.gateway.routes import gateway_router
from api.gateway.service import Gateway
from api.gateway.settings import GatewaySettings
from ngsi.contexts import ContextStore
from ngsi.errors import NgsiError

VERSION = "1.0.0"


def install_gateway(app: FastAPI, settings: GatewaySettings, authenticator: Authenticator) -> Gateway:
    """Add the `/ngsi-ld/...` gateway routes to `app`; the caller closes `gateway.broker` on shutdown."""
    gateway = Gateway(
        settings,
        BrokerProxy(settings.broker_url, timeout_s=settings.gateway_broker_timeout_s),
        ContextStore(),
    )
    app.include_router(gateway_router(gateway, authenticator))
    return gateway


def install_problem_handler(app: FastAPI) -> None:
    """Every `NgsiError` (401 and 403 included) answers as ProblemDetails."""

    async def on_ngsi_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, NgsiError)
        return problem_response(error)

    app.add_exception_handler(NgsiError, on_ngsi_error)


def create_gateway_app(settings: GatewaySettings, authenticator: Authenticator | None = None) -> FastAPI:
    """The policy-enforcing reverse proxy in front of `settings.broker_url`, with `/health` and `/version`."""
    auth = authenticator or authenticator_from_settings(settings, service="gateway")
    holder: list[Gateway] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for gateway in holder:
                await gateway.broker.aclose()
                await gateway.contexts.aclose()
            await auth.aclose()

    app = FastAPI(title="climaborough NGSI-LD gateway", version=VERSION, lifespan=lifespan)
    install_problem_handler(app)
    holder.append(install_gateway(app, settings, auth))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "auth": settings.auth, "broker": settings.broker_url}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION, "name": "climaborough-gateway"}

    return app

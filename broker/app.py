"""The embedded NGSI-LD broker's FastAPI application: wiring, error rendering, health and version."""

from __future__ import annotations

import gc
import logging
import platform
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.batch.routes import BatchEndpoints, BatchFastLane, batch_router
from broker.batch.service import BatchService
from broker.changes import ChangeSink
from broker.contexts.routes import contexts_router
from broker.contexts.service import UserContextService
from broker.csource import RegistrationService, csource_router
from broker.discovery.routes import discovery_router
from broker.discovery.service import DiscoveryService
from broker.entities.routes import AttributeUpdateFastLane, AttributeUpdates, entities_router
from broker.entities.service import EntityService
from broker.negotiation import problem_response
from broker.settings import BrokerSettings
from broker.storage.tenants import TenantDatabases
from broker.subscriptions import (
    NotifierProcess,
    SubscriptionRegistry,
    SubscriptionService,
    SubscriptionSink,
    subscriptions_router,
)
from broker.temporal import TemporalService, temporal_router
from ngsi.contexts import CORE_CONTEXT_URL, ContextStore
from ngsi.errors import (
    BadRequestData,
    InternalError,
    MethodNotAllowed,
    NgsiError,
    ResourceNotFound,
)

log = logging.getLogger(__name__)

BROKER_VERSION = "0.1.0"
API_PREFIX = "/ngsi-ld/v1"


# Requests allocate tens of thousands of short-lived containers (a 500-entity batch: its parsed JSON,
# expanded docs, history rows), nearly all freed by reference counting when the request ends. With
# CPython's default first-generation threshold (700) the cycle collector traversed them several
# times while they were alive, 10-15% of a batch's CPU; with this one a request rarely meets a collection.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_garbage_collector() -> None:
    """Move what start-up built (modules, routes, contexts) out of the collector's sight; collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class TrailingSlashTolerance:
    """Serves `/path/` exactly like `/path` (Orion-LD tolerates trailing slashes), no redirect.

    Also answers 400 to a NUL character in the path or query: PostgreSQL cannot take U+0000 in
    text, so such input would otherwise fail deep in a query instead of at the edge.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if "\x00" in path or b"%00" in scope.get("query_string", b"").lower():
                response = problem_response(BadRequestData("The URL contains a NUL (U+0000) character"))
                await response(scope, receive, send)
                return
            if len(path) > 1 and path.endswith("/"):
                scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


class BrokerApplication(FastAPI):
    """FastAPI with the broker's own ASGI layers outside its middleware stack.

    The write fast lanes (broker.batch.routes.BatchFastLane, broker.entities.routes.AttributeUpdateFastLane)
    render their own errors; inside FastAPI's stack every request also passed its error, telemetry (an
    environment lookup per request) and body-limit layers, about 5% of a single-entity write's CPU.
    """

    def __init__(self, *, outer_layers: list[Callable[[ASGIApp], ASGIApp]], **options: Any) -> None:
        super().__init__(**options)
        self.outer_layers = outer_layers
        """Outermost first."""

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for layer in reversed(self.outer_layers):
            app = layer(app)
        return app


def create_app(settings: BrokerSettings, *, change_sink: ChangeSink | None = None) -> FastAPI:
    """Build the broker app; storage opens in the lifespan, so nothing connects at import time."""
    databases = TenantDatabases(settings)
    contexts = ContextStore(
        fetch_timeout=settings.context_fetch_timeout_s,
        hosted_base_url=f"http://{settings.host}:{settings.port}{API_PREFIX}/jsonldContexts/",
    )
    subscription_registry = SubscriptionRegistry(contexts)
    notifier = NotifierProcess(settings)  # delivery runs in its own process (broker/subscriptions/notifier/process.py)
    sink = change_sink or SubscriptionSink(subscription_registry, notifier.watch_soon)
    user_contexts = UserContextService(databases, contexts)

    async def keep_context(context: Any) -> str:
        return (await user_contexts.add_implicit(context)).url

    subscription_service = SubscriptionService(databases, subscription_registry, notifier, keep_context)
    started_at = datetime.now(UTC)

    entity_service = EntityService(databases, sink, settings)
    batch_service = BatchService(databases, sink, entity_service)
    discovery_service = DiscoveryService(databases)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await databases.open()
        await user_contexts.load()
        await notifier.start()
        tune_garbage_collector()
        try:
            yield
        finally:
            await notifier.stop()
            await databases.close()

    # The fast lanes' handlers are bound below, once their services exist.
    outer_layers: list[Callable[[ASGIApp], ASGIApp]] = []
    app = BrokerApplication(title="climaborough NGSI-LD broker", version=BROKER_VERSION, lifespan=lifespan,
                            redirect_slashes=False, outer_layers=outer_layers)
    app.state.settings = settings
    app.state.databases = databases

    @app.exception_handler(NgsiError)
    async def ngsi_error(request: Request, error: NgsiError) -> Response:
        return problem_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        # ("query", "limit") → "limit": the parameter's name as the client sent it.
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return problem_response(
            BadRequestData(f"Invalid {where}: {first.get('msg', 'invalid value')}", parameter=where)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            return problem_response(ResourceNotFound(f"No such resource: {request.url.path}"))
        if error.status_code == 405:
            # RFC 9110 15.5.6: a 405 names the methods the resource allows (of every route on the path).
            allowed = [method for method in ("GET", "POST", "PUT", "PATCH", "DELETE") if any(
                route.matches({"type": "http", "path": request.url.path, "method": method, "root_path": ""})[0]
                == Match.FULL for route in app.router.routes)]
            answer = problem_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
            if allowed:
                answer.headers["Allow"] = ", ".join(allowed)
            return answer
        return problem_response(NgsiError(str(error.detail), status=error.status_code))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error method=%s path=%s", request.method, request.url.path)
        return problem_response(InternalError(f"{type(error).__name__}: {error}"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round((datetime.now(UTC) - started_at).total_seconds(), 3),
                # Group commit (broker/entities/write_groups.py): transactions of single-entity writes so far.
                "write_groups": {"groups": entity_service.groups.groups, "writes": entity_service.groups.writes,
                                 "queued": entity_service.groups.queued,
                                 "seconds": {stage: round(seconds, 6)
                                             for stage, seconds in entity_service.groups.stage_s.items()}}}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        # Shaped like Orion-LD's GET /version.
        return {
            "Orion-LD version": f"climaborough-{BROKER_VERSION}",
            "based on orion": "compatible",
            "kbase version": "n/a",
            "kalloc version": "n/a",
            "khash version": "n/a",
            "kjson version": "n/a",
            "microhttpd version": "n/a",
            "rapidjson version": "n/a",
            "libcurl version": "n/a",
            "libuuid version": "n/a",
            "mongocpp version": "n/a",
            "postgres libpq version": "psycopg3",
            "branch": "main",
            "cached subscriptions": 0,
            "Next File Descriptor": 0,
            "uptime": str(datetime.now(UTC) - started_at),
            "Core Context": CORE_CONTEXT_URL,
            "python": platform.python_version(),
            "version": BROKER_VERSION,
        }

    attribute_updates = AttributeUpdates(entity_service, contexts, settings)
    app.include_router(entities_router(entity_service, contexts, settings, attribute_updates), prefix=API_PREFIX)
    batch_endpoints = BatchEndpoints(batch_service, contexts, settings)
    app.include_router(batch_router(batch_endpoints), prefix=API_PREFIX)
    app.include_router(discovery_router(discovery_service, contexts), prefix=API_PREFIX)
    app.include_router(contexts_router(user_contexts, settings), prefix=API_PREFIX)
    app.include_router(temporal_router(TemporalService(databases), contexts, settings), prefix=API_PREFIX)
    app.include_router(csource_router(RegistrationService(databases), contexts, settings), prefix=API_PREFIX)
    app.include_router(subscriptions_router(subscription_service, settings), prefix=API_PREFIX)
    outer_layers += [
        TrailingSlashTolerance,  # first, so the fast lanes see clean paths
        lambda inner: AttributeUpdateFastLane(inner, updates=attribute_updates, prefix=API_PREFIX),
        lambda inner: BatchFastLane(inner, endpoints=batch_endpoints, prefix=API_PREFIX),
    ]
    return app



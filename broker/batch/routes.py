"""HTTP routes of the batch entity operations (GS CIM 009 6.14-6.17, 6.31)."""

from __future__ import annotations

import logging
from typing import get_args

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.batch.service import BatchKind, BatchService
from broker.negotiation import json_response, problem_response, read_payload
from broker.settings import BrokerSettings
from ngsi.contexts import ContextStore, TermMap
from ngsi.errors import BadRequestData, InternalError, NgsiError

log = logging.getLogger(__name__)

BATCH_KINDS: tuple[BatchKind, ...] = get_args(BatchKind)


class BatchEndpoints:
    """What every batch endpoint does: read the payload and options, run the batch, answer 201/204/207."""

    def __init__(self, service: BatchService, contexts: ContextStore, settings: BrokerSettings) -> None:
        self.service = service
        self.contexts = contexts
        self.settings = settings

    async def run(self, kind: BatchKind, request: Request, tenant: str | None, options: str | None) -> Response:
        payload = await read_payload(request, self.settings.max_payload_bytes)
        flags = {o.strip() for o in (options or "").split(",") if o.strip()}
        unknown = flags - {"update", "replace", "noOverwrite"}
        if unknown:
            raise BadRequestData(f"Unknown options {sorted(unknown)}", parameter="options")
        terms: TermMap | list[TermMap] = await self.contexts.term_map(payload.context)
        if payload.item_contexts is not None:
            terms = [await self.contexts.term_map(context) for context in payload.item_contexts]
        result = await self.service.run(kind, tenant, payload.body, terms, options=flags)
        if result.errors:
            return json_response({"success": result.success, "errors": result.errors}, status_code=207)
        # GS CIM 009 6.14-6.15: create answers the created ids; upsert too when it created any.
        if kind == "create" or (kind == "upsert" and result.created):
            return json_response(result.created, status_code=201)
        return Response(status_code=204)


def batch_router(endpoints: BatchEndpoints) -> APIRouter:
    """The FastAPI routes: they describe the API in the OpenAPI document and serve what `BatchFastLane` does not."""
    router = APIRouter()

    def endpoint_for(kind: BatchKind):
        async def endpoint(request: Request, options: str | None = None,
                           ngsild_tenant: str | None = Header(None)) -> Response:
            return await endpoints.run(kind, request, ngsild_tenant, options)

        return endpoint

    for kind in BATCH_KINDS:
        router.add_api_route(f"/entityOperations/{kind}", endpoint_for(kind), methods=["POST"],
                             name=f"batch_{kind}")
    return router


class BatchFastLane:
    """ASGI middleware serving `POST <prefix>/entityOperations/<kind>` straight from `BatchEndpoints.run`.

    The IoT agents and single-entity writers call these endpoints most; FastAPI's routing, parameter
    resolution and exception middleware cost about an eighth of a one-entity upsert's CPU. Answers and
    errors are the same as through the FastAPI routes (which still serve every other request).
    """

    def __init__(self, app: ASGIApp, *, endpoints: BatchEndpoints, prefix: str) -> None:
        self.app = app
        self.endpoints = endpoints
        self.kinds: dict[str, BatchKind] = {f"{prefix}/entityOperations/{kind}": kind for kind in BATCH_KINDS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.kinds.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.endpoints.run(kind, request, request.headers.get("ngsild-tenant"),
                                                request.query_params.get("options"))
        except NgsiError as error:
            response = problem_response(error)
        except Exception as error:
            log.exception("unexpected error method=POST path=%s", scope["path"])
            response = problem_response(InternalError(f"{type(error).__name__}: {error}"))
        await response(scope, receive, send)

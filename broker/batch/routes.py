"""HTTP routes of the batch entity operations (GS CIM 009 6.14-6.17, 6.31)."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from broker.batch.service import BatchKind, BatchService
from broker.negotiation import json_response, read_payload
from broker.settings import BrokerSettings
from ngsi.contexts import ContextStore, TermMap
from ngsi.errors import BadRequestData


def batch_router(service: BatchService, contexts: ContextStore, settings: BrokerSettings) -> APIRouter:
    router = APIRouter()

    async def run(kind: BatchKind, request: Request, tenant: str | None, options: str | None) -> Response:
        payload = await read_payload(request, settings.max_payload_bytes)
        flags = {o.strip() for o in (options or "").split(",") if o.strip()}
        unknown = flags - {"update", "replace", "noOverwrite"}
        if unknown:
            raise BadRequestData(f"Unknown options {sorted(unknown)}", parameter="options")
        terms: TermMap | list[TermMap] = await contexts.term_map(payload.context)
        if payload.item_contexts is not None:
            terms = [await contexts.term_map(context) for context in payload.item_contexts]
        result = await service.run(kind, tenant, payload.body, terms, options=flags)
        if result.errors:
            return json_response({"success": result.success, "errors": result.errors}, status_code=207)
        # GS CIM 009 6.14-6.15: create answers the created ids; upsert too when it created any.
        if kind == "create" or (kind == "upsert" and result.created):
            return json_response(result.created, status_code=201)
        return Response(status_code=204)

    def endpoint_for(kind: BatchKind):
        async def endpoint(request: Request, options: str | None = None,
                           ngsild_tenant: str | None = Header(None)) -> Response:
            return await run(kind, request, ngsild_tenant, options)

        return endpoint

    for kind in ("create", "upsert", "update", "delete", "merge"):
        router.add_api_route(f"/entityOperations/{kind}", endpoint_for(kind), methods=["POST"],
                             name=f"batch_{kind}")
    return router

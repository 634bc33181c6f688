"""HTTP routes of /jsonldContexts (GS CIM 009 6.30, 6.31)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from broker.contexts.service import UserContextService
from broker.negotiation import JSON_LD, json_response, read_json
from broker.settings import BrokerSettings
from ngsi.errors import BadRequestData


def contexts_router(service: UserContextService, settings: BrokerSettings) -> APIRouter:
    router = APIRouter()

    @router.get("/jsonldContexts")
    async def list_contexts(details: bool = False, kind: str | None = None) -> Response:
        if kind is not None and kind not in ("Hosted", "Cached", "ImplicitlyCreated"):
            raise BadRequestData(f"Unknown kind {kind!r}", parameter="kind")
        return json_response(service.list(details=details, kind=kind))

    @router.get("/jsonldContexts/{local_id:path}")
    async def get_context(local_id: str, details: bool = False) -> Response:
        return json_response(service.get(local_id, details=details), kind="application/json" if details else JSON_LD)

    @router.post("/jsonldContexts")
    async def add_context(request: Request) -> Response:
        document = await read_json(request, settings.max_payload_bytes)
        entry = await service.add(document)
        return Response(status_code=201, headers={"Location": entry.url})

    @router.delete("/jsonldContexts/{local_id:path}")
    async def delete_context(local_id: str) -> Response:
        await service.delete(local_id)
        return Response(status_code=204)

    return router

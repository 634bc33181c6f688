"""HTTP routes of type and attribute discovery (GS CIM 009 6.25-6.28)."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from broker.discovery.service import DiscoveryService
from broker.negotiation import JSON, accepted_media_type, json_response, query_context
from ngsi.contexts import ContextStore, with_core_context


def discovery_router(service: DiscoveryService, contexts: ContextStore) -> APIRouter:
    router = APIRouter()

    async def answer(request: Request, build) -> Response:
        kind = accepted_media_type(request)
        context = query_context(request)
        body = await build(await contexts.term_map(context))
        context_url = context or contexts.core_context_url
        if kind != JSON:  # GS CIM 009 6.3.6: a JSON-LD body carries its @context
            in_body = with_core_context(context, contexts.core_context_url)
            body = ([{"@context": in_body, **item} for item in body] if isinstance(body, list)
                    else {"@context": in_body, **body})
        return json_response(body, kind=kind, context_url=context_url)

    @router.get("/types")
    async def get_types(request: Request, details: bool = False,
                        ngsild_tenant: str | None = Header(None)) -> Response:
        return await answer(request, lambda terms: service.types(ngsild_tenant, terms, details=details))

    @router.get("/types/{type_name:path}")
    async def get_type(request: Request, type_name: str, ngsild_tenant: str | None = Header(None)) -> Response:
        return await answer(request, lambda terms: service.type_info(ngsild_tenant, terms, type_name))

    @router.get("/attributes")
    async def get_attributes(request: Request, details: bool = False,
                             ngsild_tenant: str | None = Header(None)) -> Response:
        return await answer(request, lambda terms: service.attributes(ngsild_tenant, terms, details=details))

    @router.get("/attributes/{name:path}")
    async def get_attribute(request: Request, name: str, ngsild_tenant: str | None = Header(None)) -> Response:
        return await answer(request, lambda terms: service.attribute(ngsild_tenant, terms, name))

    return router

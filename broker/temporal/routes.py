"""HTTP routes of the temporal API (GS CIM 009 6.18-6.22): parse parameters, call the service, render."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from broker.negotiation import (
    JSON,
    accepted_media_type,
    json_response,
    location,
    query_context,
    read_payload,
)
from broker.settings import BrokerSettings
from broker.temporal.parameters import parse_temporal_query
from broker.temporal.service import TemporalService
from ngsi.contexts import ContextStore, TermMap, with_core_context
from ngsi.errors import BadRequestData

TEMPORAL_PAYLOAD_FACTOR = 16
"""The backfill path takes bodies this many times larger than the broker's usual payload limit."""


def content_range(first: str, last: str, size: int | None) -> str:
    """GS CIM 009 6.3.10: `date-time <start>-<end>/<size>` (size `*` unless lastN fixed it)."""
    return f"date-time {first}-{last}/{size if size is not None else '*'}"


def query_parameters(body: Any) -> dict[str, str]:
    """A Query object (GS CIM 009 5.2.23) as the GET /temporal/entities parameters it stands for."""
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise BadRequestData('The payload must be a Query object with "type": "Query"')
    params: dict[str, str] = {}
    selectors = body.get("entities") or []
    if not isinstance(selectors, list) or not all(isinstance(item, dict) for item in selectors):
        raise BadRequestData("Query 'entities' must be an array of EntitySelector objects", parameter="entities")
    for index, item in enumerate(selectors):
        for member, value in item.items():
            if member not in ("id", "idPattern", "type") or not isinstance(value, str):
                raise BadRequestData(f"Query 'entities[{index}].{member}' must be one of id, idPattern, type (text)",
                                     parameter="entities")
    if len(selectors) == 1:
        params.update(selectors[0])
    elif selectors:
        # Several selectors are ORed: as GET parameters, a list of types or a list of ids (of any types).
        kinds = {frozenset(item) for item in selectors}
        if kinds == {frozenset({"type"})}:
            params["type"] = ",".join(item["type"] for item in selectors)
        elif all("id" in item and "idPattern" not in item for item in selectors):
            params["id"] = ",".join(item["id"] for item in selectors)
        else:
            raise BadRequestData("Several EntitySelectors of a temporal Query must each give only a type, or each"
                                 " an id", parameter="entities")
    attrs = body.get("attrs")
    if attrs is not None:
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            raise BadRequestData("Query 'attrs' must be an array of attribute names", parameter="attrs")
        params["attrs"] = ",".join(attrs)
    if "q" in body:
        if not isinstance(body["q"], str):
            raise BadRequestData("Query 'q' must be a string", parameter="q")
        params["q"] = body["q"]
    for member, names in (("geoQ", ("georel", "geometry", "coordinates", "geoproperty")),
                          ("temporalQ", ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN"))):
        part = body.get(member)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise BadRequestData(f"Query {member!r} must be an object", parameter=member)
        for name in names:
            if name in part:
                value = part[name]
                params[name] = value if isinstance(value, str) else json.dumps(value)
    return params


def temporal_router(service: TemporalService, contexts: ContextStore, settings: BrokerSettings) -> APIRouter:
    """The /temporal/entities routes bound to `service`."""
    router = APIRouter()
    max_bytes = settings.max_payload_bytes
    backfill_bytes = settings.max_payload_bytes * TEMPORAL_PAYLOAD_FACTOR

    async def terms_for(context: Any) -> TermMap:
        return await contexts.term_map(context)

    def context_url(context: Any) -> str:
        return context if isinstance(context, str) else contexts.core_context_url

    def with_context(body: dict[str, Any], kind: str, context: Any) -> dict[str, Any]:
        return body if kind == JSON else {"@context": with_core_context(context, contexts.core_context_url), **body}

    def params_of(request: Request) -> dict[str, str]:
        return dict(request.query_params)

    @router.get("/temporal/entities")
    async def query_temporal_entities(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        return await answer_query(request, ngsild_tenant, query_context(request), params_of(request))

    @router.post("/temporal/entityOperations/query")
    async def post_temporal_query(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        """GS CIM 009 5.7.4 / 6.24: the query of GET /temporal/entities as a Query object (its terms in the body,
        paging, options and aggregation in the URL as for GET)."""
        payload = await read_payload(request, max_bytes)
        params = {**params_of(request), **query_parameters(payload.body)}
        return await answer_query(request, ngsild_tenant, payload.context, params)

    async def answer_query(request: Request, ngsild_tenant: str | None, context: Any,
                           params: dict[str, str]) -> Response:
        kind = accepted_media_type(request)
        terms = await terms_for(context)
        query = parse_temporal_query(params, default_limit=settings.default_limit, max_limit=settings.max_limit)
        page = await service.query(ngsild_tenant, query, terms)
        headers: dict[str, str] = {}
        if query.count:
            headers["NGSILD-Results-Count"] = str(page.total)
        status = 200
        if page.truncated_range is not None:
            status = 206
            headers["Content-Range"] = content_range(*page.truncated_range, query.last_n)
        content = [with_context(entity, kind, context) for entity in page.entities]
        return json_response(content, status_code=status, kind=kind, context_url=context_url(context), headers=headers)

    @router.get("/temporal/entities/{entity_id:path}")
    async def retrieve_temporal_entity(
        request: Request, entity_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        kind = accepted_media_type(request)
        context = query_context(request)
        terms = await terms_for(context)
        query = parse_temporal_query(
            params_of(request), default_limit=settings.default_limit, max_limit=settings.max_limit
        )
        found = await service.retrieve(ngsild_tenant, entity_id, query, terms)
        headers: dict[str, str] = {}
        status = 200
        if found.truncated_range is not None:
            status = 206
            headers["Content-Range"] = content_range(*found.truncated_range, query.last_n)
        return json_response(
            with_context(found.entities[0], kind, context),
            status_code=status,
            kind=kind,
            context_url=context_url(context),
            headers=headers,
        )

    @router.post("/temporal/entities")
    async def create_temporal_entity(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        payload = await read_payload(request, backfill_bytes)
        entity_id, created = await service.create_or_append(
            ngsild_tenant, payload.body, await terms_for(payload.context)
        )
        if not created:
            return Response(status_code=204)
        headers = {"Location": location("temporal/entities", entity_id)}
        if ngsild_tenant:
            headers["NGSILD-Tenant"] = ngsild_tenant
        return Response(status_code=201, headers=headers)

    @router.post("/temporal/entities/{entity_id:path}/attrs")
    async def append_temporal_attributes(
        request: Request, entity_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        payload = await read_payload(request, backfill_bytes)
        await service.append_attributes(ngsild_tenant, entity_id, payload.body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.patch("/temporal/entities/{entity_id:path}/attrs/{attr}/{instance_id}")
    async def modify_attribute_instance(
        request: Request, entity_id: str, attr: str, instance_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        payload = await read_payload(request, max_bytes)
        terms = await terms_for(payload.context)
        await service.update_instance(ngsild_tenant, entity_id, attr, instance_id, payload.body, terms)
        return Response(status_code=204)

    @router.delete("/temporal/entities/{entity_id:path}/attrs/{attr}/{instance_id}")
    async def delete_attribute_instance(
        request: Request, entity_id: str, attr: str, instance_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        terms = await terms_for(query_context(request))
        await service.delete_instance(ngsild_tenant, entity_id, attr, instance_id, terms)
        return Response(status_code=204)

    @router.delete("/temporal/entities/{entity_id:path}/attrs/{attr}")
    async def delete_temporal_attribute(
        request: Request,
        entity_id: str,
        attr: str,
        datasetId: str | None = None,
        deleteAll: str | None = None,
        ngsild_tenant: str | None = Header(None),
    ) -> Response:
        if deleteAll not in (None, "true", "false"):
            raise BadRequestData("deleteAll must be true or false", parameter="deleteAll")
        terms = await terms_for(query_context(request))
        await service.delete_attribute(
            ngsild_tenant, entity_id, attr, terms, dataset_id=datasetId, delete_all=deleteAll == "true"
        )
        return Response(status_code=204)

    @router.delete("/temporal/entities/{entity_id:path}")
    async def delete_temporal_entity(entity_id: str, ngsild_tenant: str | None = Header(None)) -> Response:
        await service.delete_entity(ngsild_tenant, entity_id)
        return Response(status_code=204)

    return router

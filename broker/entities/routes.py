"""HTTP routes of the entity API (GS CIM 009 5.6, 5.7): parse parameters, call the service, render."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.entities.representation import check_uri
from broker.entities.service import EntityQuery, EntityService, RenderOptions, Selector, render
from broker.negotiation import (
    GEO_JSON,
    JSON,
    accepted_media_type,
    json_response,
    location,
    problem_response,
    query_context,
    read_payload,
)
from broker.query.types import matches_types, parse_ids, parse_types
from broker.settings import BrokerSettings
from ngsi.contexts import ContextStore, TermMap, with_core_context
from ngsi.errors import BadRequestData, InternalError, NgsiError, ResourceNotFound, TooManyResults
from ngsi.forms import Form, to_geojson_feature, to_geojson_feature_collection

log = logging.getLogger(__name__)

FORMS = {"keyValues", "concise", "normalized"}
# GS CIM 009 v1.8 names the keyValues representation "simplified" and keeps keyValues as its alias.
FORM_ALIASES = {"simplified": "keyValues"}
MAX_OFFSET = 2**63 - 1


def dataset_selector(dataset_id: str | None) -> str | None:
    """The `datasetId` parameter of a read (as Orion-LD): a URI, or `@none` for the default instances."""
    if dataset_id is not None and dataset_id != "@none":
        check_uri(dataset_id, "datasetId")
    return dataset_id


def in_dataset(body: Any, dataset_id: str | None) -> Any:
    """A one-attribute write's body aimed at the instance the `datasetId` parameter names (as Orion-LD):
    without the parameter the default instance, unless the body gives its own datasetId."""
    if dataset_id is None or not isinstance(body, dict):
        return body
    check_uri(dataset_id, "datasetId")
    if body.get("datasetId", dataset_id) != dataset_id:
        raise BadRequestData(f"The body's datasetId {body['datasetId']!r} differs from the datasetId parameter",
                             parameter="datasetId")
    return {**body, "datasetId": dataset_id}


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or None


def render_options(options: str | None, format_: str | None, attrs: str | None,
                   pick: str | None, omit: str | None, lang: str | None) -> RenderOptions:
    """GS CIM 009 6.3.7 `options`/`format`, 4.21 pick/omit and `attrs` projection, 4.15 lang."""
    flags = {FORM_ALIASES.get(flag, flag) for flag in split_list(options) or []}
    unknown = flags - FORMS - {"sysAttrs", "noOverwrite", "update", "replace"}
    if unknown:
        raise BadRequestData(f"Unknown options {sorted(unknown)}", parameter="options")
    format_ = FORM_ALIASES.get(format_, format_) if format_ is not None else None
    if format_ is not None and format_ not in FORMS:
        raise BadRequestData(f"Unknown format {format_!r}", parameter="format")
    form: Form = "normalized"
    if format_ in FORMS:
        form = format_  # type: ignore[assignment]
    elif "keyValues" in flags:
        form = "keyValues"
    elif "concise" in flags:
        form = "concise"
    if pick and attrs:
        raise BadRequestData("pick and attrs cannot be combined", parameter="pick")
    if pick and omit:  # as Orion-LD answers
        raise BadRequestData("pick and omit cannot be combined", parameter="omit")
    for name, projection in (("pick", pick), ("omit", omit)):
        if projection and any(mark in projection for mark in "{}[];|"):
            raise BadRequestData(f"{name}: nested projections ({{...}}) are not supported; give attribute names"
                                 " separated by commas", parameter=name)
    return RenderOptions(form=form, sys_attrs="sysAttrs" in flags, attrs=split_list(attrs),
                         pick=split_list(pick), omit=split_list(omit), lang=lang)


class AttributeUpdates:
    """PATCH /entities/{entityId}/attrs (GS CIM 009 6.6.3.3), the most frequent single-entity write of
    dashboards and notification sources, served by the FastAPI route and by `AttributeUpdateFastLane`."""

    def __init__(self, service: EntityService, contexts: ContextStore, settings: BrokerSettings) -> None:
        self.service = service
        self.contexts = contexts
        self.max_bytes = settings.max_payload_bytes

    async def answer(self, request: Request, entity_id: str, tenant: str | None) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, self.max_bytes, allow_merge_patch=True)
        terms = await self.contexts.term_map(payload.context)
        not_found = await self.service.update_attributes(tenant, entity_id, payload.body, terms)
        if not_found:
            return partial_result(payload.body, not_found, "Attribute does not exist")
        return Response(status_code=204)


class AttributeUpdateFastLane:
    """ASGI middleware serving `PATCH <prefix>/entities/{entityId}/attrs` straight from `AttributeUpdates`,
    without FastAPI's routing and parameter machinery (see broker.batch.routes.BatchFastLane).

    The paths are matched as the FastAPI routes match them, in the same order: a path that
    `PATCH .../entities/{entityId}/attrs/{attr}` matches goes on to FastAPI.
    """

    def __init__(self, app: ASGIApp, *, updates: AttributeUpdates, prefix: str) -> None:
        self.app = app
        self.updates = updates
        self.attribute_path = re.compile(f"^{re.escape(prefix)}/entities/(.*)/attrs/(.+)$")
        self.attributes_path = re.compile(f"^{re.escape(prefix)}/entities/(.*)/attrs$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "PATCH":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        match = self.attributes_path.match(path)
        if match is None or self.attribute_path.match(path):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.updates.answer(request, match.group(1), request.headers.get("ngsild-tenant"))
        except NgsiError as error:
            response = problem_response(error)
        except Exception as error:
            log.exception("unexpected error method=PATCH path=%s", path)
            response = problem_response(InternalError(f"{type(error).__name__}: {error}"))
        await response(scope, receive, send)


def entities_router(service: EntityService, contexts: ContextStore, settings: BrokerSettings,
                    attribute_updates: AttributeUpdates) -> APIRouter:
    """The /entities routes bound to `service`."""
    router = APIRouter()
    max_bytes = settings.max_payload_bytes

    async def terms_for(context: Any) -> TermMap:
        return await contexts.term_map(context)

    def context_url(context: Any) -> str:
        return context if isinstance(context, str) else contexts.core_context_url

    @router.post("/entities")
    async def post_entity(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        payload = await read_payload(request, max_bytes)
        entity_id = await service.create(ngsild_tenant, payload.body, await terms_for(payload.context))
        headers = {"Location": location("entities", entity_id)}
        if ngsild_tenant:
            headers["NGSILD-Tenant"] = ngsild_tenant
        return Response(status_code=201, headers=headers)

    @router.get("/entities/{entity_id:path}/attrs/{attr:path}")
    async def get_attribute(
        request: Request, entity_id: str, attr: str, options: str | None = None, format: str | None = None,
        lang: str | None = None, datasetId: str | None = None, ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        """One attribute of an entity (as Orion-LD serves it): the attribute as it appears in the entity."""
        check_uri(entity_id, "Entity id")
        kind = accepted_media_type(request)
        context = query_context(request)
        terms = await terms_for(context)
        opts = replace(render_options(options, format, None, None, None, lang), attrs=[attr],
                       dataset_id=dataset_selector(datasetId))
        entity = await service.retrieve(ngsild_tenant, entity_id)
        body = render(entity, terms, opts)
        name = terms.compact(terms.expand(attr))
        if name not in body:
            raise ResourceNotFound(f"Entity {entity_id!r} has no attribute {attr!r}", attribute=attr)
        content = body[name]
        if kind != JSON and isinstance(content, dict):
            content = {"@context": with_core_context(context, contexts.core_context_url), **content}
        return json_response(content, kind=kind, context_url=context_url(context))

    def geometry_source(entity: Any, body: dict[str, Any], terms: TermMap, geometry_property: str
                        ) -> dict[str, Any] | None:
        """The entity with its geometry attribute when `attrs`/`pick` left it out of `body` (GS CIM 009 6.3.15:
        the Feature's geometry is that attribute's value all the same)."""
        if geometry_property in body:
            return None
        return render(entity, terms, RenderOptions(form="normalized", attrs=[geometry_property]))

    def type_selector(type_: str | None, terms: TermMap) -> Callable[[list[str]], bool] | None:
        """GS CIM 009 5.7.1 / 5.6.6 `type` of a single-entity request: whether an entity's types match it."""
        if type_ is None:
            return None
        expression = parse_types(type_)
        return lambda types: matches_types(expression, types, terms.expand_type)

    @router.get("/entities/{entity_id:path}")
    async def get_entity(
        request: Request, entity_id: str, attrs: str | None = None, pick: str | None = None,
        omit: str | None = None, options: str | None = None, format: str | None = None,
        lang: str | None = None, geometryProperty: str = "location", type: str | None = None,
        datasetId: str | None = None, ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        check_uri(entity_id, "Entity id")
        kind = accepted_media_type(request, geo=True)
        context = query_context(request)
        terms = await terms_for(context)
        opts = replace(render_options(options, format, attrs, pick, omit, lang), dataset_id=dataset_selector(datasetId))
        selected = type_selector(type, terms)
        entity = await service.retrieve(ngsild_tenant, entity_id)
        if selected is not None and not selected(entity.types):
            raise ResourceNotFound(f"No entity {entity_id!r} of the type(s) asked for", entityId=entity_id)
        body = render(entity, terms, opts)
        if kind == GEO_JSON:
            body = {**to_geojson_feature(body, geometryProperty,
                                         geometry_of=geometry_source(entity, body, terms, geometryProperty)),
                    "@context": with_core_context(context, contexts.core_context_url)}
        elif kind != JSON:
            body = {"@context": with_core_context(context, contexts.core_context_url), **body}
        return json_response(body, kind=kind, context_url=context_url(context))

    async def answer_query(
        request: Request, tenant: str | None, terms: TermMap, context: Any, *, id: str | None,
        idPattern: str | None, type: str | None, attrs: str | None, pick: str | None, omit: str | None,
        q: str | None, geo: dict[str, Any] | None, scopeQ: str | None, lang: str | None, limit: int | None,
        offset: int, count: bool, options: str | None, format: str | None, geometryProperty: str,
        selectors: list[Selector] | None = None, expandValues: str | None = None,
    ) -> Response:  # fmt: skip
        """GS CIM 009 5.7.2 Query Entities, shared by GET /entities and POST /entityOperations/query."""
        kind = accepted_media_type(request, geo=True)
        if not any((id, idPattern, type, attrs, q, geo, scopeQ, selectors)):
            raise BadRequestData("Give at least one of id, idPattern, type, attrs, q, scopeQ or a geo-query",
                                 title="Too broad query")
        page = settings.default_limit if limit is None else limit
        for name, number in (("limit", page), ("offset", offset)):
            if number < 0:
                raise BadRequestData(f"{name} must not be negative", parameter=name)
        if offset > MAX_OFFSET:  # PostgreSQL's OFFSET is a bigint: larger values were a 500
            raise BadRequestData(f"offset must be at most {MAX_OFFSET}", parameter="offset")
        if page > settings.max_limit:
            # GS CIM 009 6.3.10: a limit above what the broker allows is TooManyResults (403).
            raise TooManyResults(f"limit {page} is above the maximum of {settings.max_limit}", parameter="limit")
        if page == 0 and not count:
            raise BadRequestData("limit=0 is only allowed with count=true", parameter="limit")
        opts = render_options(options, format, attrs, pick, omit, lang)
        query = EntityQuery(
            ids=list(parse_ids(id)) if id else None, id_pattern=idPattern, types=type,
            attrs=[terms.expand(a) for a in split_list(attrs) or []] or None, q=q, geo=geo,
            scope_q=scopeQ, limit=page, offset=offset, count=count, selectors=selectors,
            expand_values=split_list(expandValues),
        )  # fmt: skip
        entities, total = await service.query(tenant, query, terms)
        bodies = [render(entity, terms, opts) for entity in entities]
        headers = {"NGSILD-Results-Count": str(total)} if total is not None else {}
        content: Any = bodies
        if kind == GEO_JSON:
            sources = [geometry_source(entity, body, terms, geometryProperty)
                       for entity, body in zip(entities, bodies, strict=True)]
            content = to_geojson_feature_collection(bodies, geometryProperty, geometries_of=sources)
            for feature in content["features"]:
                feature["@context"] = with_core_context(context, contexts.core_context_url)
        elif kind != JSON:
            content = [{"@context": with_core_context(context, contexts.core_context_url), **b} for b in bodies]
        return json_response(content, kind=kind, context_url=context_url(context), headers=headers)

    @router.get("/entities")
    async def get_entities(
        request: Request, id: str | None = None, idPattern: str | None = None, type: str | None = None,
        attrs: str | None = None, pick: str | None = None, omit: str | None = None, q: str | None = None,
        georel: str | None = None, geometry: str | None = None, coordinates: str | None = None,
        geoproperty: str | None = None, scopeQ: str | None = None, lang: str | None = None,
        limit: int | None = None, offset: int = 0, count: bool = False, options: str | None = None,
        format: str | None = None, geometryProperty: str = "location", expandValues: str | None = None,
        ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        context = query_context(request)
        terms = await terms_for(context)
        geo = None
        if georel is not None or geometry is not None or coordinates is not None:
            geo = {"georel": georel, "geometry": geometry, "coordinates": coordinates,
                   "geoproperty": geoproperty}
        return await answer_query(
            request, ngsild_tenant, terms, context, id=id, idPattern=idPattern, type=type, attrs=attrs,
            pick=pick, omit=omit, q=q, geo=geo, scopeQ=scopeQ, lang=lang, limit=limit, offset=offset,
            count=count, options=options, format=format, geometryProperty=geometryProperty,
            expandValues=expandValues,
        )  # fmt: skip

    @router.post("/entityOperations/query")
    async def post_query(
        request: Request, limit: int | None = None, offset: int = 0, count: bool = False,
        options: str | None = None, format: str | None = None, lang: str | None = None,
        geometryProperty: str = "location", ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        payload = await read_payload(request, max_bytes)
        terms = await terms_for(payload.context)
        body = payload.body
        if not isinstance(body, dict) or body.get("type") != "Query":
            raise BadRequestData("The payload must be a Query object with \"type\": \"Query\"")
        selectors = body.get("entities") or [{}]
        if not isinstance(selectors, list) or not all(isinstance(s, dict) for s in selectors):
            raise BadRequestData("Query 'entities' must be an array of EntitySelector objects", parameter="entities")
        for index, item in enumerate(selectors):
            for member in ("id", "idPattern", "type"):
                if member in item and not isinstance(item[member], str):
                    raise BadRequestData(f"Query 'entities[{index}].{member}' must be a string",
                                         parameter="entities")
        # GS CIM 009 5.2.23: an entity matches the Query when it matches any of its EntitySelectors.
        selector = selectors[0] if len(selectors) == 1 else {}
        alternatives = None
        if len(selectors) > 1:
            alternatives = [
                Selector(ids=list(parse_ids(item["id"])) if item.get("id") else None, id_pattern=item.get("idPattern"),
                         types=item.get("type"))
                for item in selectors
            ]  # fmt: skip
        geo_q = body.get("geoQ")
        if geo_q is not None:
            if not isinstance(geo_q, dict):
                raise BadRequestData("Query 'geoQ' must be a GeoQuery object", parameter="geoQ")
            geo_q = {key: geo_q.get(key) for key in ("georel", "geometry", "coordinates", "geoproperty")}
        attrs = body.get("attrs")
        if attrs is not None and not (isinstance(attrs, list) and all(isinstance(a, str) for a in attrs)):
            raise BadRequestData("Query 'attrs' must be an array of attribute names", parameter="attrs")
        for member in ("q", "scopeQ", "lang"):
            if member in body and not isinstance(body[member], str):
                raise BadRequestData(f"Query {member!r} must be a string", parameter=member)
        return await answer_query(
            request, ngsild_tenant, terms, payload.context, id=selector.get("id"),
            idPattern=selector.get("idPattern"), type=selector.get("type"),
            attrs=",".join(attrs) if attrs else None, pick=None, omit=None, q=body.get("q"),
            geo=geo_q, scopeQ=body.get("scopeQ"), lang=body.get("lang", lang), limit=limit,
            offset=offset, count=count, options=options, format=format, geometryProperty=geometryProperty,
            selectors=alternatives,
        )  # fmt: skip

    @router.put("/entities/{entity_id:path}/attrs/{attr:path}")
    async def put_attribute(request: Request, entity_id: str, attr: str, datasetId: str | None = None,
                            ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, max_bytes)
        body = in_dataset(payload.body, datasetId)
        await service.replace_attribute(ngsild_tenant, entity_id, attr, body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.patch("/entities/{entity_id:path}/attrs/{attr:path}")
    async def patch_attribute(request: Request, entity_id: str, attr: str, datasetId: str | None = None,
                              ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, max_bytes, allow_merge_patch=True)
        body = in_dataset(payload.body, datasetId)
        await service.patch_attribute(ngsild_tenant, entity_id, attr, body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.delete("/entities/{entity_id:path}/attrs/{attr:path}")
    async def delete_attribute(request: Request, entity_id: str, attr: str, datasetId: str | None = None,
                               deleteAll: bool = False, ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        terms = await terms_for(query_context(request))
        await service.delete_attribute(ngsild_tenant, entity_id, attr, terms, dataset_id=datasetId,
                                       delete_all=deleteAll)
        return Response(status_code=204)

    @router.post("/entities/{entity_id:path}/attrs")
    async def post_attributes(request: Request, entity_id: str, options: str | None = None,
                              ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, max_bytes)
        flags = set(split_list(options) or [])
        if flags - {"noOverwrite"}:
            raise BadRequestData(f"Unknown options {sorted(flags - {'noOverwrite'})}", parameter="options")
        overwrite = "noOverwrite" not in flags
        not_updated = await service.append_attributes(
            ngsild_tenant, entity_id, payload.body, await terms_for(payload.context), overwrite=overwrite
        )
        if not_updated:
            return partial_result(payload.body, not_updated, "Attribute exists already (noOverwrite)")
        return Response(status_code=204)

    @router.patch("/entities/{entity_id:path}/attrs")
    async def patch_attributes(request: Request, entity_id: str,
                               ngsild_tenant: str | None = Header(None)) -> Response:
        return await attribute_updates.answer(request, entity_id, ngsild_tenant)

    @router.put("/entities/{entity_id:path}")
    async def put_entity(request: Request, entity_id: str, ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, max_bytes)
        await service.replace(ngsild_tenant, entity_id, payload.body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.patch("/entities/{entity_id:path}")
    async def patch_entity(request: Request, entity_id: str, ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        payload = await read_payload(request, max_bytes, allow_merge_patch=True)
        await service.merge(ngsild_tenant, entity_id, payload.body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.delete("/entities/{entity_id:path}")
    async def delete_entity(request: Request, entity_id: str, type: str | None = None,
                            ngsild_tenant: str | None = Header(None)) -> Response:
        check_uri(entity_id, "Entity id")
        selected = type_selector(type, await terms_for(query_context(request))) if type is not None else None
        await service.delete(ngsild_tenant, entity_id, selected=selected)
        return Response(status_code=204)

    return router


def partial_result(body: Any, failed: list[str], reason: str) -> Response:
    """GS CIM 009 5.2.18 UpdateResult with 207 Multi-Status."""
    names = [k for k in body if k not in ("id", "type", "@context")] if isinstance(body, dict) else []
    updated = [name for name in names if name not in failed]
    return json_response(
        {"updated": updated, "notUpdated": [{"attributeName": name, "reason": reason} for name in failed]},
        status_code=207,
    )

"""HTTP routes of /csourceRegistrations (GS CIM 009 6.8, 6.9): parse, call the service, render."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from broker.csource.registrations import RegistrationFilter, check_uri
from broker.csource.service import RegistrationService
from broker.negotiation import (
    JSON,
    accepted_media_type,
    json_response,
    location,
    query_context,
    read_payload,
)
from broker.query.q import parse_q
from broker.settings import BrokerSettings
from ngsi.contexts import ContextStore, TermMap, with_core_context
from ngsi.errors import BadRequestData, TooManyResults


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


# GS CIM 009 6.9.3.1 filters this broker does not evaluate on registrations (Orion-LD neither).
UNSUPPORTED_FILTERS = frozenset({"q", "georel", "geometry", "coordinates", "geoproperty", "timerel", "timeAt",
                                 "endTimeAt", "timeproperty", "scopeQ"})


def parse_csf(text: str) -> Any:
    """`csf`: the q language over the registration's own members; a syntax error is a 400 naming csf."""
    try:
        return parse_q(text)
    except BadRequestData as error:
        raise BadRequestData(f"csf: {error.detail.removeprefix('q: ')}", parameter="csf") from None


def _flags(options: str | None) -> set[str]:
    flags = set(_split(options))
    unknown = flags - {"sysAttrs", "count", "normalized", "concise", "keyValues", "simplified"}
    if unknown:
        raise BadRequestData(f"Unknown options {sorted(unknown)}", parameter="options")
    return flags


def csource_router(service: RegistrationService, contexts: ContextStore, settings: BrokerSettings) -> APIRouter:
    """The /csourceRegistrations routes bound to `service`."""
    router = APIRouter()
    max_bytes = settings.max_payload_bytes

    async def terms_for(context: Any) -> TermMap:
        return await contexts.term_map(context)

    def context_url(context: Any) -> str:
        return context if isinstance(context, str) else contexts.core_context_url

    def with_context(body: dict[str, Any], kind: str, context: Any) -> dict[str, Any]:
        return body if kind == JSON else {"@context": with_core_context(context, contexts.core_context_url), **body}

    @router.post("/csourceRegistrations")
    async def register_context_source(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        payload = await read_payload(request, max_bytes)
        registration_id = await service.create(ngsild_tenant, payload.body, await terms_for(payload.context))
        headers = {"Location": location("csourceRegistrations", registration_id)}
        if ngsild_tenant:
            headers["NGSILD-Tenant"] = ngsild_tenant
        return Response(status_code=201, headers=headers)

    @router.get("/csourceRegistrations")
    async def query_context_source_registrations(
        request: Request, id: str | None = None, idPattern: str | None = None, type: str | None = None,
        attrs: str | None = None, csf: str | None = None, limit: int | None = None, offset: int = 0,
        count: bool = False, options: str | None = None, ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        kind = accepted_media_type(request)
        unsupported = sorted(UNSUPPORTED_FILTERS & set(request.query_params))
        if unsupported:  # answering as if they were not there would list registrations they exclude
            raise BadRequestData(f"This broker does not filter registrations by {', '.join(unsupported)}"
                                 " (id, idPattern, type, attrs and csf it does)", parameter=unsupported[0])
        context = query_context(request)
        terms = await terms_for(context)
        flags = _flags(options)
        page = settings.default_limit if limit is None else limit
        for name, number in (("limit", page), ("offset", offset)):
            if number < 0:
                raise BadRequestData(f"{name} must not be negative", parameter=name)
        if page > settings.max_limit:
            raise TooManyResults(f"limit {page} is above the maximum of {settings.max_limit}", parameter="limit")
        ids = _split(id)
        for entity_id in ids:
            check_uri(entity_id, "Entity id")
        if idPattern is not None:
            try:
                re.compile(idPattern)
            except re.error as error:
                raise BadRequestData(f"idPattern is not a regular expression: {error}", parameter="idPattern") from None
        where = RegistrationFilter(
            ids=ids,
            id_pattern=idPattern,
            types=[terms.expand_type(t) for t in _split(type.replace("|", ",") if type else None)],
            attrs=[terms.expand(a) for a in _split(attrs)],
            csf=parse_csf(csf) if csf is not None else None,
            now=datetime.now(UTC),
        )
        found, total = await service.query(
            ngsild_tenant, where, terms, limit=page, offset=offset, sys_attrs="sysAttrs" in flags
        )
        headers = {"NGSILD-Results-Count": str(total)} if count or "count" in flags else {}
        content = [with_context(body, kind, context) for body in found]
        return json_response(content, kind=kind, context_url=context_url(context), headers=headers)

    @router.get("/csourceRegistrations/{registration_id:path}")
    async def retrieve_context_source_registration(
        request: Request, registration_id: str, options: str | None = None,
        ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        kind = accepted_media_type(request)
        context = query_context(request)
        check_uri(registration_id, "Registration id")
        body = await service.retrieve(
            ngsild_tenant, registration_id, await terms_for(context), sys_attrs="sysAttrs" in _flags(options)
        )
        return json_response(with_context(body, kind, context), kind=kind, context_url=context_url(context))

    @router.patch("/csourceRegistrations/{registration_id:path}")
    async def update_context_source_registration(
        request: Request, registration_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        check_uri(registration_id, "Registration id")
        payload = await read_payload(request, max_bytes, allow_merge_patch=True)
        await service.update(ngsild_tenant, registration_id, payload.body, await terms_for(payload.context))
        return Response(status_code=204)

    @router.delete("/csourceRegistrations/{registration_id:path}")
    async def delete_context_source_registration(
        registration_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        check_uri(registration_id, "Registration id")
        await service.delete(ngsild_tenant, registration_id)
        return Response(status_code=204)

    return router

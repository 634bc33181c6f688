"""The gateway's rules for one NGSI-LD request: tenant, role, granted entity types, subscription ownership."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from api.auth.errors import Forbidden
from api.auth.policy import authorize, requested_tenant
from api.auth.principal import Principal
from api.gateway.headers import TENANT_HEADER, broker_request_headers, client_response_headers
from api.gateway.operations import READ_METHODS, Operation, Target, classify
from api.gateway.paths import broker_path
from api.gateway.proxy import BrokerProxy
from api.gateway.settings import GatewaySettings
from ngsi.contexts import ContextStore
from ngsi.errors import BadRequestData, PayloadTooLarge

log = logging.getLogger(__name__)

SUBSCRIPTION_ID_PREFIX = "urn:ngsi-ld:Subscription:"
_LINK_CONTEXT = re.compile(r'<([^>]*)>\s*;[^,]*rel\s*=\s*"?http://www\.w3\.org/ns/json-ld#context"?')
ENTITY_TARGETS = frozenset({Target.ENTITY_BODY, Target.ENTITY_PATH, Target.ENTITY_BATCH})


def owned_subscription_prefix(principal: Principal) -> str:
    """Subscription ids a solution provider owns start with this (its owner tag): the gateway names them."""
    return f"{SUBSCRIPTION_ID_PREFIX}{principal.owner_tag}:"


class Gateway:
    """Checks a request against the caller's token, then forwards it to the broker and streams the answer back."""

    def __init__(self, settings: GatewaySettings, broker: BrokerProxy, contexts: ContextStore) -> None:
        self.settings = settings
        self.broker = broker
        self.contexts = contexts

    async def handle(self, request: Request, principal: Principal) -> Response:
        segments = broker_path(request.scope.get("raw_path") or request.url.path.encode())
        tenant = requested_tenant(request, TENANT_HEADER, default_tenant=self.settings.auth_default_tenant)
        operation = classify(request.method, segments)
        try:
            authorize(principal, tenant, operation.access)
        except Forbidden:
            log.info("refused method=%s path=%s tenant=%s sub=%s", request.method, request.url.path, tenant,
                     principal.subject)  # fmt: skip
            raise
        tenant_header = tenant if request.headers.get(TENANT_HEADER) else None
        body = b"" if request.method in READ_METHODS else await self._read_body(request)
        restricted = not (principal.is_city_admin or principal.all_entity_types)
        if restricted and operation.target in ENTITY_TARGETS:
            await self._check_entity_types(request, principal, operation, tenant_header, body)
        if not principal.is_city_admin and operation.target is Target.SUBSCRIPTION_CREATE:
            body = self._owned_subscription(principal, body)
        if not principal.is_city_admin and operation.target is Target.SUBSCRIPTION_ITEM:
            if not (operation.resource_id or "").startswith(owned_subscription_prefix(principal)):
                raise Forbidden("this subscription belongs to another caller; providers manage only their own")
        headers = broker_request_headers(request.headers.items(), tenant_header)
        query = request.scope.get("query_string", b"").decode("latin-1")
        raw_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("ascii")
        answer = await self.broker.send(request.method, raw_path, query, headers, body)
        if not principal.is_city_admin and operation.target is Target.SUBSCRIPTION_LIST:
            return await self._own_subscriptions_only(principal, answer)
        streamed = StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
        )
        return _with_headers(streamed, client_response_headers(answer.headers.multi_items()))

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.gateway_max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        return bytes(body)

    async def _check_entity_types(
        self, request: Request, principal: Principal, operation: Operation, tenant_header: str | None, body: bytes
    ) -> None:
        """A solution provider writes only entities whose every type, sent and stored, is granted to it."""
        granted = await self._granted_types(principal)
        payload = _json(body) if body else None
        if operation.target is Target.ENTITY_BATCH:
            if not isinstance(payload, list):
                raise BadRequestData("a batch operation takes a JSON array of entities")
            entities = payload
        elif isinstance(payload, dict):
            entities = [payload]
        elif operation.target is Target.ENTITY_BODY:
            raise BadRequestData("the body must be a JSON object (an entity)")
        else:
            entities = []
        link_context = _link_context(request.headers.get("link"))
        ids = [operation.resource_id] if operation.resource_id else []
        for entity in entities:
            if not isinstance(entity, dict):
                raise BadRequestData("every entity must be a JSON object")
            sent_types = _types(entity.get("type"))
            if sent_types:
                terms = await self.contexts.term_map(entity.get("@context", link_context))
                for sent in sent_types:
                    if terms.expand_type(sent) not in granted:
                        raise Forbidden(f"entity type {sent!r} is not granted to this solution provider")
            if operation.target is not Target.ENTITY_PATH and isinstance(entity.get("id"), str):
                ids.append(entity["id"])
        stored = await self.broker.entity_types(tenant_header, ids) if ids else {}
        for entity_id, stored_types in stored.items():
            for stored_type in stored_types:
                if self.contexts.core.expand_type(stored_type) not in granted:
                    raise Forbidden(f"entity {entity_id!r} is of type {stored_type!r}, not granted to this provider")

    async def _granted_types(self, principal: Principal) -> set[str]:
        terms = await self.contexts.term_map(self.settings.gateway_types_context)
        return {terms.expand_type(name) for name in principal.entity_types}

    def _owned_subscription(self, principal: Principal, body: bytes) -> bytes:
        """A provider's new subscription gets an id that names its owner (or must already carry it)."""
        subscription = _json(body)
        if not isinstance(subscription, dict):
            raise BadRequestData("a subscription must be a JSON object")
        prefix = owned_subscription_prefix(principal)
        given = subscription.get("id")
        if given is None:
            subscription["id"] = f"{prefix}{uuid.uuid4()}"
        elif not isinstance(given, str) or not given.startswith(prefix):
            raise Forbidden(f"a solution provider's subscription ids must start with {prefix!r} (or be left out)")
        return orjson.dumps(subscription)

    async def _own_subscriptions_only(self, principal: Principal, answer: Any) -> Response:
        """The subscription list as the broker sent it, less those of other callers."""
        try:
            content = await answer.aread()
        finally:
            await answer.aclose()
        headers = client_response_headers(
            answer.headers.multi_items(),
            drop=frozenset({"content-length", "content-encoding", "ngsild-results-count"}),
        )
        if answer.status_code != 200:
            return _with_headers(Response(content, status_code=answer.status_code), headers)
        prefix = owned_subscription_prefix(principal)
        listed = orjson.loads(content)
        own = [item for item in listed if isinstance(item, dict) and str(item.get("id", "")).startswith(prefix)]
        return _with_headers(Response(orjson.dumps(own), status_code=200), headers)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequestData(f"the body is not valid JSON: {error}", title="Invalid JSON") from error


def _types(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _link_context(link: str | None) -> str | None:
    """The @context URL of a `Link` header (GS CIM 009 6.3.5), None for the core context."""
    if not link:
        return None
    match = _LINK_CONTEXT.search(link)
    return match.group(1) if match else None


def _with_headers(response: Response, headers: list[tuple[str, str]]) -> Response:
    """`response` carrying exactly `headers` (repeated names such as `Link` kept apart); Starlette
    adds `content-length` for a complete body."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if not isinstance(response, StreamingResponse):
        raw = [item for item in raw if item[0] != b"content-length"]
        raw.append((b"content-length", str(len(response.body)).encode()))
    response.raw_headers = raw
    return response

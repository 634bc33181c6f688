"""HTTP routes of the subscription API (GS CIM 009 5.8, 6.10, 6.11): parse, call the service, render."""

from __future__ import annotations

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
from broker.subscriptions.service import SubscriptionService
from ngsi.contexts import CORE_CONTEXT_URL, with_core_context
from ngsi.errors import BadRequestData, TooManyResults

MAX_OFFSET = 2**63 - 1


def _check_id(subscription_id: str) -> None:
    if ":" not in subscription_id or " " in subscription_id:
        raise BadRequestData(f"Subscription id {subscription_id!r} is not a URI", parameter="subscriptionId")


def subscriptions_router(service: SubscriptionService, settings: BrokerSettings) -> APIRouter:
    """The /subscriptions routes bound to `service`."""
    router = APIRouter()
    max_bytes = settings.max_payload_bytes

    def tenant_headers(tenant: str | None) -> dict[str, str]:
        return {"NGSILD-Tenant": tenant} if tenant else {}

    @router.post("/subscriptions")
    async def post_subscription(request: Request, ngsild_tenant: str | None = Header(None)) -> Response:
        payload = await read_payload(request, max_bytes)
        subscription_id = await service.create(payload.body, payload.context, ngsild_tenant)
        headers = {"Location": location("subscriptions", subscription_id), **tenant_headers(ngsild_tenant)}
        return Response(status_code=201, headers=headers)

    @router.get("/subscriptions")
    async def get_subscriptions(
        request: Request, limit: int | None = None, offset: int = 0, count: bool = False,
        ngsild_tenant: str | None = Header(None),
    ) -> Response:  # fmt: skip
        kind = accepted_media_type(request)
        page = settings.default_limit if limit is None else limit
        for name, number in (("limit", page), ("offset", offset)):
            if number < 0:
                raise BadRequestData(f"{name} must not be negative", parameter=name)
        if offset > MAX_OFFSET:  # PostgreSQL's OFFSET is a bigint: larger values were a 500
            raise BadRequestData(f"offset must be at most {MAX_OFFSET}", parameter="offset")
        if page > settings.max_limit:
            raise TooManyResults(f"limit {page} is above the maximum of {settings.max_limit}", parameter="limit")
        if page == 0 and not count:
            raise BadRequestData("limit=0 needs count=true", parameter="limit")
        items, total = await service.list(ngsild_tenant, page, offset, query_context(request))
        headers = tenant_headers(ngsild_tenant)
        if count:
            headers["NGSILD-Results-Count"] = str(total)
        context = query_context(request)
        if kind != JSON:
            items = [{**item, "@context": with_core_context(context, CORE_CONTEXT_URL)} for item in items]
        return json_response(items, kind=kind, context_url=context or CORE_CONTEXT_URL, headers=headers)

    @router.get("/subscriptions/{subscription_id:path}")
    async def get_subscription(
        request: Request, subscription_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        _check_id(subscription_id)
        kind = accepted_media_type(request)
        item = await service.retrieve(subscription_id, ngsild_tenant, query_context(request))
        context = query_context(request)
        if kind != JSON:
            item = {**item, "@context": with_core_context(context, CORE_CONTEXT_URL)}
        return json_response(item, kind=kind, context_url=context or CORE_CONTEXT_URL,
                             headers=tenant_headers(ngsild_tenant))

    @router.patch("/subscriptions/{subscription_id:path}")
    async def patch_subscription(
        request: Request, subscription_id: str, ngsild_tenant: str | None = Header(None)
    ) -> Response:
        _check_id(subscription_id)
        payload = await read_payload(request, max_bytes, allow_merge_patch=True)
        await service.update(subscription_id, payload.body, payload.context, ngsild_tenant)
        return Response(status_code=204, headers=tenant_headers(ngsild_tenant))

    @router.delete("/subscriptions/{subscription_id:path}")
    async def delete_subscription(subscription_id: str, ngsild_tenant: str | None = Header(None)) -> Response:
        _check_id(subscription_id)
        await service.delete(subscription_id, ngsild_tenant)
        return Response(status_code=204, headers=tenant_headers(ngsild_tenant))

    return router

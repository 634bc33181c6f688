"""HTTP entry of the gateway: every `/ngsi-ld/...` request is authenticated, checked, then forwarded."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from api.auth.authenticator import Authenticator
from api.auth.principal import Principal
from api.gateway.service import Gateway

METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]


def gateway_router(gateway: Gateway, authenticator: Authenticator) -> APIRouter:
    """Routes for the gateway; mount them on any FastAPI app whose NgsiError handler is installed."""
    router = APIRouter()

    # `/ngsi-ld/` and not `/ngsi-ld/v1/`: whatever starts like an NGSI-LD path is checked here
    # (and refused unless it is a plain /ngsi-ld/v1/... path), never left to another route.
    @router.api_route("/ngsi-ld/{rest:path}", methods=METHODS, include_in_schema=False)
    async def forward_to_broker(request: Request, principal: Principal = Depends(authenticator.principal)) -> Response:
        return await gateway.handle(request, principal)

    return router

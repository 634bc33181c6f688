"""HTTP in and out of the KPI slice: GET /kpis, GET /kpis/{entityId}, GET /kpis/{entityId}/history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from api.kpi.service import KpiApi
from ngsi.errors import BadRequestData

router = APIRouter(prefix="/kpis", tags=["kpi"])
EntityId = Annotated[str, Path(alias="entityId", description="KeyPerformanceIndicator entity id.")]


def kpi_api(request: Request) -> KpiApi:
    api: KpiApi = request.app.state.kpi
    return api


@router.get("", summary="KPI entities (keyValues), filtered by KPI id and station")
async def list_kpis(
    request: Request,
    response: Response,
    kpi: Annotated[str | None, Query(description="KPI definition id, e.g. eea-air-quality-index.")] = None,
    station: Annotated[str | None, Query(description="Station name as in the KPI ids, e.g. Aotizhongxin.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[Any]:
    items, total = await kpi_api(request).list(kpi=kpi, station=station, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return items


@router.get("/{entityId}/history", summary="kpiValue over time")
async def kpi_history(
    request: Request,
    entity_id: EntityId,
    since: Annotated[datetime, Query(description="Start (inclusive), ISO 8601.")],
    until: Annotated[datetime | None, Query(description="End (exclusive), ISO 8601; default now.")] = None,
) -> dict[str, Any]:
    start = since if since.tzinfo else since.replace(tzinfo=UTC)
    end = until or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    if end <= start:
        raise BadRequestData("until must be after since", parameter="until")
    return await kpi_api(request).history(entity_id, start, end)


@router.get("/{entityId}", summary="One KPI entity (keyValues)")
async def get_kpi(request: Request, entity_id: EntityId) -> dict[str, Any]:
    return await kpi_api(request).get(entity_id)

"""HTTP in and out of the twin slice: POST /twin/what-if, GET /twin/models, GET /twin/forecast/{entityId}."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.twin.service import ChangeRequest, TwinApi, WhatIfQuestion

router = APIRouter(prefix="/twin", tags=["twin"])


class FeatureChangeBody(BaseModel):
    """Change one model feature over a time range: hours relative to the forecast origin (0 = the
    newest observed hour, -23 = a day before, 1..24 = the hours ahead) or ISO 8601 moments."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    feature: str = Field(description="A feature the model uses, e.g. no2, pm25, windSpeed, temperature.")
    operation: Literal["scale", "add", "set"]
    value: float = Field(allow_inf_nan=False)
    from_: int | datetime | None = Field(None, alias="from", description="First hour (inclusive).")
    until: int | datetime | None = Field(None, description="Last hour (inclusive).")


class WhatIfBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    station: str = Field(description="AirQualityObserved entity id of the station, or its last segment.")
    horizon: int = Field(24, ge=1, le=24, description="Hours ahead (1-24).")
    target: str | None = Field(None, description="Forecast pollutant (default: the API's twin target, pm25).")
    origin: datetime | None = Field(None, description="Forecast from the newest complete window at or before this.")
    scenario: list[FeatureChangeBody] = Field(default_factory=list, max_length=50)


EXAMPLE = {
    "station": "urn:ngsi-ld:AirQualityObserved:beijing:Aotizhongxin",
    "horizon": 24,
    "scenario": [
        {"feature": "no2", "operation": "scale", "value": 0.8, "from": -23, "until": 0},
        {"feature": "windSpeed", "operation": "scale", "value": 0.7, "from": 1, "until": 24},
    ],
}


def twin_api(request: Request) -> TwinApi:
    api: TwinApi = request.app.state.twin
    return api


@router.post("/what-if", summary="Baseline and scenario forecasts, uncertainty band and KPI deltas")
async def post_what_if(
    request: Request, body: Annotated[WhatIfBody, Body(openapi_examples={"traffic": {"value": EXAMPLE}})]
) -> dict[str, Any]:
    question = WhatIfQuestion(
        station=body.station, horizon=body.horizon, target=body.target, origin=body.origin,
        changes=[ChangeRequest(c.feature, c.operation, c.value, c.from_, c.until) for c in body.scenario],
    )  # fmt: skip
    return await twin_api(request).what_if(question)


@router.get("/models", summary="Every stored model version (active ones marked)")
async def get_models(request: Request) -> list[dict[str, Any]]:
    return twin_api(request).list_models()


@router.get("/forecast/{entityId:path}", summary="The forecast the broker holds for a station")
async def get_forecast(
    request: Request,
    entity_id: Annotated[str, Path(alias="entityId", description="AirQualityObserved entity id or station name.")],
    target: Annotated[str | None, Query(description="Forecast pollutant (default pm25).")] = None,
) -> dict[str, Any]:
    return await twin_api(request).forecast(entity_id, target)

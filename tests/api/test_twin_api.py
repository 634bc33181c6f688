"""Planners ask the platform API what a change would do and get baseline, scenario, uncertainty band
and KPI deltas; questions the twin cannot answer honestly are 400s that say why.

Everything is real: the API app served by uvicorn on a free loopback port, our broker with 103 days
of Aotizhongxin history (tests/api/twin_world.py), a small TensorFlow model trained from it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from broker.embedded_postgres import free_port
from smart_data_models import format_timestamp
from tests.api.twin_world import STATION, TwinWorld, twin_world
from twin.service import ForecastService, ForecastSettings

PROBLEM_KEYS = {"type", "title", "status", "detail"}


@pytest.fixture(scope="module")
async def world(broker_url: str) -> TwinWorld:
    return await twin_world(broker_url)


@pytest.fixture(scope="module")
async def api(broker_url: str, world: TwinWorld) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(broker_url=broker_url, tenant=world.tenant, data_dir=world.data_dir)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert not task.done(), "the API server stopped while starting"
        assert time.monotonic() < deadline, "the API server did not start within 30 s"
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        await task


def origin_of(world: TwinWorld) -> str:
    return format_timestamp(world.frame.index[-1].to_pydatetime())


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert PROBLEM_KEYS <= set(body) and body["status"] == status
    assert body["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")
    return body


async def test_what_if_returns_baseline_scenario_band_and_deltas(api: httpx.AsyncClient, world: TwinWorld) -> None:
    question = {
        "station": STATION,
        "origin": origin_of(world),
        "scenario": [
            {"feature": "no2", "operation": "scale", "value": 0.5, "from": -23, "until": 0},
            {"feature": "windSpeed", "operation": "scale", "value": 1.2, "from": 1, "until": 24},
        ],
    }
    response = await api.post("/twin/what-if", json=question)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["origin"] == origin_of(world) and answer["modelVersion"] == world.version
    assert answer["horizon"] == 24 and len(answer["hours"]) == 24
    assert len(answer["baseline"]) == len(answer["scenario"]) == 24
    assert answer["baseline"] != answer["scenario"]
    band = answer["band"]
    assert all(0 <= lo <= hi for lo, hi in zip(band["low"], band["high"], strict=True))
    assert set(answer["deltas"]) == {"mean", "max", "hoursAboveEU", "hoursAboveWHO", "eeaBandChanges"}
    assert answer["deltas"]["mean"] == pytest.approx(
        answer["scenarioSummary"]["mean"] - answer["baselineSummary"]["mean"], abs=0.02
    )
    assert answer["covariates"] in ("WeatherForecast", "WeatherObserved of the same hours yesterday")

    # Speed as a planner sees it, over HTTP including the history reads: report, with a generous bound
    # for a shared 2-core machine (the benchmark measures the 500 ms target on a quiet one).
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        assert (await api.post("/twin/what-if", json=question)).status_code == 200
        timings.append((time.perf_counter() - started) * 1000)
    assert statistics.median(timings) < 3000, timings


async def test_a_shorter_horizon_and_iso_times_narrow_the_question(api: httpx.AsyncClient, world: TwinWorld) -> None:
    origin = world.frame.index[-1]
    question = {
        "station": "Aotizhongxin",  # the station's name is enough when it is unambiguous
        "origin": origin_of(world),
        "horizon": 6,
        "scenario": [{
            "feature": "temperature", "operation": "add", "value": 2.0,
            "from": format_timestamp((origin + pd.Timedelta(hours=1)).to_pydatetime()),
            "until": format_timestamp((origin + pd.Timedelta(hours=6)).to_pydatetime()),
        }],
    }  # fmt: skip
    response = await api.post("/twin/what-if", json=question)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["baseline"]) == len(answer["scenario"]) == len(answer["band"]["low"]) == 6
    assert answer["changes"] == [{"feature": "temperature", "operation": "add", "value": 2.0, "from": 1, "until": 6}]
    assert answer["station"] == STATION


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"feature": "traffic", "operation": "scale", "value": 0.8}, "does not use 'traffic'"),
        ({"feature": "temperature", "operation": "add", "value": 60, "from": 1, "until": 24}, "outside the range"),
        ({"feature": "no2", "operation": "scale", "value": 0.8, "from": 1, "until": 24}, "only observed, not forecast"),
        ({"feature": "no2", "operation": "scale", "value": 0.8, "from": -500, "until": 0}, "outside what the model"),
        ({"feature": "no2", "operation": "scale", "value": 0.8, "from": 0, "until": -5}, "after end hour"),
        ({"feature": "no2", "operation": "multiply", "value": 0.8}, "operation"),
        ({"feature": "no2", "operation": "scale", "value": 0.8, "from": "2013-06-12T10:30:00Z"}, "not on the hour"),
    ],
)
async def test_questions_the_twin_cannot_answer_are_400s_that_say_why(
    api: httpx.AsyncClient, world: TwinWorld, change: dict[str, Any], complaint: str
) -> None:
    response = await api.post("/twin/what-if", json={"station": STATION, "origin": origin_of(world),
                                                      "scenario": [change]})  # fmt: skip
    assert complaint in problem(response, 400)["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"station": STATION, "horizon": 30, "scenario": []},
        {"station": STATION, "horizon": 0, "scenario": []},
        {"scenario": []},
        {"station": STATION, "scenario": [{"feature": "no2", "operation": "scale", "value": "lots"}]},
        {"station": STATION, "scenario": "no2 -20%"},
        {"station": STATION, "unknown": 1},
    ],
)
async def test_malformed_questions_are_400s(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    problem(await api.post("/twin/what-if", json=body), 400)


async def test_not_json_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/twin/what-if", content=b"{not json", headers={"Content-Type": "application/json"})
    problem(response, 400)


async def test_an_unknown_station_is_a_404_naming_it(api: httpx.AsyncClient) -> None:
    response = await api.post("/twin/what-if", json={"station": "urn:ngsi-ld:AirQualityObserved:beijing:Nowhere"})
    body = problem(response, 404)
    assert "Nowhere" in body["detail"] and "Aotizhongxin" in body["detail"]


async def test_models_lists_the_active_version_with_its_metrics(api: httpx.AsyncClient, world: TwinWorld) -> None:
    response = await api.get("/twin/models")
    assert response.status_code == 200
    models = {m["version"]: m for m in response.json()}
    model = models[world.version]
    assert model["active"] and model["station"] == STATION and model["target"] == "pm25"
    assert len(model["metrics"]["model_rmse"]) == 24 and model["dataWindow"]["sourceEntities"][0] == STATION


async def test_the_stored_forecast_is_served_by_station(
    broker_url: str, api: httpx.AsyncClient, world: TwinWorld
) -> None:
    service = ForecastService(ForecastSettings(broker_url=broker_url, tenant=world.tenant, data_dir=world.data_dir))
    try:
        forecast = await service.forecast_station(STATION, until=world.frame.index[-1].to_pydatetime())
    finally:
        await service.reader.aclose()
    assert forecast is not None
    for station in (STATION, "Aotizhongxin"):
        response = await api.get(f"/twin/forecast/{station}")
        assert response.status_code == 200, response.text
        served = response.json()
        assert served["modelVersion"] == world.version and served["origin"] == origin_of(world)
        assert [h["value"] for h in served["hours"]] == pytest.approx([round(v, 2) for v in forecast.values], abs=0.01)
    problem(await api.get("/twin/forecast/urn:ngsi-ld:AirQualityObserved:beijing:Nowhere"), 404)

    # The same entities through the KPI endpoints.
    listed = await api.get("/kpis", params={"kpi": "twin-pm25-forecast", "station": "Aotizhongxin"})
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "24"
    first = next(e for e in listed.json() if e["id"].endswith(":h01"))
    one = await api.get(f"/kpis/{first['id']}")
    assert one.status_code == 200 and one.json()["kpiValue"] == first["kpiValue"]
    history = await api.get(f"/kpis/{first['id']}/history", params={"since": "2013-01-01T00:00:00Z"})
    assert history.status_code == 200 and len(history.json()["values"]) >= 1
    problem(await api.get(f"/kpis/{first['id']}/history", params={"since": "not a time"}), 400)
    problem(await api.get("/kpis/urn:ngsi-ld:KeyPerformanceIndicator:nowhere"), 404)


async def test_health_version_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json()["status"] == "ok"
    assert (await api.get("/version")).json()["name"] == "climaborough-api"
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/twin/what-if", "/twin/models", "/twin/forecast/{entityId}", "/kpis"} <= set(paths)
    assert (await api.get("/docs")).status_code == 200
    problem(await api.get("/nothing-here"), 404)

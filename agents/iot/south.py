"""Southbound HTTP (FIWARE default port 7896): UltraLight 2.0 on `/iot/d`, JSON on `/iot/json`, `?k=&i=`."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response

from agents.iot.measures import MeasureIngestor, RawMeasure
from agents.iot.north import VERSION
from agents.iot.payloads import PayloadError, parse_timestamp
from agents.iot.problems import install_problem_handlers
from agents.iot.topics import Protocol
from ngsi.errors import BadRequestData

UL_RESOURCE = "/iot/d"
JSON_RESOURCE = "/iot/json"


def create_south_app(ingestor: MeasureIngestor) -> FastAPI:
    """Measures over HTTP; 200 once they are in the outbox, 4xx (and the quarantine) when they cannot be mapped."""
    app = FastAPI(title="climaborough IoT agent southbound HTTP", version=VERSION)
    install_problem_handlers(app)

    async def receive(request: Request, protocol: Protocol, resource: str, payload: bytes) -> Response:
        params = request.query_params
        missing = [name for name in ("i", "k") if not params.get(name)]
        if missing:
            raise BadRequestData(
                f"Some of the mandatory params weren't found in the HTTP request: {missing}",
                name="MANDATORY_PARAMS_NOT_FOUND_HTTP",
            )
        observed_at = None
        if params.get("t"):
            try:
                observed_at = parse_timestamp(params["t"])
            except PayloadError as error:
                raise BadRequestData(f"t: {error}", name="WRONG_SYNTAX") from error
        raw = RawMeasure(
            transport="http",
            source=f"http:{resource}?k={params['k']}&i={params['i']}",
            protocol=protocol,
            apikey=params["k"],
            device_id=params["i"],
            payload=payload,
            received_at=datetime.now(UTC),
            resource=resource,
            observed_at=observed_at,
        )
        [result] = await ingestor.ingest([raw])
        if result.error is not None:
            raise result.error
        return Response(status_code=200)

    @app.post(UL_RESOURCE)
    async def ultralight_post(request: Request) -> Response:
        return await receive(request, "ul", UL_RESOURCE, await request.body())

    @app.get(UL_RESOURCE)
    async def ultralight_get(request: Request) -> Response:
        # IoTA-UL also takes the measures in the `d` query parameter of a GET.
        return await receive(request, "ul", UL_RESOURCE, request.query_params.get("d", "").encode())

    @app.post(JSON_RESOURCE)
    async def json_post(request: Request) -> Response:
        return await receive(request, "json", JSON_RESOURCE, await request.body())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION, "name": "climaborough-iot-agent"}

    return app

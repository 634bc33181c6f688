"""Provisioning API (north port, FIWARE default 4041): config groups and devices, compatible with FIWARE IoT Agents.

Same paths, JSON field names and status codes as iotagent-node-lib: `POST /iot/groups`
(`{"groups": [...]}`, and the older `/iot/services` with `{"services": [...]}`) → 201,
`GET` → `{"count": n, "groups": [...]}`, `PUT`/`DELETE ?resource=&apikey=` → 204,
`POST /iot/devices` (`{"devices": [...]}`) → 201, `GET/PUT/DELETE /iot/devices/{id}`,
`GET /iot/about`. `fiware-service` / `fiware-servicepath` scope everything; the service is
the NGSI-LD tenant the measures go to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from pydantic import ValidationError

from agents.iot.problems import install_problem_handlers, validation_problem
from agents.iot.provisioning import ConfigGroup, Device, public_document
from agents.iot.registry import AlreadyProvisioned, Registry
from agents.iot.settings import IotAgentSettings
from ngsi.errors import AlreadyExists, BadRequestData, ResourceNotFound

VERSION = "1.0.0"
_SERVICE = re.compile(r"^[A-Za-z0-9_-]{0,48}$")
_SERVICE_PATH = re.compile(r"^/[A-Za-z0-9_/-]*$")


def scope(service: str | None, subservice: str | None) -> tuple[str, str]:
    """`fiware-service` (the tenant, "" = default) and `fiware-servicepath` ("/" by default), checked."""
    service = (service or "").strip()
    subservice = (subservice or "/").strip() or "/"
    if not _SERVICE.match(service):
        raise BadRequestData(
            f"fiware-service {service!r} must be letters, digits, '_' or '-' (at most 48)", name="BAD_REQUEST"
        )
    if subservice != "/*" and not _SERVICE_PATH.match(subservice):
        raise BadRequestData(f"fiware-servicepath {subservice!r} must start with '/'", name="BAD_REQUEST")
    return service.lower(), subservice


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as error:
        raise BadRequestData(f"the body is not JSON: {error}", name="WRONG_SYNTAX") from error


def _list_member(body: Any, member: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get(member), list) or not body[member]:
        raise BadRequestData(f'the body must be {{"{member}": [...]}} with at least one item', name="WRONG_SYNTAX")
    items: list[Any] = body[member]
    return items


def _paging(limit: int | None, offset: int | None, items: list[Any]) -> list[Any]:
    start = offset or 0
    return items[start : start + limit] if limit is not None else items[start:]


def _groups_router(registry: Registry, member: str) -> APIRouter:
    router = APIRouter()
    path = f"/iot/{member}"

    @router.post(path, status_code=201)
    async def create_groups(
        request: Request,
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        items = _list_member(await _json_body(request), member)
        try:
            groups = [ConfigGroup.model_validate(item) for item in items]
        except ValidationError as error:
            raise validation_problem(error, "invalid config group") from error
        try:
            registry.add_groups(service, subservice, groups)
        except AlreadyProvisioned as error:
            assert isinstance(error.item, ConfigGroup)
            raise AlreadyExists(
                f"A device configuration already exists for resource {error.item.resource} and API Key "
                f"{error.item.apikey}",
                name="DUPLICATE_GROUP",
            ) from error
        return Response(status_code=201)

    @router.get(path)
    async def list_groups(
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
        resource: str | None = None,
        apikey: str | None = None,
        limit: int | None = Query(None, ge=0),
        offset: int | None = Query(None, ge=0),
    ) -> dict[str, Any]:
        service, subservice = scope(fiware_service, fiware_servicepath)
        groups = [
            public_document(group, service=service, subservice=subservice)
            for group in registry.groups(service, None if subservice == "/*" else subservice)
            if (resource is None or group.resource == resource) and (apikey is None or group.apikey == apikey)
        ]
        return {"count": len(groups), member: _paging(limit, offset, groups)}

    def find(service: str, subservice: str, resource: str | None, apikey: str | None) -> ConfigGroup:
        if apikey is None:
            raise BadRequestData("the query parameter apikey is mandatory", name="MISSING_CONFIG_PARAMS")
        for group in registry.groups(service, subservice):
            if group.apikey == apikey and (resource is None or group.resource == resource):
                return group
        raise ResourceNotFound(
            f"Couldn't find device group for fields: resource={resource} apikey={apikey}",
            name="DEVICE_GROUP_NOT_FOUND",
        )

    @router.put(path, status_code=204)
    async def update_group(
        request: Request,
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
        resource: str | None = None,
        apikey: str | None = None,
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        group = find(service, subservice, resource, apikey)
        changes = await _json_body(request)
        if not isinstance(changes, dict):
            raise BadRequestData("the body must be a JSON object with the fields to change", name="WRONG_SYNTAX")
        changes = {k: v for k, v in changes.items() if k not in ("apikey", "resource")}
        try:
            updated = ConfigGroup.model_validate({**group.model_dump(), **changes})
        except ValidationError as error:
            raise validation_problem(error, "invalid config group") from error
        registry.replace_group(service, subservice, updated)
        return Response(status_code=204)

    @router.delete(path, status_code=204)
    async def delete_group(
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
        resource: str | None = None,
        apikey: str | None = None,
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        group = find(service, subservice, resource, apikey)
        registry.delete_group(service, subservice, group.resource, group.apikey)
        return Response(status_code=204)

    return router


def _devices_router(registry: Registry) -> APIRouter:
    router = APIRouter()

    def not_found(device_id: str) -> ResourceNotFound:
        return ResourceNotFound(f"No device was found with id:{device_id}", name="DEVICE_NOT_FOUND")

    @router.post("/iot/devices", status_code=201)
    async def create_devices(
        request: Request,
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        items = _list_member(await _json_body(request), "devices")
        try:
            devices = [Device.model_validate(item) for item in items]
        except ValidationError as error:
            raise validation_problem(error, "invalid device") from error
        try:
            registry.add_devices(service, subservice, devices)
        except AlreadyProvisioned as error:
            assert isinstance(error.item, Device)
            raise AlreadyExists(
                f"A device with the same pair (Service, DeviceId) was found:{error.item.device_id}",
                name="DUPLICATE_DEVICE_ID",
            ) from error
        return Response(status_code=201)

    @router.get("/iot/devices")
    async def list_devices(
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
        limit: int | None = Query(None, ge=0),
        offset: int | None = Query(None, ge=0),
    ) -> dict[str, Any]:
        service, subservice = scope(fiware_service, fiware_servicepath)
        devices = [
            public_document(device, service=service, subservice=subservice)
            for device in registry.devices(service, None if subservice == "/*" else subservice)
        ]
        return {"count": len(devices), "devices": _paging(limit, offset, devices)}

    @router.get("/iot/devices/{device_id}")
    async def get_device(
        device_id: str, fiware_service: str | None = Header(None), fiware_servicepath: str | None = Header(None)
    ) -> dict[str, Any]:
        service, subservice = scope(fiware_service, fiware_servicepath)
        device = registry.device(service, subservice, device_id)
        if device is None:
            raise not_found(device_id)
        return public_document(device, service=service, subservice=subservice)

    @router.put("/iot/devices/{device_id}", status_code=204)
    async def update_device(
        device_id: str,
        request: Request,
        fiware_service: str | None = Header(None),
        fiware_servicepath: str | None = Header(None),
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        device = registry.device(service, subservice, device_id)
        if device is None:
            raise not_found(device_id)
        changes = await _json_body(request)
        if not isinstance(changes, dict):
            raise BadRequestData("the body must be a JSON object with the fields to change", name="WRONG_SYNTAX")
        changes.pop("device_id", None)
        try:
            updated = Device.model_validate({**device.model_dump(), **changes})
        except ValidationError as error:
            raise validation_problem(error, "invalid device") from error
        registry.replace_device(service, subservice, updated)
        return Response(status_code=204)

    @router.delete("/iot/devices/{device_id}", status_code=204)
    async def delete_device(
        device_id: str, fiware_service: str | None = Header(None), fiware_servicepath: str | None = Header(None)
    ) -> Response:
        service, subservice = scope(fiware_service, fiware_servicepath)
        if not registry.delete_device(service, subservice, device_id):
            raise not_found(device_id)
        return Response(status_code=204)

    return router


def create_north_app(
    settings: IotAgentSettings,
    registry: Registry,
    status: Callable[[], dict[str, Any]] | None = None,
    access: Sequence[Any] = (),
) -> FastAPI:
    """The provisioning API on the registry; `/health` adds the agent's `status()` (counters, outbox backlog).

    `access` are FastAPI dependencies (`Depends(...)`) guarding every `/iot/...` route: the
    caller wires the authenticator (`api.auth.require_tenant_access` on `fiware-service`).
    """
    app = FastAPI(title="climaborough IoT agent provisioning API", version=VERSION)
    install_problem_handlers(app)
    guarded = list(access)
    app.include_router(_groups_router(registry, "groups"), dependencies=guarded)
    app.include_router(_groups_router(registry, "services"), dependencies=guarded)
    app.include_router(_devices_router(registry), dependencies=guarded)

    @app.get("/iot/about", dependencies=guarded)
    async def about() -> dict[str, Any]:
        return {
            "libVersion": VERSION,
            "port": str(settings.iot_north_port),
            "baseRoot": "/",
            "version": VERSION,
            "name": "climaborough-iot-agent",
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **(status() if status else {})}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION, "name": "climaborough-iot-agent"}

    return app

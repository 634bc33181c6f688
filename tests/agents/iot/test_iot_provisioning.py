"""Provisioning API as FIWARE IoT Agents offer it: config groups, devices, errors, and persistence across a restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agents.iot.iot_services import AgentFactory, AgentProcess, provision

SERVICE = {"fiware-service": "madrid", "fiware-servicepath": "/air"}
GROUP = {
    "apikey": "k1",
    "resource": "/iot/d",
    "entity_type": "AirQualityObserved",
    "attributes": [{"object_id": "n", "name": "no2", "type": "Number", "metadata": {"unitCode": "GQ"}}],
    "static_attributes": [{"name": "location", "type": "geo:point", "value": "40.4, -3.7"}],
    "explicitAttrs": True,
    "timestamp": True,
    "autoprovision": False,
    "cbroker": "http://orion:1026",
}
DEVICE = {
    "device_id": "aq-01",
    "entity_name": "urn:ngsi-ld:AirQualityObserved:madrid:aq-01",
    "entity_type": "AirQualityObserved",
    "protocol": "PDI-IoTA-UltraLight",
    "transport": "MQTT",
    "attributes": [{"object_id": "t", "name": "temperature", "type": "Number"}],
    "static_attributes": [{"name": "stationName", "type": "Text", "value": "Plaza de España"}],
    "lazy": [],
    "commands": [],
}


@pytest.fixture(scope="module")
def agent(start_module_agent: AgentFactory, broker_url: str) -> AgentProcess:
    return start_module_agent(broker_url)


@pytest.fixture
def north(agent: AgentProcess, tenant: str) -> Iterator[httpx.Client]:
    """The provisioning API for a service of this test's own ("madrid" in the examples)."""
    with httpx.Client(base_url=agent.north_url, headers={**SERVICE, "fiware-service": tenant}, timeout=10) as client:
        yield client


@pytest.fixture
def group(tenant: str) -> dict[str, Any]:
    return {**GROUP, "apikey": f"{tenant}-k1"}


@pytest.mark.parametrize("member", ["groups", "services"])
def test_config_group_lifecycle(north: httpx.Client, member: str, group: dict[str, Any], tenant: str) -> None:
    apikey = group["apikey"]
    assert north.post(f"/iot/{member}", json={member: [group]}).status_code == 201
    listed = north.get(f"/iot/{member}").json()
    assert listed["count"] == 1
    [shown] = listed[member]
    assert {k: shown[k] for k in group} == group
    assert (shown["service"], shown["subservice"]) == (tenant, "/air")

    duplicate = north.post(f"/iot/{member}", json={member: [group]})
    assert duplicate.status_code == 409
    assert duplicate.json()["name"] == "DUPLICATE_GROUP"
    assert apikey in duplicate.json()["message"]

    update = north.put(f"/iot/{member}", params={"resource": "/iot/d", "apikey": apikey}, json={"entity_type": "X"})
    assert update.status_code == 204
    assert north.get(f"/iot/{member}").json()[member][0]["entity_type"] == "X"

    assert north.delete(f"/iot/{member}", params={"resource": "/iot/d", "apikey": apikey}).status_code == 204
    assert north.get(f"/iot/{member}").json() == {"count": 0, member: []}
    gone = north.delete(f"/iot/{member}", params={"resource": "/iot/d", "apikey": apikey})
    assert gone.status_code == 404
    assert gone.json()["name"] == "DEVICE_GROUP_NOT_FOUND"


def test_groups_are_scoped_by_service_and_servicepath(
    north: httpx.Client, agent: AgentProcess, group: dict[str, Any], tenant: str
) -> None:
    assert north.post("/iot/groups", json={"groups": [group]}).status_code == 201
    other = httpx.get(f"{agent.north_url}/iot/groups", headers={"fiware-service": f"{tenant}x"}).json()
    assert other["count"] == 0
    root = httpx.get(f"{agent.north_url}/iot/groups", headers={"fiware-service": tenant}).json()
    assert root["count"] == 0
    every_path = httpx.get(
        f"{agent.north_url}/iot/groups", headers={"fiware-service": tenant, "fiware-servicepath": "/*"}
    ).json()
    assert every_path["count"] == 1


def test_device_lifecycle(north: httpx.Client) -> None:
    assert north.post("/iot/devices", json={"devices": [DEVICE]}).status_code == 201
    device = north.get("/iot/devices/aq-01").json()
    assert {k: device[k] for k in DEVICE} == DEVICE
    assert north.get("/iot/devices").json()["count"] == 1

    duplicate = north.post("/iot/devices", json={"devices": [DEVICE]})
    assert duplicate.status_code == 409
    assert duplicate.json()["name"] == "DUPLICATE_DEVICE_ID"

    assert north.put("/iot/devices/aq-01", json={"entity_type": "WeatherObserved"}).status_code == 204
    assert north.get("/iot/devices/aq-01").json()["entity_type"] == "WeatherObserved"
    assert north.delete("/iot/devices/aq-01").status_code == 204
    missing = north.get("/iot/devices/aq-01")
    assert missing.status_code == 404
    assert missing.json()["name"] == "DEVICE_NOT_FOUND"
    assert missing.json()["message"] == "No device was found with id:aq-01"


def test_device_list_pages(north: httpx.Client) -> None:
    devices = [{"device_id": f"d{n:02d}"} for n in range(5)]
    assert north.post("/iot/devices", json={"devices": devices}).status_code == 201
    page = north.get("/iot/devices", params={"limit": 2, "offset": 2}).json()
    assert page["count"] == 5
    assert [d["device_id"] for d in page["devices"]] == ["d02", "d03"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/iot/groups", {"groups": [{"entity_type": "X"}]}, "apikey"),
        ("/iot/groups", {"groups": [{"apikey": "a", "attributes": [{"object_id": "x"}]}]}, "name"),
        ("/iot/groups", {"groups": [{"apikey": "a", "attributes": [{"name": "bad name"}]}]}, "bad name"),
        ("/iot/groups", {"services": [GROUP]}, "groups"),
        ("/iot/devices", {"devices": [{"device_id": "a/b"}]}, "device_id"),
        ("/iot/devices", {"devices": []}, "devices"),
        ("/iot/devices", [1, 2], "devices"),
    ],
)
def test_bad_provisioning_is_a_400_naming_the_field(north: httpx.Client, path: str, body: object, field: str) -> None:
    response = north.post(path, json=body)
    assert response.status_code == 400
    problem = response.json()
    assert field in problem["detail"]
    assert problem["message"] == problem["detail"]
    assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_body_that_is_not_json_is_a_400(north: httpx.Client) -> None:
    response = north.post("/iot/devices", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["name"] == "WRONG_SYNTAX"


def test_bad_fiware_service_is_a_400(agent: AgentProcess) -> None:
    response = httpx.get(f"{agent.north_url}/iot/devices", headers={"fiware-service": "no spaces!"})
    assert response.status_code == 400
    assert "fiware-service" in response.json()["detail"]


def test_about_health_and_version(agent: AgentProcess) -> None:
    about = httpx.get(f"{agent.north_url}/iot/about").json()
    assert about["port"] == agent.north_url.rsplit(":", 1)[1]
    assert "libVersion" in about
    health = httpx.get(f"{agent.north_url}/health").json()
    assert health["status"] == "ok" and health["outboxPending"] == 0
    assert httpx.get(f"{agent.south_url}/version").json()["name"] == "climaborough-iot-agent"


def test_a_restart_keeps_every_group_and_device(start_agent: AgentFactory, broker_url: str) -> None:
    agent = start_agent(broker_url)
    provision(agent, "madrid", groups=[GROUP], devices=[DEVICE])
    agent.stop()
    agent.start()
    headers = {"fiware-service": "madrid", "fiware-servicepath": "/"}
    groups = httpx.get(f"{agent.north_url}/iot/groups", headers=headers).json()
    assert [g["apikey"] for g in groups["groups"]] == ["k1"]
    assert groups["groups"][0]["attributes"] == GROUP["attributes"]
    device = httpx.get(f"{agent.north_url}/iot/devices/aq-01", headers=headers).json()
    assert device["entity_name"] == DEVICE["entity_name"]
    assert device["static_attributes"] == DEVICE["static_attributes"]

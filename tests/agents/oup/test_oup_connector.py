"""The OUP connector against a local OUP (HTTPS pages + WSS live, self-signed TLS) and the running broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents.files import load_mapping
from agents.oup import OupConnector, OupSettings, OupUnavailable
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient
from tests.agents.oup.oup_server import OupServer, self_signed_certificate

REPO = Path(__file__).resolve().parents[3]
RECORDS: list[dict[str, Any]] = json.loads((REPO / "examples" / "oup" / "oup_records_synthetic.json").read_text())
MAPPING = load_mapping(REPO / "broker_config" / "mappings" / "oup.yaml")
ENVIRONMENT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
AIR = "urn:ngsi-ld:AirQualityObserved:Sankt-Ingbert:oup"


@pytest.fixture
async def oup(tmp_path: Path) -> AsyncIterator[OupServer]:
    cert, key = self_signed_certificate(tmp_path)
    server = OupServer(list(RECORDS), cert, key)
    await server.start()
    yield server
    await server.stop()


def settings_for(server: OupServer, broker_url: str, folder: Path, **extra: Any) -> OupSettings:
    return OupSettings(broker_url=broker_url, data_dir=folder, oup_url=server.url, oup_ws_url=server.ws_url,
                       oup_ca_file=folder / "cert.pem", oup_page_size=5, **extra)  # fmt: skip


async def pm25_history(broker_url: str, tenant: str) -> list[float]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT) as client:
        entity = await client.get_temporal_entity(AIR, attrs="pm25", options="temporalValues", timerel="after",
                                                  time_at="2000-01-01T00:00:00Z")  # fmt: skip
    return sorted(value for value, _ in entity["pm25"]["values"])


async def current(broker_url: str, tenant: str) -> dict[str, Any]:
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=ENVIRONMENT) as client:
        return await client.get_entity(AIR)


async def test_history_pages_come_in_once_from_the_checkpoint(oup: OupServer, broker_url: str, tenant: str,
                                                              tmp_path: Path) -> None:  # fmt: skip
    connector = OupConnector(settings_for(oup, broker_url, tmp_path), MAPPING, tenant=tenant)
    try:
        assert await connector.backfill() == 12
        assert connector.stats.history_pages == 3  # 12 records, 5 per page
        expected = sorted(r["pm25"] for r in RECORDS if r["cityName"] == "Sankt Ingbert")
        assert await pm25_history(broker_url, tenant) == expected
        state = await current(broker_url, tenant)
        assert state["pm25"]["observedAt"] == "2024-05-01T11:00:00.000Z"
        assert state["co"]["value"] == pytest.approx(RECORDS[-2]["co"] / 1000)
    finally:
        await connector.aclose()
    again = OupConnector(settings_for(oup, broker_url, tmp_path), MAPPING, tenant=tenant)
    try:
        assert await again.backfill() == 0  # resumes after the checkpointed cursor
        newer = dict(RECORDS[0], timeRecorded="2024-05-01T12:00:00Z", pm25=99.0)
        oup.records.append(newer)
        assert await again.backfill() == 1
    finally:
        await again.aclose()
    assert await pm25_history(broker_url, tenant) == sorted([*expected, 99.0])


async def test_live_records_follow_the_history_over_wss(oup: OupServer, broker_url: str, tenant: str,
                                                        tmp_path: Path) -> None:  # fmt: skip
    connector = OupConnector(settings_for(oup, broker_url, tmp_path), MAPPING, tenant=tenant)
    stop = asyncio.Event()
    running = asyncio.create_task(connector.run(stop))
    try:
        async with asyncio.timeout(60):
            await connector.history_done.wait()
        async with asyncio.timeout(20):
            await oup.wait_for_client()
        live = dict(RECORDS[0], timeRecorded="2024-05-01T13:00:00Z", pm25=42.0)
        await oup.push(json.dumps(live))
        await oup.push(json.dumps([dict(live, timeRecorded="2024-05-01T14:00:00Z", pm25=43.0),
                                   dict(live, timeRecorded="not a time")]))  # fmt: skip
        await oup.push("{broken")
        async with asyncio.timeout(60):
            while (await current(broker_url, tenant))["pm25"]["value"] != 43.0:  # noqa: ASYNC110 - polls the broker
                await asyncio.sleep(0.1)
        history = await pm25_history(broker_url, tenant)
        assert history.count(42.0) == 1 and history.count(43.0) == 1
        assert len(history) == 8  # six from the history pages, two live
        quarantine = Quarantine(tmp_path / "quarantine.sqlite")
        reasons = sorted(record.reason for record in quarantine.list(agent="oup"))
        assert len(reasons) == 2
        assert "'not a time' is not an ISO 8601 date-time" in reasons[1]
        assert reasons[0].startswith("live message is not JSON")
    finally:
        stop.set()
        await running
        await connector.aclose()


async def test_an_untrusted_certificate_is_refused(oup: OupServer, broker_url: str, tenant: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    settings = settings_for(oup, broker_url, tmp_path).model_copy(update={"oup_ca_file": None})
    connector = OupConnector(settings, MAPPING, tenant=tenant)
    try:
        with pytest.raises(OupUnavailable, match="ConnectError"):
            await connector.backfill()
    finally:
        await connector.aclose()


async def test_a_busy_oup_is_retried_until_it_answers(oup: OupServer, broker_url: str, tenant: str,
                                                      tmp_path: Path) -> None:  # fmt: skip
    oup.fail_pages = 2
    connector = OupConnector(settings_for(oup, broker_url, tmp_path), MAPPING, tenant=tenant)
    stop = asyncio.Event()
    running = asyncio.create_task(connector.run(stop))
    try:
        async with asyncio.timeout(60):
            await connector.history_done.wait()
        assert connector.stats.history_records == 12
        assert any("503" in error for error in connector.stats.errors)
    finally:
        stop.set()
        await running
        await connector.aclose()

"""`climaborough config apply` on the real broker: contexts and subscriptions land once, a rerun changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker_config.config_apply import (
    ConfigError,
    apply_config,
    load_subscriptions,
    smart_data_models_contexts,
    substitute,
)
from kpi.definitions import SHIPPED_DEFINITIONS, load_definitions
from kpi.engine import KpiEngine
from kpi.settings import KpiSettings
from ngsi.client import AsyncBrokerClient
from twin.service import ForecastSettings
from twin.service import subscription_id as twin_subscription_id

REPO = Path(__file__).resolve().parents[2]
MQTT = "mqtt://mosquitto:1883"
ENVIRONMENT_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
VARIABLES = {"CLIMABOROUGH_MQTT_URL": MQTT}


async def subscriptions_of(broker_url: str, tenant: str, context: str | None = None) -> dict[str, dict[str, Any]]:
    """The tenant's subscriptions, names compacted with `context` (full IRIs without one, as Orion-LD)."""
    async with AsyncBrokerClient(broker_url, tenant=tenant, context=context) as client:
        listed = await client.list_subscriptions(limit=1000)
    return {item["id"]: item for item in listed}


def without_times(subscription: dict[str, Any]) -> dict[str, Any]:
    """A subscription without what the broker changes on its own (timestamps, delivery counters)."""
    volatile = {"createdAt", "modifiedAt", "timesSent", "lastNotification", "lastSuccess", "lastFailure", "status"}
    body = {key: value for key, value in subscription.items() if key not in volatile}
    if isinstance(body.get("notification"), dict):
        body["notification"] = {k: v for k, v in body["notification"].items() if k not in volatile}
    return body


async def hosted_context_count(broker_url: str) -> int:
    async with AsyncBrokerClient(broker_url) as client:
        listed = await client.list_contexts(details=True)
    return sum(1 for info in listed if str(info.get("kind", "")).lower() == "hosted")


async def test_first_apply_creates_every_subscription_and_the_second_changes_nothing(
    broker_url: str, tenant: str
) -> None:
    wanted = load_subscriptions(variables=VARIABLES)
    first = await apply_config(broker_url, tenants=[tenant], subscriptions=wanted)
    assert set(first.subscriptions.values()) == {"created"}
    after_first = await subscriptions_of(broker_url, tenant)
    assert set(after_first) == {s["id"] for s in wanted}

    second = await apply_config(broker_url, tenants=[tenant], subscriptions=wanted)
    assert set(second.subscriptions.values()) == {"unchanged"}
    assert set(second.contexts.values()) == {"unchanged"}
    assert second.changed == 0
    after_second = await subscriptions_of(broker_url, tenant)
    assert {k: without_times(v) for k, v in after_second.items()} == {
        k: without_times(v) for k, v in after_first.items()
    }


async def test_registered_subscriptions_notify_the_services_over_mosquitto(broker_url: str, tenant: str) -> None:
    await apply_config(broker_url, tenants=[tenant], subscriptions=load_subscriptions(variables=VARIABLES))
    subscriptions = await subscriptions_of(broker_url, tenant, context=ENVIRONMENT_CONTEXT)
    kpi = subscriptions["urn:ngsi-ld:Subscription:climaborough-kpi:AirQualityObserved"]
    assert kpi["notification"]["endpoint"]["uri"] == f"{MQTT}/climaborough/kpi/climaborough-kpi"
    assert sorted(kpi["watchedAttributes"]) == ["co", "no2", "o3", "pm10", "pm25", "so2"]
    twin = subscriptions["urn:ngsi-ld:Subscription:climaborough-twin:AirQualityObserved"]
    assert twin["notification"]["endpoint"]["uri"] == f"{MQTT}/climaborough/twin/climaborough-twin"


async def test_contexts_are_stored_once_across_applies(broker_url: str, tenant: str) -> None:
    await apply_config(broker_url, tenants=[tenant], subscriptions=[])
    count = await hosted_context_count(broker_url)
    report = await apply_config(broker_url, tenants=[tenant], subscriptions=[])
    assert set(report.contexts.values()) == {"unchanged"}
    assert await hosted_context_count(broker_url) == count
    stored = smart_data_models_contexts()
    async with AsyncBrokerClient(broker_url) as client:
        hosted = [await client.get_context(info["localId"]) for info in await client.list_contexts(details=True)
                  if info.get("kind") == "Hosted"]  # fmt: skip
    for document in stored.values():
        assert document in hosted


async def test_a_changed_subscription_is_put_back(broker_url: str, tenant: str) -> None:
    wanted = load_subscriptions(variables=VARIABLES)
    await apply_config(broker_url, tenants=[tenant], subscriptions=wanted)
    sid = "urn:ngsi-ld:Subscription:climaborough-kpi:TrafficFlowObserved"
    async with AsyncBrokerClient(broker_url, tenant=tenant) as client:
        await client.update_subscription(sid, {"watchedAttributes": ["somethingElse"]})
    report = await apply_config(broker_url, tenants=[tenant], subscriptions=wanted)
    assert report.subscriptions[(tenant, sid)] == "updated"
    assert sum(outcome != "unchanged" for outcome in report.subscriptions.values()) == 1
    assert (await subscriptions_of(broker_url, tenant))[sid]["watchedAttributes"] == ["intensity"]


async def test_the_kpi_engine_adopts_the_applied_subscriptions_unchanged(broker_url: str, tenant: str) -> None:
    await apply_config(broker_url, tenants=[tenant], subscriptions=load_subscriptions(variables=VARIABLES))
    before = await subscriptions_of(broker_url, tenant)
    engine = KpiEngine(KpiSettings(broker_url=broker_url, tenant=tenant), load_definitions([SHIPPED_DEFINITIONS]))
    try:
        registered = await engine.register_subscriptions(f"{MQTT}/climaborough/kpi/climaborough-kpi")
    finally:
        await engine.stop(drain_timeout=1)
    after = await subscriptions_of(broker_url, tenant)
    assert set(registered) <= set(before)
    assert set(after) == set(before)
    for sid in registered:
        assert without_times(after[sid]) == without_times(before[sid])


def test_twin_subscription_file_matches_the_forecast_service() -> None:
    settings = ForecastSettings()
    twin = next(s for s in load_subscriptions(variables={}) if "twin" in s["id"])
    assert twin["id"] == twin_subscription_id(settings.twin_client_id)
    assert twin["watchedAttributes"] == [settings.twin_target]
    assert twin["notification"]["endpoint"]["uri"] == f"{settings.mqtt_url}/climaborough/twin/{settings.twin_client_id}"


def test_variables_take_the_environment_then_their_default_and_a_missing_one_is_an_error() -> None:
    template = {"uri": "${MQTT:-mqtt://localhost:1883}/t/${ID}"}
    assert substitute(template, {"ID": "x"}, where="f") == {"uri": "mqtt://localhost:1883/t/x"}
    assert substitute(template, {"ID": "x", "MQTT": "mqtt://m:1"}, where="f") == {"uri": "mqtt://m:1/t/x"}
    with pytest.raises(ConfigError, match="ID"):
        substitute(template, {}, where="f")


def test_command_applies_to_several_tenants_and_reports_no_change_the_second_time(broker_url: str, tenant: str) -> None:
    env = {**os.environ, "CLIMABOROUGH_MQTT_URL": MQTT}
    command = [sys.executable, "-m", "cli.main", "config", "apply", "--broker-url", broker_url,
               "--tenant", tenant, "--tenant", tenant + "b"]  # fmt: skip
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created" in first.stdout
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 change(s)." in second.stdout


def test_command_refuses_an_unreachable_broker_with_a_clear_message() -> None:
    command = [sys.executable, "-m", "cli.main", "config", "apply", "--broker-url", "http://127.0.0.1:9"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "127.0.0.1:9" in result.stdout

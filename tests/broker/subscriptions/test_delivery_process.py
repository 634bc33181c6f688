"""The notifier as a process of its own: order under concurrent delivery, restart after a crash, no orphan."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

UPDATES_PER_ENTITY = 12
ENTITIES = 5
RESTART_WITHIN_S = 60.0
"""A new notifier is a cold Python start (imports, pools, contexts: ~1.5 s of CPU) before it sweeps
the outbox: kill to delivery measured 13.5 s at loadavg 8 on 2 cores, so the former 20 s and 30 s
bounds failed a full suite run at loadavg ~6. The same bound `launch_broker` gives a whole broker
start; a notifier that never comes back or never sweeps the outbox still fails here."""


def notifier_pids(broker_pid: int) -> list[int]:
    """The broker's child processes (the notifier)."""
    children = Path(f"/proc/{broker_pid}/task/{broker_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def subscribe_all(client: httpx.AsyncClient, uri: str, entity_type: str) -> None:
    response = await client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}], "watchedAttributes": ["no2"],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}, "format": "keyValues"}})
    assert response.status_code == 201, response.text


async def test_each_entitys_notifications_arrive_in_order_while_several_entities_travel_at_once(
    client: httpx.AsyncClient, receiver: Any, wait_for: Callable[..., Any]
) -> None:
    entity_type = f"Station{uuid.uuid4().hex[:8]}"
    ids = [f"urn:ngsi-ld:{entity_type}:{i}" for i in range(ENTITIES)]
    for entity_id in ids:
        created = await client.post("/entities", json={"id": entity_id, "type": entity_type,
                                                       "no2": {"type": "Property", "value": -1}})
        assert created.status_code == 201
    await subscribe_all(client, receiver.url, entity_type)

    async def updates(entity_id: str) -> None:
        for value in range(UPDATES_PER_ENTITY):
            response = await client.patch(f"/entities/{entity_id}/attrs",
                                          json={"no2": {"type": "Property", "value": value}})
            assert response.status_code == 204

    await asyncio.gather(*(updates(entity_id) for entity_id in ids))  # entities interleave, each in order

    def values_of(entity_id: str) -> list[int]:
        return [e["no2"] for r in list(receiver.received) for e in r.body["data"] if e["id"] == entity_id]

    await wait_for(lambda: all(set(range(UPDATES_PER_ENTITY)) <= set(values_of(e)) for e in ids), within=30,
                   what="every update of every entity notified")
    for entity_id in ids:
        first_seen = list(dict.fromkeys(value for value in values_of(entity_id) if value >= 0))
        assert first_seen == list(range(UPDATES_PER_ENTITY)), f"{entity_id} notified out of order: {first_seen}"


async def test_a_crashed_notifier_is_started_again_and_delivers(
    create_database: Callable[[str], str], start_broker: Callable[..., Any], receiver: Any,
    wait_for: Callable[..., Any],
) -> None:
    broker = start_broker(create_database("notifier_crash"))
    (first,) = await wait_for(lambda: notifier_pids(broker.process.pid), what="the notifier process")
    async with httpx.AsyncClient(base_url=broker.url + "/ngsi-ld/v1", timeout=30) as client:
        await subscribe_all(client, receiver.url, "AirQualityObserved")
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: [pid for pid in notifier_pids(broker.process.pid) if pid != first and alive(pid)],
                       within=RESTART_WITHIN_S, what="a new notifier process")
        entity_id = f"urn:ngsi-ld:AirQualityObserved:crash:{uuid.uuid4().hex[:8]}"
        created = await client.post("/entities", json={"id": entity_id, "type": "AirQualityObserved",
                                                       "no2": {"type": "Property", "value": 7}})
        assert created.status_code == 201
    await wait_for(lambda: any(e["id"] == entity_id for r in receiver.received for e in r.body["data"]),
                   within=RESTART_WITHIN_S, what="the notification after the notifier restarted")


async def test_a_killed_broker_leaves_no_notifier_behind(
    create_database: Callable[[str], str], start_broker: Callable[..., Any], wait_for: Callable[..., Any],
) -> None:
    broker = start_broker(create_database("notifier_orphan"))
    (notifier,) = await wait_for(lambda: notifier_pids(broker.process.pid), what="the notifier process")
    broker.kill()  # SIGKILL: the broker cannot tell its child anything
    await wait_for(lambda: not alive(notifier), within=15, what="the notifier to end with the broker")

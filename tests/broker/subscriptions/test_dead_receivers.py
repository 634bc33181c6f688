"""An unreachable receiver never delays the others: healthy subscriptions keep their latency beside dead ones."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from broker.embedded_postgres import free_port

NOTIFICATION_BOUND_S = 1.5
"""Each notification reaches the healthy receiver within this (dead attempts time out after 2 s in these tests)."""
SPACED_UPDATES = 15
BURST_UPDATES = 60


@pytest.fixture
def silent_receiver() -> Iterator[str]:
    """A receiver that accepts connections and never answers: every attempt waits out the timeout."""
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    accepted: list[socket.socket] = []
    server.settimeout(0.1)
    stop = False

    def accept() -> None:
        while not stop:
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    import threading

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/never-answers"
    stop = True
    thread.join(2)
    for connection in accepted:
        connection.close()
    server.close()


async def subscribe(client: httpx.AsyncClient, uri: str, entity_type: str) -> str:
    response = await client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}], "watchedAttributes": ["no2"],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}, "format": "keyValues"}})
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[-1])


async def test_ten_dead_receivers_do_not_delay_a_healthy_one(
    create_database: Callable[[str], str], start_broker: Callable[..., Any], receiver: Any,
    silent_receiver: str, wait_for: Callable[..., Any],
) -> None:
    broker = start_broker(create_database("deadrecv"))
    entity_type = f"Station{uuid.uuid4().hex[:8]}"
    entity_id = f"urn:ngsi-ld:{entity_type}:1"
    dead = (
        [f"http://127.0.0.1:{free_port()}/refused" for _ in range(4)]  # nothing listens: refused at once
        + [silent_receiver] * 3  # accepts, never answers: each attempt waits for the timeout
        + [f"mqtt://127.0.0.1:{free_port()}/dead/{i}" for i in range(3)]  # no MQTT broker there
    )
    async with httpx.AsyncClient(base_url=broker.url + "/ngsi-ld/v1", timeout=30) as client:
        created = await client.post("/entities", json={"id": entity_id, "type": entity_type,
                                                       "no2": {"type": "Property", "value": -1}})
        assert created.status_code == 201
        dead_ids = [await subscribe(client, uri, entity_type) for uri in dead]
        await subscribe(client, receiver.url, entity_type)

        def arrival_of(value: int) -> float | None:
            for notification in list(receiver.received):
                if any(entity.get("no2") == value for entity in notification.body["data"]):
                    return notification.at
            return None

        async def update(value: int) -> float:
            response = await client.patch(f"/entities/{entity_id}/attrs",
                                          json={"no2": {"type": "Property", "value": value}})
            assert response.status_code == 204
            return time.monotonic()

        # One at a time: every notification is measured on its own while the dead lanes fail and retry.
        for value in range(SPACED_UPDATES):
            acknowledged = await update(value)
            arrived = await wait_for(lambda v=value: arrival_of(v), within=10, what=f"notification of no2={value}")
            assert arrived - acknowledged <= NOTIFICATION_BOUND_S, (
                f"notification of no2={value} took {arrived - acknowledged:.2f} s beside dead receivers")

        # A burst: the dead lanes' backlogs grow, the healthy lane keeps up and keeps the order.
        values = list(range(100, 100 + BURST_UPDATES))
        acknowledged_at = {value: await update(value) for value in values}
        await wait_for(lambda: all(arrival_of(v) is not None for v in values), within=15,
                       what="every notification of the burst")
        late = {v: round(arrival_of(v) - acknowledged_at[v], 2) for v in values  # type: ignore[operator]
                if arrival_of(v) - acknowledged_at[v] > NOTIFICATION_BOUND_S}  # type: ignore[operator]
        assert not late, f"notifications later than {NOTIFICATION_BOUND_S} s beside dead receivers: {late}"
        received = [e["no2"] for r in list(receiver.received) for e in r.body["data"]]
        assert [v for v in received if v >= 100] == values

        # The dead subscriptions were really failing meanwhile (not silently skipped).
        async def all_failing() -> bool:
            statuses = [(await client.get(f"/subscriptions/{sub_id}")).json() for sub_id in dead_ids]
            return all(status["notification"].get("timesFailed", 0) >= 1 for status in statuses)

        await wait_for(all_failing, within=10, what="every dead subscription to count a failure")
        await asyncio.sleep(0)

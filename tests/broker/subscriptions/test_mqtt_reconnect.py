"""MQTT notifications survive their MQTT broker going away: QoS 1 and QoS 0 arrive after it is back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from broker.embedded_postgres import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto to stop and start an MQTT broker")


class Mosquitto:
    """A Mosquitto on a fixed free port that the test stops and starts again.

    Sessions persist across the restart (saved on a clean stop), so a subscriber's session keeps
    what was published while the subscriber had not reconnected yet: the test sees what our
    notifier delivered, not how fast the subscriber came back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="climaborough-mqtt-"))
        self.folder.chmod(0o777)  # started as root, mosquitto writes its persistence file as its own user
        (self.folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.folder}/\nqueue_qos0_messages true\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    broker = Mosquitto()
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(broker.folder, ignore_errors=True)


def listen(port: int, topic: str) -> tuple[mqtt.Client, list[dict[str, Any]]]:
    """A subscriber with a persistent session that reconnects by itself."""
    messages: list[dict[str, Any]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                         clean_session=False)
    client.on_message = lambda c, u, m: messages.append(json.loads(m.payload))
    client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *args: subscribed.set()
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("MQTT subscription not acknowledged")
    return client, messages


@pytest.mark.parametrize("qos", ["0", "1"])
async def test_mqtt_notifications_arrive_after_the_mqtt_broker_restarts(
    qos: str, client: httpx.AsyncClient, mosquitto: Mosquitto, wait_for: Callable[..., Any]
) -> None:
    entity_type = f"Station{uuid.uuid4().hex[:8]}"
    entity_id = f"urn:ngsi-ld:{entity_type}:1"
    topic = f"notify/{uuid.uuid4().hex[:8]}"
    endpoint = {"uri": f"mqtt://127.0.0.1:{mosquitto.port}/{topic}", "accept": "application/json",
                "notifierInfo": [{"key": "MQTT-QoS", "value": qos}]}
    response = await client.post("/subscriptions", json={
        "type": "Subscription", "entities": [{"type": entity_type}], "watchedAttributes": ["no2"],
        "notification": {"endpoint": endpoint, "format": "keyValues"}})
    assert response.status_code == 201, response.text
    subscriber, messages = listen(mosquitto.port, topic)
    try:
        def values() -> list[int]:
            return [entity["no2"] for message in list(messages) for entity in message["body"]["data"]]

        async def update(value: int) -> None:
            body = {"no2": {"type": "Property", "value": value}}
            if value == 0:
                created = await client.post("/entities", json={"id": entity_id, "type": entity_type, **body})
                assert created.status_code == 201
            else:
                assert (await client.patch(f"/entities/{entity_id}/attrs", json=body)).status_code == 204

        await update(0)
        await wait_for(lambda: 0 in values(), what="the notification before the MQTT broker stops")

        mosquitto.stop()
        for value in (1, 2, 3):
            await update(value)  # taken while no MQTT broker is there: they wait in the outbox
        mosquitto.start()

        await wait_for(lambda: {1, 2, 3} <= set(values()), within=20,
                       what="notifications written while the MQTT broker was down")
        await update(4)
        await wait_for(lambda: 4 in values(), within=10, what="a notification after the reconnect")
        after = [v for v in values() if v > 0]
        assert sorted(set(after)) == [1, 2, 3, 4]
        assert [v for i, v in enumerate(after) if i == 0 or v != after[i - 1]] == sorted(set(after)), after
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()

"""Where notifications come in: an MQTT subscriber (paho-mqtt, QoS 1, persistent session) or a small HTTP receiver.

Both hand every notification body (the NGSI-LD `Notification` object) to an async callback
on the engine's event loop. MQTT messages carry Orion-LD's envelope `{"metadata", "body"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

NotificationHandler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def notification_of(payload: bytes) -> dict[str, Any] | None:
    """The NGSI-LD notification in an MQTT or HTTP payload (MQTT: inside the `body` of the envelope)."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and isinstance(message.get("body"), dict) and "metadata" in message:
        message = message["body"]
    if isinstance(message, dict) and isinstance(message.get("data"), list):
        return message
    return None


class MqttIntake:
    """Subscribes to `topic` on `mqtt_url` and passes each notification to `handler`.

    The session is persistent (`clean_session=False` with a fixed client id) and QoS 1, so
    notifications published while the engine is stopped wait in the MQTT broker for it.
    """

    def __init__(self, mqtt_url: str, topic: str, client_id: str, handler: NotificationHandler) -> None:
        parts = urlsplit(mqtt_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.topic = topic
        self.handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
        )
        if parts.username:
            self._client.username_pw_set(parts.username, parts.password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint_uri(self) -> str:
        return f"mqtt://{self.host}:{self.port}/{self.topic}"

    def _on_connect(self, client: paho.Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt connect refused: %s", reason)
            return
        client.subscribe(self.topic, qos=1)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, bytes(message.payload))

    def _dispatch(self, payload: bytes) -> None:
        notification = notification_of(payload)
        if notification is None:
            log.warning("ignored an MQTT message that is not an NGSI-LD notification: %.200r", payload)
            return
        task = asyncio.get_running_loop().create_task(self.handler(notification))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, connect_timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.host, self.port, keepalive=60)
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), connect_timeout_s)
        except TimeoutError:
            self._client.loop_stop()
            raise ConnectionError(
                f"no MQTT connection to {self.host}:{self.port} within {connect_timeout_s}s"
            ) from None

    async def stop(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class HttpIntake:
    """A minimal HTTP/1.1 receiver for notifications (POST, JSON body, keep-alive), answering 204."""

    def __init__(
        self, host: str, port: int, handler: NotificationHandler, *, advertised_host: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.advertised_host = advertised_host or host
        self.handler = handler
        self._server: asyncio.Server | None = None

    @property
    def endpoint_uri(self) -> str:
        return f"http://{self.advertised_host}:{self.port}/notify"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or b"0")
                body = await reader.readexactly(length) if length else b""
                notification = notification_of(body)
                status = b"204 No Content" if notification is not None else b"400 Bad Request"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                if notification is not None:
                    await self.handler(notification)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

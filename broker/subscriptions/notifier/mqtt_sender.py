"""Publishes notifications to mqtt(s):// endpoints (paho-mqtt), one client per broker and credentials."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import uuid
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from broker.subscriptions.model import Endpoint
from broker.subscriptions.notifier.http_sender import DeliveryFailed
from broker.subscriptions.notifier.render import RenderedNotification, mqtt_payload

log = logging.getLogger(__name__)

ClientKey = tuple[str, str, int, str | None, str | None, str]


class _Connection:
    """A paho client running its network loop in its own thread; connects lazily, reconnects on demand."""

    def __init__(self, key: ClientKey, connect_timeout_s: float) -> None:
        scheme, host, port, user, password, version = key
        protocol = mqtt.MQTTv5 if version == "mqtt5.0" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"climaborough-notifier-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if scheme == "mqtts":
            self.client.tls_set_context(ssl.create_default_context())
        self.host, self.port = host, port
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._timeout = connect_timeout_s
        self._started = False
        self.connecting = asyncio.Lock()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object = None) -> None:
        if not getattr(reason, "is_failure", False):
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object = None) -> None:
        self.connected.clear()

    def ensure_connected(self) -> None:
        """Blocking: runs in a worker thread."""
        if self.connected.is_set():
            return
        if not self._started:
            self.client.connect(self.host, self.port, keepalive=30)
            self.client.loop_start()
            self._started = True
        else:
            self.client.reconnect()
        if not self.connected.wait(self._timeout):
            raise DeliveryFailed(f"MQTT broker {self.host}:{self.port} did not accept the connection")

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()


class MqttSender:
    """Publishes `{"metadata", "body"}` envelopes with the QoS of the endpoint's notifierInfo."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._connections: dict[ClientKey, _Connection] = {}
        self._lock = asyncio.Lock()

    async def send(self, endpoint: Endpoint, notification: RenderedNotification) -> None:
        parts = urlsplit(endpoint.uri)
        default_port = 8883 if parts.scheme == "mqtts" else 1883
        key: ClientKey = (
            parts.scheme, parts.hostname or "localhost", parts.port or default_port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            endpoint.notifier_info.get("MQTT-Version", "mqtt3.1.1"),
        )
        topic = unquote(parts.path[1:])
        qos = int(endpoint.notifier_info.get("MQTT-QoS", "0"))
        payload = mqtt_payload(notification)
        async with self._lock:
            connection = self._connections.get(key)
            if connection is None:
                connection = self._connections[key] = _Connection(key, self._timeout)
        if not connection.connected.is_set():
            async with connection.connecting:  # concurrent sends of a lane connect once
                try:
                    await asyncio.to_thread(connection.ensure_connected)
                except (OSError, mqtt.WebsocketConnectionError, ValueError) as error:
                    raise DeliveryFailed(f"MQTT connect to {key[1]}:{key[2]} failed: {error}") from None
        info = connection.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            connection.connected.clear()
            raise DeliveryFailed(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            try:
                await asyncio.to_thread(info.wait_for_publish, self._timeout)
            except (RuntimeError, ValueError) as error:
                raise DeliveryFailed(f"MQTT publish not acknowledged: {error}") from None
            if not info.is_published():
                raise DeliveryFailed("MQTT publish not acknowledged in time")

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await asyncio.to_thread(connection.close)

"""MQTT intake (paho-mqtt): QoS 1, persistent session, shared subscriptions, acknowledged after the outbox commit.

Backpressure instead of loss: a message is acknowledged only once its entities are on disk in
the outbox (or in the quarantine). With MQTT 5 the agent announces `Receive Maximum`, so the
server never has more than that many unacknowledged messages in flight to it; everything else
waits in the server's queue for this session (see broker_config/mosquitto/mosquitto.conf, which
lifts Mosquitto's default limit of 1000 queued messages that would otherwise drop them). When the
outbox is full (`max_pending`) the agent stops acknowledging and the server holds the rest.
MQTT 3.1.1 (amqtt) has no shared subscriptions and no Receive Maximum: one agent takes every
message and the server's in-flight window bounds what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agents.iot.measures import MeasureIngestor, RawMeasure
from agents.iot.topics import SUBSCRIPTION_FILTERS, MeasureTopic, TopicError, parse_topic, shared

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_BATCH = 500
TOPIC_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class _Delivery:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime


class MqttIntake:
    """Subscribes to the measure topics and feeds the ingestor in batches, acknowledging after each durable write."""

    def __init__(
        self,
        url: str,
        ingestor: MeasureIngestor,
        *,
        client_id: str,
        group: str | None,
        protocol: str = "5",
        receive_maximum: int = 1000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", ""):
            raise ValueError(f"unsupported MQTT URL {url!r}: use mqtt://host:port")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.ingestor = ingestor
        self.v5 = protocol == "5"
        self.group = group if self.v5 else None
        self.receive_maximum = receive_maximum
        self.received = 0
        # paho's thread appends here and wakes the loop once per burst, not once per message.
        self._arrived: deque[_Delivery] = deque()
        self._arrival = asyncio.Event()
        self._wake_scheduled = False
        self._stopping = False
        self._topics: dict[str, MeasureTopic | str] = {}  # topic → its parts, or why it is no measure topic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = asyncio.Event()
        if self.v5:
            self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        else:
            self._client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
            )
        if parts.username:
            self._client.username_pw_set(parts.username, parts.password)
        self._client.manual_ack_set(True)
        self._client.reconnect_delay_set(1, 5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open

    # -- paho's network thread ----------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt connect refused reason=%s", reason)
            return
        filters = [(shared(topic, self.group), 1) for topic in SUBSCRIPTION_FILTERS]
        client.subscribe(filters)

    @staticmethod
    def _on_socket_open(_client: paho.Client, _userdata: object, sock: object) -> None:
        """No Nagle delay: acknowledgements leave at once instead of waiting for the next packet."""
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]

    def _on_subscribe(self, *_: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        assert self._loop is not None
        if self._stopping:
            return  # not acknowledged: the server delivers it again to this session
        self._arrived.append(
            _Delivery(message.topic, bytes(message.payload), message.mid, message.qos, datetime.now(UTC))
        )
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._wake_scheduled = False
        self._arrival.set()

    # -- event loop ---------------------------------------------------------------------------

    async def start(self, *, timeout_s: float = 30.0) -> None:
        """Connect and subscribe (waits until the server confirmed the subscriptions)."""
        self._loop = asyncio.get_running_loop()
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            properties.ReceiveMaximum = self.receive_maximum
            self._client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=properties)
        else:
            self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        log.info("mqtt subscribed host=%s port=%d group=%s", self.host, self.port, self.group)

    async def run(self) -> None:
        """Take messages in batches until `stop`: ingest, then acknowledge each one, in arrival order.

        The next batch is translated while the previous one is being handed over (two in flight),
        and acknowledgements follow the order the messages arrived in (MQTT 4.6).
        """
        previous: asyncio.Task[None] | None = None
        while True:
            batch = await self._next_batch()
            if batch is None:
                break
            previous = asyncio.create_task(self._ingest(batch, after=previous))
            await asyncio.sleep(0)  # it translates now; more messages gather meanwhile
        if previous is not None:
            await previous

    async def _next_batch(self) -> list[_Delivery] | None:
        # Stopping takes nothing more, however much arrived: a backlog stays with the server.
        while not self._arrived or self._stopping:
            if self._stopping:
                return None
            self._arrival.clear()
            if self._arrived:
                break
            await self._arrival.wait()
        batch: list[_Delivery] = []
        while self._arrived and len(batch) < MAX_BATCH:
            batch.append(self._arrived.popleft())
        return batch

    async def _ingest(self, batch: list[_Delivery], *, after: asyncio.Task[None] | None) -> None:
        raws: list[RawMeasure] = []
        for delivery in batch:
            try:
                topic = self._topic(delivery.topic)
            except TopicError as error:
                await asyncio.to_thread(
                    self.ingestor.quarantine.add, agent="iot", source=f"mqtt:{delivery.topic}",
                    payload=delivery.payload, reason=str(error), metadata={"topic": delivery.topic},
                )  # fmt: skip
                continue
            raws.append(
                RawMeasure(
                    transport="mqtt",
                    source=f"mqtt:{delivery.topic}",
                    protocol=topic.protocol,
                    apikey=topic.apikey,
                    device_id=topic.device_id,
                    payload=delivery.payload,
                    received_at=delivery.received_at,
                    attribute=topic.attribute,
                )
            )
        await self.ingestor.ingest(raws)
        if after is not None:
            await after
        for delivery in batch:
            self._client.ack(delivery.mid, delivery.qos)
        self.received += len(batch)

    def _topic(self, topic: str) -> MeasureTopic:
        # Devices publish to the same few topics over and over: parse each once.
        known = self._topics.get(topic)
        if known is None:
            if len(self._topics) > TOPIC_CACHE_SIZE:
                self._topics.clear()
            try:
                known = parse_topic(topic)
            except TopicError as error:
                known = str(error)
            self._topics[topic] = known
        if isinstance(known, str):
            raise TopicError(known)
        return known

    async def stop(self) -> None:
        """Take no more messages (`run` finishes the batches it took); the session keeps the rest on the server."""
        self._stopping = True
        self._arrived.clear()  # not acknowledged: the server delivers them again to the session
        self._arrival.set()

    async def disconnect(self, *, timeout_s: float = 5.0) -> None:
        """Send the acknowledgements still queued, then DISCONNECT, and stop paho's thread.

        paho's `loop_stop` right after `disconnect` may end its thread before it wrote the queued
        PUBACKs: the server would then deliver those messages again, after they were handed over.
        """
        closed = threading.Event()
        self._client.on_disconnect = lambda *_: closed.set()
        if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
            await asyncio.to_thread(closed.wait, timeout_s)  # paho's thread writes the DISCONNECT last
        self._client.loop_stop()

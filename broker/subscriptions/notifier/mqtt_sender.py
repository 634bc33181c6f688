"""Publishes notifications to mqtt(s):// endpoints: paho-mqtt clients driven by the notifier's event loop.

One client per MQTT broker, credentials and protocol version. paho's own network thread cost
a socketpair wake-up, a thread switch and GIL hand-overs per message, and QoS 1/2
acknowledgements were awaited in a worker thread per message (a handful of threads for every
subscription's in-flight notifications). Here the client's socket is registered with the event
loop (paho's external-loop callbacks): a QoS 0 publish is a write on the next loop turn, a QoS
1/2 publish awaits a future that the PUBACK/PUBCOMP resolves. Only the blocking connect runs in
a thread, on a pool of its own, so an unreachable MQTT broker never takes the threads other
work needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from broker.subscriptions.model import Endpoint
from broker.subscriptions.notifier.http_sender import DeliveryFailed
from broker.subscriptions.notifier.render import RenderedNotification, mqtt_payload

log = logging.getLogger(__name__)

ClientKey = tuple[str, str, int, str | None, str | None, str]
KEEPALIVE_S = 30
HOUSEKEEPING_INTERVAL_S = 1.0
"""How often paho's `loop_misc` runs (keep-alive pings, lost connections)."""
CONNECTS_AT_ONCE = 4


class _Connection:
    """One paho client whose socket the event loop watches; connects lazily, reconnects on demand."""

    def __init__(self, key: ClientKey, timeout_s: float, loop: asyncio.AbstractEventLoop,
                 connector: ThreadPoolExecutor) -> None:
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
        self.client.connect_timeout = timeout_s
        self.host, self.port = host, port
        self._timeout = timeout_s
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._connector = connector
        self._started = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connecting = asyncio.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        # on_publish is set only while QoS 1/2 acknowledgements are awaited: for every QoS 0 message
        # paho would otherwise build a reason code and properties just to call it.
        self.client.on_socket_open = lambda client, userdata, sock: self._opened(sock)
        self.client.on_socket_close = lambda client, userdata, sock: self._in_loop(self._unwatch, sock)
        # paho writes every queued packet with a send() of its own; collected, the packets of one
        # loop turn (a change's notifications to several subscriptions) leave with one.
        self._socket: Any = None
        self._unsent = bytearray()
        setattr(self.client, "_sock_send", self._collect)  # noqa: B010 (a method on the instance)
        # paho asks for the socket to be watched for writability after each queued packet; a write
        # is due on the next loop turn instead (no epoll registration and removal per publish).
        # Only what the socket does not take waits for writability (`_flush`).
        self._write_due = False
        self._watching_writable = False
        self.client.on_socket_register_write = (
            lambda client, userdata, sock: self._in_loop(self._write_soon, sock))
        self.client.on_socket_unregister_write = None

    # ---- the socket in the event loop (paho calls these from the loop, or from the connecting thread)

    def _in_loop(self, action: Any, sock: Any) -> None:
        """Run `action(fd)` on the loop; the descriptor is read now, before paho may close the socket."""
        fd = sock.fileno()
        if threading.get_ident() == self._loop_thread:
            action(fd)
        else:  # in order: a reconnect's "close old" comes before its "open new", even on the same number
            self._loop.call_soon_threadsafe(action, fd)

    def _opened(self, sock: Any) -> None:
        """A new connection: no Nagle delay (paho leaves it on; a small publish behind an
        unacknowledged one would wait for the peer's delayed ACK, ~40 ms), then watch it."""
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (e.g. websockets wrapper)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if threading.get_ident() == self._loop_thread:
            self._attach(sock)
        else:
            self._loop.call_soon_threadsafe(self._attach, sock)

    def _attach(self, sock: Any) -> None:
        self._socket = sock
        self._unsent.clear()
        with contextlib.suppress(ValueError, OSError):
            self._loop.add_reader(sock.fileno(), self._readable)

    def _unwatch(self, fd: int) -> None:
        self._socket = None
        self._unsent.clear()
        self._watching_writable = False
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(fd)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(fd)

    def _write_soon(self, fd: int) -> None:
        if not self._write_due:
            self._write_due = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        """paho's queued packets go to `_unsent` (`_collect`), then to the socket in one send."""
        self._write_due = False
        self.client.loop_write()
        self._flush()

    def _watch_writable(self, fd: int) -> None:
        if not self._watching_writable:
            self._watching_writable = True
            with contextlib.suppress(ValueError, OSError):
                self._loop.add_writer(fd, self._writable)

    def _unwatch_writable(self, fd: int) -> None:
        if self._watching_writable:
            self._watching_writable = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(fd)

    def _readable(self) -> None:
        self.client.loop_read()

    def _writable(self) -> None:
        """The socket takes data again: send what it did not take before."""
        self._flush()

    def _collect(self, data: bytes | bytearray) -> int:
        """paho's `_sock_send` on this client: the packet joins the ones sent by `_flush`."""
        self._unsent += data
        return len(data)

    def _flush(self) -> None:
        """Send what paho wrote in this turn; what the socket does not take waits for it to be writable."""
        sock = self._socket
        if not self._unsent or sock is None:
            return
        try:
            sent = sock.send(self._unsent)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0
        except OSError:  # the connection is gone: reading finds out, and paho disconnects (acks fail)
            self._unsent.clear()
            return
        del self._unsent[:sent]
        if self._unsent:
            self._watch_writable(sock.fileno())
        else:
            self._unwatch_writable(sock.fileno())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.client.loop_misc()

    # ---- paho's protocol callbacks (on the loop thread: loop_read/loop_write/loop_misc run there)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object = None) -> None:
        if not getattr(reason, "is_failure", False):
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object = None) -> None:
        self.connected.clear()
        acks, self._acks = self._acks, {}
        for ack in acks.values():  # their rows stay in the outbox and are sent again
            if not ack.done():
                ack.set_exception(DeliveryFailed(f"MQTT connection to {self.host}:{self.port} lost"))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object = None,
                    properties: object = None) -> None:
        ack = self._acks.pop(mid, None)
        if not self._acks:
            self.client.on_publish = None
        if ack is not None and not ack.done():
            if getattr(reason, "is_failure", False):
                ack.set_exception(DeliveryFailed(f"MQTT broker refused the message: {reason}"))
            else:
                ack.set_result(None)

    # ---- what the sender uses

    async def ensure_connected(self) -> None:
        if self.connected.is_set():
            return
        async with self.connecting:  # concurrent sends of a lane connect once
            if self.connected.is_set():
                return
            connect = (self.client.reconnect if self._started else
                       lambda: self.client.connect(self.host, self.port, keepalive=KEEPALIVE_S))
            try:
                await self._loop.run_in_executor(self._connector, connect)
            except (OSError, mqtt.WebsocketConnectionError, ValueError) as error:
                raise DeliveryFailed(f"MQTT connect to {self.host}:{self.port} failed: {error}") from None
            self._started = True
            if self._housekeeping is None:
                self._housekeeping = asyncio.create_task(self._keep_alive(), name=f"mqtt-{self.host}:{self.port}")
            try:
                await asyncio.wait_for(self.connected.wait(), self._timeout)
            except TimeoutError:
                raise DeliveryFailed(f"MQTT broker {self.host}:{self.port} did not accept the connection") from None

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        if qos > 0:
            self.client.on_publish = self._on_publish  # before the publish: its PUBACK must find it
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.connected.clear()
            raise DeliveryFailed(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return  # QoS 0: on its way with the next loop turn, nothing to wait for
        ack = self._acks[info.mid] = self._loop.create_future()
        try:
            await asyncio.wait_for(ack, self._timeout)
        except TimeoutError:
            self._acks.pop(info.mid, None)
            raise DeliveryFailed("MQTT publish not acknowledged in time") from None

    def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._started:
            self._flush()
            vars(self.client).pop("_sock_send", None)  # paho's own send: it closes the socket right after
            self.client.disconnect()
            self.client.loop_write()  # sends DISCONNECT, and paho closes the socket after it


class MqttSender:
    """Publishes `{"metadata", "body"}` envelopes with the QoS of the endpoint's notifierInfo."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._connections: dict[ClientKey, _Connection] = {}
        self._connector = ThreadPoolExecutor(CONNECTS_AT_ONCE, thread_name_prefix="mqtt-connect")

    async def send(self, endpoint: Endpoint, notification: RenderedNotification) -> None:
        key, topic = _target(endpoint.uri, endpoint.notifier_info.get("MQTT-Version", "mqtt3.1.1"))
        qos = int(endpoint.notifier_info.get("MQTT-QoS", "0"))
        connection = self._connections.get(key)
        if connection is None:
            connection = self._connections[key] = _Connection(
                key, self._timeout, asyncio.get_running_loop(), self._connector)
        await connection.ensure_connected()
        await connection.publish(topic, mqtt_payload(notification), qos)

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        self._connector.shutdown(wait=False, cancel_futures=True)


@functools.lru_cache(maxsize=4096)
def _target(uri: str, version: str) -> tuple[ClientKey, str]:
    """The client an endpoint URI publishes with (broker, credentials, protocol version) and its topic."""
    parts = urlsplit(uri)
    default_port = 8883 if parts.scheme == "mqtts" else 1883
    key: ClientKey = (
        parts.scheme, parts.hostname or "localhost", parts.port or default_port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        version,
    )  # fmt: skip
    return key, unquote(parts.path[1:])

"""One IoT agent process, wired: registry, provisioning API, southbound HTTP, MQTT, outbox relay, quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI

from agents.handoff import HandOff
from agents.iot.measures import MeasureIngestor
from agents.iot.mqtt import MqttIntake
from agents.iot.north import create_north_app
from agents.iot.registry import Registry
from agents.iot.settings import IotAgentSettings
from agents.iot.south import create_south_app
from agents.outbox import BrokerUpsert, Outbox, OutboxRelay
from agents.quarantine import Quarantine

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the agent (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: FastAPI, host: str, port: int) -> _Server:
    return _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False))


class IotAgent:
    """The parts of one agent process; `run()` serves until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(self, settings: IotAgentSettings, *, north_access: Sequence[Any] = ()) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_path)
        self.quarantine = Quarantine(settings.quarantine_path)
        self.outbox = Outbox(
            settings.outbox_path,
            max_pending=settings.iot_outbox_max_pending,
            synchronous=settings.iot_outbox_synchronous,
        )
        self.destination = BrokerUpsert(
            settings.broker_url, context=settings.iot_context, timeout_s=settings.iot_broker_timeout_s
        )
        self.relay = OutboxRelay(
            self.outbox, self.destination, self.quarantine, agent="iot",
            batch_size=settings.iot_batch_size, concurrency=settings.iot_delivery_concurrency,
        )  # fmt: skip
        self.hand_off = HandOff(
            self.relay, max_entries=settings.iot_direct_batch_size, max_delay_s=settings.iot_coalesce_delay_s
        )
        self.ingestor = MeasureIngestor(self.registry, self.hand_off, self.quarantine, city=settings.iot_city)
        north_app = create_north_app(settings, self.registry, self.status, north_access)
        self.north = _server(north_app, settings.iot_host, settings.iot_north_port)
        self.south = _server(create_south_app(self.ingestor), settings.iot_host, settings.iot_south_port)
        self.mqtt: MqttIntake | None = None
        if settings.mqtt_url:
            self.mqtt = MqttIntake(
                settings.mqtt_url, self.ingestor, client_id=f"climaborough-{settings.iot_instance}",
                group=settings.iot_mqtt_group, protocol=settings.iot_mqtt_protocol,
                receive_maximum=settings.iot_mqtt_receive_maximum,
            )  # fmt: skip
        self._stop = asyncio.Event()

    def status(self) -> dict[str, Any]:
        """Counters for `/health`: MQTT messages taken, entities delivered, outbox backlog, broker reachable."""
        return {
            "instance": self.settings.iot_instance,
            "mqttReceived": self.mqtt.received if self.mqtt else 0,
            "delivered": self.relay.delivered + self.hand_off.direct,
            "outboxPending": self.outbox.pending,
            "brokerAvailable": self.relay.available,
        }

    def stop(self) -> None:
        """Ask the agent to finish (thread-unsafe: call on its loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until stopped; on the way out, take no more measures and hand over what is in flight."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stop)
        relay = asyncio.create_task(self.relay.run(), name="outbox-relay")
        hand_off = asyncio.create_task(self.hand_off.run(), name="hand-off")
        servers = [asyncio.create_task(self.north.serve()), asyncio.create_task(self.south.serve())]
        intake = None
        try:
            if self.mqtt is not None:
                await self.mqtt.start()
                intake = asyncio.create_task(self.mqtt.run(), name="mqtt-intake")
            log.info(
                "iot agent ready north=%s:%d south=%s:%d broker=%s mqtt=%s",
                self.settings.iot_host, self.settings.iot_north_port, self.settings.iot_host,
                self.settings.iot_south_port, self.settings.broker_url, self.settings.mqtt_url,
            )  # fmt: skip
            await self._stop.wait()
        finally:
            await self._shut_down(intake, hand_off, relay, servers)

    async def _shut_down(
        self, intake: asyncio.Task[None] | None, hand_off: asyncio.Task[None], relay: asyncio.Task[None],
        servers: list[asyncio.Task[None]],
    ) -> None:
        """Stop within `iot_shutdown_timeout_s` (plus a few disk writes), losing nothing.

        What the agent took is handed over: to the broker if it answers in time, else to the outbox
        (marked uncertain when a request is left in flight), and only then acknowledged. What it did
        not take stays with the MQTT server for this client's persistent session.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.iot_shutdown_timeout_s
        if self.mqtt is not None:
            await self.mqtt.stop()
        for server in (self.north, self.south):
            server.should_exit = True
        self.relay.stop()  # nothing new leaves the outbox, so nothing there overtakes the hand-off's last batch
        self.hand_off.stop()
        if not await _finished(hand_off, deadline - loop.time()):
            log.warning("the broker did not answer in time: what is in flight goes to the outbox")
            self.hand_off.give_up()
            await hand_off
        if intake is not None:
            await intake  # acknowledges what it took, now that all of it is durable
        if self.mqtt is not None:
            await self.mqtt.disconnect()
        await asyncio.gather(*servers, return_exceptions=True)
        if not await _finished(relay, deadline - loop.time()):
            self.relay.give_up()  # its batches stay in the outbox, marked uncertain
            await relay
        await self.destination.aclose()
        self.outbox.close()
        self.registry.close()
        self.quarantine.close()


async def _finished(task: asyncio.Task[None], timeout_s: float) -> bool:
    """Whether `task` finished within `timeout_s` (it keeps running if not)."""
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    return bool(done)


async def run_iot_agent(settings: IotAgentSettings, *, north_access: Sequence[Any] = ()) -> None:
    """Run one agent process until SIGTERM/SIGINT; `north_access` guards the provisioning API."""
    await IotAgent(settings, north_access=north_access).run()

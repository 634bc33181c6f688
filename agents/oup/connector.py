"""OUP connector: historic records over HTTPS (paged, from a checkpoint), then live records over secure WebSocket.

The Open Urban Platform (DKSR OUP) outbound API as this connector speaks it (flat JSON records,
see `broker_config/mappings/oup.yaml` for the fields):

    GET  {oup_url}/records?limit=<n>[&after=<cursor>]   (HTTPS)
         → {"records": [<flat record>, ...], "cursor": "<position of the last record>", "more": true|false}
    WSS  {oup_ws_url}                                    (secure WebSocket)
         → text messages, each one flat record or a JSON array of them

History pages go through the same path as `climaborough ingest` (newest instance per attribute
as current state, older ones through the temporal append path); the cursor is checkpointed
after each page, with the page marked in flight while it is written, so a restart neither
skips nor repeats a page. Live records go into the durable outbox (`agents/outbox.py`) and the
relay upserts them in order; the relay starts only when the history is complete, so live data
are never overtaken by older history. Records that cannot be mapped go to the quarantine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agents.files.checkpoint import Checkpoint
from agents.files.ingest import BrokerWriter, plan_chunk
from agents.files.mapping import Mapping as FileMapping
from agents.files.translator import Entity, UnmappableRecord, compile_translator
from agents.oup.settings import OupSettings
from agents.outbox import BrokerUpsert, Outbox, OutboxEntry, OutboxRelay
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient

log = logging.getLogger(__name__)

AGENT = "oup"


class OupUnavailable(Exception):
    """The OUP API did not answer as expected (network error, non-200 status, not JSON)."""


@dataclass
class OupStats:
    """What the connector did so far."""

    history_pages: int = 0
    history_records: int = 0
    live_records: int = 0
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the OUP's certificate against the system CAs, or only against `ca_file` when given."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))


class OupConnector:
    """Pulls the OUP's history, then follows its live stream, into any NGSI-LD broker."""

    def __init__(self, settings: OupSettings, mapping: FileMapping, *, tenant: str | None = None) -> None:
        self.settings = settings
        self.mapping = mapping
        self.tenant = tenant
        self.translate = compile_translator(mapping)
        self.stats = OupStats()
        self.tls = tls_context(settings.oup_ca_file)
        self.quarantine = Quarantine(settings.quarantine_path)
        identity = f"{settings.oup_url}\0{settings.broker_url}\0{tenant or ''}\0{mapping.text}"
        self.checkpoint = Checkpoint.load(settings.oup_dir, hashlib.sha256(identity.encode()).hexdigest()[:32])
        self.outbox = Outbox(settings.oup_dir / f"outbox-{self.checkpoint.path.stem[:12]}.sqlite")
        self._destination = BrokerUpsert(settings.broker_url)
        self.relay = OutboxRelay(self.outbox, self._destination, self.quarantine, agent=AGENT)
        self.history_done = asyncio.Event()

    async def aclose(self) -> None:
        """Release files and connections (outbox entries stay on disk for the next start)."""
        await self._destination.aclose()
        self.outbox.close()
        self.quarantine.close()

    # -- mapping --------------------------------------------------------------------------------------

    def _record_metadata(self) -> dict[str, Any]:
        """What `climaborough quarantine replay` needs to map a quarantined record again (agents/oup/replay.py)."""
        location = Path(self.mapping.path)
        return {"tenant": self.tenant, "mappingName": self.mapping.name,
                "mapping": str(location.absolute()) if location.exists() else self.mapping.path}  # fmt: skip

    def _entities(self, records: list[Any], source: str) -> list[Entity]:
        entities: list[Entity] = []
        bad = []
        for record in records:
            try:
                if not isinstance(record, Mapping):
                    raise UnmappableRecord(f"a record is a JSON object, not {type(record).__name__}")
                entities.extend(self.translate.translate_record(record))
            except UnmappableRecord as error:
                bad.append((AGENT, source, orjson.dumps(record).decode(), str(error), self._record_metadata()))
        if bad:
            self.quarantine.add_many(bad)
            self.stats.quarantined += len(bad)
        return entities

    # -- history over HTTPS ---------------------------------------------------------------------------

    async def _page(self, http: httpx.AsyncClient, cursor: str | None) -> tuple[list[Any], str | None, bool]:
        params: dict[str, Any] = {"limit": self.settings.oup_page_size}
        if cursor:
            params["after"] = cursor
        try:
            response = await http.get(f"{self.settings.oup_url.rstrip('/')}/records", params=params)
        except httpx.TransportError as error:
            raise OupUnavailable(f"GET records: {type(error).__name__}: {error}") from error
        if response.status_code != 200:
            raise OupUnavailable(f"GET records answered {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as error:
            raise OupUnavailable("GET records did not answer JSON") from error
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise OupUnavailable("GET records answered JSON without a 'records' list")
        next_cursor = body.get("cursor")
        return records, str(next_cursor) if next_cursor is not None else cursor, bool(body.get("more"))

    async def backfill(self) -> int:
        """Pull every page after the checkpointed cursor into the broker; returns how many records came."""
        pulled = 0
        cursor: str | None = self.checkpoint.cursor or None
        async with (
            httpx.AsyncClient(verify=self.tls, timeout=self.settings.oup_timeout_s) as http,
            AsyncBrokerClient(self.settings.broker_url, tenant=self.tenant, timeout=60) as client,
        ):
            writer = BrokerWriter(client, self.quarantine, source=f"oup:{self.settings.oup_url}")
            while True:
                records, next_cursor, more = await self._page(http, cursor)
                if not records:
                    break
                uncertain = self.checkpoint.in_flight is not None
                self.checkpoint.in_flight = [self.checkpoint.records, self.checkpoint.records + len(records)]
                await asyncio.to_thread(self.checkpoint.save)
                entities = self._entities(records, f"oup:{self.settings.oup_url}/records")
                await writer.write(plan_chunk(entities, writer.latest), uncertain=uncertain)
                cursor = next_cursor
                self.checkpoint.cursor = cursor or ""
                self.checkpoint.records += len(records)
                self.checkpoint.in_flight = None
                await asyncio.to_thread(self.checkpoint.save)
                pulled += len(records)
                self.stats.history_pages += 1
                self.stats.history_records += len(records)
                if not more:
                    break
        return pulled

    # -- live over WSS --------------------------------------------------------------------------------

    async def _accept_live(self, message: str | bytes) -> None:
        try:
            payload = orjson.loads(message)
        except orjson.JSONDecodeError as error:
            reason = f"live message is not JSON: {error}"
            self.quarantine.add(agent=AGENT, source=f"oup:{self.settings.oup_ws_url}", payload=message,
                                reason=reason, metadata=self._record_metadata())  # fmt: skip
            self.stats.quarantined += 1
            return
        records = payload if isinstance(payload, list) else [payload]
        entities = self._entities(records, f"oup:{self.settings.oup_ws_url}")
        await self.outbox.put([
            OutboxEntry(lane=self.tenant or "", key=entity["id"], payload=entity,
                        source={"agent": AGENT, "source": f"oup:{self.settings.oup_ws_url}",
                                "payload": orjson.dumps(entity).decode()})
            for entity in entities
        ])  # fmt: skip
        self.stats.live_records += len(records)

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow the live stream until `stop` is set, reconnecting with backoff when it drops."""
        delay = 0.2
        while not stop.is_set():
            try:
                async with connect(self.settings.oup_ws_url, ssl=self.tls, open_timeout=10) as socket:
                    delay = 0.2
                    while not stop.is_set():
                        receiving = asyncio.ensure_future(socket.recv())
                        stopping = asyncio.ensure_future(stop.wait())
                        done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                        if receiving not in done:
                            receiving.cancel()
                            return
                        stopping.cancel()
                        await self._accept_live(receiving.result())
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as error:
                self.stats.errors.append(f"live stream: {type(error).__name__}: {error}")
                log.warning("OUP live stream unavailable, reconnecting in %.1f s: %s", delay, error)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)

    async def run(self, stop: asyncio.Event) -> None:
        """History first (retried until the OUP answers), live records meanwhile held in the outbox, then both."""
        follower = asyncio.create_task(self.follow(stop))
        delay = 0.5
        while not stop.is_set():
            try:
                await self.backfill()
                break
            except OupUnavailable as error:
                self.stats.errors.append(str(error))
                log.warning("OUP history unavailable, retrying in %.1f s: %s", delay, error)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        self.history_done.set()
        relay = asyncio.create_task(self.relay.run())
        await stop.wait()
        await follower
        self.relay.stop()
        await relay

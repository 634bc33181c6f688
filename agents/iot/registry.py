"""Persistent store of config groups and devices (SQLite under the data folder), shared by every agent process.

Each agent process keeps an in-memory copy for the measure hot path and reloads it whenever
SQLite's `data_version` says another process changed the file, so a device provisioned through
one agent is known to all of them, and a restart keeps every device.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import orjson

from agents.iot.provisioning import ConfigGroup, Device

CHECK_INTERVAL_S = 0.5
"""How stale a process's view of provisioning changed by another process may be."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config_groups (
  service TEXT NOT NULL, subservice TEXT NOT NULL, resource TEXT NOT NULL, apikey TEXT NOT NULL,
  doc BLOB NOT NULL, PRIMARY KEY (service, subservice, resource, apikey));
CREATE TABLE IF NOT EXISTS devices (
  service TEXT NOT NULL, subservice TEXT NOT NULL, device_id TEXT NOT NULL, apikey TEXT,
  doc BLOB NOT NULL, PRIMARY KEY (service, subservice, device_id));
"""


T = TypeVar("T")


class AlreadyProvisioned(Exception):
    """A group or device that exists already under the same key; nothing of the request was stored."""

    def __init__(self, item: ConfigGroup | Device) -> None:
        super().__init__(item)
        self.item = item


@dataclass(frozen=True)
class Scoped(Generic[T]):
    """A group or device with the fiware-service and fiware-servicepath it was provisioned under."""

    service: str
    subservice: str
    item: T


class Registry:
    """Config groups and devices by (service, subservice); lookups for measures by API key and device id."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._version = -1
        self._checked_at = 0.0
        self._generation = 0
        self._groups: list[Scoped[ConfigGroup]] = []
        self._devices: dict[tuple[str, str, str], Scoped[Device]] = {}

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._version = -1

    @property
    def generation(self) -> int:
        """Changes whenever the in-memory copy is reloaded (for caches built on top of it)."""
        self._refresh()
        return self._generation

    def _refresh(self) -> None:
        # Other processes' changes are looked for at most every CHECK_INTERVAL_S: the measure path
        # calls this for every message.
        now = time.monotonic()
        if self._version != -1 and now - self._checked_at < CHECK_INTERVAL_S:
            return
        with self._lock:
            self._checked_at = now
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return
            self._generation += 1
            self._groups = [
                Scoped(service, subservice, ConfigGroup.model_validate(orjson.loads(doc)))
                for service, subservice, doc in self._db.execute(
                    "SELECT service, subservice, doc FROM config_groups ORDER BY rowid"
                )
            ]
            self._devices = {
                (service, subservice, device_id): Scoped(service, subservice, Device.model_validate(orjson.loads(doc)))
                for service, subservice, device_id, doc in self._db.execute(
                    "SELECT service, subservice, device_id, doc FROM devices"
                )
            }
            self._version = version

    # -- config groups ------------------------------------------------------------------------

    def add_groups(self, service: str, subservice: str, groups: list[ConfigGroup]) -> None:
        """Store new groups, all or none; AlreadyProvisioned names the first one that exists already."""
        with self._transaction() as db:
            for group in groups:
                # Measures find their group by (resource, apikey) alone, so that pair is unique across services.
                exists = db.execute(
                    "SELECT 1 FROM config_groups WHERE resource=? AND apikey=?", (group.resource, group.apikey)
                ).fetchone()
                if exists:
                    raise AlreadyProvisioned(group)
                db.execute(
                    "INSERT INTO config_groups VALUES (?, ?, ?, ?, ?)",
                    (service, subservice, group.resource, group.apikey, orjson.dumps(group.model_dump())),
                )

    def groups(self, service: str, subservice: str | None) -> list[ConfigGroup]:
        """The groups of a service (and servicepath, unless None)."""
        self._refresh()
        return [
            scoped.item
            for scoped in self._groups
            if scoped.service == service and (subservice is None or scoped.subservice == subservice)
        ]

    def replace_group(self, service: str, subservice: str, group: ConfigGroup) -> None:
        """Store an updated group under its (resource, apikey)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE config_groups SET doc=? WHERE service=? AND subservice=? AND resource=? AND apikey=?",
                (orjson.dumps(group.model_dump()), service, subservice, group.resource, group.apikey),
            )

    def delete_group(self, service: str, subservice: str, resource: str, apikey: str) -> bool:
        """Remove a group; False when there was none."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM config_groups WHERE service=? AND subservice=? AND resource=? AND apikey=?",
                (service, subservice, resource, apikey),
            )
        return cursor.rowcount > 0

    def group_for(self, apikey: str, resource: str | None = None) -> Scoped[ConfigGroup] | None:
        """The group a measure's API key belongs to (restricted to a resource path for HTTP measures)."""
        self._refresh()
        fallback = None
        for scoped in self._groups:
            if scoped.item.apikey != apikey:
                continue
            if resource is None or scoped.item.resource == resource:
                return scoped
            if not scoped.item.resource:
                fallback = scoped
        return fallback

    # -- devices ------------------------------------------------------------------------------

    def add_devices(self, service: str, subservice: str, devices: list[Device]) -> None:
        """Store new devices, all or none; AlreadyProvisioned names the first one that exists already."""
        with self._transaction() as db:
            for device in devices:
                exists = db.execute(
                    "SELECT 1 FROM devices WHERE service=? AND subservice=? AND device_id=?",
                    (service, subservice, device.device_id),
                ).fetchone()
                if exists:
                    raise AlreadyProvisioned(device)
                db.execute(
                    "INSERT INTO devices VALUES (?, ?, ?, ?, ?)",
                    (service, subservice, device.device_id, device.apikey, orjson.dumps(device.model_dump())),
                )

    def devices(self, service: str, subservice: str | None) -> list[Device]:
        """The devices of a service (and servicepath, unless None), in device id order."""
        self._refresh()
        found = [
            scoped.item
            for (svc, sub, _), scoped in self._devices.items()
            if svc == service and (subservice is None or sub == subservice)
        ]
        return sorted(found, key=lambda device: device.device_id)

    def device(self, service: str, subservice: str, device_id: str) -> Device | None:
        """One device, or None."""
        self._refresh()
        scoped = self._devices.get((service, subservice, device_id))
        return scoped.item if scoped else None

    def device_for(self, apikey: str, device_id: str, group: Scoped[ConfigGroup] | None) -> Scoped[Device] | None:
        """The provisioned device sending a measure: under its group's service, or by its own API key."""
        self._refresh()
        if group is not None:
            found = self._devices.get((group.service, group.subservice, device_id))
            if found is not None:
                return found
        for (_, _, candidate_id), scoped in self._devices.items():
            if candidate_id == device_id and scoped.item.apikey == apikey:
                return scoped
        return None

    def replace_device(self, service: str, subservice: str, device: Device) -> None:
        """Store an updated device."""
        with self._transaction() as db:
            db.execute(
                "UPDATE devices SET doc=?, apikey=? WHERE service=? AND subservice=? AND device_id=?",
                (orjson.dumps(device.model_dump()), device.apikey, service, subservice, device.device_id),
            )

    def delete_device(self, service: str, subservice: str, device_id: str) -> bool:
        """Remove a device; False when there was none."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM devices WHERE service=? AND subservice=? AND device_id=?",
                (service, subservice, device_id),
            )
        return cursor.rowcount > 0

"""Quarantine: records an agent could not map or the broker rejected, kept as they came to list, show and replay.

Shared by every agent (IoT, files, OUP) through one SQLite file (WAL, safe for several processes),
by default `<CLIMABOROUGH_DATA_DIR>/quarantine.sqlite`:

    quarantine = Quarantine(data_dir / "quarantine.sqlite")
    record_id = quarantine.add(agent="iot", source="mqtt:/ul/k/dev1/attrs", payload=b"t|x",
                               reason="attribute 't' is declared Number but the device sent 'x'",
                               metadata={"tenant": "madrid"})
    quarantine.list(agent="iot")          # newest first, QuarantinedRecord without the payload loaded lazily
    quarantine.get(record_id)             # one record, payload included
    await quarantine.replay(record_ids, handler)   # handler(record) re-ingests; success removes it

`payload` is kept byte for byte (bytes or text); `metadata` is free JSON an agent needs to replay
the record (topic, tenant, query parameters, the NGSI-LD entity the broker refused ...). A replay
handler raises to say "still failing": the record stays, with its reason and attempt count updated.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

QUARANTINE_FILE = "quarantine.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  quarantined_at REAL NOT NULL,
  agent TEXT NOT NULL,
  source TEXT NOT NULL,
  reason TEXT NOT NULL,
  payload BLOB NOT NULL,
  payload_is_text INTEGER NOT NULL,
  metadata BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_attempt_at REAL);
CREATE INDEX IF NOT EXISTS quarantine_agent ON quarantine (agent, id);
"""


@dataclass(frozen=True)
class QuarantinedRecord:
    """A record kept aside: what came in (payload), from where (agent, source), why, and when."""

    id: int
    quarantined_at: datetime
    agent: str
    source: str
    reason: str
    payload: bytes | str
    metadata: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    last_attempt_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (payload as text when it is UTF-8)."""
        payload: str
        if isinstance(self.payload, bytes):
            try:
                payload = self.payload.decode("utf-8")
            except UnicodeDecodeError:
                payload = self.payload.hex()
        else:
            payload = self.payload
        return {
            "id": self.id,
            "quarantinedAt": _iso(self.quarantined_at),
            "agent": self.agent,
            "source": self.source,
            "reason": self.reason,
            "payload": payload,
            "metadata": self.metadata,
            "attempts": self.attempts,
            "lastAttemptAt": _iso(self.last_attempt_at) if self.last_attempt_at else None,
        }


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did: ids re-ingested (and removed) and ids still failing with the new reason."""

    replayed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)


ReplayHandler = Callable[[QuarantinedRecord], Awaitable[None]]
"""Re-ingests one record; raises (any exception, its message is the reason) when it still fails."""


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class Quarantine:
    """The quarantine file: add, list, get, remove, replay. Thread-safe; several processes may share it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def add(
        self,
        *,
        agent: str,
        source: str,
        payload: bytes | str,
        reason: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Keep one record; returns its id."""
        return self.add_many([(agent, source, payload, reason, metadata)])[0]

    def add_many(self, records: Iterable[tuple[str, str, bytes | str, str, Mapping[str, Any] | None]]) -> list[int]:
        """Keep several records `(agent, source, payload, reason, metadata)` in one transaction; returns their ids."""
        now = time.time()
        ids: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for agent, source, payload, reason, metadata in records:
                    is_text = isinstance(payload, str)
                    stored = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
                    cursor = self._db.execute(
                        "INSERT INTO quarantine (quarantined_at, agent, source, reason, payload, payload_is_text,"
                        " metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (now, agent, source, reason, stored, int(is_text), orjson.dumps(dict(metadata or {}))),
                    )
                    ids.append(int(cursor.lastrowid or 0))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return ids

    @staticmethod
    def _record(row: tuple[Any, ...]) -> QuarantinedRecord:
        record_id, at, agent, source, reason, payload, is_text, metadata, attempts, last = row
        return QuarantinedRecord(
            id=record_id,
            quarantined_at=datetime.fromtimestamp(at, UTC),
            agent=agent,
            source=source,
            reason=reason,
            payload=bytes(payload).decode("utf-8") if is_text else bytes(payload),
            metadata=orjson.loads(metadata),
            attempts=attempts,
            last_attempt_at=_moment(last),
        )

    _COLUMNS = (
        "id, quarantined_at, agent, source, reason, payload, payload_is_text, metadata, attempts, last_attempt_at"
    )

    def list(self, *, agent: str | None = None, limit: int = 100, offset: int = 0) -> list[QuarantinedRecord]:
        """Records, newest first, optionally of one agent."""
        where, params = ("WHERE agent = ?", [agent]) if agent else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM quarantine {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [self._record(row) for row in rows]

    def count(self, *, agent: str | None = None) -> int:
        """How many records are kept (of one agent, if given)."""
        where, params = ("WHERE agent = ?", (agent,)) if agent else ("", ())
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM quarantine {where}", params).fetchone()[0])

    def get(self, record_id: int) -> QuarantinedRecord | None:
        """One record, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM quarantine WHERE id = ?", (record_id,)).fetchone()
        return self._record(row) if row else None

    def remove(self, record_id: int) -> bool:
        """Forget one record; False when there was none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM quarantine WHERE id = ?", (record_id,))
        return cursor.rowcount > 0

    def _failed_again(self, record_id: int, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE quarantine SET reason = ?, attempts = attempts + 1, last_attempt_at = ? WHERE id = ?",
                (reason, time.time(), record_id),
            )

    async def replay(self, record_ids: Iterable[int], handler: ReplayHandler) -> ReplayOutcome:
        """Hand each record to `handler`: taken without raising → removed; else kept with the new reason."""
        outcome = ReplayOutcome()
        for record_id in record_ids:
            record = self.get(record_id)
            if record is None:
                outcome.missing.append(record_id)
                continue
            try:
                await handler(record)
            except Exception as error:  # any failure keeps the record, with its reason
                reason = str(error) or type(error).__name__
                self._failed_again(record_id, reason)
                outcome.failed[record_id] = reason
                continue
            self.remove(record_id)
            outcome.replayed.append(record_id)
        return outcome

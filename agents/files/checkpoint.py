"""Ingest checkpoints: how far a file has been delivered to a broker, so that a re-run resumes and never duplicates.

One small JSON file per (file content, mapping, broker, tenant) under
`<CLIMABOROUGH_DATA_DIR>/files/checkpoints/`, written atomically (temporary file, fsync, rename).
The key hashes the first 4 KiB of the file rather than its path, so a moved or renamed copy is
the same file and a different file with the same name is not; a file that grew at its end (new
rows appended) keeps its checkpoint and resumes, while a file whose delivered part changed
(`prefix_digest`, over up to 64 KiB) starts over. `in_flight` marks the chunk being
written: after a crash, that chunk is the only one whose delivery is uncertain.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

FINGERPRINT_BYTES = 4096
PREFIX_BYTES = 64 * 1024


def file_fingerprint(path: Path) -> str:
    """sha256 of the file's first 4 KiB (its identity for checkpoints)."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(FINGERPRINT_BYTES)).hexdigest()


def prefix_digest(path: Path, position: int) -> str:
    """sha256 of the delivered part of the file (at most its first 64 KiB)."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(min(position, PREFIX_BYTES))).hexdigest()


def checkpoint_key(path: Path, mapping_text: str, broker_url: str, tenant: str | None) -> str:
    """The checkpoint name of delivering `path` with a mapping to one broker tenant."""
    digest = hashlib.sha256()
    for part in (file_fingerprint(path), mapping_text, broker_url.rstrip("/"), tenant or ""):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@dataclass
class Checkpoint:
    """Progress of one file: the resume position, counts so far, the chunk in flight, done or not."""

    path: Path
    file: str = ""
    mapping: str = ""
    position: int = 0
    records: int = 0
    entities: int = 0
    quarantined: int = 0
    in_flight: list[int] | None = None
    done: bool = False
    size: int = 0
    prefix: str = ""
    cursor: str = ""
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, directory: Path, key: str) -> Checkpoint:
        """The saved checkpoint of `key`, or a fresh one."""
        path = directory / f"{key}.json"
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path=path)
        except orjson.JSONDecodeError:
            # A torn write cannot happen (atomic rename); an edited file is treated as unusable.
            raise ValueError(f"checkpoint {path} is not valid JSON; delete it to start over") from None
        known = {name for name in cls.__dataclass_fields__ if name != "path"}
        return cls(path=path, **{k: v for k, v in data.items() if k in known})

    def save(self) -> None:
        """Write atomically: a crash leaves the previous or the new checkpoint, never half of one."""
        self.updated_at = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def reset(self) -> None:
        """Forget the progress (start the file over)."""
        self.position = self.records = self.entities = self.quarantined = 0
        self.in_flight = None
        self.done = False
        self.prefix = ""

"""The change events the write path hands to subscribers, inside the writing transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ChangeKind = Literal["create", "update", "replace", "delete"]


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One entity's state before and after a write, in the stored (expanded) shape.

    `before`/`after` are `{"id", "types", "scope", "doc", "createdAt", "modifiedAt"}` dicts
    with `doc` as in docs/internals.md; `before` is None on create, `after` None on delete.
    `attributes` are the expanded names of the attributes the write touched.
    """

    tenant: str | None
    entity_id: str
    kind: ChangeKind
    at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    attributes: frozenset[str] = field(default_factory=frozenset)


class ChangeSink(Protocol):
    """Receives the changes of a transaction before it commits."""

    async def record(self, conn: Any, changes: list[EntityChange]) -> None: ...


class NoChangeSink:
    """The sink used when nothing listens: records nothing."""

    async def record(self, conn: Any, changes: list[EntityChange]) -> None:
        return None

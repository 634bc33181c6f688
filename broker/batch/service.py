"""Batch entity operations (GS CIM 009 5.6.7-5.6.10, 5.6.20): one transaction and one round trip per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from broker.changes import ChangeSink
from broker.entities import store
from broker.entities.representation import check_uri, expand_entity
from broker.entities.service import EntityService
from broker.entities.stored import (
    StoredEntity,
    append_attributes,
    change_scope,
    iso_ms,
    merge_patch_attributes,
    replaced_members,
)
from broker.entities.write_groups import Write
from broker.storage.history import OpMode
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import TermMap
from ngsi.errors import AlreadyExists, BadRequestData, NgsiError, ResourceNotFound

BatchKind = Literal["create", "upsert", "update", "delete", "merge"]

# A large batch is expanded, applied and sent in chunks of this many entities: PostgreSQL stores one
# chunk while this process prepares the next. A batch of at most CHUNKED_FROM entities (what IoT agents
# send) goes as one chunk: its statements are cheaper once than twice.
CHUNK_ENTITIES = 100
CHUNKED_FROM = 256


@dataclass
class BatchResult:
    """GS CIM 009 5.2.16 BatchOperationResult."""

    success: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, entity_id: Any, error: NgsiError) -> None:
        self.errors.append({"entityId": entity_id if isinstance(entity_id, str) else str(entity_id),
                            "error": error.to_problem()})


def item_id(kind: BatchKind, item: Any) -> Any:
    """The entity id an item of the payload names (unchecked)."""
    return item if kind == "delete" else item.get("id") if isinstance(item, dict) else None


def merged(refused: BatchResult, applied: BatchResult) -> BatchResult:
    """One BatchOperationResult: the entities refused before the transaction first, then the others."""
    return BatchResult(success=applied.success, created=applied.created, errors=refused.errors + applied.errors)


class BatchService:
    """Applies a batch in order; a bad entity is reported and never blocks the good ones."""

    def __init__(self, databases: TenantDatabases, sink: ChangeSink, entities: EntityService) -> None:
        self.databases = databases
        self.sink = sink
        self.entities = entities

    async def run(self, kind: BatchKind, tenant: str | None, payload: Any, terms: TermMap | list[TermMap], *,
                  options: set[str]) -> BatchResult:
        """Apply a batch; `terms` is one @context for all entities or one per entity."""
        if not isinstance(payload, list):
            raise BadRequestData("A batch operation payload must be a JSON array")
        per_item = terms if isinstance(terms, list) else [terms] * len(payload)
        result = BatchResult()
        if not payload:
            return result
        now = datetime.now(UTC)
        stamp = iso_ms(now)
        items = list(zip(payload, per_item, strict=True))
        size = CHUNK_ENTITIES if len(items) > CHUNKED_FROM else len(items)
        chunks = [items[first:first + size] for first in range(0, len(items), size)]
        refused = BatchResult()  # entities refused before the transaction: reported first, in payload order
        parsed = self.parse(kind, chunks[0], stamp, refused)
        ready = 1
        while not parsed and ready < len(chunks):  # a batch of refused entities alone touches no database
            parsed = self.parse(kind, chunks[ready], stamp, refused)
            ready += 1
        if not parsed:
            return refused
        pool = await self.databases.pool(tenant, create=kind in ("create", "upsert"))
        if len(parsed) == 1 and ready == len(chunks) and kind != "delete":
            # What IoT agents and most clients send: one entity, in a group with the writes of other
            # requests that wait at the same time (broker/entities/write_groups.py).
            await self.run_grouped(kind, tenant, pool, parsed[0], now, stamp, options, result)
            return merged(refused, result)
        ids = sorted({entity_id for item, _ in items if isinstance(entity_id := item_id(kind, item), str)})
        if ready == len(chunks):
            # One chunk: BEGIN, the locks and the rows in one message, the writes, COMMIT (as a write group).
            async with pool.connection() as conn, store.write_transaction(conn):
                locked = await store.lock_entities(conn, ids)
                stored = {k for k, v in locked.items() if v is not None}
                await self.store_chunk(kind, conn, tenant, parsed, locked, stored, now, stamp, options, result)
            return merged(refused, result)
        # Pipelined, chunk by chunk: each statement leaves as soon as it is issued, so PostgreSQL stores
        # one chunk's states and history while this process expands and applies the next (two cores at
        # work, not one after the other).
        async with pool.connection() as conn, store.pipelined_transaction(conn):
            await store.lock_ids(conn, ids)  # the same ids as concurrent write groups, in the same order
            current: dict[str, StoredEntity | None] = dict(await store.fetch_entities(conn, ids, for_update=True))
            stored = {k for k, v in current.items() if v is not None}  # ids whose row the table holds now
            while True:
                await self.store_chunk(kind, conn, tenant, parsed, current, stored, now, stamp, options, result)
                if ready == len(chunks):
                    break
                parsed = self.parse(kind, chunks[ready], stamp, refused)
                ready += 1
        return merged(refused, result)

    @staticmethod
    def parse(kind: BatchKind, chunk: list[tuple[Any, TermMap]], stamp: str, refused: BatchResult
              ) -> list[tuple[str, Any]]:
        """The entities of a chunk expanded (instances stamped `stamp`); the refused ones go into `refused`."""
        parsed: list[tuple[str, Any]] = []
        for item, item_terms in chunk:
            try:
                if kind == "delete":
                    parsed.append((check_uri(item, "Entity id"), None))
                else:
                    expanded = expand_entity(item, item_terms, stamp, fragment=kind == "merge")
                    parsed.append((expanded[0], expanded))
            except NgsiError as error:
                refused.fail(item.get("id") if isinstance(item, dict) else item, error)
        return parsed

    async def store_chunk(self, kind: BatchKind, conn: AsyncConnection, tenant: str | None,
                          parsed: list[tuple[str, Any]], current: dict[str, StoredEntity | None], stored: set[str],
                          now: datetime, stamp: str, options: set[str], result: BatchResult) -> None:
        """Apply a chunk's entities in order and send their states, deletions and history (without waiting)."""
        writes: list[Write] = []
        touched: set[str] = set()
        for entity_id, expanded in parsed:
            before = current.get(entity_id)
            try:
                after, op = self.apply(kind, before, expanded, now, stamp, options)
            except NgsiError as error:
                result.fail(entity_id, error)
                continue
            current[entity_id] = after
            writes.append((before, after, op, now))  # `apply` never changes `before`: it works on a copy
            if after is None or after.touched or entity_id not in stored:
                touched.add(entity_id)
            result.success.append(entity_id)
            if op == "Create":
                result.created.append(entity_id)
        to_save = [entity for entity_id in sorted(touched) if (entity := current[entity_id]) is not None]
        deleted = [entity_id for entity_id in sorted(touched) if current[entity_id] is None and entity_id in stored]
        if deleted:
            await store.delete_entities(conn, deleted)
            stored.difference_update(deleted)
        if writes:
            await self.entities.record(conn, tenant, writes, to_save)
            stored.update(entity.id for entity in to_save)

    async def run_grouped(self, kind: BatchKind, tenant: str | None, pool: AsyncConnectionPool,
                          parsed: tuple[str, Any], now: datetime, stamp: str, options: set[str],
                          result: BatchResult) -> None:
        """A batch of one entity as one write of a group; its outcome goes into `result`."""
        entity_id, expanded = parsed

        def apply(before: StoredEntity | None) -> tuple[StoredEntity | None, OpMode | None, Any]:
            try:
                after, op = self.apply(kind, before, expanded, now, stamp, options)
            except NgsiError as error:
                return before, None, error  # an entity's error is part of the batch's answer (207)
            return after, op, op

        outcome = await self.entities.groups.write(tenant, pool, entity_id, now, apply)
        if isinstance(outcome, NgsiError):
            result.fail(entity_id, outcome)
            return
        result.success.append(entity_id)
        if outcome == "Create":
            result.created.append(entity_id)

    @staticmethod
    def apply(kind: BatchKind, before: StoredEntity | None, expanded: Any, now: datetime, stamp: str,
              options: set[str]) -> tuple[StoredEntity | None, OpMode]:
        """The new state of one entity of the batch, or an error for it alone."""
        if kind == "delete":
            if before is None:
                raise ResourceNotFound("Entity does not exist")
            return None, "Delete"
        entity_id, types, scope, doc = expanded
        if kind == "create" or (kind == "upsert" and before is None):
            if before is not None:
                raise AlreadyExists(f"Entity {entity_id!r} already exists", entityId=entity_id)
            return StoredEntity(entity_id, types, scope, doc, now, now, touched=set(doc)), "Create"
        if before is None:
            raise ResourceNotFound(f"Entity {entity_id!r} does not exist", entityId=entity_id)
        after = before.copy()
        after.modified_at = now
        if kind == "upsert" and "update" not in options:
            after.touched = set(before.doc) | set(doc) | replaced_members(before, types, scope)
            after.types, after.scope, after.doc = types, scope, doc
            return after, "Replace"
        if kind == "merge":
            merge_patch_attributes(after, doc, stamp)
            change_scope(after, scope, replace=True)
        elif kind == "update":
            # GS CIM 009 5.6.9: each entity as by Append Entity Attributes (5.6.3): new attributes are added,
            # existing ones replaced, or with noOverwrite left as they are.
            append_attributes(after, doc, stamp, overwrite="noOverwrite" not in options)
            change_scope(after, scope, replace=False)
        else:
            append_attributes(after, doc, stamp, overwrite=True)
            change_scope(after, scope, replace=False)
        for entity_type in types:
            if entity_type not in after.types:
                after.types.append(entity_type)
                after.touched.add("type")
        return after, "Update"

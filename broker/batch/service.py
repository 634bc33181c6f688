"""Batch entity operations (GS CIM 009 5.6.7-5.6.10, 5.6.20): one transaction and one round trip per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from broker.changes import ChangeSink
from broker.entities import store
from broker.entities.representation import check_uri, expand_entity
from broker.entities.service import EntityService
from broker.entities.stored import (
    StoredEntity,
    append_attributes,
    iso_ms,
    merge_patch_attributes,
    update_attributes,
)
from broker.storage.history import OpMode
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import TermMap
from ngsi.errors import AlreadyExists, BadRequestData, NgsiError, ResourceNotFound

BatchKind = Literal["create", "upsert", "update", "delete", "merge"]


@dataclass
class BatchResult:
    """GS CIM 009 5.2.16 BatchOperationResult."""

    success: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, entity_id: Any, error: NgsiError) -> None:
        self.errors.append({"entityId": entity_id if isinstance(entity_id, str) else str(entity_id),
                            "error": error.to_problem()})


def copy_entity(entity: StoredEntity) -> StoredEntity:
    return StoredEntity(entity.id, list(entity.types), entity.scope, {k: list(v) for k, v in entity.doc.items()},
                        entity.created_at, entity.modified_at)


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
        parsed: list[tuple[str, Any]] = []
        for item, item_terms in zip(payload, per_item, strict=True):
            try:
                if kind == "delete":
                    parsed.append((check_uri(item, "Entity id"), None))
                else:
                    expanded = expand_entity(item, item_terms, stamp)  # instances stamped `stamp` already
                    parsed.append((expanded[0], expanded))
            except NgsiError as error:
                result.fail(item.get("id") if isinstance(item, dict) else item, error)
        if not parsed:
            return result
        pool = await self.databases.pool(tenant, create=kind in ("create", "upsert"))
        ids = sorted({entity_id for entity_id, _ in parsed})
        single = len(ids) == 1
        # One entity: the fewest messages (store.write_transaction). More: pipelined, each statement leaves
        # as soon as it is issued, so PostgreSQL stores the current state while this process builds the
        # history rows and change events (two cores at work, not one).
        transaction = store.write_transaction if single else store.pipelined_transaction
        async with pool.connection() as conn, transaction(conn):
            if single:
                current: dict[str, StoredEntity | None] = {ids[0]: await store.lock_entity(conn, ids[0])}
            else:
                current = dict(await store.fetch_entities(conn, ids, for_update=True))
            existing = {k for k, v in current.items() if v is not None}
            writes: list[tuple[StoredEntity | None, StoredEntity | None, OpMode]] = []
            for entity_id, expanded in parsed:
                before = current.get(entity_id)
                try:
                    after, op = self.apply(kind, before, expanded, now, stamp, options)
                except NgsiError as error:
                    result.fail(entity_id, error)
                    continue
                current[entity_id] = after
                writes.append((before, after, op))  # `apply` never changes `before`: it works on a copy
                result.success.append(entity_id)
                if op == "Create":
                    result.created.append(entity_id)
            to_save = [e for e in current.values() if e is not None and (e.touched or e.id not in existing)]
            deleted = [k for k, v in current.items() if v is None and k in existing]
            if single and len(to_save) == 1 and not deleted:
                await self.entities.record(conn, tenant, writes, now, saving=to_save[0])
                return result
            await store.save_entities(conn, to_save)
            if deleted:
                await store.delete_entities(conn, deleted)
            await self.entities.record(conn, tenant, writes, now)
        return result

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
        after = copy_entity(before)
        after.modified_at = now
        if kind == "upsert" and "update" not in options:
            after.types, after.scope, after.doc = types, scope, doc
            after.touched = set(before.doc) | set(doc)
            return after, "Replace"
        if kind == "merge":
            merge_patch_attributes(after, doc, stamp)
        elif kind == "update":
            if "noOverwrite" in options:
                append_attributes(after, doc, stamp, overwrite=False)
            else:
                update_attributes(after, doc, stamp)
        else:
            append_attributes(after, doc, stamp, overwrite=True)
        for entity_type in types:
            if entity_type not in after.types:
                after.types.append(entity_type)
        return after, "Update"

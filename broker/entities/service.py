"""NGSI-LD entity operations (GS CIM 009 5.6, 5.7): the rules between the HTTP routes and the SQL store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql

from broker.changes import ChangeKind, ChangeSink, EntityChange
from broker.entities import store
from broker.entities.representation import expand_attributes, expand_entity, scope_of
from broker.entities.scope import compile_scope_q
from broker.entities.stored import (
    ENTITY_LEVEL,
    StoredEntity,
    append_attributes,
    change_scope,
    delete_attribute,
    is_null_instance,
    iso_ms,
    merge_instance,
    merge_patch_attributes,
    replaced_members,
    stamp_doc,
    update_attributes,
)
from broker.entities.write_groups import Write, WriteGroups
from broker.query.geo import (
    GeoQuery,
    compile_geo_prefilter,
    compile_near_condition,
    compile_point_distance,
    distance,
    geo_matches,
    parse_geo_query,
)
from broker.query.params import Param
from broker.query.q import compile_q, expand_q, expand_values, parse_q
from broker.query.types import compile_id_pattern, compile_ids, compile_types, parse_id_pattern, parse_types
from broker.settings import BrokerSettings
from broker.storage.history import HistoryRows, OpMode, write_history
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import TermMap
from ngsi.errors import AlreadyExists, BadRequestData, ResourceNotFound
from ngsi.forms import Form, compact_entity


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to render entities: form, system attributes, attribute projection, language."""

    form: Form = "normalized"
    sys_attrs: bool = False
    attrs: list[str] | None = None
    pick: list[str] | None = None
    omit: list[str] | None = None
    lang: str | None = None
    dataset_id: str | None = None
    """Only the instances of this datasetId (`@none`: the default ones), as Orion-LD's `datasetId` parameter."""


@dataclass(frozen=True, slots=True)
class Selector:
    """GS CIM 009 5.2.33 EntitySelector: ids, an id pattern and a type expression, all of which must match."""

    ids: list[str] | None = None
    id_pattern: str | None = None
    types: str | None = None


@dataclass(frozen=True, slots=True)
class EntityQuery:
    """GS CIM 009 5.7.2 query terms, already expanded where they name types or attributes.

    `selectors` (POST /entityOperations/query with several EntitySelectors): an entity matches when it
    matches any of them, and the other terms."""

    ids: list[str] | None = None
    id_pattern: str | None = None
    types: str | None = None
    selectors: list[Selector] | None = None
    expand_values: list[str] | None = None
    attrs: list[str] | None = None
    q: str | None = None
    geo: dict[str, Any] | None = None
    scope_q: str | None = None
    limit: int = 20
    offset: int = 0
    count: bool = False


def selector_conditions(selector: Selector, terms: TermMap) -> list[sql.Composable]:
    conditions: list[sql.Composable] = []
    if selector.ids:
        conditions.append(compile_ids(selector.ids))
    if selector.id_pattern:
        conditions.append(compile_id_pattern(parse_id_pattern(selector.id_pattern)))
    if selector.types:
        conditions.append(compile_types(parse_types(selector.types), terms.expand_type))
    return conditions


def render(entity: StoredEntity, terms: TermMap, options: RenderOptions) -> dict[str, Any]:
    # compact_entity formats createdAt/modifiedAt itself, and only when sysAttrs asks for them.
    stored = {"id": entity.id, "types": entity.types, "scope": entity.scope, "doc": entity.doc,
              "createdAt": entity.created_at, "modifiedAt": entity.modified_at}
    return compact_entity(
        stored, terms, form=options.form, sys_attrs=options.sys_attrs,
        attrs=options.attrs, pick=options.pick, omit=options.omit, lang=options.lang,
        dataset_id=options.dataset_id,
    )


class EntityService:
    """Creates, reads, changes and deletes entities, writing history and change events in the same transaction."""

    def __init__(self, databases: TenantDatabases, sink: ChangeSink, settings: BrokerSettings) -> None:
        self.databases = databases
        self.sink = sink
        self.settings = settings
        self.groups = WriteGroups(self.record, max_group=settings.group_commit_max_writes,
                                  gather_s=settings.group_commit_gather_ms / 1000,
                                  in_flight=settings.group_commit_in_flight)

    # ---- writes -------------------------------------------------------------------------------

    async def create(self, tenant: str | None, payload: Any, terms: TermMap) -> str:
        """GS CIM 009 5.6.1: create an entity; AlreadyExists if its id is taken."""
        entity_id, types, scope, doc = expand_entity(payload, terms)
        pool = await self.databases.pool(tenant, create=True)
        now = datetime.now(UTC)  # after the last await before the queue: writes queue in the order of their `now`
        stamp_doc(doc, iso_ms(now))

        def create(before: StoredEntity | None) -> tuple[StoredEntity, OpMode, str]:
            if before is not None:
                raise AlreadyExists(f"Entity {entity_id!r} already exists", entityId=entity_id)
            return StoredEntity(entity_id, types, scope, doc, now, now, touched=set(doc)), "Create", entity_id

        created: str = await self.groups.write(tenant, pool, entity_id, now, create)
        return created

    async def record(self, conn: AsyncConnection, tenant: str | None, writes: list[Write],
                     saving: list[StoredEntity] | None = None) -> None:
        """History rows and change events of `(before, after, opMode, at)` writes, in `conn`'s transaction.

        `saving` are current states (distinct ids) to store in the same statement as the history rows.
        """
        rows = HistoryRows()
        changes = []
        for before, after, op, now in writes:
            current = after or before
            assert current is not None
            if op == "Create" or op == "Replace":
                rows.add_entity(op, current.id, current.types, now)
                rows.add_attributes(op, current.id, current.doc, now)
            elif op == "Delete" and after is None:
                rows.add_entity_deletion(current.id, current.types, now)
            else:
                assert after is not None
                for name in sorted(after.touched - ENTITY_LEVEL):  # types and scopes are no attributes of the history
                    if name in after.doc:
                        # Instances are replaced, never changed in place (stored.py): the ones `before` holds
                        # too are other datasets of the attribute that this write left alone.
                        kept = {id(instance) for instance in before.doc.get(name, ())} if before else set()
                        for instance in after.doc[name]:
                            if id(instance) not in kept:
                                # An instance with a client-given instanceId replaces the history row with that id.
                                rows.add_attribute(op, after.id, name, instance, now)
                        removed = {i.get("datasetId") for i in before.doc.get(name, ())} if before else set()
                        for dataset_id in removed - {i.get("datasetId") for i in after.doc[name]}:
                            rows.add_attribute_deletion(after.id, name, dataset_id, now)
                    else:
                        rows.add_attribute_deletion(after.id, name, None, now)
            kind: ChangeKind = {"Create": "create", "Replace": "replace", "Delete": "delete"}.get(
                op, "update"
            )  # type: ignore[assignment]
            if op == "Delete" and after is not None:
                kind = "update"
            changes.append(EntityChange(
                tenant=tenant, entity_id=current.id, kind=kind, at=now,
                before=before.as_change_state() if before else None,
                after=after.as_change_state() if after else None,
                attributes=frozenset(current.touched or current.doc),
            ))  # fmt: skip
        await write_history(conn, rows, along_with=store.save_statement(saving) if saving else None)
        await self.sink.record(conn, changes)

    async def _change(self, tenant: str | None, entity_id: str, op: OpMode, change: Any) -> Any:
        """Run `change(entity, now_iso)` on the entity in a group of writes; ResourceNotFound if absent."""
        pool = await self.databases.pool(tenant, create=False)
        now = datetime.now(UTC)
        stamp = iso_ms(now)

        def apply(before: StoredEntity | None) -> tuple[StoredEntity | None, OpMode | None, Any]:
            if before is None:
                raise ResourceNotFound(f"Entity {entity_id!r} does not exist", entityId=entity_id)
            after = before.copy()
            result = change(after, stamp)
            if not after.touched:
                return before, None, result
            after.modified_at = now
            return after, op, result

        return await self.groups.write(tenant, pool, entity_id, now, apply)

    async def replace(self, tenant: str | None, entity_id: str, payload: Any, terms: TermMap) -> None:
        """GS CIM 009 5.6.18: replace all attributes (and the type) of an entity."""
        if not isinstance(payload, dict):
            raise BadRequestData("An entity must be a JSON object")
        payload = {"id": entity_id, **payload}
        if payload["id"] != entity_id:
            raise BadRequestData(f"The payload id {payload['id']!r} differs from {entity_id!r}")
        _, types, scope, doc = expand_entity(payload, terms)

        def change(entity: StoredEntity, now: str) -> None:
            stamp_doc(doc, now)
            entity.touched = set(entity.doc) | set(doc) | replaced_members(entity, types, scope)
            entity.types, entity.scope, entity.doc = types, scope, doc

        await self._change(tenant, entity_id, "Replace", change)

    async def merge(self, tenant: str | None, entity_id: str, payload: Any, terms: TermMap) -> None:
        """GS CIM 009 5.6.17 merge-patch; `urn:ngsi-ld:null` deletes attributes and sub-attributes."""
        fragment = self.fragment(payload, terms, entity_id, partial=True)
        types = [terms.expand_type(t) for t in _types_of(payload)]
        scope = scope_of(payload, fragment=True)

        def change(entity: StoredEntity, now: str) -> None:
            merge_patch_attributes(entity, fragment, now)
            change_scope(entity, scope, replace=True)
            if types and set(types) - set(entity.types):
                entity.types = entity.types + [t for t in types if t not in entity.types]
                entity.touched.add("type")

        await self._change(tenant, entity_id, "Update", change)

    async def append_attributes(self, tenant: str | None, entity_id: str, payload: Any, terms: TermMap,
                                *, overwrite: bool) -> list[str]:
        """GS CIM 009 5.6.3; returns the compact names not updated under noOverwrite."""
        fragment = self.fragment(payload, terms, entity_id)
        types = [terms.expand_type(t) for t in _types_of(payload)]
        scope = scope_of(payload)

        def change(entity: StoredEntity, now: str) -> list[str]:
            not_updated = append_attributes(entity, fragment, now, overwrite=overwrite)
            change_scope(entity, scope, replace=False)
            # GS CIM 009 5.6.3.4: entity types of the fragment that the entity lacks are added.
            if set(types) - set(entity.types):
                entity.types = entity.types + [t for t in types if t not in entity.types]
                entity.touched.add("type")
            return not_updated

        not_updated = await self._change(tenant, entity_id, "Append", change)
        return [terms.compact(name) for name in not_updated]

    async def update_attributes(self, tenant: str | None, entity_id: str, payload: Any, terms: TermMap
                                ) -> list[str]:
        """GS CIM 009 5.6.2; returns the compact names of attributes that do not exist."""
        fragment = self.fragment(payload, terms, entity_id)
        scope = scope_of(payload)

        def change(entity: StoredEntity, now: str) -> list[str]:
            change_scope(entity, scope, replace=True)
            return update_attributes(entity, fragment, now)

        not_found = await self._change(tenant, entity_id, "Update", change)
        return [terms.compact(name) for name in not_found]

    async def patch_attribute(self, tenant: str | None, entity_id: str, attr: str, payload: Any,
                              terms: TermMap) -> None:
        """GS CIM 009 5.6.4 partial attribute update; ResourceNotFound if the attribute is absent."""
        name = terms.expand(attr)
        fragment = self.fragment({attr: payload}, terms, entity_id, partial=True)

        def change(entity: StoredEntity, now: str) -> None:
            if name not in entity.doc:
                raise ResourceNotFound(f"Entity {entity_id!r} has no attribute {attr!r}", attribute=attr)
            current = {i.get("datasetId"): i for i in entity.doc[name]}
            for instance in fragment[name]:
                key = instance.get("datasetId")
                if key not in current:
                    raise ResourceNotFound(f"Attribute {attr!r} has no instance with datasetId {key!r}")
                if is_null_instance(instance):
                    raise BadRequestData(f"A partial update cannot remove attribute {attr!r} itself: use DELETE"
                                         f" .../attrs/{attr}", attribute=attr)
                current[key] = merge_instance(attr, current[key], instance, deep=False)
                current[key]["modifiedAt"] = now
            entity.doc[name] = list(current.values())
            entity.touched.add(name)

        await self._change(tenant, entity_id, "Update", change)

    async def replace_attribute(self, tenant: str | None, entity_id: str, attr: str, payload: Any,
                                terms: TermMap) -> None:
        """GS CIM 009 5.6.19 replace attribute; ResourceNotFound if the attribute is absent."""
        name = terms.expand(attr)
        fragment = self.fragment({attr: payload}, terms, entity_id)

        def change(entity: StoredEntity, now: str) -> None:
            if name not in entity.doc:
                raise ResourceNotFound(f"Entity {entity_id!r} has no attribute {attr!r}", attribute=attr)
            append_attributes(entity, fragment, now, overwrite=True)

        await self._change(tenant, entity_id, "Replace", change)

    async def delete_attribute(self, tenant: str | None, entity_id: str, attr: str, terms: TermMap, *,
                               dataset_id: str | None, delete_all: bool) -> None:
        """GS CIM 009 5.6.5; ResourceNotFound if there is nothing to delete."""
        name = terms.expand(attr)

        def change(entity: StoredEntity, now: str) -> None:
            if not delete_attribute(entity, name, dataset_id, delete_all):
                raise ResourceNotFound(f"Entity {entity_id!r} has no attribute {attr!r}"
                                       + (f" with datasetId {dataset_id!r}" if dataset_id else ""),
                                       attribute=attr)

        await self._change(tenant, entity_id, "Delete", change)

    async def delete(self, tenant: str | None, entity_id: str, *,
                     selected: Callable[[list[str]], bool] | None = None) -> None:
        """GS CIM 009 5.6.6: delete an entity; ResourceNotFound if absent, or if its types are not `selected`
        (the request's `type` expression)."""
        pool = await self.databases.pool(tenant, create=False)
        now = datetime.now(UTC)
        async with pool.connection() as conn, store.write_transaction(conn):
            await store.begin_locking(conn, [entity_id])  # after the writes in flight to it (store.ADVISORY_LOCKS)
            if selected is not None:
                entity = await store.fetch_entity(conn, entity_id)
                if entity is None or not selected(entity.types):
                    raise ResourceNotFound(f"No entity {entity_id!r} of the type(s) asked for", entityId=entity_id)
            deleted = await store.delete_entities(conn, [entity_id])
            if not deleted:
                raise ResourceNotFound(f"Entity {entity_id!r} does not exist", entityId=entity_id)
            await self.record(conn, tenant, [(deleted[0], None, "Delete", now)])

    @staticmethod
    def fragment(payload: Any, terms: TermMap, entity_id: str, *, partial: bool = False
                 ) -> dict[str, list[dict[str, Any]]]:
        """The attributes of a write's payload; `partial`: of a merge or partial update (forms.normalize_attribute)."""
        if not isinstance(payload, dict):
            raise BadRequestData("Attributes must be sent as a JSON object")
        for member in ("id", "type"):  # entity members, never attribute names (GS CIM 009 4.6.2)
            value = payload.get(member)
            if value is not None and not (isinstance(value, str) or (
                    member == "type" and isinstance(value, list) and value and all(isinstance(t, str) for t in value))):
                raise BadRequestData(f"'{member}' is the entity's {member}, not an attribute: it must be"
                                     f" {'a URI' if member == 'id' else 'entity type names'}", attribute=member)
        if "id" in payload and payload["id"] != entity_id:
            raise BadRequestData(f"The payload id {payload['id']!r} differs from {entity_id!r}")
        return expand_attributes(payload, terms, fragment=partial)

    # ---- reads --------------------------------------------------------------------------------

    async def retrieve(self, tenant: str | None, entity_id: str) -> StoredEntity:
        """GS CIM 009 5.7.1; ResourceNotFound if absent."""
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, store.autocommit(conn):
            entity = await store.fetch_entity(conn, entity_id)
        if entity is None:
            raise ResourceNotFound(f"Entity {entity_id!r} does not exist", entityId=entity_id)
        return entity

    async def query(self, tenant: str | None, query: EntityQuery, terms: TermMap
                    ) -> tuple[list[StoredEntity], int | None]:
        """GS CIM 009 5.7.2: matching entities (one page) and, with count, how many match in all."""
        conditions = selector_conditions(Selector(query.ids, query.id_pattern, query.types), terms)
        if query.selectors:
            alternatives = [selector_conditions(selector, terms) for selector in query.selectors]
            if all(alternatives):  # a selector without conditions matches every entity
                conditions.append(sql.SQL("({})").format(sql.SQL(" OR ").join(
                    sql.SQL("({})").format(sql.SQL(" AND ").join(alternative)) for alternative in alternatives)))
        if query.attrs:
            conditions.append(sql.SQL("doc ?| {}::text[]").format(Param(query.attrs)))
        if query.q:
            expression = expand_q(parse_q(query.q), terms.expand)
            if query.expand_values:
                expression = expand_values(expression, {terms.expand(a) for a in query.expand_values}, terms.expand)
            conditions.append(compile_q(expression))
        if query.scope_q is not None:
            conditions.append(compile_scope_q(query.scope_q))
        geo = parse_geo_query(**query.geo) if query.geo else None
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            if query.count:  # page and count from one snapshot
                async with conn.transaction():
                    return await self.select(conn, conditions, geo, query, terms)
            async with store.autocommit(conn):
                return await self.select(conn, conditions, geo, query, terms)

    async def select(self, conn: AsyncConnection, conditions: list[sql.Composable], geo: GeoQuery | None,
                     query: EntityQuery, terms: TermMap) -> tuple[list[StoredEntity], int | None]:
        if geo is not None:
            return await self.geo_query(conn, conditions, geo, query, terms)
        entities = await store.select_entities(conn, conditions, limit=query.limit, offset=query.offset)
        total = await store.count_entities(conn, conditions) if query.count else None
        return entities, total

    @staticmethod
    async def geo_query(conn: AsyncConnection, conditions: list[sql.Composable], geo: GeoQuery, query: EntityQuery,
                        terms: TermMap) -> tuple[list[StoredEntity], int | None]:
        """GS CIM 009 4.10: SQL pre-filters on `geo_bbox`, shapely decides exactly; `near` sorts by distance."""
        attribute = terms.expand(geo.geoproperty)

        def geometry_of(entity: StoredEntity) -> Any:
            instances = entity.doc.get(attribute) or []
            return instances[0].get("value") if instances else None

        near_points = compile_near_condition(geo)
        if near_points is not None:
            return await EntityService.near_point_query(conn, conditions, geo, query, near_points, geometry_of)
        prefilter = compile_geo_prefilter(geo)
        if prefilter is not None:
            conditions = [*conditions, prefilter]
        ordering = compile_point_distance(geo) if geo.georel == "near" else None
        candidates = await store.select_entities(conn, conditions, limit=None, order_by=ordering)
        matched = [entity for entity in candidates if geo_matches(geo, geometry_of(entity))]
        if geo.georel == "near":
            matched.sort(key=lambda entity: distance(geo, geometry_of(entity)) or 0.0)
        page = matched[query.offset:query.offset + query.limit]
        return page, len(matched) if query.count else None

    @staticmethod
    async def near_point_query(conn: AsyncConnection, conditions: list[sql.Composable], geo: GeoQuery,
                               query: EntityQuery, near: sql.Composable, geometry_of: Any
                               ) -> tuple[list[StoredEntity], int | None]:
        """`near` from a Point on `location`: point entities are decided, sorted and paged in SQL (only the
        rows up to the end of the page are read); other shapes are few and decided by shapely."""
        ordering = compile_point_distance(geo)
        is_point = sql.SQL("(width(geo_bbox) = 0 AND height(geo_bbox) = 0)")
        is_shape = sql.SQL("(width(geo_bbox) > 0 OR height(geo_bbox) > 0)")
        last = min(query.offset + query.limit, 2**63 - 1)  # LIMIT is a bigint
        points = await store.select_entities(conn, [*conditions, near, is_point], limit=last, order_by=ordering)
        shapes = [entity for entity in await store.select_entities(conn, [*conditions, near, is_shape], limit=None)
                  if geo_matches(geo, geometry_of(entity))]
        matched = points
        if shapes:
            matched = sorted([*points, *shapes], key=lambda entity: distance(geo, geometry_of(entity)) or 0.0)
        total = None
        if query.count:
            total = await store.count_entities(conn, [*conditions, near, is_point]) + len(shapes)
        return matched[query.offset:query.offset + query.limit], total


def _types_of(payload: Any) -> list[str]:
    if isinstance(payload, dict) and "type" in payload:
        value = payload["type"]
        return value if isinstance(value, list) else [value]
    return []


"""NGSI-LD temporal operations (GS CIM 009 5.6.11-5.6.20, 5.7.3-5.7.4) over the TRoE history tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from broker.query import GeoQuery, compile_geo_prefilter, compile_q, geo_matches, parse_geo_query, parse_q
from broker.storage.history import HistoryRows, held_instance_ids
from broker.storage.tenants import TenantDatabases
from broker.temporal.parameters import TemporalQuery
from broker.temporal.provision import CopyLines, attribute_rows, drop_instances, entity_header
from broker.temporal.representation import aggregated_entity, temporal_entity
from broker.temporal.store import EntityFilter, TemporalStore
from ngsi import forms
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData, ResourceNotFound

log = logging.getLogger(__name__)

LOCATION = "https://uri.etsi.org/ngsi-ld/location"

MAX_INSTANCES_PER_ATTRIBUTE = 1000
"""Instances returned per attribute before the answer is cut to a 206 with Content-Range (6.3.10)."""


@dataclass(frozen=True, slots=True)
class TemporalPage:
    """Entities in a temporal representation, with what the HTTP layer needs for 206 and counts."""

    entities: list[dict[str, Any]]
    total: int
    truncated_range: tuple[str, str] | None = None


class TemporalService:
    """Reads and provisions the temporal evolution of entities, tenant by tenant."""

    def __init__(
        self,
        databases: TenantDatabases,
        store: TemporalStore | None = None,
        *,
        max_instances: int = MAX_INSTANCES_PER_ATTRIBUTE,
    ) -> None:
        self.databases = databases
        self.store = store or TemporalStore()
        self.max_instances = max_instances

    # -- reads -----------------------------------------------------------------------------------

    async def query(self, tenant: str | None, query: TemporalQuery, terms: TermMap) -> TemporalPage:
        """GS CIM 5.7.4 Query temporal evolution of entities."""
        where = self._entity_filter(query, terms)
        current_state = self._current_state_filter(query, terms)
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            if current_state is not None:
                matching = await self._current_state_ids(conn, *current_state)
                restricted = [i for i in matching if not where.ids or i in where.ids]
                if not restricted:
                    return TemporalPage([], 0)
                where = replace(where, ids=restricted)
            selected, total = await self.store.select_entities(
                conn, where, query.time, limit=query.limit, offset=query.offset
            )
            if not selected:
                return TemporalPage([], total)
            return await self._render(conn, selected, total, query, terms)

    async def retrieve(self, tenant: str | None, entity_id: str, query: TemporalQuery, terms: TermMap) -> TemporalPage:
        """GS CIM 5.7.3 Retrieve temporal evolution of an entity (a one-entity page); 404 if it has no history."""
        check_uri(entity_id, "Entity id")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            entity_type = await self.store.latest_entity_type(conn, entity_id)
            if entity_type is None:
                raise ResourceNotFound(f"Entity {entity_id!r} has no temporal evolution", entityId=entity_id)
            return await self._render(conn, [(entity_id, entity_type)], 1, query, terms)

    def _entity_filter(self, query: TemporalQuery, terms: TermMap) -> EntityFilter:
        for entity_id in query.ids:
            check_uri(entity_id, "Entity id")
        types = []
        if query.type_expression:
            for part in query.type_expression.replace("|", ",").split(","):
                if part.strip():
                    if any(ch in part for ch in ";()"):
                        raise BadRequestData(
                            "type expressions with ';' or parentheses are not supported on temporal queries",
                            parameter="type",
                        )
                    types.append(terms.expand_type(part.strip()))
        if not (query.ids or query.id_pattern or types or query.attrs or query.q or query.geo):
            raise BadRequestData(
                "Give at least one of id, idPattern, type, attrs, q or a geo-query", title="Too broad query"
            )
        return EntityFilter(
            ids=query.ids,
            id_pattern=query.id_pattern,
            types=types,
            attrs=[terms.expand(a) for a in query.attrs],
        )

    def _current_state_filter(
        self, query: TemporalQuery, terms: TermMap
    ) -> tuple[sql.Composable | None, GeoQuery | None] | None:
        """q and geo-queries, parsed by the query engine; they select entities by their current state."""
        if not (query.q or query.geo):
            return None
        condition = compile_q(parse_q(query.q), terms.expand) if query.q else None
        geo = None
        if query.geo:
            geo = parse_geo_query(
                query.geo.get("georel"), query.geo.get("geometry"), query.geo.get("coordinates"),
                query.geo.get("geoproperty"),
            )  # fmt: skip
        return condition, geo

    async def _current_state_ids(self, conn: Any, condition: sql.Composable | None, geo: GeoQuery | None) -> list[str]:
        """Ids of the entities whose current state matches q and the geo-query (exact geo check in Python)."""
        conditions = [condition] if condition is not None else []
        geoproperty = None
        if geo is not None:
            prefilter = compile_geo_prefilter(geo)
            if prefilter is not None:
                conditions.append(prefilter)
            geoproperty = LOCATION if geo.on_location else geo.geoproperty
        rows = await self.store.current_entities(conn, conditions, geoproperty)
        if geo is None:
            return [entity_id for entity_id, _ in rows]
        return [entity_id for entity_id, geometry in rows if geometry is not None and geo_matches(geo, geometry)]

    async def _render(
        self,
        conn: Any,
        selected: list[tuple[str, str]],
        total: int,
        query: TemporalQuery,
        terms: TermMap,
    ) -> TemporalPage:
        ids = [entity_id for entity_id, _ in selected]
        attrs = [terms.expand(a) for a in query.attrs]
        if query.aggregation is not None:
            aggregated = await self.store.aggregate(
                conn, ids, query.time, attrs, query.aggregation.methods, query.aggregation.period
            )
            grouped: dict[str, list[tuple[Any, ...]]] = {}
            for row in aggregated:
                grouped.setdefault(row[0], []).append(row)
            entities = [
                aggregated_entity(entity_id, entity_type, grouped.get(entity_id, []), query.aggregation.methods, terms)
                for entity_id, entity_type in selected
            ]
            return TemporalPage(entities, total)
        rows = await self.store.attribute_instances(
            conn, ids, query.time, attrs, last_n=query.last_n, per_attribute_limit=self.max_instances
        )
        limit = min(query.last_n, self.max_instances) if query.last_n else self.max_instances
        kept = [row for row in rows if row["rn"] <= limit]
        # GS CIM 009 6.3.10: the answer is partial when the broker's limit, not lastN, cut it.
        cut_by_broker = not query.last_n or query.last_n > self.max_instances
        truncated = cut_by_broker and len(kept) < len(rows)
        subs_by_instance: dict[str, list[dict[str, Any]]] = {}
        if query.form != "temporalValues":
            with_subs = [row["instance_id"] for row in kept if row["sub_properties"]]
            for sub in await self.store.sub_attributes(conn, with_subs):
                subs_by_instance.setdefault(sub["attr_instance_id"], []).append(sub)
        by_entity = _group(kept)
        entities = [
            temporal_entity(entity_id, entity_type, by_entity.get(entity_id, []), subs_by_instance, terms,
                            form=query.form, sys_attrs=query.sys_attrs)
            for entity_id, entity_type in selected
        ]  # fmt: skip
        truncated_range = None
        if truncated and kept:
            times = sorted(row["t_text"] for row in kept)
            truncated_range = (times[-1], times[0]) if query.last_n else (times[0], times[-1])
        return TemporalPage(entities, total, truncated_range)

    # -- provision -------------------------------------------------------------------------------

    async def create_or_append(self, tenant: str | None, body: Any, terms: TermMap) -> tuple[str, bool]:
        """GS CIM 5.6.11: add the instances of a temporal entity; True when the entity is new."""
        entity_id, entity_type = entity_header(body, terms)
        now = datetime.now(UTC)
        rows, copy, given = HistoryRows(), CopyLines(), list[str]()
        attribute_rows(rows, entity_id, body, terms, now, copy=copy, given=given)
        pool = await self.databases.pool(tenant, create=True)
        async with pool.connection() as conn, conn.transaction():
            if given:  # instances with their own instanceId: a resend adds nothing the history holds
                drop_instances(rows, copy, await held_instance_ids(conn, entity_id, given))
            created = await self.store.latest_entity_type(conn, entity_id) is None
            rows.add_entity("Create" if created else "Append", entity_id, [entity_type], now)
            await self.store.write_instances(conn, rows, copy)
        return entity_id, created

    async def append_attributes(self, tenant: str | None, entity_id: str, body: Any, terms: TermMap) -> int:
        """GS CIM 5.6.12 Add attributes to a temporal entity: the bulk backfill path (COPY)."""
        check_uri(entity_id, "Entity id")
        if not isinstance(body, dict):
            raise BadRequestData("The body must be a JSON object of attributes and their instances")
        rows, copy, given = HistoryRows(), CopyLines(), list[str]()
        count = attribute_rows(rows, entity_id, body, terms, datetime.now(UTC), copy=copy, given=given)
        if not count:
            raise BadRequestData("The body has no attributes")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            if await self.store.latest_entity_type(conn, entity_id) is None:
                raise ResourceNotFound(f"Entity {entity_id!r} has no temporal evolution", entityId=entity_id)
            if given:  # instances with their own instanceId: a resend adds nothing the history holds
                drop_instances(rows, copy, await held_instance_ids(conn, entity_id, given))
            await self.store.write_instances(conn, rows, copy)
        return count

    async def update_instance(
        self, tenant: str | None, entity_id: str, attr: str, instance_id: str, body: Any, terms: TermMap
    ) -> None:
        """GS CIM 5.6.19 Modify an attribute instance of a temporal entity."""
        check_uri(entity_id, "Entity id")
        if not isinstance(body, dict):
            raise BadRequestData("The body must be a JSON object: the attribute instance")
        instance = body[attr] if attr in body else body
        if isinstance(instance, list):
            if len(instance) != 1:
                raise BadRequestData("Give exactly one instance to modify", attribute=attr)
            instance = instance[0]
        rows = HistoryRows()
        attribute_rows(rows, entity_id, {attr: instance}, terms, datetime.now(UTC), op="Update")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            if not await self.store.update_instance(
                conn, entity_id, terms.expand(attr), instance_id, rows.attributes[0]
            ):
                raise ResourceNotFound(
                    f"Entity {entity_id!r} has no instance {instance_id!r} of {attr!r}", instanceId=instance_id
                )

    async def delete_entity(self, tenant: str | None, entity_id: str) -> None:
        """GS CIM 5.6.16 Delete the temporal evolution of an entity."""
        check_uri(entity_id, "Entity id")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            if not await self.store.delete_entity(conn, entity_id):
                raise ResourceNotFound(f"Entity {entity_id!r} has no temporal evolution", entityId=entity_id)

    async def delete_attribute(
        self,
        tenant: str | None,
        entity_id: str,
        attr: str,
        terms: TermMap,
        *,
        dataset_id: str | None,
        delete_all: bool,
    ) -> None:
        """GS CIM 5.6.17 Delete an attribute's temporal evolution (default instances, datasetId or all)."""
        check_uri(entity_id, "Entity id")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            if not await self.store.delete_attribute(
                conn, entity_id, terms.expand(attr), dataset_id=dataset_id, delete_all=delete_all
            ):
                raise ResourceNotFound(f"Entity {entity_id!r} has no history of {attr!r}", attribute=attr)

    async def delete_instance(
        self, tenant: str | None, entity_id: str, attr: str, instance_id: str, terms: TermMap
    ) -> None:
        """GS CIM 5.6.20 Delete one attribute instance."""
        check_uri(entity_id, "Entity id")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            if not await self.store.delete_instance(conn, entity_id, terms.expand(attr), instance_id):
                raise ResourceNotFound(
                    f"Entity {entity_id!r} has no instance {instance_id!r} of {attr!r}", instanceId=instance_id
                )


def check_uri(value: Any, what: str) -> str:
    if not forms.is_uri(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}", title="Invalid entity id")
    return str(value)


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["entity_id"], []).append(row)
    return grouped

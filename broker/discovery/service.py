"""Type and attribute discovery (GS CIM 009 5.7.5-5.7.8)."""

from __future__ import annotations

from typing import Any

from broker.discovery import store
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import TermMap
from ngsi.errors import ResourceNotFound


class DiscoveryService:
    """Builds EntityTypeList, EntityType, EntityTypeInfo, AttributeList and Attribute answers."""

    def __init__(self, databases: TenantDatabases) -> None:
        self.databases = databases

    async def _types(self, tenant: str | None) -> dict[str, tuple[int, set[str]]]:
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            return await store.types_with_attributes(conn)

    async def types(self, tenant: str | None, terms: TermMap, *, details: bool) -> Any:
        types = await self._types(tenant)
        if details:
            return [{"id": iri, "type": "EntityType", "typeName": terms.compact_type(iri),
                     "attributeNames": sorted(terms.compact(a) for a in attrs)}
                    for iri, (_, attrs) in types.items()]
        return {"id": "urn:ngsi-ld:EntityTypeList:climaborough", "type": "EntityTypeList",
                "typeList": [terms.compact_type(iri) for iri in types]}

    async def type_info(self, tenant: str | None, terms: TermMap, type_name: str) -> Any:
        iri = terms.expand_type(type_name)
        types = await self._types(tenant)
        if iri not in types:
            raise ResourceNotFound(f"No entity of type {type_name!r} exists")
        count, attrs = types[iri]
        return {"id": iri, "type": "EntityTypeInfo", "typeName": terms.compact_type(iri), "entityCount": count,
                "attributeDetails": [{"id": a, "type": "Attribute", "attributeName": terms.compact(a),
                                      "typeNames": [terms.compact_type(iri)]} for a in sorted(attrs)]}

    async def _statistics(self, tenant: str | None, name: str | None = None) -> dict[str, tuple[int, list[str]]]:
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            return await store.attribute_statistics(conn, name)

    async def attributes(self, tenant: str | None, terms: TermMap, *, details: bool) -> Any:
        by_attr = self._by_attribute(await self._types(tenant))
        if details:
            statistics = await self._statistics(tenant)
            return [self._attribute(a, types, terms, statistics.get(a)) for a, types in by_attr.items()]
        return {"id": "urn:ngsi-ld:AttributeList:climaborough", "type": "AttributeList",
                "attributeList": [terms.compact(a) for a in by_attr]}

    async def attribute(self, tenant: str | None, terms: TermMap, name: str) -> Any:
        iri = terms.expand(name)
        by_attr = self._by_attribute(await self._types(tenant))
        if iri not in by_attr:
            raise ResourceNotFound(f"No entity has an attribute {name!r}")
        return self._attribute(iri, by_attr[iri], terms, (await self._statistics(tenant, iri)).get(iri))

    @staticmethod
    def _by_attribute(types: dict[str, tuple[int, set[str]]]) -> dict[str, list[str]]:
        by_attr: dict[str, list[str]] = {}
        for iri, (_, attrs) in types.items():
            for attr in attrs:
                by_attr.setdefault(attr, []).append(iri)
        return dict(sorted(by_attr.items()))

    @staticmethod
    def _attribute(iri: str, types: list[str], terms: TermMap,
                   statistics: tuple[int, list[str]] | None = None) -> dict[str, Any]:
        attribute: dict[str, Any] = {"id": iri, "type": "Attribute", "attributeName": terms.compact(iri)}
        if statistics is not None:
            attribute["attributeCount"], attribute["attributeTypes"] = statistics
        attribute["typeNames"] = [terms.compact_type(t) for t in types]
        return attribute

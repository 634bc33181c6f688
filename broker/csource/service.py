"""Context source registration operations (GS CIM 009 5.9, 5.10): the rules between routes and store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.csource import store
from broker.csource.registrations import (
    RegistrationFilter,
    compact_registration,
    expand_registration,
    matches,
    new_registration_id,
)
from broker.storage.tenants import TenantDatabases
from ngsi.contexts import TermMap
from ngsi.errors import AlreadyExists, BadRequestData, ResourceNotFound
from ngsi.timestamps import format_timestamp as iso_ms


def _render(row: dict[str, Any], terms: TermMap, sys_attrs: bool) -> dict[str, Any]:
    return compact_registration(
        row["doc"], terms, created_at=iso_ms(row["created_at"]), modified_at=iso_ms(row["modified_at"]),
        sys_attrs=sys_attrs,
    )  # fmt: skip


class RegistrationService:
    """Creates, lists, reads, updates and deletes context source registrations per tenant."""

    def __init__(self, databases: TenantDatabases) -> None:
        self.databases = databases

    async def create(self, tenant: str | None, body: Any, terms: TermMap) -> str:
        """GS CIM 5.9.2 Register context source; 409 if the id exists."""
        doc = expand_registration(body, terms)
        registration_id = doc.setdefault("id", new_registration_id())
        doc = {"id": registration_id, **{k: v for k, v in doc.items() if k != "id"}}
        pool = await self.databases.pool(tenant, create=True)
        async with pool.connection() as conn:
            if not await store.insert_registration(conn, registration_id, doc, datetime.now(UTC)):
                raise AlreadyExists(f"Registration {registration_id!r} already exists", id=registration_id)
        return registration_id

    async def retrieve(self, tenant: str | None, registration_id: str, terms: TermMap, *, sys_attrs: bool) -> dict:
        """GS CIM 5.10.1 Retrieve context source registration."""
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            row = await store.fetch_registration(conn, registration_id)
        if row is None:
            raise ResourceNotFound(f"Registration {registration_id!r} not found", id=registration_id)
        return _render(row, terms, sys_attrs)

    async def query(
        self, tenant: str | None, where: RegistrationFilter, terms: TermMap, *, limit: int, offset: int,
        sys_attrs: bool,
    ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """GS CIM 5.10.2 Query context source registrations: a page of matches and their count."""
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            rows = await store.candidate_registrations(conn, where.types, where.attrs)
        matched = [row for row in rows if matches(row["doc"], where)]
        page = matched[offset : offset + limit]
        return [_render(row, terms, sys_attrs) for row in page], len(matched)

    async def update(self, tenant: str | None, registration_id: str, body: Any, terms: TermMap) -> None:
        """GS CIM 5.9.3 Update context source registration: the fragment's members replace the stored ones."""
        fragment = expand_registration(body, terms, partial=True)
        if not fragment:
            raise BadRequestData("The registration fragment changes nothing: give the members to change")
        if "id" in fragment and fragment["id"] != registration_id:
            raise BadRequestData("The id of a registration cannot change", attribute="id")
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn, conn.transaction():
            row = await store.fetch_registration(conn, registration_id, for_update=True)
            if row is None:
                raise ResourceNotFound(f"Registration {registration_id!r} not found", id=registration_id)
            doc = {**row["doc"], **fragment}
            await store.replace_registration(conn, registration_id, doc, datetime.now(UTC))

    async def delete(self, tenant: str | None, registration_id: str) -> None:
        """GS CIM 5.9.4 Delete context source registration."""
        pool = await self.databases.pool(tenant, create=False)
        async with pool.connection() as conn:
            if not await store.delete_registration(conn, registration_id):
                raise ResourceNotFound(f"Registration {registration_id!r} not found", id=registration_id)

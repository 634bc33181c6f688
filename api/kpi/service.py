"""KPI rules behind the REST API: KeyPerformanceIndicator entities and their history, read from any broker."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ngsi.client import AsyncBrokerClient
from smart_data_models import format_timestamp

KPI_TYPE = "KeyPerformanceIndicator"


def kpi_id_pattern(kpi: str | None, station: str | None) -> str | None:
    """idPattern for ids `urn:ngsi-ld:KeyPerformanceIndicator:<city>:<kpi>:<station>:<period>`."""
    if kpi is None and station is None:
        return None
    part = "[^:]+"
    kpi_part = re.escape(kpi) if kpi else part
    station_part = re.escape(station) if station else part
    return f"^urn:ngsi-ld:{KPI_TYPE}:{part}:{kpi_part}:{station_part}:.+$"


class KpiApi:
    """What the KPI routes call; `client` speaks the KPI @context."""

    def __init__(self, client: AsyncBrokerClient) -> None:
        self.client = client

    async def list(self, *, kpi: str | None, station: str | None, limit: int, offset: int) -> tuple[list[Any], int]:
        page = await self.client.query_entities(
            type=KPI_TYPE, id_pattern=kpi_id_pattern(kpi, station), options="keyValues",
            limit=limit, offset=offset, count=True,
        )  # fmt: skip
        return page.items, page.count if page.count is not None else len(page.items)

    async def get(self, entity_id: str) -> dict[str, Any]:
        return await self.client.get_entity(entity_id, options="keyValues")

    async def history(self, entity_id: str, since: datetime, until: datetime) -> dict[str, Any]:
        """`kpiValue` over time as [[value, observedAt], ...] (GS CIM 009 4.5.8 simplified temporal form)."""
        entity = await self.client.get_temporal_entity(
            entity_id, attrs="kpiValue", options="temporalValues", timerel="between",
            time_at=format_timestamp(since), end_time_at=format_timestamp(until),
        )  # fmt: skip
        attribute = entity.get("kpiValue", {"values": []})
        parts = attribute if isinstance(attribute, list) else [attribute]
        values = sorted(
            (pair for part in parts if isinstance(part, dict) for pair in part.get("values", [])),
            key=lambda pair: str(pair[1]),
        )
        return {"id": entity_id, "attribute": "kpiValue", "values": values}

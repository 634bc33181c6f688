"""Configuration of the KPI engine: the `CLIMABOROUGH_*` variables it reads, with embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from kpi.definitions import SHIPPED_DEFINITIONS


class KpiSettings(BaseSettings):
    """Where the broker and the MQTT server are, which definitions to run and how notifications arrive."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    tenant: str | None = None
    kpi_definitions: list[Path] = [SHIPPED_DEFINITIONS]
    kpi_notify: Literal["mqtt", "http"] = "mqtt"
    """How the broker notifies the engine of changes."""
    kpi_http_host: str = "127.0.0.1"
    kpi_http_port: int = 0
    """Port of the HTTP notification receiver (0: any free port)."""
    kpi_http_advertised_host: str | None = None
    """Host the broker reaches the receiver at, when not `kpi_http_host` (containers)."""
    kpi_client_id: str = "climaborough-kpi"
    """Names the engine's MQTT session, topic and subscriptions; copies that share it share the work."""
    kpi_workers: int = 4
    kpi_write_coalesce_s: float = 0.005
    """How long the writer gathers results before one batch upsert (latency vs. requests)."""
    kpi_write_batch: int = 500
    """Most KPI entities per batch upsert."""
    kpi_request_timeout_s: float = 30.0
    kpi_history_sync_s: float = 30.0
    """How often the history instance of a current hour/day window catches up with its value when that
    changes without a new window (today's daily mean): at most this late (each catch-up is 4 requests)."""
    kpi_period_history_sync_s: float = 300.0
    """The same for month/year/custom period entities (this year's counts), whose value changes often."""
    kpi_upsert_replaces_history: bool | None = None
    """Whether the broker replaces a history row when an entity write carries its instanceId again (this
    project's broker: yes; Orion-LD: no, the writer then brings rewritten windows' history up to date with
    PATCHes). None: ask the broker's GET /version at the first write."""
    kpi_database_url: str | None = None
    """The broker's PostgreSQL (TRoE history tables): when set, a backfill reads source history straight from it."""

"""The embedded broker's configuration, read from `CLIMABOROUGH_*` environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

ONE_MIB = 1024 * 1024


class BrokerSettings(BaseSettings):
    """Everything the broker app needs to know, passed to `create_app(settings)`."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/climaborough"
    host: str = "127.0.0.1"
    port: int = 1026
    max_payload_bytes: int = ONE_MIB
    default_limit: int = 20
    max_limit: int = 1000
    context_fetch_timeout_s: float = 5.0
    pool_min_size: int = 1
    pool_max_size: int = 10
    tenant_pool_max_size: int = 4
    # A tenant's connections (other than the default tenant's) close after this many idle seconds, so a
    # broker holds connections for the tenants in use, not for every tenant it ever served.
    tenant_pool_max_idle_s: float = 60.0
    # Concurrent single-entity writes of a tenant share one transaction, up to this many
    # (broker/entities/write_groups.py).
    group_commit_max_writes: int = 64
    # After a group of several writes, wait at most this long for as many again (a lone write never waits).
    group_commit_gather_ms: float = 5.0
    # How many groups of a tenant may be at the database at once (at most half its pool's connections):
    # while one commits, the next are sent. A group takes at most this share of the tenant's pending writes.
    group_commit_in_flight: int = 4

"""The `climaborough` command's configuration: the `CLIMABOROUGH_*` variables with embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

BROKER_PORT = 1026
DEFAULT_DATABASE = "climaborough"


class CliSettings(BaseSettings):
    """What `climaborough` needs to start and wire the services (ARCHITECTURE.md "Configuration").

    Unset `database_url` and `mqtt_url` mean "run the embedded one": a PostgreSQL under
    `data_dir` and an in-process MQTT broker.
    """

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    database_url: str | None = None
    mqtt_url: str | None = None
    broker_url: str = f"http://127.0.0.1:{BROKER_PORT}"
    auth: Literal["off", "keycloak"] = "off"
    keycloak_url: str = "http://127.0.0.1:8080"
    keycloak_realm: str = "climaborough"
    keycloak_client_id: str = "climaborough"
    data_dir: Path = Path(".data")

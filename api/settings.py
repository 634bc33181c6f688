"""Configuration of the platform API: the `CLIMABOROUGH_*` variables it reads, with embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

API_PORT = 8000


class ApiSettings(BaseSettings):
    """Where the broker and the twin's model store are, and where the API listens."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    tenant: str | None = None
    data_dir: Path = Path(".data")
    auth: Literal["off", "keycloak"] = "off"
    api_host: str = "127.0.0.1"
    api_port: int = API_PORT
    api_request_timeout_s: float = 30.0
    twin_target: str = "pm25"
    """Pollutant the twin forecasts when a request does not name one."""

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

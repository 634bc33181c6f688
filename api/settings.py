"""Configuration of the platform API: the `CLIMABOROUGH_*` variables it reads, with embedded defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from api.gateway.settings import GatewaySettings

API_PORT = 8000


class ApiSettings(GatewaySettings):
    """Where the broker and the twin's model store are, and where the API listens; the authentication
    and gateway settings (`CLIMABOROUGH_AUTH`, Keycloak, broker behind `/ngsi-ld/...`) are inherited."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    tenant: str | None = None
    data_dir: Path = Path(".data")
    api_host: str = "127.0.0.1"
    api_port: int = API_PORT
    api_request_timeout_s: float = 30.0
    twin_target: str = "pm25"
    """Pollutant the twin forecasts when a request does not name one."""

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

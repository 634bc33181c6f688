"""Settings of the OUP connector: the `CLIMABOROUGH_*` variables it reads (OUP endpoints, broker, data folder)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.quarantine import QUARANTINE_FILE


class OupSettings(BaseSettings):
    """Where the OUP is (HTTPS history, WSS live), how to trust it, and where the records go."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    data_dir: Path = Path(".data")
    oup_url: str = "https://127.0.0.1:8443/api/v1"
    oup_ws_url: str = "wss://127.0.0.1:8443/api/v1/live"
    oup_ca_file: Path | None = None
    oup_page_size: int = 500
    oup_timeout_s: float = 30.0

    @property
    def oup_dir(self) -> Path:
        """`<data_dir>/oup`: checkpoint and outbox."""
        return self.data_dir / "oup"

    @property
    def quarantine_path(self) -> Path:
        """The quarantine file every agent shares."""
        return self.data_dir / QUARANTINE_FILE

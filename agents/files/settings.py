"""Settings of the file translators (`climaborough ingest`): the `CLIMABOROUGH_*` variables they read."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class FilesSettings(BaseSettings):
    """Where ingest sends entities and keeps its checkpoints and quarantine."""

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    data_dir: Path = Path(".data")

    @property
    def checkpoint_dir(self) -> Path:
        """`<data_dir>/files/checkpoints`."""
        return self.data_dir / "files" / "checkpoints"

    @property
    def quarantine_path(self) -> Path:
        """The quarantine file every agent shares."""
        from agents.quarantine import QUARANTINE_FILE

        return self.data_dir / QUARANTINE_FILE

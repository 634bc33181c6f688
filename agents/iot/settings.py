"""The IoT agent's settings: `CLIMABOROUGH_*` variables (pydantic-settings) with working embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

NORTH_PORT = 4041
SOUTH_PORT = 7896
# The Environment data model's context: the one the file mappings, the KPI engine and the twin
# use, so that a device's `pm25` is the same attribute as a station file's.
SMART_DATA_MODELS_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"


class IotAgentSettings(BaseSettings):
    """Where the agent listens, which broker and MQTT server it uses, where it keeps its files.

    `mqtt_url` empty disables MQTT. Several agent processes on one machine need distinct
    `iot_instance` names (each has its own outbox) and share the MQTT load through the shared
    subscription group `iot_mqtt_group` (MQTT 5; ignored with `iot_mqtt_protocol="3.1.1"`).
    """

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    broker_url: str = "http://127.0.0.1:1026"
    mqtt_url: str | None = "mqtt://127.0.0.1:1883"
    data_dir: Path = Path(".data")
    iot_host: str = "127.0.0.1"
    iot_north_port: int = NORTH_PORT
    iot_south_port: int = SOUTH_PORT
    iot_city: str = "city"
    iot_instance: str = "iot"
    iot_mqtt_group: str | None = "climaborough-iot"
    iot_mqtt_protocol: Literal["5", "3.1.1"] = "5"
    iot_mqtt_receive_maximum: int = 1000
    iot_context: str = SMART_DATA_MODELS_CONTEXT
    iot_outbox_max_pending: int = 1_000_000
    iot_outbox_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    iot_batch_size: int = 200
    iot_direct_batch_size: int = 1000
    iot_coalesce_delay_s: float = 0.005
    iot_delivery_concurrency: int = 2
    iot_broker_timeout_s: float = 10.0
    iot_shutdown_timeout_s: float = 5.0
    """How long SIGTERM waits for the broker to answer what is in flight before it goes to the outbox instead."""

    @property
    def agent_dir(self) -> Path:
        """Where the agent keeps its registry and outbox."""
        return self.data_dir / "iot"

    @property
    def registry_path(self) -> Path:
        """The provisioning registry (shared by every agent process on this data folder)."""
        return self.agent_dir / "registry.sqlite"

    @property
    def outbox_path(self) -> Path:
        """This process's outbox."""
        return self.agent_dir / f"outbox-{self.iot_instance}.sqlite"

    @property
    def quarantine_path(self) -> Path:
        """The quarantine every agent shares."""
        return self.data_dir / "quarantine.sqlite"

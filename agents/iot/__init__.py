"""FIWARE-compatible IoT agent: provisioning API, UltraLight 2.0 and JSON over MQTT and HTTP, into Smart Data Models."""

from agents.iot.service import IotAgent, run_iot_agent
from agents.iot.settings import IotAgentSettings

__all__ = ["IotAgent", "IotAgentSettings", "run_iot_agent"]

"""OUP connector: the Open Urban Platform's flat JSON (HTTPS history, WSS live) into Smart Data Models on any broker."""

from agents.oup.connector import OupConnector, OupStats, OupUnavailable, tls_context
from agents.oup.settings import OupSettings

__all__ = ["OupConnector", "OupSettings", "OupStats", "OupUnavailable", "tls_context"]

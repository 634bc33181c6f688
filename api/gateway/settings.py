"""The gateway's settings: where the broker is, how much body it inspects, which @context names granted types."""

from __future__ import annotations

from api.auth.settings import AuthSettings

SMART_DATA_MODELS_CONTEXT = "https://smartdatamodels.org/context.jsonld"


class GatewaySettings(AuthSettings):
    """`CLIMABOROUGH_BROKER_URL` (our broker or Orion-LD) plus the authentication settings.

    `gateway_types_context` expands the short type names of a solution provider's `entityTypes`
    claim (full IRIs are taken as they are); it is built in, so nothing is fetched.
    """

    broker_url: str = "http://127.0.0.1:1026"
    gateway_max_body_bytes: int = 32 * 1024 * 1024
    gateway_broker_timeout_s: float = 60.0
    gateway_types_context: str = SMART_DATA_MODELS_CONTEXT

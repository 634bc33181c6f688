"""The policy-enforcing reverse proxy for `/ngsi-ld/v1/...` in front of any NGSI-LD broker."""

from api.gateway.app import create_gateway_app, install_gateway, install_problem_handler
from api.gateway.service import Gateway, owned_subscription_prefix
from api.gateway.settings import GatewaySettings

__all__ = [
    "Gateway",
    "GatewaySettings",
    "create_gateway_app",
    "install_gateway",
    "install_problem_handler",
    "owned_subscription_prefix",
]

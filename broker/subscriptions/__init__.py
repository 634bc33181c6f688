"""NGSI-LD subscriptions: the API slice, the change sink that fills the outbox, and the notifier that drains it.

The names below load on first use: the notifier child process (`python -m
broker.subscriptions.notifier`) imports this package too, and needs neither the web framework
of the routes nor the service; loading them cost it a second or more of start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.subscriptions.notifier.delivery import DeliverySettings, Notifier
    from broker.subscriptions.notifier.process import NotifierProcess
    from broker.subscriptions.registry import SubscriptionRegistry
    from broker.subscriptions.routes import subscriptions_router
    from broker.subscriptions.service import SubscriptionService
    from broker.subscriptions.sink import SubscriptionSink

_MODULE_OF = {
    "DeliverySettings": "broker.subscriptions.notifier.delivery",
    "Notifier": "broker.subscriptions.notifier.delivery",
    "NotifierProcess": "broker.subscriptions.notifier.process",
    "SubscriptionRegistry": "broker.subscriptions.registry",
    "SubscriptionService": "broker.subscriptions.service",
    "SubscriptionSink": "broker.subscriptions.sink",
    "subscriptions_router": "broker.subscriptions.routes",
}

__all__ = [
    "DeliverySettings",
    "Notifier",
    "NotifierProcess",
    "SubscriptionRegistry",
    "SubscriptionService",
    "SubscriptionSink",
    "subscriptions_router",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

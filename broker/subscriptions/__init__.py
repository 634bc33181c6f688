"""NGSI-LD subscriptions: the API slice, the change sink that fills the outbox, and the notifier that drains it."""

from broker.subscriptions.notifier.delivery import DeliverySettings, Notifier
from broker.subscriptions.notifier.process import NotifierProcess
from broker.subscriptions.registry import SubscriptionRegistry
from broker.subscriptions.routes import subscriptions_router
from broker.subscriptions.service import SubscriptionService
from broker.subscriptions.sink import SubscriptionSink

__all__ = [
    "DeliverySettings",
    "Notifier",
    "NotifierProcess",
    "SubscriptionRegistry",
    "SubscriptionService",
    "SubscriptionSink",
    "subscriptions_router",
]

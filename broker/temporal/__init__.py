"""The temporal API slice: history reads, aggregation and provision over the TRoE tables."""

from broker.temporal.routes import temporal_router
from broker.temporal.service import TemporalService

__all__ = ["TemporalService", "temporal_router"]

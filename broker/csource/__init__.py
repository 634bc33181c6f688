"""The /csourceRegistrations slice: context source registrations as IoT agents make them."""

from broker.csource.routes import csource_router
from broker.csource.service import RegistrationService

__all__ = ["RegistrationService", "csource_router"]

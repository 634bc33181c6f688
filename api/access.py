"""Who may call the platform API: one FastAPI dependency on every data route, chosen once in `create_app`.

With `CLIMABOROUGH_AUTH=off` everyone may call (`open_access`); the Keycloak implementation
replaces this dependency as a whole, so no handler ever checks a caller itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

AccessCheck = Callable[..., Awaitable[Any]]
"""A FastAPI dependency that raises an `ngsi.errors` error when the caller may not proceed."""


async def open_access() -> None:
    """Auth off: every caller may use every route."""

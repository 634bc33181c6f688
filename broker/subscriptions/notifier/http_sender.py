"""Delivers rendered notifications to http(s) endpoints with one shared connection pool."""

from __future__ import annotations

import httpx

from broker.subscriptions.model import Endpoint
from broker.subscriptions.notifier.render import RenderedNotification


class DeliveryFailed(Exception):
    """The receiver did not take the notification; the row stays in the outbox for a retry."""


class HttpSender:
    """POSTs notifications; any non-2xx answer or transport error is a failed delivery."""

    def __init__(self, timeout_s: float) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            verify=True,
        )

    async def send(self, endpoint: Endpoint, notification: RenderedNotification) -> None:
        try:
            response = await self._client.post(endpoint.uri, content=notification.body, headers=notification.headers)
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"receiver answered HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()

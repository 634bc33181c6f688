"""The gateway's HTTP side towards the broker (httpx): forwarding with streamed answers, and entity type look-ups."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ngsi.errors import NgsiError

LOOKUP_CHUNK = 50
"""Entity ids per look-up query (keeps URLs short)."""


class BrokerUnavailable(NgsiError):
    """The broker behind the gateway did not answer or answered a look-up with an error."""

    status = 502
    title = "Broker unavailable"


class BrokerProxy:
    """One broker, reached over one pooled `httpx.AsyncClient`."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> httpx.Response:
        """Send a request whose answer is read as a stream; the caller closes it. `path` is still encoded."""
        url = httpx.URL(self.base_url + path + (f"?{query}" if query else ""))
        request = self._client.build_request(method, url, headers=headers, content=body or None)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise BrokerUnavailable(f"the broker at {self.base_url} did not answer: {error!r}") from error

    async def entity_types(self, tenant_header: str | None, entity_ids: list[str]) -> dict[str, list[str]]:
        """The types (as the broker compacts them with the core @context) of those `entity_ids` that exist."""
        headers = {"Accept": "application/json"}
        if tenant_header is not None:
            headers["NGSILD-Tenant"] = tenant_header
        found: dict[str, list[str]] = {}
        unique = list(dict.fromkeys(entity_ids))
        listable = [entity_id for entity_id in unique if "," not in entity_id]
        for start in range(0, len(listable), LOOKUP_CHUNK):
            chunk = listable[start : start + LOOKUP_CHUNK]
            params = {"id": ",".join(chunk), "options": "keyValues", "limit": str(len(chunk))}
            for entity in await self._get_json("/ngsi-ld/v1/entities", params, headers, many=True):
                _collect(found, entity)
        for entity_id in unique:
            if "," in entity_id:
                path = "/ngsi-ld/v1/entities/" + quote(entity_id, safe=":")
                for entity in await self._get_json(path, {"options": "keyValues"}, headers, many=False):
                    _collect(found, entity)
        return found

    async def _get_json(self, path: str, params: dict[str, str], headers: dict[str, str], *, many: bool) -> list[Any]:
        try:
            response = await self._client.get(self.base_url + path, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise BrokerUnavailable(f"the broker at {self.base_url} did not answer: {error!r}") from error
        if response.status_code == 404:  # no such entity, or a tenant that has no data yet
            return []
        if response.status_code != 200:
            raise BrokerUnavailable(f"entity look-up failed with {response.status_code}: {response.text[:200]}")
        body = orjson.loads(response.content)
        if many:
            return body if isinstance(body, list) else []
        return [body] if isinstance(body, dict) else []

    async def aclose(self) -> None:
        await self._client.aclose()


def _collect(found: dict[str, list[str]], entity: Any) -> None:
    if isinstance(entity, dict) and isinstance(entity.get("id"), str):
        types = entity.get("type")
        found[entity["id"]] = [types] if isinstance(types, str) else [t for t in types or [] if isinstance(t, str)]

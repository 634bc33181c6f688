"""NGSI-LD HTTP client (httpx) that agents, KPI engine and twin use against any broker: ours, Orion-LD, Stellio."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson

from ngsi.errors import NgsiError, error_from_problem

log = logging.getLogger(__name__)

API_PREFIX = "/ngsi-ld/v1"
JSON = "application/json"
JSON_LD = "application/ld+json"
MERGE_PATCH = "application/merge-patch+json"
JSONLD_CONTEXT_REL = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'

BatchKind = Literal["create", "upsert", "update", "delete", "merge"]

IDLE_CONNECTION_EXPIRY_S = 2.0
"""How long an idle pooled connection is kept for reuse: under any common server keep-alive timeout."""


class BrokerUnavailable(NgsiError):
    """The broker could not be reached or did not answer (connection refused, timeout, gateway error)."""

    status = 503
    title = "Broker unavailable"


@dataclass(frozen=True)
class GeoQuery:
    """GS CIM 009 4.10: a geo-query, e.g. `GeoQuery("near;maxDistance==2000", "Point", [-3.7, 40.4])`."""

    georel: str
    geometry: str
    coordinates: Sequence[Any] | str
    geoproperty: str | None = None

    def params(self) -> dict[str, str]:
        """The query parameters that express this geo-query."""
        coordinates = (
            self.coordinates
            if isinstance(self.coordinates, str)
            else json.dumps(self.coordinates, separators=(",", ":"))
        )
        params = {"georel": self.georel, "geometry": self.geometry, "coordinates": coordinates}
        if self.geoproperty:
            params["geoproperty"] = self.geoproperty
        return params


@dataclass
class QueryResult:
    """One page of a query: the entities and, when asked for with `count=True`, the total count."""

    items: list[dict[str, Any]]
    count: int | None = None


@dataclass(frozen=True)
class BatchError:
    """One entity a batch operation could not process, with the broker's reason as an `NgsiError`."""

    entity_id: str
    error: NgsiError


@dataclass
class BatchResult:
    """GS CIM 009 5.6.7-5.6.10: ids that succeeded and per-entity errors, gathered over all chunks."""

    success: list[str] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no entity failed."""
        return not self.errors

    def extend(self, other: BatchResult) -> None:
        """Add the outcome of another chunk."""
        self.success.extend(other.success)
        self.errors.extend(other.errors)


def _join(values: str | Iterable[str] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str):
        return values
    return ",".join(values)


def _entity_ids(entities: Sequence[Mapping[str, Any] | str]) -> list[str]:
    return [item if isinstance(item, str) else str(item.get("id", "")) for item in entities]


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the `ngsi.errors` class a ProblemDetails error response stands for (or `BrokerUnavailable`)."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("type" in body or "title" in body):
        raise error_from_problem(body, response.status_code)
    where = f"{response.request.method} {response.request.url}"
    text = response.text[:300]
    if response.status_code in (502, 503, 504):
        raise BrokerUnavailable(f"{where} answered {response.status_code}: {text}")
    raise NgsiError(f"{where} answered {response.status_code}: {text}", status=response.status_code)


def _batch_result(sent_ids: list[str], response: httpx.Response) -> BatchResult:
    if response.status_code != 207:
        raise_for_problem(response)
        return BatchResult(success=list(sent_ids))
    body = response.json()
    result = BatchResult(success=[str(i) for i in body.get("success", [])])
    for failure in body.get("errors", []):
        problem = failure.get("error") or {}
        status = problem.get("status") if isinstance(problem.get("status"), int) else None
        result.errors.append(BatchError(str(failure.get("entityId", "")), error_from_problem(problem, status)))
    return result


class AsyncBrokerClient:
    """Async NGSI-LD client over `httpx.AsyncClient`.

    `base_url` is the broker root (e.g. `http://localhost:1026`); `/ngsi-ld/v1` is added.
    `tenant` goes in `NGSILD-Tenant`; `context` (a URL) in the `Link` header of every request
    whose body has no `@context` of its own. Every error answer raises the matching
    `ngsi.errors` class; an unreachable broker raises `BrokerUnavailable`. Batch operations
    split big lists into chunks of `batch_size`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tenant: str | None = None,
        context: str | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        batch_size: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant = tenant
        self.context = context
        self.batch_size = batch_size
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=dict(headers or {}), transport=transport,
            # An idle connection is dropped well before a server closes it (uvicorn: 5 s, our broker:
            # BROKER_KEEP_ALIVE_S): reusing one the server is closing at that moment fails the request
            # with "Server disconnected without sending a response".
            limits=httpx.Limits(keepalive_expiry=IDLE_CONNECTION_EXPIRY_S),
        )

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- transport -----------------------------------------------------------------------------

    def _headers(self, body: Any = None, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": JSON}
        if self.tenant:
            headers["NGSILD-Tenant"] = self.tenant
        # GS CIM 009 6.3.5: a body carrying @context is application/ld+json and has no Link header.
        carries_context = isinstance(body, dict) and "@context" in body
        if isinstance(body, list) and body and all(isinstance(e, dict) and "@context" in e for e in body):
            carries_context = True
        if body is not None:
            headers["Content-Type"] = content_type or (JSON_LD if carries_context else JSON)
        if self.context and not carries_context:
            headers["Link"] = f"<{self.context}>; {JSONLD_CONTEXT_REL}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        api: bool = True,
    ) -> httpx.Response:
        """Send one request (path below `/ngsi-ld/v1` unless `api=False`) and return the raw response.

        Raises `BrokerUnavailable` on network errors; does not look at the status code.
        """
        url = (API_PREFIX if api else "") + path
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        content = None if body is None else _encode(body)
        try:
            return await self._http.request(
                method,
                url,
                params=clean_params,
                content=content,
                headers=self._headers(body, content_type),
            )
        except httpx.TransportError as error:
            raise BrokerUnavailable(
                f"{method} {self.base_url}{url}: {type(error).__name__}: {error}".rstrip(": ")
            ) from error

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.request(method, path, **kwargs)
        raise_for_problem(response)
        return response

    @staticmethod
    def _quote(identifier: str) -> str:
        # Entity ids are URIs: keep ':' readable, escape what would break the path ('/', '?', '#', ' ').
        return quote(identifier, safe=":@!$&'()*+,;=-._~")

    # -- entities (GS CIM 009 5.6, 5.7) ------------------------------------------------------------

    async def create_entity(self, entity: Mapping[str, Any]) -> str:
        """Create an entity (POST /entities); returns its id."""
        response = await self._call("POST", "/entities", body=dict(entity))
        location = response.headers.get("Location", "")
        return location.rsplit("/entities/", 1)[-1] if location else str(entity.get("id"))

    async def get_entity(
        self,
        entity_id: str,
        *,
        attrs: str | Iterable[str] | None = None,
        options: str | Iterable[str] | None = None,
        type: str | None = None,
        lang: str | None = None,
    ) -> dict[str, Any]:
        """Retrieve one entity (GET /entities/{id}); `options="keyValues"` for the simplified form."""
        params = {"attrs": _join(attrs), "options": _join(options), "type": type, "lang": lang}
        response = await self._call("GET", f"/entities/{self._quote(entity_id)}", params=params)
        entity: dict[str, Any] = response.json()
        return entity

    async def replace_entity(self, entity: Mapping[str, Any]) -> None:
        """Replace an entity as a whole (PUT /entities/{id}, GS CIM 009 5.6.18)."""
        await self._call("PUT", f"/entities/{self._quote(str(entity['id']))}", body=dict(entity))

    async def merge_entity(self, entity_id: str, fragment: Mapping[str, Any]) -> None:
        """Merge a fragment into an entity (PATCH /entities/{id}, GS CIM 009 5.6.17)."""
        await self._call("PATCH", f"/entities/{self._quote(entity_id)}", body=dict(fragment))

    async def delete_entity(self, entity_id: str) -> None:
        """Delete an entity (DELETE /entities/{id})."""
        await self._call("DELETE", f"/entities/{self._quote(entity_id)}")

    @staticmethod
    def _query_params(
        *,
        type: str | Iterable[str] | None = None,
        id: str | Iterable[str] | None = None,
        id_pattern: str | None = None,
        q: str | None = None,
        attrs: str | Iterable[str] | None = None,
        geo: GeoQuery | None = None,
        options: str | Iterable[str] | None = None,
        scope_q: str | None = None,
        lang: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "type": _join(type),
            "id": _join(id),
            "idPattern": id_pattern,
            "q": q,
            "attrs": _join(attrs),
            "options": _join(options),
            "scopeQ": scope_q,
            "lang": lang,
        }
        if geo is not None:
            params.update(geo.params())
        params.update(extra or {})
        return params

    async def query_entities(
        self,
        *,
        type: str | Iterable[str] | None = None,
        id: str | Iterable[str] | None = None,
        id_pattern: str | None = None,
        q: str | None = None,
        attrs: str | Iterable[str] | None = None,
        geo: GeoQuery | None = None,
        options: str | Iterable[str] | None = None,
        scope_q: str | None = None,
        lang: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        count: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> QueryResult:
        """Query entities (GET /entities) with every NGSI-LD filter; `count=True` also returns the total."""
        params = self._query_params(
            type=type, id=id, id_pattern=id_pattern, q=q, attrs=attrs, geo=geo,
            options=options, scope_q=scope_q, lang=lang, extra=extra,
        )  # fmt: skip
        params.update({"limit": limit, "offset": offset, "count": "true" if count else None})
        response = await self._call("GET", "/entities", params=params)
        total = response.headers.get("NGSILD-Results-Count")
        return QueryResult(items=response.json(), count=int(total) if total is not None else None)

    async def iter_entities(
        self,
        *,
        page_size: int = 100,
        type: str | Iterable[str] | None = None,
        id: str | Iterable[str] | None = None,
        id_pattern: str | None = None,
        q: str | None = None,
        attrs: str | Iterable[str] | None = None,
        geo: GeoQuery | None = None,
        options: str | Iterable[str] | None = None,
        scope_q: str | None = None,
        lang: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching entity, fetched page by page with limit/offset until a short page."""
        offset = 0
        while True:
            page = await self.query_entities(
                type=type, id=id, id_pattern=id_pattern, q=q, attrs=attrs, geo=geo, options=options,
                scope_q=scope_q, lang=lang, extra=extra, limit=page_size, offset=offset,
            )  # fmt: skip
            for entity in page.items:
                yield entity
            if len(page.items) < page_size:
                return
            offset += page_size

    # -- batch (GS CIM 009 5.6.7-5.6.10, 5.6.19) ----------------------------------------------------

    async def _batch(
        self, kind: BatchKind, items: Sequence[Any], params: Mapping[str, Any] | None = None
    ) -> BatchResult:
        result = BatchResult()
        for start in range(0, len(items), self.batch_size):
            chunk = list(items[start : start + self.batch_size])
            response = await self.request("POST", f"/entityOperations/{kind}", params=params, body=chunk)
            result.extend(_batch_result(_entity_ids(chunk), response))
        return result

    async def batch_create(self, entities: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Create many entities; existing ones are reported as per-entity errors."""
        return await self._batch("create", entities)

    async def batch_upsert(
        self, entities: Sequence[Mapping[str, Any]], *, mode: Literal["replace", "update"] = "replace"
    ) -> BatchResult:
        """Create or replace (`mode="update"`: create or update attributes) many entities."""
        return await self._batch("upsert", entities, {"options": "update" if mode == "update" else None})

    async def batch_update(self, entities: Sequence[Mapping[str, Any]], *, no_overwrite: bool = False) -> BatchResult:
        """Update attributes of many existing entities."""
        return await self._batch("update", entities, {"options": "noOverwrite" if no_overwrite else None})

    async def batch_merge(self, entities: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Merge fragments into many existing entities."""
        return await self._batch("merge", entities)

    async def batch_delete(self, entity_ids: Sequence[str]) -> BatchResult:
        """Delete many entities by id."""
        return await self._batch("delete", entity_ids)

    # -- attributes (GS CIM 009 5.6.2-5.6.5) -------------------------------------------------------

    @staticmethod
    def _attrs_result(response: httpx.Response) -> BatchResult:
        if response.status_code == 207:
            body = response.json()
            result = BatchResult(success=[str(a) for a in body.get("updated", [])])
            for failure in body.get("notUpdated", []):
                reason = str(failure.get("reason", "not updated"))
                name = str(failure.get("attributeName", ""))
                result.errors.append(BatchError(name, NgsiError(reason, status=400, attribute=name)))
            return result
        raise_for_problem(response)
        return BatchResult()

    async def append_attrs(
        self, entity_id: str, attrs: Mapping[str, Any], *, no_overwrite: bool = False
    ) -> BatchResult:
        """Append (or overwrite) attributes (POST /entities/{id}/attrs); 207 partial results as errors."""
        response = await self.request(
            "POST",
            f"/entities/{self._quote(entity_id)}/attrs",
            params={"options": "noOverwrite" if no_overwrite else None},
            body=dict(attrs),
        )
        return self._attrs_result(response)

    async def update_attrs(self, entity_id: str, attrs: Mapping[str, Any]) -> BatchResult:
        """Update existing attributes (PATCH /entities/{id}/attrs); unknown ones come back as errors."""
        response = await self.request("PATCH", f"/entities/{self._quote(entity_id)}/attrs", body=dict(attrs))
        return self._attrs_result(response)

    async def patch_attr(self, entity_id: str, attr: str, fragment: Mapping[str, Any]) -> None:
        """Partially update one attribute (PATCH /entities/{id}/attrs/{attr})."""
        await self._call(
            "PATCH", f"/entities/{self._quote(entity_id)}/attrs/{self._quote(attr)}", body=dict(fragment)
        )

    async def replace_attr(self, entity_id: str, attr: str, attribute: Mapping[str, Any]) -> None:
        """Replace one attribute (PUT /entities/{id}/attrs/{attr})."""
        await self._call(
            "PUT", f"/entities/{self._quote(entity_id)}/attrs/{self._quote(attr)}", body=dict(attribute)
        )

    async def delete_attr(
        self, entity_id: str, attr: str, *, dataset_id: str | None = None, delete_all: bool = False
    ) -> None:
        """Delete one attribute (DELETE /entities/{id}/attrs/{attr}), one dataset or all of them."""
        params = {"datasetId": dataset_id, "deleteAll": "true" if delete_all else None}
        await self._call("DELETE", f"/entities/{self._quote(entity_id)}/attrs/{self._quote(attr)}", params=params)

    # -- discovery (GS CIM 009 5.7.5-5.7.10) --------------------------------------------------------

    async def types(self, *, details: bool = False) -> Any:
        """Available entity types (GET /types): an EntityTypeList, or the details list."""
        response = await self._call("GET", "/types", params={"details": "true" if details else None})
        return response.json()

    async def type_info(self, type_name: str) -> dict[str, Any]:
        """Details of one entity type (GET /types/{type})."""
        response = await self._call("GET", f"/types/{self._quote(type_name)}")
        info: dict[str, Any] = response.json()
        return info

    async def attributes(self, *, details: bool = False) -> Any:
        """Available attributes (GET /attributes): an AttributeList, or the details list."""
        response = await self._call("GET", "/attributes", params={"details": "true" if details else None})
        return response.json()

    async def attribute_info(self, name: str) -> dict[str, Any]:
        """Details of one attribute (GET /attributes/{name})."""
        response = await self._call("GET", f"/attributes/{self._quote(name)}")
        info: dict[str, Any] = response.json()
        return info

    # -- subscriptions (GS CIM 009 5.8) ------------------------------------------------------------

    async def create_subscription(self, subscription: Mapping[str, Any]) -> str:
        """Create a subscription; returns its id."""
        body = {"type": "Subscription", **subscription}
        response = await self._call("POST", "/subscriptions", body=body)
        location = response.headers.get("Location", "")
        return location.rsplit("/subscriptions/", 1)[-1] if location else str(body.get("id"))

    async def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Retrieve one subscription."""
        response = await self._call("GET", f"/subscriptions/{self._quote(subscription_id)}")
        subscription: dict[str, Any] = response.json()
        return subscription

    async def list_subscriptions(self, *, limit: int | None = None, offset: int | None = None) -> list[Any]:
        """The tenant's subscriptions (one page)."""
        response = await self._call("GET", "/subscriptions", params={"limit": limit, "offset": offset})
        subscriptions: list[Any] = response.json()
        return subscriptions

    async def update_subscription(self, subscription_id: str, fragment: Mapping[str, Any]) -> None:
        """Update members of a subscription (PATCH)."""
        await self._call("PATCH", f"/subscriptions/{self._quote(subscription_id)}", body=dict(fragment))

    async def delete_subscription(self, subscription_id: str) -> None:
        """Delete a subscription."""
        await self._call("DELETE", f"/subscriptions/{self._quote(subscription_id)}")

    # -- temporal (GS CIM 009 5.6.11-5.6.16, 5.7.3-5.7.4) -------------------------------------------

    @staticmethod
    def _temporal_params(
        *,
        timerel: str | None,
        time_at: str | None,
        end_time_at: str | None,
        last_n: int | None,
        timeproperty: str | None,
        aggr_methods: str | Iterable[str] | None,
        aggr_period_duration: str | None,
    ) -> dict[str, Any]:
        return {
            "timerel": timerel,
            "timeAt": time_at,
            "endTimeAt": end_time_at,
            "lastN": last_n,
            "timeproperty": timeproperty,
            "aggrMethods": _join(aggr_methods),
            "aggrPeriodDuration": aggr_period_duration,
        }

    async def temporal_query(
        self,
        *,
        type: str | Iterable[str] | None = None,
        id: str | Iterable[str] | None = None,
        id_pattern: str | None = None,
        q: str | None = None,
        attrs: str | Iterable[str] | None = None,
        geo: GeoQuery | None = None,
        options: str | Iterable[str] | None = None,
        timerel: str | None = None,
        time_at: str | None = None,
        end_time_at: str | None = None,
        last_n: int | None = None,
        timeproperty: str | None = None,
        aggr_methods: str | Iterable[str] | None = None,
        aggr_period_duration: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        count: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> QueryResult:
        """Query the history of entities (GET /temporal/entities), e.g. `timerel="after", time_at=...`."""
        params = self._query_params(
            type=type, id=id, id_pattern=id_pattern, q=q, attrs=attrs, geo=geo, options=options, extra=extra
        )
        params.update(
            self._temporal_params(
                timerel=timerel, time_at=time_at, end_time_at=end_time_at, last_n=last_n,
                timeproperty=timeproperty, aggr_methods=aggr_methods, aggr_period_duration=aggr_period_duration,
            )
        )
        params.update({"limit": limit, "offset": offset, "count": "true" if count else None})
        response = await self._call("GET", "/temporal/entities", params=params)
        total = response.headers.get("NGSILD-Results-Count")
        return QueryResult(items=response.json(), count=int(total) if total is not None else None)

    async def get_temporal_entity(
        self,
        entity_id: str,
        *,
        attrs: str | Iterable[str] | None = None,
        options: str | Iterable[str] | None = None,
        timerel: str | None = None,
        time_at: str | None = None,
        end_time_at: str | None = None,
        last_n: int | None = None,
        timeproperty: str | None = None,
        aggr_methods: str | Iterable[str] | None = None,
        aggr_period_duration: str | None = None,
    ) -> dict[str, Any]:
        """The history of one entity (GET /temporal/entities/{id})."""
        params: dict[str, Any] = {"attrs": _join(attrs), "options": _join(options)}
        params.update(
            self._temporal_params(
                timerel=timerel, time_at=time_at, end_time_at=end_time_at, last_n=last_n,
                timeproperty=timeproperty, aggr_methods=aggr_methods, aggr_period_duration=aggr_period_duration,
            )
        )
        response = await self._call("GET", f"/temporal/entities/{self._quote(entity_id)}", params=params)
        entity: dict[str, Any] = response.json()
        return entity

    async def create_temporal_entity(self, entity: Mapping[str, Any]) -> None:
        """Create or add to the history of an entity (POST /temporal/entities)."""
        await self._call("POST", "/temporal/entities", body=dict(entity))

    async def temporal_append(self, entity_id: str, attrs: Mapping[str, Any]) -> None:
        """Add attribute instances to an entity's history (POST /temporal/entities/{id}/attrs)."""
        await self._call("POST", f"/temporal/entities/{self._quote(entity_id)}/attrs", body=dict(attrs))

    async def update_temporal_instance(
        self, entity_id: str, attr: str, instance_id: str, instance: Mapping[str, Any]
    ) -> None:
        """Replace one instance in an entity's history (PATCH /temporal/entities/{id}/attrs/{attr}/{instanceId},
        GS CIM 009 5.6.19); `instance` is the attribute instance (its instanceId and time stay)."""
        path = f"/temporal/entities/{self._quote(entity_id)}/attrs/{self._quote(attr)}/{self._quote(instance_id)}"
        await self._call("PATCH", path, body={attr: dict(instance)})

    async def delete_temporal_instance(self, entity_id: str, attr: str, instance_id: str) -> None:
        """Delete one instance from an entity's history (DELETE /temporal/entities/{id}/attrs/{attr}/{instanceId})."""
        path = f"/temporal/entities/{self._quote(entity_id)}/attrs/{self._quote(attr)}/{self._quote(instance_id)}"
        await self._call("DELETE", path)

    async def delete_temporal_entity(self, entity_id: str) -> None:
        """Delete an entity's history (DELETE /temporal/entities/{id})."""
        await self._call("DELETE", f"/temporal/entities/{self._quote(entity_id)}")

    # -- @context management (GS CIM 009 5.13) -----------------------------------------------------

    async def add_context(self, context: Mapping[str, Any]) -> str:
        """Store a JSON-LD @context document on the broker; returns the URL it is served at."""
        response = await self._call("POST", "/jsonldContexts", body=dict(context))
        return response.headers.get("Location", "")

    async def list_contexts(self, *, details: bool = False) -> list[Any]:
        """The @contexts the broker holds."""
        response = await self._call("GET", "/jsonldContexts", params={"details": "true" if details else None})
        contexts: list[Any] = response.json()
        return contexts

    async def get_context(self, context_id: str) -> Any:
        """One stored @context (by its local id or URL)."""
        response = await self._call("GET", f"/jsonldContexts/{self._quote(context_id)}")
        return response.json()

    async def delete_context(self, context_id: str) -> None:
        """Delete a stored @context."""
        await self._call("DELETE", f"/jsonldContexts/{self._quote(context_id)}")

    # -- service ----------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The broker's health (`/health`; Orion-LD and Stellio without it answer `/version`)."""
        response = await self.request("GET", "/health", api=False)
        if response.status_code == 404:
            response = await self.request("GET", "/version", api=False)
        raise_for_problem(response)
        try:
            body = response.json()
        except ValueError:
            body = {"status": response.text}
        return body if isinstance(body, dict) else {"status": body}


class BrokerClient:
    """Blocking wrapper of `AsyncBrokerClient` for scripts and notebooks (same methods, same errors).

    It runs the async client on a private event loop; do not use it inside a running event loop.
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = AsyncBrokerClient(base_url, **options)

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and the private event loop."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()

    @property
    def async_client(self) -> AsyncBrokerClient:
        """The underlying async client."""
        return self._client

    def iter_entities(self, **query: Any) -> Iterator[dict[str, Any]]:
        """Every matching entity, page by page (see `AsyncBrokerClient.iter_entities`)."""
        pages = self._client.iter_entities(**query)
        while True:
            try:
                yield self._loop.run_until_complete(anext(pages))
            except StopAsyncIteration:
                return

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        blocking.__doc__ = method.__doc__
        blocking.__name__ = name
        return blocking


def _encode(body: Any) -> bytes:
    """A request body as UTF-8 JSON: orjson (agents send bulk bodies), json for what orjson refuses (non-str keys)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

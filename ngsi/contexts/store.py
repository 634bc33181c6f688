"""Where @contexts come from: package data, contexts users store, and remote ones fetched once and cached."""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from pyld import jsonld
from pyld.context_resolver import ContextResolver

from ngsi.contexts.builtin import CORE_CONTEXT_URL, builtin_document, is_core_context_url
from ngsi.contexts.terms import TermMap
from ngsi.errors import BadRequestData, LdContextNotAvailable, ResourceNotFound

log = logging.getLogger(__name__)

MAX_CONTEXT_URLS = 32
"""How many distinct URLs one @context value may pull in (imports included) before we refuse it."""
MAX_CONTEXT_BYTES = 2 * 1024 * 1024


class ContextKind(StrEnum):
    """GS CIM 009 5.13: how a stored @context came to be."""

    HOSTED = "Hosted"
    """Uploaded through POST /jsonldContexts and served by the broker."""
    CACHED = "Cached"
    """A remote @context the broker fetched and keeps a copy of."""
    IMPLICITLY_CREATED = "ImplicitlyCreated"
    """Created by the broker for an inline @context so that it can be referred to by URL."""


@dataclass
class ContextEntry:
    """One @context the store keeps besides the built-ins."""

    url: str
    local_id: str
    kind: ContextKind
    document: dict[str, Any]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_usage: datetime | None = None
    number_of_hits: int = 0

    def info(self) -> dict[str, Any]:
        """GS CIM 009 5.13.3: the details listed with `details=true`."""
        info: dict[str, Any] = {
            "URL": self.url,
            "localId": self.local_id,
            "kind": self.kind.value,
            "createdAt": _iso(self.created_at),
            "numberOfHits": self.number_of_hits,
        }
        if self.last_usage is not None:
            info["lastUsage"] = _iso(self.last_usage)
        return info

    def touch(self) -> None:
        self.number_of_hits += 1
        self.last_usage = datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _canonical_key(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as error:
        raise BadRequestData(f"@context is not JSON: {error}") from error


def _without_protection(document: dict[str, Any]) -> dict[str, Any]:
    # The core context is applied last and wins anyway (GS CIM 009 5.5.7), so its @protected flag
    # would only turn a user context that redefines a core term into an error.
    context = document.get("@context")
    if isinstance(context, dict) and "@protected" in context:
        return {**document, "@context": {k: v for k, v in context.items() if k != "@protected"}}
    return document


def referenced_urls(context: Any, base: str = "") -> Iterator[str]:
    """Every URL a @context value refers to directly: list entries and `@import`.

    Scoped (term-level) contexts are left out on purpose: NGSI-LD attribute names are resolved
    with the top-level context only, so a TermMap never needs them (the v1.9 core context scopes
    a W3C security context under `ngsildproof` that we neither ship nor fetch).
    """
    if isinstance(context, str):
        yield urljoin(base, context) if base else context
    elif isinstance(context, list):
        for item in context:
            yield from referenced_urls(item, base)
    elif isinstance(context, dict):
        imported = context.get("@import")
        if isinstance(imported, str):
            yield urljoin(base, imported) if base else imported


def _check_context_shape(context: Any) -> None:
    if context is None:
        return
    if isinstance(context, str):
        parts = urlsplit(context)
        if not parts.scheme or " " in context or len(context) <= len(parts.scheme) + 1:
            raise BadRequestData(f"@context entry {context!r} is not an absolute URL")
        return
    if isinstance(context, list):
        for item in context:
            if isinstance(item, list):
                raise BadRequestData("@context arrays cannot be nested")
            _check_context_shape(item)
        return
    if not isinstance(context, dict):
        raise BadRequestData(f"@context must be a URL, an object or an array, not {type(context).__name__}")


class ContextStore:
    """Resolves @context values to `TermMap`s without ever waiting on the network longer than allowed.

    Built-in contexts (ETSI core v1.3-v1.9, Smart Data Models) come from package data. Contexts
    users store (`add`) and remote contexts fetched on first use are kept in memory. Term maps are
    cached per @context value.
    """

    def __init__(
        self,
        *,
        core_context_url: str = CORE_CONTEXT_URL,
        fetch_timeout: float = 5.0,
        hosted_base_url: str = "http://localhost:1026/ngsi-ld/v1/jsonldContexts/",
        max_term_maps: int = 1024,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        core_document = builtin_document(core_context_url)
        if core_document is None or not is_core_context_url(core_context_url):
            raise ValueError(f"{core_context_url} is not a built-in NGSI-LD core context")
        self.core_context_url = core_context_url
        self.fetch_timeout = fetch_timeout
        self.hosted_base_url = hosted_base_url
        self._max_term_maps = max_term_maps
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._entries: dict[str, ContextEntry] = {}  # by local id
        self._by_url: dict[str, ContextEntry] = {}
        self._implicit_by_key: dict[bytes, ContextEntry] = {}
        self._term_maps: OrderedDict[bytes, TermMap] = OrderedDict()
        self._fetches: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._processor = jsonld.JsonLdProcessor()
        self._core_active = self._process(core_document["@context"])
        self.core = TermMap.from_active_context(core_context_url, self._core_active)
        """The term map of the core context alone (what a request without @context gets)."""

    # ---- stored contexts (the broker's /jsonldContexts endpoint) -------------------------------

    def add(self, document: dict[str, Any], *, kind: ContextKind = ContextKind.HOSTED) -> ContextEntry:
        """Store a context document (`{"@context": ...}`) and return its entry with a URL we serve.

        ImplicitlyCreated contexts are de-duplicated: the same content gives the same entry.
        """
        if not isinstance(document, dict) or "@context" not in document:
            raise BadRequestData("a stored @context must be a JSON object with an @context member")
        context = document["@context"]
        _check_context_shape(context)
        if not self._missing_urls(context):
            self._process(context)  # reject what pyld cannot process before anyone refers to it
        key = _canonical_key(context)
        if kind is ContextKind.IMPLICITLY_CREATED and key in self._implicit_by_key:
            return self._implicit_by_key[key]
        local_id = uuid.uuid4().hex
        entry = ContextEntry(url=self.hosted_base_url + local_id, local_id=local_id, kind=kind, document=document)
        self._remember(entry)
        if kind is ContextKind.IMPLICITLY_CREATED:
            self._implicit_by_key[key] = entry
        return entry

    def restore(self, entry: ContextEntry) -> None:
        """Put back an entry persisted elsewhere (e.g. hosted contexts reloaded from the database at start)."""
        if not isinstance(entry.document, dict) or "@context" not in entry.document:
            raise BadRequestData(f"stored @context {entry.url} has no @context member")
        self._remember(entry)
        if entry.kind is ContextKind.IMPLICITLY_CREATED:
            self._implicit_by_key[_canonical_key(entry.document["@context"])] = entry
        self._term_maps.clear()

    def list(self, kind: ContextKind | None = None) -> builtins.list[ContextEntry]:
        """Stored and cached contexts (not the built-ins), oldest first."""
        return [entry for entry in self._entries.values() if kind is None or entry.kind is kind]

    def get(self, id_or_url: str) -> ContextEntry:
        """The stored context with this local id or URL; `ResourceNotFound` otherwise."""
        entry = self._entries.get(id_or_url) or self._by_url.get(id_or_url) or self._hosted_by_path(id_or_url)
        if entry is None:
            raise ResourceNotFound(f"no @context {id_or_url!r} is stored")
        return entry

    def delete(self, id_or_url: str) -> ContextEntry:
        """Forget a stored or cached context; term maps built from it are dropped too."""
        entry = self.get(id_or_url)
        del self._entries[entry.local_id]
        self._by_url.pop(entry.url, None)
        self._implicit_by_key = {k: v for k, v in self._implicit_by_key.items() if v is not entry}
        self._term_maps.clear()
        return entry

    async def reload(self, id_or_url: str) -> ContextEntry:
        """Fetch a Cached context again (GS CIM 009 5.13.5 `reload=true`)."""
        entry = self.get(id_or_url)
        if entry.kind is not ContextKind.CACHED:
            raise BadRequestData(f"only Cached contexts can be reloaded; {entry.url} is {entry.kind.value}")
        entry.document = await self._fetch(entry.url)
        self._term_maps.clear()
        return entry

    def builtin(self, url: str) -> dict[str, Any] | None:
        """A context document shipped with the package (ETSI core, Smart Data Models), or None."""
        return builtin_document(url)

    def _remember(self, entry: ContextEntry) -> None:
        self._entries[entry.local_id] = entry
        self._by_url[entry.url] = entry

    def _hosted_by_path(self, url: str) -> ContextEntry | None:
        # A hosted context is ours whatever host name the client used to reach us (localhost, 127.0.0.1, ...).
        path = urlsplit(url).path
        marker = "/jsonldContexts/"
        if marker in path:
            entry = self._entries.get(path.rsplit(marker, 1)[1])
            if entry is not None and entry.kind is not ContextKind.CACHED:
                return entry
        return None

    # ---- resolution -----------------------------------------------------------------------------

    def _local_document(self, url: str, *, count_hit: bool = False) -> dict[str, Any] | None:
        document = builtin_document(url)
        if document is not None:
            return _without_protection(document) if is_core_context_url(url) else document
        entry = self._by_url.get(url) or self._hosted_by_path(url)
        if entry is None:
            return None
        if count_hit:
            entry.touch()
        return entry.document

    def _missing_urls(self, context: Any, base: str = "", seen: set[str] | None = None) -> builtins.list[str]:
        seen = set() if seen is None else seen
        missing: builtins.list[str] = []
        for url in referenced_urls(context, base):
            if url in seen:
                continue
            seen.add(url)
            if len(seen) > MAX_CONTEXT_URLS:
                raise BadRequestData(f"@context refers to more than {MAX_CONTEXT_URLS} URLs")
            document = self._local_document(url)
            if document is None:
                missing.append(url)
            else:
                missing.extend(self._missing_urls(document.get("@context"), url, seen))
        return missing

    async def term_map(self, context: Any) -> TermMap:
        """The TermMap for a Link-header URL or a body @context (None → core only), fetching what is missing.

        Raises `LdContextNotAvailable` when a remote context cannot be had within the timeout and
        `BadRequestData` when the @context is not a valid JSON-LD context.
        """
        key = _canonical_key(context)
        cached = self._term_maps.get(key)
        if cached is not None:
            self._term_maps.move_to_end(key)
            return cached
        _check_context_shape(context)
        seen: set[str] = set()
        pending = self._missing_urls(context, "", seen)
        while pending:
            await asyncio.gather(*(self._fetch_and_cache(url) for url in pending))
            # Fetched documents may import further contexts.
            pending = [url for url in self._missing_urls(context, "", set()) if url not in self._by_url]
        return self._build(key, context)

    def term_map_sync(self, context: Any) -> TermMap:
        """Like `term_map` but never fetches: only built-in and stored contexts can be used."""
        key = _canonical_key(context)
        cached = self._term_maps.get(key)
        if cached is not None:
            return cached
        _check_context_shape(context)
        missing = self._missing_urls(context)
        if missing:
            raise LdContextNotAvailable(f"@context {missing[0]} is not available offline", url=missing[0])
        return self._build(key, context)

    def _build(self, key: bytes, context: Any) -> TermMap:
        if context is None:
            terms = self.core
        else:
            # GS CIM 009 5.5.7: the core context is applied last, its terms win.
            terms = TermMap.from_active_context(context, self._process(context), self._core_active)
        self._term_maps[key] = terms
        while len(self._term_maps) > self._max_term_maps:
            self._term_maps.popitem(last=False)
        return terms

    def _process(self, context: Any) -> Any:
        def load(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
            document = self._local_document(url, count_hit=True)
            if document is None:
                # Every top-level URL was made available before processing, so this is a scoped
                # context's URL: TermMap does not use scoped contexts (see referenced_urls).
                document = {"@context": {}}
            return {"contextUrl": None, "documentUrl": url, "document": document}

        loader: Callable[..., dict[str, Any]] = load
        options = {
            "documentLoader": loader,
            "contextResolver": ContextResolver({}, loader),
            "base": "",
        }
        try:
            return self._processor.process_context(self._processor._get_initial_context({}), context, options)
        except jsonld.JsonLdError as error:
            cause: BaseException | None = error
            while cause is not None:
                if isinstance(cause, LdContextNotAvailable):
                    raise cause from error
                cause = getattr(cause, "cause", None) or cause.__cause__
            raise BadRequestData(f"invalid @context: {_describe(error)}") from error

    # ---- remote fetch -----------------------------------------------------------------------------

    async def _fetch_and_cache(self, url: str) -> None:
        task = self._fetches.get(url)
        if task is None:
            task = asyncio.ensure_future(self._fetch(url))
            self._fetches[url] = task
            task.add_done_callback(lambda _: self._fetches.pop(url, None))
        document = await asyncio.shield(task)
        if url not in self._by_url:
            self._remember(ContextEntry(url=url, local_id=uuid.uuid4().hex, kind=ContextKind.CACHED,
                                        document=document))

    async def _fetch(self, url: str) -> dict[str, Any]:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise LdContextNotAvailable(f"@context {url} is not a known context and not an http(s) URL", url=url)
        client = self._client()
        try:
            async with asyncio.timeout(self.fetch_timeout):
                response = await client.get(
                    url, headers={"Accept": "application/ld+json, application/json;q=0.9"}, follow_redirects=True
                )
        except (TimeoutError, httpx.TimeoutException) as error:
            raise LdContextNotAvailable(
                f"@context {url} did not arrive within {self.fetch_timeout:g} s", status=504, url=url
            ) from error
        except httpx.HTTPError as error:
            raise LdContextNotAvailable(f"@context {url} could not be fetched: {error!r}", url=url) from error
        if response.status_code != 200:
            raise LdContextNotAvailable(f"@context {url} answered HTTP {response.status_code}", url=url)
        if len(response.content) > MAX_CONTEXT_BYTES:
            raise LdContextNotAvailable(f"@context {url} is larger than {MAX_CONTEXT_BYTES} bytes", url=url)
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError as error:
            raise LdContextNotAvailable(f"@context {url} is not JSON", url=url) from error
        if not isinstance(document, dict) or "@context" not in document:
            raise LdContextNotAvailable(f"@context {url} has no @context member", url=url)
        log.info("fetched remote @context url=%s bytes=%d", url, len(response.content))
        return document

    def _client(self) -> httpx.AsyncClient:
        if self._http_client is None:
            self._http_client = httpx.AsyncClient(timeout=httpx.Timeout(self.fetch_timeout), trust_env=False)
        return self._http_client

    async def aclose(self) -> None:
        """Close the HTTP client the store opened for remote contexts."""
        if self._http_client is not None and self._owns_http_client:
            await self._http_client.aclose()
            self._http_client = None


def _describe(error: jsonld.JsonLdError) -> str:
    message = str(getattr(error, "message", "") or error).splitlines()[0]
    details = getattr(error, "details", None)
    if isinstance(details, dict):
        extra = {k: v for k, v in details.items() if k in {"term", "context", "url", "code"} and k != "context"}
        if extra:
            message += f" ({', '.join(f'{k}={v}' for k, v in extra.items())})"
    return message

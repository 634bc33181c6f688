"""@context resolution: offline built-ins, stored contexts, remote contexts with a bounded fetch, term lookups."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from ngsi.contexts import (
    BUILTIN_CONTEXT_FILES,
    CORE_CONTEXT_URL,
    DEFAULT_VOCAB,
    ContextEntry,
    ContextKind,
    ContextStore,
)
from ngsi.errors import BadRequestData, LdContextNotAvailable, ResourceNotFound

ENV = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
WEATHER = "https://smart-data-models.github.io/dataModel.Weather/context.jsonld"
KPI = "https://raw.githubusercontent.com/smart-data-models/dataModel.KeyPerformanceIndicator/master/context.jsonld"
UNVERSIONED_CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
NGSI = "https://uri.etsi.org/ngsi-ld/"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def json_server(documents: dict[str, object], hits: list[str]) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = request_line.split(" ")[1]
        hits.append(path)
        if path in documents:
            body = json.dumps(documents[path]).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/ld+json\r\nContent-Length: {len(body)}\r\n"
        else:
            body = b"not here"
            head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return handle


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@pytest.fixture
def store() -> ContextStore:
    return ContextStore(fetch_timeout=1.0, hosted_base_url="http://broker.test/ngsi-ld/v1/jsonldContexts/")


# --- built-ins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "iri"),
    [
        ("Property", NGSI + "Property"),
        ("observedAt", NGSI + "observedAt"),
        ("location", NGSI + "location"),
        ("temperature", DEFAULT_VOCAB + "temperature"),
        ("Vehicle", DEFAULT_VOCAB + "Vehicle"),
        ("ngsi-ld:foo", NGSI + "foo"),
        ("urn:ngsi-ld:Thing:1", "urn:ngsi-ld:Thing:1"),
        ("https://example.org/speed", "https://example.org/speed"),
    ],
)
def test_without_context_terms_expand_with_the_core_context(store: ContextStore, term: str, iri: str) -> None:
    terms = store.term_map_sync(None)
    assert terms.expand(term) == iri
    assert terms.compact(iri) == term


def test_no_context_echoes_the_v1_8_core_context(store: ContextStore) -> None:
    assert store.term_map_sync(None).context == CORE_CONTEXT_URL
    assert CORE_CONTEXT_URL.endswith("ngsi-ld-core-context-v1.8.jsonld")


@pytest.mark.parametrize("version", ["1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", None])
def test_every_core_context_version_resolves_offline(store: ContextStore, version: str | None) -> None:
    url = UNVERSIONED_CORE if version is None else f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v{version}.jsonld"
    terms = store.term_map_sync(url)
    assert terms.expand("unitCode") == NGSI + "hasUnitCode" or terms.expand("unitCode") == NGSI + "unitCode"
    assert terms.expand("Relationship") == NGSI + "Relationship"
    assert terms.context == url


def test_aliases_are_documented_choices() -> None:
    assert BUILTIN_CONTEXT_FILES[UNVERSIONED_CORE] == "ngsi-ld-core-context-v1.8.jsonld"
    assert BUILTIN_CONTEXT_FILES[UNVERSIONED_CORE.replace(".jsonld", "-v1.6.jsonld")] == (
        "ngsi-ld-core-context-v1.7.jsonld"
    )


@pytest.mark.parametrize(
    ("context", "term", "iri"),
    [
        (ENV, "no2", "https://smartdatamodels.org/dataModel.Environment/no2"),
        (ENV, "AirQualityObserved", "https://smartdatamodels.org/dataModel.Environment/AirQualityObserved"),
        (ENV, "temperature", "https://smartdatamodels.org/dataModel.Environment/temperature"),
        (WEATHER, "temperature", "https://smartdatamodels.org/dataModel.Weather/temperature"),
        (KPI, "kpiValue", "https://smartdatamodels.org/dataModel.KeyPerformanceIndicator/kpiValue"),
        ("https://smartdatamodels.org/context.jsonld", "AirQualityObserved",
         "https://uri.fiware.org/ns/data-models#AirQualityObserved"),
    ],
)
def test_smart_data_models_contexts_resolve_offline(store: ContextStore, context: str, term: str, iri: str) -> None:
    terms = store.term_map_sync(context)
    assert terms.expand(term) == iri
    assert terms.compact(iri) == term


def test_core_context_applies_last_and_wins(store: ContextStore) -> None:
    terms = store.term_map_sync([{"location": "https://example.org/myLocation", "speed": "https://example.org/speed"}])
    assert terms.expand("location") == NGSI + "location"
    assert terms.expand("speed") == "https://example.org/speed"


def test_kpi_example_context_lists_core_and_model(store: ContextStore) -> None:
    terms = store.term_map_sync([UNVERSIONED_CORE, KPI])
    assert terms.expand("kpiValue").startswith("https://smartdatamodels.org/")
    assert terms.expand("observedAt") == NGSI + "observedAt"


def test_inline_context_with_vocab_and_prefixes(store: ContextStore) -> None:
    terms = store.term_map_sync({"@vocab": "https://vocab.example.org/", "ex": "https://example.org/ns#"})
    assert terms.expand("speed") == "https://vocab.example.org/speed"
    assert terms.compact("https://vocab.example.org/speed") == "speed"
    assert terms.expand("ex:color") == "https://example.org/ns#color"
    assert terms.compact("https://example.org/ns#color") == "ex:color"
    assert terms.compact("https://elsewhere.org/x") == "https://elsewhere.org/x"


def test_list_mixing_urls_and_objects(store: ContextStore) -> None:
    terms = store.term_map_sync([ENV, {"myNo2": "https://smartdatamodels.org/dataModel.Environment/no2"}])
    # both terms name the same IRI; compaction picks the shortest
    assert terms.expand("myNo2") == terms.expand("no2")
    assert terms.compact(terms.expand("no2")) == "no2"


def test_term_maps_are_cached_per_context_value(store: ContextStore) -> None:
    first = store.term_map_sync([ENV, {"a": "https://a.org/a", "b": "https://b.org/b"}])
    again = store.term_map_sync([ENV, {"b": "https://b.org/b", "a": "https://a.org/a"}])
    assert first is again


def test_lookups_are_fast(store: ContextStore) -> None:
    terms = store.term_map_sync(ENV)
    start = time.perf_counter()
    for _ in range(100_000):
        terms.expand("no2")
        terms.compact("https://smartdatamodels.org/dataModel.Environment/no2")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "context",
    [42, [[ENV]], "not a url", {"term": 12}, {"@version": 2.0}],
)
def test_malformed_context_is_bad_request_data(store: ContextStore, context: object) -> None:
    with pytest.raises(BadRequestData):
        store.term_map_sync(context)


def test_unknown_remote_context_is_not_available_offline(store: ContextStore) -> None:
    with pytest.raises(LdContextNotAvailable):
        store.term_map_sync("https://example.org/unknown-context.jsonld")


# --- stored contexts ---------------------------------------------------------------------------------


def test_hosted_context_can_be_added_used_listed_and_deleted(store: ContextStore) -> None:
    entry = store.add({"@context": {"brand": "https://example.org/brand"}})
    assert entry.kind is ContextKind.HOSTED
    assert entry.url == "http://broker.test/ngsi-ld/v1/jsonldContexts/" + entry.local_id
    assert store.term_map_sync(entry.url).expand("brand") == "https://example.org/brand"
    # the same context reached through another host name of the broker
    other_host = entry.url.replace("broker.test", "127.0.0.1:1026")
    assert store.term_map_sync(other_host).expand("brand") == "https://example.org/brand"
    assert [e.url for e in store.list()] == [entry.url]
    assert store.get(entry.local_id).info()["kind"] == "Hosted"
    store.delete(entry.local_id)
    with pytest.raises(ResourceNotFound):
        store.get(entry.local_id)
    with pytest.raises(LdContextNotAvailable):
        store.term_map_sync(entry.url)


def test_a_persisted_hosted_context_can_be_restored(store: ContextStore) -> None:
    entry = ContextEntry(url="http://broker.test/ngsi-ld/v1/jsonldContexts/abc", local_id="abc",
                         kind=ContextKind.HOSTED, document={"@context": {"brand": "https://example.org/brand"}})
    store.restore(entry)
    assert store.get("abc") is entry
    assert store.term_map_sync(entry.url).expand("brand") == "https://example.org/brand"


def test_hosted_context_may_import_a_built_in_one(store: ContextStore) -> None:
    entry = store.add({"@context": [ENV, {"brand": "https://example.org/brand"}]})
    terms = store.term_map_sync(entry.url)
    assert terms.expand("no2").startswith("https://smartdatamodels.org/")
    assert terms.expand("brand") == "https://example.org/brand"


def test_implicit_contexts_are_deduplicated(store: ContextStore) -> None:
    document = {"@context": {"brand": "https://example.org/brand"}}
    first = store.add(document, kind=ContextKind.IMPLICITLY_CREATED)
    second = store.add(dict(document), kind=ContextKind.IMPLICITLY_CREATED)
    assert first is second


@pytest.mark.parametrize("document", [{"no": "context"}, {"@context": 5}, {"@context": {"x": 5}}])
def test_storing_an_invalid_context_is_bad_request_data(store: ContextStore, document: dict) -> None:
    with pytest.raises(BadRequestData):
        store.add(document)


# --- remote contexts ---------------------------------------------------------------------------------


async def test_remote_context_is_fetched_once_and_cached(store: ContextStore) -> None:
    hits: list[str] = []
    documents = {
        "/ctx.jsonld": {"@context": ["/base.jsonld", {"brand": "https://example.org/brand"}]},
        "/base.jsonld": {"@context": {"color": "https://example.org/color"}},
    }
    async with serve(json_server(documents, hits)) as base:
        documents["/ctx.jsonld"]["@context"][0] = base + "/base.jsonld"  # type: ignore[index]
        terms = await store.term_map(base + "/ctx.jsonld")
        assert terms.expand("brand") == "https://example.org/brand"
        assert terms.expand("color") == "https://example.org/color"
        assert terms.context == base + "/ctx.jsonld"
        # a different context value that includes the same URL does not fetch it again
        more = await store.term_map([base + "/ctx.jsonld", {"size": "https://example.org/size"}])
        assert more.expand("color") == "https://example.org/color"
    assert sorted(hits) == ["/base.jsonld", "/ctx.jsonld"]
    assert {e.kind for e in store.list()} == {ContextKind.CACHED}
    await store.aclose()


async def test_concurrent_requests_share_one_fetch(store: ContextStore) -> None:
    hits: list[str] = []
    async with serve(json_server({"/c": {"@context": {"x": "https://example.org/x"}}}, hits)) as base:
        maps = await asyncio.gather(*(store.term_map([base + "/c", {f"t{i}": "https://t.org/"}]) for i in range(5)))
    assert all(m.expand("x") == "https://example.org/x" for m in maps)
    assert hits == ["/c"]
    await store.aclose()


async def test_context_that_never_answers_fails_within_the_timeout() -> None:
    store = ContextStore(fetch_timeout=0.5)
    async with serve(never_answer) as base:
        start = time.monotonic()
        with pytest.raises(LdContextNotAvailable) as raised:
            await store.term_map(base + "/slow.jsonld")
        assert time.monotonic() - start < 3.0
    assert raised.value.status == 504
    assert raised.value.to_problem()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
    await store.aclose()


async def test_missing_or_refused_remote_context_is_not_available(store: ContextStore) -> None:
    async with serve(json_server({"/notld": ["a list"]}, [])) as base:
        for url in (base + "/missing.jsonld", base + "/notld"):
            with pytest.raises(LdContextNotAvailable) as raised:
                await store.term_map(url)
            assert raised.value.status == 503
    closed_port = base  # the server is closed now: connection refused
    with pytest.raises(LdContextNotAvailable):
        await store.term_map(closed_port + "/gone.jsonld")
    await store.aclose()


async def test_non_http_urls_are_never_fetched(store: ContextStore) -> None:
    for url in ("file:///etc/passwd", "urn:ngsi-ld:context:1"):
        with pytest.raises(LdContextNotAvailable):
            await store.term_map(url)


async def test_builtin_contexts_never_touch_the_network() -> None:
    store = ContextStore(fetch_timeout=0.1)
    terms = await store.term_map([UNVERSIONED_CORE, KPI, ENV, WEATHER])
    assert terms.expand("kpiValue").startswith("https://smartdatamodels.org/")
    assert store.list() == []

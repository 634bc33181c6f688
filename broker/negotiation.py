"""HTTP content negotiation of the NGSI-LD API: request bodies, @context sources, Accept and Link headers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.responses import Response

from ngsi.errors import (
    BadRequestData,
    InvalidRequest,
    NgsiError,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)

JSON = "application/json"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
JSONLD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"

LINK_CONTEXT = re.compile(r'<([^>]*)>\s*;(?=[^,]*rel="?' + re.escape(JSONLD_CONTEXT_REL) + r'"?)')


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def link_context(request: Request) -> str | None:
    """The @context URL of a `Link: <url>; rel="http://www.w3.org/ns/json-ld#context"` header."""
    header = request.headers.get("link")
    if not header:
        return None
    match = LINK_CONTEXT.search(header)
    if not match:
        raise BadRequestData(f"Link header {header!r} does not name a JSON-LD @context", header="Link")
    return match.group(1)


@dataclass(frozen=True, slots=True)
class Payload:
    """A parsed request body and the @context it came with (Link header or body, None = core)."""

    body: Any
    context: Any
    item_contexts: list[Any] | None = None
    """For a JSON-LD array (batch operations), the @context of each entity in order."""


async def read_json(request: Request, max_bytes: int, *, allow_merge_patch: bool = False) -> Any:
    """The JSON body, checked for size (413), Content-Type (415) and syntax (400)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes")
    kind = media_type(request.headers.get("content-type"))
    accepted = {JSON, JSON_LD} | ({MERGE_PATCH} if allow_merge_patch else set())
    if kind not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not supported; use {' or '.join(sorted(accepted))}"
        )
    if not raw:
        raise InvalidRequest("The request body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}") from None
    if b"\\u0000" in raw and contains_nul(body):
        # PostgreSQL text and jsonb cannot hold U+0000; say so instead of failing on write.
        raise BadRequestData("The request body contains a U+0000 (NUL) character, which cannot be stored")
    return body


def contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


async def read_payload(request: Request, max_bytes: int, *, allow_merge_patch: bool = False) -> Payload:
    """Parse the body per GS CIM 009 6.3.5: JSON with Link context, or JSON-LD with body @context."""
    body = await read_json(request, max_bytes, allow_merge_patch=allow_merge_patch)
    kind = media_type(request.headers.get("content-type"))
    link = link_context(request)
    contexts = body_contexts(body)
    if kind == JSON_LD:
        # GS CIM 009 6.3.5: with application/ld+json the @context is in the body, never in Link.
        if link is not None:
            raise BadRequestData("A Link header with a JSON-LD @context is not allowed with application/ld+json")
        if not contexts:
            raise BadRequestData("application/ld+json payloads must carry an @context in the body")
        context = contexts[0]
        if isinstance(body, list):
            # Each entity of a JSON-LD batch carries its own @context (entities of different
            # data models travel together, e.g. AirQualityObserved and WeatherObserved).
            item_contexts = [item.get("@context") if isinstance(item, dict) else None for item in body]
            if any(c is None for c in item_contexts):
                missing = next(i for i, c in enumerate(item_contexts) if c is None)
                raise BadRequestData(f"entity {missing} of the application/ld+json array has no @context")
            return Payload(body=strip_context(body), context=context, item_contexts=item_contexts)
    else:
        if contexts:
            raise BadRequestData("@context in the body requires Content-Type application/ld+json")
        context = link
    return Payload(body=strip_context(body), context=context)


def body_contexts(body: Any) -> list[Any]:
    items = body if isinstance(body, list) else [body]
    return [item["@context"] for item in items if isinstance(item, dict) and "@context" in item]


def strip_context(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "@context"}
    if isinstance(body, list):
        return [strip_context(item) for item in body]
    return body


def query_context(request: Request) -> Any:
    """The @context of a GET/DELETE: the Link header's URL, or None for the core context."""
    return link_context(request)


def accepted_media_type(request: Request, *, geo: bool = False) -> str:
    """The response media type the Accept header asks for (GS CIM 009 6.3.6), else 406."""
    header = request.headers.get("accept")
    if not header:
        return JSON
    offered = [JSON, JSON_LD] + ([GEO_JSON] if geo else [])
    best: tuple[float, int, str] | None = None
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        kind = pieces[0].lower()
        quality = 1.0
        for param in pieces[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        for rank, candidate in enumerate(offered):
            if kind in (candidate, "*/*", "application/*"):
                key = (quality, -rank if kind != candidate else 1, candidate)
                if best is None or key > best:
                    best = key
                break
    if best is None:
        raise NotAcceptable(f"None of {header!r} can be served; use {', '.join(offered)}")
    return best[2]


PATH_SAFE = ":/@!$&'()*+,;=~"  # RFC 3986 pchar (and "/") besides the unreserved characters


def location(collection: str, resource_id: str) -> str:
    """The Location of a created resource: its id percent-encoded where a URI path needs it (`%`, `#`, `?`,
    spaces), so that a client can follow it; the separators URN and URL ids are made of stay readable."""
    return f"/ngsi-ld/v1/{collection}/" + quote(resource_id, safe=PATH_SAFE)


def json_response(
    content: Any,
    *,
    status_code: int = 200,
    kind: str = JSON,
    context_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An orjson-encoded response; JSON responses carry the @context in a Link header (Orion-LD)."""
    all_headers = dict(headers or {})
    if kind == JSON and context_url:
        all_headers["Link"] = f'<{context_url}>; rel="{JSONLD_CONTEXT_REL}"; type="application/ld+json"'
    return Response(orjson.dumps(content), status_code=status_code, media_type=kind, headers=all_headers)


def problem_response(error: NgsiError) -> Response:
    """An error as ProblemDetails JSON with its HTTP status (GS CIM 009 5.5.4)."""
    return Response(orjson.dumps(error.to_problem()), status_code=error.status, media_type="application/json")

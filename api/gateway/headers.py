"""Which headers cross the gateway: an allow-list towards the broker (no identity or hop-by-hop headers), and back."""

from __future__ import annotations

from collections.abc import Iterable

FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "content-type",
        "content-language",
        "link",
        "prefer",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    }
)
"""What the NGSI-LD API reads from a request (GS CIM 009 6.3). Everything else stays at the gateway:
`Authorization`, cookies, `Fiware-Service`/`Fiware-ServicePath` (Orion-LD reads them as a tenant),
`X-Forwarded-*`, made-up identity headers such as `X-Roles`, and hop-by-hop headers (RFC 9110 7.6.1).
The tenant is set by the gateway after it has been checked."""

TENANT_HEADER = "NGSILD-Tenant"

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def broker_request_headers(
    client_headers: Iterable[tuple[str, str]], tenant_header: str | None
) -> list[tuple[str, str]]:
    """The headers to send to the broker: allowed ones from the client plus the checked tenant."""
    headers = [(name, value) for name, value in client_headers if name.lower() in FORWARDED_REQUEST_HEADERS]
    if tenant_header is not None:
        headers.append((TENANT_HEADER, tenant_header))
    return headers


def client_response_headers(
    broker_headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The broker's response headers without hop-by-hop ones (and without the `drop` names)."""
    excluded = HOP_BY_HOP | drop
    return [(name, value) for name, value in broker_headers if name.lower() not in excluded]

"""Which request paths the gateway passes to the broker: only plain `/ngsi-ld/v1/...` paths, refused otherwise."""

from __future__ import annotations

from urllib.parse import unquote

from ngsi.errors import BadRequestData

BROKER_PREFIX = "/ngsi-ld/v1/"


def broker_path(raw_path: bytes) -> list[str]:
    """The decoded segments after `/ngsi-ld/v1/` of a path as the client sent it (still percent-encoded).

    Refuses (400) whatever could make the broker, or a proxy in front of it, see another path than
    the one checked: dot segments (also `%2e%2e`), encoded slashes or backslashes (`%2F`, `%5C`),
    double slashes, backslashes, double encoding (`%252F`), control characters and non-ASCII bytes.
    A trailing slash is tolerated (ARCHITECTURE.md) and gives no extra segment.
    """
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError as error:
        raise _refused("it is not ASCII (percent-encode it)") from error
    if not path.startswith(BROKER_PREFIX):
        raise _refused(f"only {BROKER_PREFIX}... is served")
    if "\\" in path:
        raise _refused("it contains a backslash")
    if "//" in path:
        raise _refused("it contains an empty segment ('//')")
    rest = path[len(BROKER_PREFIX) :]
    raw_segments = rest.split("/")
    if raw_segments and raw_segments[-1] == "":
        raw_segments.pop()
    if not raw_segments:
        raise _refused("it names no NGSI-LD resource")
    segments = []
    for raw in raw_segments:
        segment = unquote(raw, errors="strict") if "%" in raw else raw
        if segment in (".", ".."):
            raise _refused("it contains a dot segment")
        if any(char in segment for char in "/\\%") or any(ord(char) < 0x20 or ord(char) == 0x7F for char in segment):
            raise _refused("it contains an encoded slash, backslash, percent sign or control character")
        segments.append(segment)
    return segments


def _refused(reason: str) -> BadRequestData:
    return BadRequestData(f"path refused by the gateway: {reason}", title="Invalid path")

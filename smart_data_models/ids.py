"""Entity ids of Smart Data Model entities: `urn:ngsi-ld:<Type>:<city>:<source-id>`."""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]+")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def sanitise_id_part(text: str) -> str:
    """One id segment made URN-safe: accents dropped, anything else than [A-Za-z0-9._~-] becomes '-'."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("-", ascii_text).strip("-")


def entity_id(entity_type: str, city: str, source_id: str | int) -> str:
    """`urn:ngsi-ld:<Type>:<city>:<source-id>` with city and source id sanitised (colons included).

    Raises ValueError when the type is not a plain name or a part is empty once sanitised.
    """
    if not _TYPE_NAME.match(entity_type):
        raise ValueError(f"entity type {entity_type!r} is not a plain type name")
    city_part = sanitise_id_part(city)
    source_part = sanitise_id_part(str(source_id))
    if not city_part:
        raise ValueError(f"city {city!r} leaves nothing usable in an entity id")
    if not source_part:
        raise ValueError(f"source id {source_id!r} leaves nothing usable in an entity id")
    return f"urn:ngsi-ld:{entity_type}:{city_part}:{source_part}"


def as_urn(entity_type: str, identifier: str) -> str:
    """An identifier as a URI: kept if it already is one, else `urn:ngsi-ld:<Type>:<identifier>`.

    This is how the official NGSI-LD examples turn NGSI-v2 ids into NGSI-LD ids.
    """
    # Not any "scheme:" prefix: NGSI-v2 ids such as "Madrid-...-2016-03-15T11:00:00" would pass as URIs.
    if identifier.startswith("urn:") or "://" in identifier:
        return identifier
    return f"urn:ngsi-ld:{entity_type}:{identifier}"

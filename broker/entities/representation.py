"""The broker's edge between payloads and stored rows, on top of `ngsi.forms` (validation, expansion)."""

from __future__ import annotations

from typing import Any

from broker.entities.stored import Doc
from ngsi import forms
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData

ENTITY_MEMBERS = frozenset({"id", "type", "scope", "@context"})


def check_uri(value: Any, what: str) -> str:
    if not forms.is_uri(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}", title="Invalid entity id")
    return forms.check_length(str(value), what)


def expand_entity(payload: Any, terms: TermMap, now: str = "", *, fragment: bool = False
                  ) -> tuple[str, list[str], list[str] | None, Doc]:
    """A whole payload entity (any form) → (id, expanded types, scope, doc), validated.

    `fragment`: the entity of a merge (NGSI-LD Nulls and partial attributes allowed)."""
    if not isinstance(payload, dict):
        raise BadRequestData("An entity must be a JSON object")
    expanded = forms.expand_entity(payload, terms, now=now or "1970-01-01T00:00:00.000Z", fragment=fragment)
    return expanded.id, expanded.types, expanded.scope, expanded.doc


def expand_attributes(payload: dict[str, Any], terms: TermMap, now: str = "", *, fragment: bool = False) -> Doc:
    """The attributes of a PATCH/POST .../attrs or merge body as a `doc` fragment (entity members ignored).

    `fragment`: of a merge or partial update (NGSI-LD Nulls and partial attributes allowed)."""
    attributes = {k: v for k, v in payload.items() if k not in ENTITY_MEMBERS}
    return forms.expand_attributes(attributes, terms, now or "1970-01-01T00:00:00.000Z", fragment=fragment)


def scope_of(payload: Any, *, fragment: bool = False) -> list[str] | str | None:
    """The scopes a write's payload gives (GS CIM 009 4.18), None without any; in a merge `fragment` the
    NGSI-LD Null (returned as it is) removes them."""
    if not isinstance(payload, dict) or "scope" not in payload:
        return None
    value = payload["scope"]
    if value == forms.NGSI_LD_NULL:
        if fragment:
            return value
        raise BadRequestData(f"scope: the NGSI-LD Null ({value}) removes the scopes in a merge only")
    checked = forms.check_scope(value)
    return checked if isinstance(checked, list) else [checked]

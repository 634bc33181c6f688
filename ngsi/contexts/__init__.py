"""JSON-LD @contexts for NGSI-LD: offline core and Smart Data Models contexts, stored and remote ones, term maps."""

from ngsi.contexts.builtin import (
    BUILTIN_CONTEXT_FILES,
    CORE_CONTEXT_URL,
    DEFAULT_VOCAB,
    UNVERSIONED_CORE_CONTEXT_URL,
    builtin_document,
    is_core_context_url,
    with_core_context,
)
from ngsi.contexts.store import ContextEntry, ContextKind, ContextStore
from ngsi.contexts.terms import TermMap

__all__ = [
    "BUILTIN_CONTEXT_FILES",
    "CORE_CONTEXT_URL",
    "DEFAULT_VOCAB",
    "UNVERSIONED_CORE_CONTEXT_URL",
    "ContextEntry",
    "ContextKind",
    "ContextStore",
    "TermMap",
    "builtin_document",
    "is_core_context_url",
    "with_core_context",
]

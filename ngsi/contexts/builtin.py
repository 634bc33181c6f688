"""The @context documents shipped as package data and the URLs they answer to."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

ETSI_CONTEXT_BASE = "https://uri.etsi.org/ngsi-ld/v1/"
CORE_CONTEXT_URL = ETSI_CONTEXT_BASE + "ngsi-ld-core-context-v1.8.jsonld"
"""The core context the broker applies by default (GS CIM 009 v1.8)."""
UNVERSIONED_CORE_CONTEXT_URL = ETSI_CONTEXT_BASE + "ngsi-ld-core-context.jsonld"
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
"""The core context's @vocab: where terms no context defines end up."""

_CORE_FILES = {version: f"ngsi-ld-core-context-v{version}.jsonld" for version in ("1.3", "1.4", "1.7", "1.8", "1.9")}

_SDM_REPOS = {
    "dataModel.Environment": "dataModel.Environment.context.jsonld",
    "dataModel.Weather": "dataModel.Weather.context.jsonld",
    "dataModel.KeyPerformanceIndicator": "dataModel.KeyPerformanceIndicator.context.jsonld",
    "data-models": "smartdatamodels.context.jsonld",
}


def _builtin_urls() -> dict[str, str]:
    urls: dict[str, str] = {}
    for version, filename in _CORE_FILES.items():
        urls[f"{ETSI_CONTEXT_BASE}ngsi-ld-core-context-v{version}.jsonld"] = filename
    # Aliases, documented in data/SOURCES.md: unversioned -> v1.8; v1.5/v1.6 (never published offline) -> v1.7.
    urls[UNVERSIONED_CORE_CONTEXT_URL] = _CORE_FILES["1.8"]
    for version in ("1.5", "1.6"):
        urls[f"{ETSI_CONTEXT_BASE}ngsi-ld-core-context-v{version}.jsonld"] = _CORE_FILES["1.7"]
    for repo, filename in _SDM_REPOS.items():
        for branch in ("master", "main"):
            urls[f"https://raw.githubusercontent.com/smart-data-models/{repo}/{branch}/context.jsonld"] = filename
        urls[f"https://smart-data-models.github.io/{repo}/context.jsonld"] = filename
    urls["https://smartdatamodels.org/context.jsonld"] = _SDM_REPOS["data-models"]
    for url, filename in list(urls.items()):
        urls["http://" + url.removeprefix("https://")] = filename
    return urls


BUILTIN_CONTEXT_FILES: dict[str, str] = _builtin_urls()
"""Every URL we answer from package data, mapped to its file under `ngsi/contexts/data/`."""

CORE_CONTEXT_FILES = frozenset(_CORE_FILES.values())


def is_core_context_url(url: str) -> bool:
    """Whether `url` names an ETSI NGSI-LD core context (any version)."""
    return BUILTIN_CONTEXT_FILES.get(url) in CORE_CONTEXT_FILES


def with_core_context(context: Any, core_url: str) -> Any:
    """The @context of a JSON-LD answer or notification: the given one with the core context after it, as
    Orion-LD sends it (a user context alone does not define id, type, Property...); the core one without any."""
    if context is None:
        return core_url
    items = context if isinstance(context, list) else [context]
    if any(isinstance(item, str) and is_core_context_url(item) for item in items):
        return context
    return [*items, core_url]


@cache
def _load_file(filename: str) -> dict[str, Any]:
    raw = resources.files("ngsi.contexts.data").joinpath(filename).read_bytes()
    document = orjson.loads(raw)
    if not isinstance(document, dict) or "@context" not in document:
        raise ValueError(f"package context file {filename} has no @context")
    return document


def builtin_document(url: str) -> dict[str, Any] | None:
    """The shipped document (`{"@context": ...}`) for `url`, or None if it is not one of ours.

    The returned dict is shared: callers must not modify it.
    """
    filename = BUILTIN_CONTEXT_FILES.get(url)
    return _load_file(filename) if filename else None

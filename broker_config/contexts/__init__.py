"""The @context files the deployment serves: byte-identical copies of `ngsi/contexts/data/`, made by `sync_contexts`.

`python -m broker_config.contexts` refreshes the copies after the package data changed; a test
(tests/deploy/test_contexts.py) fails while they differ. The copies exist because the Docker
deployment serves this folder as static files (service `ld-context`), where the Python package
is not installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ngsi.contexts.builtin import BUILTIN_CONTEXT_FILES

CONTEXTS_DIR = Path(__file__).resolve().parent

SMART_DATA_MODELS_FILES = (
    "dataModel.Environment.context.jsonld",
    "dataModel.Weather.context.jsonld",
    "dataModel.KeyPerformanceIndicator.context.jsonld",
    "smartdatamodels.context.jsonld",
)
"""Smart Data Models contexts: served, and stored on brokers by `climaborough config apply`."""
CORE_FILES = ("ngsi-ld-core-context-v1.8.jsonld",)
"""The NGSI-LD core context the platform uses (served for clients without internet; brokers have it built in)."""
SERVED_FILES = SMART_DATA_MODELS_FILES + CORE_FILES


def package_copy(filename: str) -> bytes:
    """The bytes of one shipped @context file in `ngsi/contexts/data/`."""
    return resources.files("ngsi.contexts.data").joinpath(filename).read_bytes()


def canonical_urls(filename: str) -> list[str]:
    """The https URLs a served file stands for (what producers put in their `Link` headers)."""
    return sorted(url for url, name in BUILTIN_CONTEXT_FILES.items() if name == filename and url.startswith("https:"))


def sync_contexts(folder: Path = CONTEXTS_DIR) -> list[str]:
    """Write every served file into `folder` unless it is already identical; returns the files written."""
    written = []
    for filename in SERVED_FILES:
        target = folder / filename
        content = package_copy(filename)
        if not target.exists() or target.read_bytes() != content:
            target.write_bytes(content)
            written.append(filename)
    return written

"""The @context files the deployment serves are the package's own, byte for byte, and cover what producers send."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from broker_config.contexts import CONTEXTS_DIR, SERVED_FILES, canonical_urls, package_copy, sync_contexts
from smart_data_models.models import ENVIRONMENT_CONTEXT, KPI_CONTEXT, WEATHER_CONTEXT


def test_every_served_file_is_identical_to_the_package_data() -> None:
    for filename in SERVED_FILES:
        served = CONTEXTS_DIR / filename
        assert served.exists(), f"{filename} missing: run python -m broker_config.contexts"
        assert served.read_bytes() == package_copy(filename), f"{filename} differs: python -m broker_config.contexts"


def test_the_folder_serves_nothing_but_the_listed_files() -> None:
    served = {path.name for path in CONTEXTS_DIR.glob("*.jsonld")}
    assert served == set(SERVED_FILES)


def test_served_files_stand_for_the_contexts_producers_link_to() -> None:
    linked = {url for filename in SERVED_FILES for url in canonical_urls(filename)}
    assert {ENVIRONMENT_CONTEXT, WEATHER_CONTEXT, KPI_CONTEXT} <= linked
    assert "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld" in linked
    for filename in SERVED_FILES:
        assert "@context" in json.loads((CONTEXTS_DIR / filename).read_text(encoding="utf-8"))


def test_sync_repairs_an_edited_copy_and_leaves_identical_ones_alone() -> None:
    folder = Path(tempfile.mkdtemp(prefix="climaborough-contexts-"))
    try:
        assert sorted(sync_contexts(folder)) == sorted(SERVED_FILES)
        (folder / SERVED_FILES[0]).write_text('{"@context": {}}')
        assert sync_contexts(folder) == [SERVED_FILES[0]]
        assert (folder / SERVED_FILES[0]).read_bytes() == package_copy(SERVED_FILES[0])
        assert sync_contexts(folder) == []
    finally:
        shutil.rmtree(folder)

"""`climaborough ingest FILE --mapping M`: one file into the broker with a progress bar and a summary at the end."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

import broker_config.mappings
from agents.files.ingest import DEFAULT_CHUNK_ROWS, IngestSummary, ingest_file
from agents.files.mapping import Mapping, MappingError, load_mapping
from agents.files.settings import FilesSettings
from agents.quarantine import Quarantine
from ngsi.client import AsyncBrokerClient

SHIPPED_MAPPINGS = Path(broker_config.mappings.__file__).parent


def shipped_mappings() -> list[str]:
    """Names of the mappings shipped in broker_config/mappings."""
    return sorted(path.stem for path in SHIPPED_MAPPINGS.glob("*.yaml"))


def resolve_mapping(reference: str) -> Mapping:
    """A mapping from a file path or the name of a shipped one (`beijing_multisite`)."""
    path = Path(reference)
    if path.exists():
        return load_mapping(path)
    shipped = SHIPPED_MAPPINGS / f"{reference.removesuffix('.yaml')}.yaml"
    if shipped.exists():
        return load_mapping(shipped)
    raise MappingError(reference, "(file)", f"no such file and no shipped mapping of that name "
                                            f"(shipped: {', '.join(shipped_mappings())})")  # fmt: skip


async def ingest_with_progress(
    file: Path,
    mapping: Mapping,
    settings: FilesSettings,
    *,
    tenant: str | None,
    console: Console,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    restart: bool = False,
    temporal: bool | None = None,
    show_progress: bool = True,
) -> IngestSummary:
    """Run `ingest_file` behind a rich progress bar (bytes of the file)."""
    quarantine = Quarantine(settings.quarantine_path)
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), "[progress.percentage]{task.percentage:>3.0f}%",
        DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=console, disable=not show_progress,
    )  # fmt: skip
    try:
        with progress:
            size = await asyncio.to_thread(os.path.getsize, file)
            task = progress.add_task(f"{file.name} → {settings.broker_url}", total=size)
            async with AsyncBrokerClient(settings.broker_url, tenant=tenant, timeout=60.0) as client:
                return await ingest_file(
                    file, mapping, client, quarantine=quarantine, checkpoint_dir=settings.checkpoint_dir,
                    chunk_rows=chunk_rows, restart=restart, temporal=temporal,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )  # fmt: skip
    finally:
        quarantine.close()


def summary_table(summary: IngestSummary) -> Table:
    """The end-of-run summary as a table."""
    table = Table(title=f"Ingest of {Path(summary.file).name}", title_justify="left", show_header=False)
    rows = [
        ("records read", summary.records),
        ("resumed after records", summary.resumed_from),
        ("entities mapped", summary.entities),
        ("current-state upserts", summary.current_state_writes),
        ("history instances appended", summary.history_instances),
        ("blank records skipped", summary.skipped_blank),
        ("quarantined (unmappable)", summary.quarantined),
        ("rejected by the broker", summary.rejected_by_broker),
        ("history path", "temporal append" if summary.temporal_path else "upserts (no temporal append)"),
        ("seconds", f"{summary.seconds:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def run_ingest(file: Path, mapping_reference: str, settings: FilesSettings, *, tenant: str | None, console: Console,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, restart: bool = False, temporal: bool | None = None,
               show_progress: bool = True) -> IngestSummary:  # fmt: skip
    """The command: resolve the mapping, ingest, print the summary."""
    mapping = resolve_mapping(mapping_reference)
    summary = asyncio.run(ingest_with_progress(file, mapping, settings, tenant=tenant, console=console,
                                               chunk_rows=chunk_rows, restart=restart, temporal=temporal,
                                               show_progress=show_progress))  # fmt: skip
    if summary.already_done:
        console.print(f"{file.name} was already ingested into {settings.broker_url} with this mapping: nothing to do "
                      "(--restart sends it again).")  # fmt: skip
    console.print(summary_table(summary))
    return summary

"""Loading files into the store: pick each file's adapter, then load them all in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from winback.events import adapters
from winback.events.adapters.base import AdapterOptions
from winback.events.store import EventStore, IngestReport, StageCallback, no_progress


def ingest_files(
    store: EventStore,
    paths: Sequence[Path],
    *,
    fmt: str | None = None,
    options: AdapterOptions | None = None,
    skip_bad_rows: bool = False,
    rejects_dir: Path | None = None,
    on_stage: StageCallback = no_progress,
) -> IngestReport:
    """Load ``paths`` (format detected per file unless ``fmt``); all or nothing unless ``skip_bad_rows``."""
    options = options or AdapterOptions()
    prepared = []
    for path in paths:
        adapter = adapters.get(fmt) if fmt else adapters.detect(path)
        on_stage(str(path), f"preparing ({adapter.name})")
        inp = adapter.prepare(store.con, path, options)
        inp.identical_rows_distinct = options.identical_rows_distinct
        prepared.append(inp)
    return store.ingest(prepared, skip_bad_rows=skip_bad_rows, rejects_dir=rejects_dir, on_stage=on_stage)

"""What every adapter is: something that recognises a file and maps it onto the canonical columns.

An adapter does no parsing or validation of values itself; it says which source column or JSON field
holds each canonical field, and :mod:`winback.events.normalize` does the rest the same way for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from winback.events.store import PreparedInput


@dataclass
class AdapterOptions:
    """The user's say in how a file is read (CLI options or a mapping file)."""

    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> source column or position
    event_type_map: dict[str, str] = field(default_factory=dict)  # source event name -> canonical type
    event_type: str | None = None  # a constant type for files without one (a transaction log)
    timestamp_format: str = "auto"
    timezone: str = "UTC"
    header: bool | None = None  # None: detect
    delimiter: str | None = None  # None: detect
    identical_rows_distinct: bool = False  # see PreparedInput.identical_rows_distinct


@dataclass(frozen=True)
class FileHead:
    """The start of a file, read once and shared by every adapter's ``detect``."""

    path: Path
    first_line: str
    first_record: dict[str, object] | None  # the first JSON Lines record, when the file is JSON Lines


class Adapter(Protocol):
    """One source format."""

    name: str
    summary: str

    def detect(self, head: FileHead) -> bool:
        """True when ``head`` is unambiguously this format (used when --format is not given)."""
        ...

    def prepare(self, con: duckdb.DuckDBPyConnection, path: Path, options: AdapterOptions) -> PreparedInput:
        """Describe ``path`` as raw canonical columns over a SQL source."""
        ...

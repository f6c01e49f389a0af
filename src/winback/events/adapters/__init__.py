"""Adapters for the formats shops actually have, one module each, and auto-detection among them.

Detection order matters: the specific formats (known headers, known JSON shapes) are tried before the
generic ones they would also satisfy.
"""

from __future__ import annotations

from pathlib import Path

from winback.errors import BadInputError
from winback.events.adapters.base import Adapter, AdapterOptions, FileHead
from winback.events.adapters.ga4 import GA4
from winback.events.adapters.records import JSONL, first_record
from winback.events.adapters.rees46 import Rees46Adapter
from winback.events.adapters.retailrocket import RetailRocketAdapter
from winback.events.adapters.segment import SEGMENT
from winback.events.adapters.shopify import SHOPIFY
from winback.events.adapters.tabular import CSV, PARQUET, TSV, WHITESPACE

ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Rees46Adapter(),
        RetailRocketAdapter(),
        SEGMENT,
        GA4,
        SHOPIFY,
        JSONL,
        PARQUET,
        CSV,
        TSV,
        WHITESPACE,
    )
}


def read_head(path: Path) -> FileHead:
    """The first line (and first JSON record, if any) of ``path``."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; expected an event file")
    with path.open("rb") as f:
        first = f.readline(64 * 1024)
    line = first.decode("utf-8", errors="replace")
    record = first_record(path) if line.lstrip().startswith("{") else None
    return FileHead(path, line, record)


def detect(path: Path) -> Adapter:
    """The adapter for ``path``; a clear error when no format fits."""
    head = read_head(path)
    for adapter in ADAPTERS.values():
        if adapter.detect(head):
            return adapter
    raise BadInputError(
        f"{path}: cannot tell its format from its name or first line; "
        f"give --format, one of {', '.join(ADAPTERS)}"
    )


def get(name: str) -> Adapter:
    """The adapter called ``name``."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise BadInputError(f"--format {name}: unknown; expected one of {', '.join(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "Adapter", "AdapterOptions", "FileHead", "detect", "get", "read_head"]

"""Progress display for long commands: a bar on a terminal, nothing in ``--json`` mode or when piped."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


def wanted(json_output: bool) -> bool:
    """Progress is for people: only on an interactive terminal and never mixed into JSON."""
    return not json_output and sys.stderr.isatty()


class Reporter:
    """What long-running code calls; a silent one when progress is off."""

    def stage(self, source: str, stage: str) -> None:
        """A new step of work has begun (``source`` may be empty)."""

    def advance(self, done: float, total: float) -> None:
        """Fraction of the current step done."""


class _RichReporter(Reporter):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=100)

    def stage(self, source: str, stage: str) -> None:
        label = f"{stage} {source}".strip()
        self.progress.update(self.task, description=label, completed=0)

    def advance(self, done: float, total: float) -> None:
        self.progress.update(self.task, completed=100 * done / total if total else 0)


@contextmanager
def reporter(enabled: bool, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[Reporter]:
    """A :class:`Reporter`; with ``con``, the bar also follows DuckDB's own query progress."""
    if not enabled:
        yield Reporter()
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        rich = _RichReporter(progress)
        stop = threading.Event()
        poller = threading.Thread(target=_follow_query, args=(con, rich, stop), daemon=True) if con else None
        if poller:
            poller.start()
        try:
            yield rich
        finally:
            stop.set()
            if poller:
                poller.join()


def _follow_query(con: duckdb.DuckDBPyConnection, rich: _RichReporter, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        try:
            percent = con.query_progress()
        except duckdb.Error:
            continue
        if percent >= 0:
            rich.advance(percent, 100)

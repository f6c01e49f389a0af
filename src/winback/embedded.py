"""Opening an embedded DuckDB file that another process may hold.

DuckDB lets one process write a file, or several read it, never both at once. A writer (``winback
ingest``, ``plan``, ``outcomes``, ``sync``) that finds the event store or the decision log held by a
reader (the dashboard computing, a ``winback report``) waits for it, as SQLite's busy timeout does,
instead of failing and making the user send their data again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import duckdb

from winback.errors import WinbackError


def is_lock_error(error: BaseException) -> bool:
    """Whether ``error`` is DuckDB's "another process holds this file" (not a missing or corrupt file)."""
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def connect_waiting(
    path: Path, *, what: str, wait_seconds: float, config: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(path)`` for writing, retried while another process holds the file, for at most
    ``wait_seconds`` (``WINBACK_LOCK_WAIT_SECONDS``); says once on stderr that it is waiting."""
    deadline = time.monotonic() + wait_seconds
    pause, told = 0.05, False
    while True:
        try:
            return duckdb.connect(str(path), config=config or {})
        except duckdb.IOException as error:
            if not is_lock_error(error) or time.monotonic() + pause > deadline:
                waited = (
                    f" (waited {wait_seconds:g} s; WINBACK_LOCK_WAIT_SECONDS)" if is_lock_error(error) else ""
                )
                raise WinbackError(f"cannot open the {what} {path}: {error}{waited}") from error
            if not told:
                print(f"winback: the {what} {path} is in use by another process; waiting", file=sys.stderr)
                told = True
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

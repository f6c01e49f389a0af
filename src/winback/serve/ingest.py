"""Storing received events: one transaction per batch, each ``event_id`` once.

A batch is validated whole before anything is written (:mod:`winback.events.json_batch`, with
:class:`winback.events.model.Event` as the judge), then inserted so that a client that retries a batch
after a timeout, or two paths delivering the same event, store it once; the reply counts both:

- SQLite: multi-row ``INSERT OR IGNORE ... VALUES (...), (...)`` of up to 256 rows per statement (a few
  prepared statements of fixed sizes, cached). Python's lock is released once per statement, where an
  ``executemany`` releases and takes it back at every row and then waits on the threads decoding the next
  requests; and binding values costs SQLite less than reading them out of one JSON parameter
  (``json_each``: about 3 µs more CPU an event).
- PostgreSQL: a binary ``COPY`` straight into ``events``; when a row is already there (a retried
  batch, a redelivered stream entry) the transaction is rolled back and the batch goes through a
  temporary table and ``INSERT ... ON CONFLICT (event_id) DO NOTHING``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.events.model import ROW_FIELDS, Event, EventRow
from winback.serve.db import events as events_table

COLUMNS = (*ROW_FIELDS, "source", "received_at")
_COLUMN_LIST = ", ".join(COLUMNS)

#: SQLite INSERTs of 256, 64, 16, 4 and 1 rows: a batch is cut into these sizes, largest first.
_SQLITE_INSERTS = {
    size: f"INSERT OR IGNORE INTO events ({_COLUMN_LIST}) VALUES "
    + ", ".join([f"({', '.join('?' * len(COLUMNS))})"] * size)
    for size in (256, 64, 16, 4, 1)
}

#: The binary COPY types of :data:`COLUMNS`, as the ``events`` table declares them.
POSTGRESQL_COPY_TYPES = (
    "text", "text", "timestamptz", "text", "text", "text", "text", "text", "text", "float8", "int4", "text",
    "float8", "text", "text", "text", "timestamptz",
)  # fmt: skip


@dataclass(frozen=True)
class Stored:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def _insert_sqlite(driver: sqlite3.Connection, rows: list[EventRow], source: str, now: datetime) -> int:
    """The rows in multi-row INSERTs; times as text as Python's sqlite3 writes them (``isoformat(" ")``)."""
    received = now.isoformat(" ")
    values: list[Any] = []
    for row in rows:
        values += (row[0], row[1], row[2].isoformat(" "), *row[3:], source, received)
    width = len(COLUMNS)
    most = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width  # 32766 // 16 since 3.32
    done = stored = 0
    for size, sql in _SQLITE_INSERTS.items():
        while size <= most and len(rows) - done >= size:
            stored += driver.execute(sql, values[done * width : (done + size) * width]).rowcount
            done += size
    return stored


def _store_sqlite(engine: Engine, rows: list[EventRow], source: str, now: datetime) -> int:
    """The batch in one transaction, committed with ``synchronous=FULL``: the write-ahead log is flushed
    to disk before the batch is acknowledged, so it survives a power loss too (the service's other
    writes keep ``NORMAL``, which survives a crash of the process)."""
    with engine.connect() as connection:
        driver: Any = connection.connection.driver_connection
        driver.execute("PRAGMA synchronous=FULL")
        try:
            with connection.begin():
                return _insert_sqlite(driver, rows, source, now)
        finally:
            driver.execute("PRAGMA synchronous=NORMAL")


def _copy(connection: sa.Connection, table: str, rows: list[EventRow], source: str, now: datetime) -> None:
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(POSTGRESQL_COPY_TYPES)
        tail = (source, now)
        for row in rows:
            copy.write_row(row + tail)


def _store_postgresql(engine: Engine, rows: list[EventRow], source: str, now: datetime) -> int:
    try:
        with engine.begin() as connection:
            _copy(connection, "events", rows, source, now)
        return len(rows)
    except psycopg.errors.UniqueViolation:
        pass  # some are stored already: only the new ones, below
    with engine.begin() as connection:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(  # only the columns written here: a column added later keeps its default
            "CREATE TEMP TABLE IF NOT EXISTS incoming_events ON COMMIT DELETE ROWS "
            f"AS SELECT {_COLUMN_LIST} FROM events WITH NO DATA"
        )
        _copy(connection, "incoming_events", rows, source, now)
        cursor.execute(
            f"INSERT INTO events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM incoming_events "
            "ON CONFLICT (event_id) DO NOTHING"
        )
        return int(cursor.rowcount)


def store_rows(engine: Engine, rows: Sequence[EventRow], source: str = "http") -> Stored:
    """Insert ``rows`` (of validated events) in one transaction; how many were new."""
    now = datetime.now(UTC)
    unique = list({row[0]: row for row in rows}.values())  # a batch's own repeats once
    store = _store_postgresql if engine.dialect.name == "postgresql" else _store_sqlite
    return Stored(len(rows), store(engine, unique, source, now))


def store_events(engine: Engine, batch: Sequence[Event], source: str = "http") -> Stored:
    """:func:`store_rows` of validated events."""
    return store_rows(engine, [event.as_row() for event in batch], source)


def count_events(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())

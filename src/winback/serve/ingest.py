"""Storing received events: one transaction per batch, each ``event_id`` once.

A batch is validated whole before anything is written (:class:`winback.events.model.Event`), then
inserted with ``ON CONFLICT DO NOTHING`` (on PostgreSQL through COPY into a temporary table), so a client
that retries a batch after a timeout, or two paths delivering the same event, store it once; the reply
counts both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.events.model import Event
from winback.serve.db import EVENT_COLUMNS
from winback.serve.db import events as events_table


@dataclass(frozen=True)
class Stored:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def _insert_sqlite(connection: sa.Connection, rows: list[dict[str, object]]) -> int:
    """One ``INSERT OR IGNORE`` executemany through the driver, values converted by SQLAlchemy's own bind
    processors (so reads through SQLAlchemy see the same types): about 1.5x SQLAlchemy's executemany."""
    columns = [events_table.c[name] for name in EVENT_COLUMNS]
    dialect = connection.dialect
    convert = [(c.name, c.type.bind_processor(dialect)) for c in columns]
    values = [[f(row[name]) if f else row[name] for name, f in convert] for row in rows]
    sql = (
        f"INSERT OR IGNORE INTO events ({', '.join(c.name for c in columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.executemany(sql, values)
    return int(cursor.rowcount)


def _insert_postgresql(connection: sa.Connection, rows: list[dict[str, object]]) -> int:
    """COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING: about 15x the rows per
    second of a multi-row INSERT through the driver."""
    columns = list(EVENT_COLUMNS)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS incoming_events (LIKE events) ON COMMIT DELETE ROWS")
    with cursor.copy(f"COPY incoming_events ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])
    cursor.execute(
        f"INSERT INTO events ({', '.join(columns)}) SELECT {', '.join(columns)} FROM incoming_events "
        "ON CONFLICT (event_id) DO NOTHING"
    )
    return int(cursor.rowcount)


def store_events(engine: Engine, batch: Sequence[Event], source: str = "http") -> Stored:
    """Insert ``batch`` (already validated) in one transaction; how many were new."""
    now = datetime.now(UTC)
    rows = list({e.event_id: e.row(source, now) for e in batch}.values())  # a batch's own repeats once
    insert = _insert_postgresql if engine.dialect.name == "postgresql" else _insert_sqlite
    with engine.begin() as connection:
        stored = insert(connection, rows)
    return Stored(len(batch), stored)


def count_events(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())

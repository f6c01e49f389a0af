"""Storing received events: one transaction per batch, each ``event_id`` once.

A batch is validated whole before anything is written (:class:`winback.events.model.Event`), then
inserted with ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL alike), so a client that retries a batch
after a timeout, or two paths delivering the same event, store it once; the reply counts both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from winback.events.model import Event
from winback.serve.db import events as events_table

#: Rows per INSERT statement (SQLite allows 32,766 bound parameters: 16 columns x 2,000 rows).
CHUNK = 2_000


@dataclass(frozen=True)
class Stored:
    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def _insert(engine: Engine) -> sa.Insert:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(events_table).on_conflict_do_nothing(index_elements=["event_id"])


def store_events(engine: Engine, batch: Sequence[Event], source: str = "http") -> Stored:
    """Insert ``batch`` (already validated) in one transaction; how many were new."""
    now = datetime.now(UTC)
    rows = list({e.event_id: e.row(source, now) for e in batch}.values())  # a batch's own repeats once
    statement = _insert(engine).returning(events_table.c.event_id)
    stored = 0
    with engine.begin() as connection:
        for start in range(0, len(rows), CHUNK):
            result = connection.execute(statement, rows[start : start + CHUNK])
            stored += len(result.fetchall())
    return Stored(len(batch), stored)


def count_events(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())

"""Storing event rows on SQLite and PostgreSQL: what is read back is what was sent (texts, floats, times,
properties), in the row format readers rely on; a batch with rows already stored adds only the new ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from winback.events.json_batch import fast_rows
from winback.events.model import ROW_FIELDS, Event
from winback.serve.db import events, make_engine, upgrade
from winback.serve.ingest import count_events, store_events, store_rows

ODD_TEXTS = [
    "ünïcödé",
    "emoji 🛒",
    'quote " and \\ backslash',
    "new\nline\tand \x01",
    "'; DROP TABLE events; --",
]


def _events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, text in enumerate(ODD_TEXTS):
        event = {"event_id": f"e{i}-{text}", "event_type": "add_to_cart", "user_id": text,
                 "product_id": f"p{i}", "category": text, "brand": text,
                 "timestamp": f"2024-05-0{i + 1}T10:00:0{i}.{i * 123457:06d}+0{i}:30",
                 "price": [0.1, 19.99, 1e-7, 123456789.123, 2.5][i], "quantity": i + 1, "currency": "EUR",
                 "properties": {"text": text, "n": [1, 2.5, None, True], "big": 2**62}}  # fmt: skip
        out.append(event)
    out.append({"event_type": "view", "timestamp": "2024-05-06T00:00:00Z", "anonymous_id": "a1"})  # no id
    return out


def _read(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(events)).mappings().all()
    return {row["event_id"]: dict(row) for row in rows}


def test_rows_read_back_as_sent(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    sent = _events()
    rows = fast_rows(orjson.dumps(sent))
    assert rows is not None
    before = datetime.now(UTC)
    assert store_rows(engine, rows, "redis").stored == len(sent)
    stored = _read(engine)
    for raw in sent:
        event = Event.model_validate(raw)
        row = stored[str(event.event_id)]
        for name, value in zip(ROW_FIELDS, event.as_row(), strict=True):
            assert row[name] == value, (name, row[name], value)
            assert type(row[name]) is type(value), name
        assert row["timestamp"].utcoffset().total_seconds() == 0
        assert row["source"] == "redis"
        assert before <= row["received_at"] <= datetime.now(UTC)
    if engine.dialect.name == "sqlite":  # times as Python's sqlite3 wrote them: isoformat(" ")
        with engine.connect() as connection:
            text = dict(connection.exec_driver_sql("SELECT event_id, timestamp FROM events").all())
        for raw in sent:
            event = Event.model_validate(raw)
            assert text[event.event_id] == event.timestamp.isoformat(" ")
    engine.dispose()


def test_a_batch_with_rows_already_stored_stores_only_the_new_ones(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    batch = [
        Event.model_validate({"event_id": f"e{i}", "event_type": "view", "user_id": "u",
                              "timestamp": "2024-05-01T10:00:00Z"})
        for i in range(10)
    ]  # fmt: skip
    first = store_events(engine, batch[:5])
    assert (first.stored, first.duplicates) == (5, 0)
    again = store_events(engine, [*batch, batch[7]])  # five stored before, one twice in the batch
    assert (again.received, again.stored, again.duplicates) == (11, 5, 6)
    assert count_events(engine) == 10
    assert store_events(engine, batch).stored == 0
    engine.dispose()


def test_a_column_added_later_keeps_its_default(database_url: str) -> None:
    """Storage writes its own columns only (a later migration may add one, such as a sequence)."""
    engine = make_engine(database_url)
    upgrade(engine)
    added = "seq BIGSERIAL" if engine.dialect.name == "postgresql" else "seq INTEGER NOT NULL DEFAULT 7"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE events ADD COLUMN {added}")
    batch = [
        Event.model_validate({"event_id": f"e{i}", "event_type": "view", "user_id": "u",
                              "timestamp": "2024-05-01T10:00:00Z"})
        for i in range(4)
    ]  # fmt: skip
    assert store_events(engine, batch[:2]).stored == 2
    assert store_events(engine, batch).stored == 2  # the path for batches with stored rows too
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM events WHERE seq IS NOT NULL").scalar() == 4
    engine.dispose()

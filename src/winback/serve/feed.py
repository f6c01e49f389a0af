"""The stored events as a feed: every reader (the detector, ``winback sync``) sees each event once, in the
order the ingest transactions committed, from a cursor it keeps in ``feed_cursors``.

Why not ``received_at`` or a sequence: both are given out when a transaction writes, not when it commits,
so a reader that moves past a value can miss the rows of a slower transaction that commits later with a
smaller one. Instead:

- **PostgreSQL.** Each event row carries the id of the transaction that inserted it (``txid``, filled by
  the database: ``pg_current_xact_id()``). A reader takes only the rows of transactions that have all
  ended: those below the **horizon**, the oldest transaction id still running in this database
  (``pg_stat_activity.backend_xid``), or, when none runs, the next id to be handed out
  (``pg_snapshot_xmax``). (``pg_snapshot_xmin`` would do too, but it counts the transactions of every
  database of the cluster, so any long transaction elsewhere would hold the feed back.) The cursor is
  ``(txid, event_id)`` of the last row read; rows of one transaction are read in ``event_id`` order. A
  long write transaction in winback's own database holds the feed back until it ends; nothing is
  skipped.
- **SQLite.** One writer at a time, so rowids (the largest plus one) grow in commit order; the cursor is
  the last rowid read. Deleting the newest rows (an erasure) would let the next insert reuse their
  rowids, so :func:`rewind` lowers every cursor to the new largest rowid in the erasing transaction.

Events stored on PostgreSQL before migration 0003 have no ``txid`` and are not in the feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from winback.serve.db import EVENT_COLUMNS, events, feed_cursors

__all__ = ["Cursor", "ensure_cursor", "read_cursor", "read_events", "rewind", "save_cursor"]

#: What a reader gets of each event: the stored columns.
FEED_COLUMNS = EVENT_COLUMNS


@dataclass(frozen=True)
class Cursor:
    """A position in the feed: a txid and an event id (PostgreSQL), or a rowid (SQLite)."""

    position: int = 0
    event_id: str = ""


def read_cursor(connection: Connection, name: str, *, lock: bool = False) -> Cursor | None:
    """The cursor ``name`` (the start of the feed when new). With ``lock``, the cursor row (made by
    :func:`ensure_cursor`) is locked for this transaction and None is returned when another reader holds
    it: one reader of a name at a time (PostgreSQL; SQLite writers take turns anyway)."""
    query = sa.select(feed_cursors.c.position, feed_cursors.c.event_id).where(feed_cursors.c.name == name)
    if lock:
        query = query.with_for_update(skip_locked=True)
    row = connection.execute(query).first()
    if row is None:
        return None if lock else Cursor()
    return Cursor(int(row.position), str(row.event_id))


def ensure_cursor(connection: Connection, name: str) -> None:
    """Create the cursor ``name`` at the start of the feed, unless it exists."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(feed_cursors)
        .values(name=name, position=0, event_id="", updated_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["name"])
    )


def save_cursor(connection: Connection, name: str, cursor: Cursor) -> None:
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    values = {"position": cursor.position, "event_id": cursor.event_id, "updated_at": datetime.now(UTC)}
    connection.execute(
        insert(feed_cursors)
        .values(name=name, **values)
        .on_conflict_do_update(index_elements=["name"], set_=values)
    )


def read_events(
    connection: Connection, after: Cursor, limit: int, columns: Sequence[str] = FEED_COLUMNS
) -> tuple[list[Any], Cursor]:
    """Up to ``limit`` events after ``after`` in commit order, and the cursor past them."""
    selected = [events.c[c] for c in columns]
    if connection.dialect.name == "postgresql":
        horizon = _horizon(connection)
        query = (
            sa.select(events.c.txid, *selected)
            .where(
                events.c.txid.is_not(None),
                events.c.txid < horizon,
                sa.tuple_(events.c.txid, events.c.event_id) > sa.tuple_(after.position, after.event_id),
            )
            .order_by(events.c.txid, events.c.event_id)
            .limit(limit)
        )
        rows = list(connection.execute(query))
        if not rows:
            return [], after
        return rows, Cursor(int(rows[-1].txid), str(rows[-1].event_id))
    rowid: sa.ColumnElement[int] = sa.literal_column("events.rowid")
    found = list(
        connection.execute(
            sa.select(rowid.label("txid"), *selected)
            .where(rowid > after.position)
            .order_by(rowid)
            .limit(limit)
        )
    )
    if not found:
        return [], after
    return found, Cursor(int(found[-1].txid))


#: The horizon in one round trip, in this order: the next transaction id first, then the running ones
#: read afresh (a transaction given an id after the first statement is above it anyway).
_HORIZON = (
    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint; SELECT pg_stat_clear_snapshot(); "
    "SELECT backend_xid::text::bigint FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
)


def _horizon(connection: Connection) -> int:
    """The oldest transaction id still running in this database (64-bit), else the next one to come."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(_HORIZON)
    upper = int(cursor.fetchone()[0])
    cursor.nextset()
    cursor.nextset()
    running = [int(xid) for (xid,) in cursor.fetchall()]
    epoch = upper & ~0xFFFFFFFF
    horizon = upper
    for xid in running:  # 32-bit ids: put them in the epoch of ``upper`` (or the one before)
        full = epoch | xid
        horizon = min(horizon, full if full < upper else full - (1 << 32))
    return horizon


def rewind(connection: Connection) -> None:
    """After deleting events on SQLite: lower every cursor to the largest rowid left, so rowids the
    deletion freed and the next insert reuses are still read (see the module docstring)."""
    if connection.dialect.name != "sqlite":
        return
    top = connection.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM events").scalar_one()
    connection.execute(
        feed_cursors.update().where(feed_cursors.c.position > top).values(position=int(top), event_id="")
    )

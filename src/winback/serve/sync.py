"""The service and the winback home: ``winback sync`` brings what the service saw and did into the home,
and erasure reaches the home too.

:func:`sync_home` copies

- the service's events (all of them, through the feed: winback.serve.feed, cursor ``sync``) into the
  home's DuckDB event store (``EventStore.append``, source ``service``): idempotent by event id, so a
  repeated or interrupted sync stores nothing twice, and ``winback train``, ``score``, ``plan`` and the
  reports see the live traffic;
- the detector's decisions, and their outcomes once recorded, into the home's decision log
  (``DecisionLog.append`` keeps the service's decision ids; ``record_outcomes`` fills what happened),
  so ``winback train policy``, ``winback policies evaluate`` and the reports see what the service did.
  Decisions changed since the last sync (minus a minute, for transactions still committing) are read
  again; appending one already logged adds nothing.

:func:`erase_from_home` deletes a customer from the home's event store and decision log, when they
exist and no other process holds them (DuckDB lets one process write a file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.errors import WinbackError
from winback.events.schema import EVENT_FIELDS, EVENT_SCHEMA
from winback.serve.db import decisions
from winback.serve.feed import Cursor, read_cursor, read_events, save_cursor

__all__ = ["SyncReport", "erase_from_home", "sync_home"]

EVENTS_CURSOR = "sync"
DECISIONS_CURSOR = "sync-decisions"
#: Decisions changed this long before the last sync's start are read again (commits still in flight).
_OVERLAP = timedelta(minutes=1)
_LOG_COLUMNS = (
    "decision_id", "decided_at", "cart_id", "user_id", "policy", "version", "action", "propensity",
    "expected_profit", "send_at", "holdout", "reasons", "context",
)  # fmt: skip
_OUTCOME_COLUMNS = ("decision_id", "outcome_observed_at", "recovered", "revenue", "discount", "margin")


@dataclass
class SyncReport:
    """What :func:`sync_home` did."""

    events_read: int = 0
    events_stored: int = 0
    decisions_read: int = 0
    decisions_logged: int = 0
    outcomes_recorded: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _events_table(rows: list[Any]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in rows] for name in EVENT_FIELDS}
    columns["timestamp"] = [
        t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC) for t in columns["timestamp"]
    ]
    return pa.table(columns, schema=EVENT_SCHEMA)


def _sync_events(engine: Engine, settings: Settings, batch: int, full: bool, report: SyncReport) -> None:
    from winback.events.store import EventStore

    with engine.connect() as connection:
        cursor = Cursor() if full else read_cursor(connection, EVENTS_CURSOR) or Cursor()
    with EventStore(settings) as store:
        while True:
            with engine.connect() as connection:
                rows, after = read_events(connection, cursor, batch, EVENT_FIELDS)
            if not rows:
                return
            done = store.append(_events_table(rows), source="service")
            report.events_read += len(rows)
            report.events_stored += done.total("ingested")
            with engine.begin() as connection:
                save_cursor(connection, EVENTS_CURSOR, after)
            cursor = after


def _sync_decisions(engine: Engine, settings: Settings, full: bool, report: SyncReport) -> None:
    from winback.decide.log import DecisionLog

    started = datetime.now(UTC)
    with engine.connect() as connection:
        since = None if full else read_cursor(connection, DECISIONS_CURSOR)
        query = sa.select(decisions)
        if since is not None and since.position:
            moment = datetime.fromtimestamp(since.position / 1e6, UTC) - _OVERLAP
            query = query.where(decisions.c.updated_at >= moment)
        frame = pd.DataFrame(connection.execute(query.order_by(decisions.c.decided_at)).mappings().all())
    if not frame.empty:
        report.decisions_read = len(frame)
        for column in ("decided_at", "send_at", "outcome_observed_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        frame["reasons"] = frame["reasons"].map(json.loads)
        with DecisionLog(settings) as log:
            report.decisions_logged = log.append(frame[list(_LOG_COLUMNS)])
            observed = frame[frame["outcome_observed_at"].notna()]
            if len(observed):
                report.outcomes_recorded = log.record_outcomes(observed[list(_OUTCOME_COLUMNS)])
    with engine.begin() as connection:
        save_cursor(connection, DECISIONS_CURSOR, Cursor(int(started.timestamp() * 1e6)))


def sync_home(engine: Engine, settings: Settings, *, full: bool = False, batch: int = 100_000) -> SyncReport:
    """Copy the service's new events into the home's event store and its decisions (with outcomes) into
    the home's decision log; ``full`` reads everything again (still storing nothing twice)."""
    report = SyncReport()
    _sync_events(engine, settings, batch, full, report)
    _sync_decisions(engine, settings, full, report)
    return report


def erase_from_home(
    settings: Settings, user_id: str, anonymous_ids: list[str]
) -> tuple[dict[str, int], list[str]]:
    """Delete the customer from the home's event store and decision log: rows per place, and what could
    not be reached (with why)."""
    import duckdb

    from winback.decide.log import DecisionLog
    from winback.events.store import EventStore

    erased: dict[str, int] = {}
    unreached: list[str] = []
    how = "erase there with `winback erase` once it is free"
    # a request waits a moment for a file another process holds, not the minute a command would
    settings = settings.model_copy(update={"lock_wait_seconds": min(settings.lock_wait_seconds, 2.0)})
    if settings.store_path.exists():
        try:
            with EventStore(settings) as store:
                erased["home_events"] = store.erase(user_id, anonymous_ids)
        except (WinbackError, duckdb.Error) as error:
            unreached.append(f"the event store {settings.store_path}: {error}; {how}")
    log_path = settings.home / "decisions.duckdb"
    if log_path.exists():
        try:
            with DecisionLog(settings) as log:
                erased["home_decisions"] = log.erase(user_id)
        except (WinbackError, duckdb.Error) as error:
            unreached.append(f"the decision log {log_path}: {error}; {how}")
    return erased, unreached

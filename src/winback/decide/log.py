"""The decision log: every choice winback makes, with what it knew, so any policy can be judged later.

Each row is one decision: who (cart and customer), when, which policy and version chose which action
with which probability (the propensity off-policy evaluation needs), the expected incremental profit
and the reasons, the context it saw (as JSON), whether the customer is in the holdout, and — filled in
later by :meth:`DecisionLog.record_outcomes` — what happened.

The embedded log is its own DuckDB file (``HOME/decisions.duckdb``), so planning never holds a lock on
the event store. A decision's id is derived from its subject, moment, policy and version: planning the
same carts at the same moment again adds nothing, and a crash mid-append leaves nothing half-written
(one transaction).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from winback.config import Settings
from winback.embedded import connect_waiting
from winback.errors import BadInputError

#: Namespace of decision ids (uuid5 of subject, moment, policy and version).
_NAMESPACE = uuid.UUID("8f3c9a52-58a4-4d8e-9a63-2b7f1d1c0e5a")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id VARCHAR PRIMARY KEY,
    decided_at TIMESTAMPTZ NOT NULL,
    cart_id VARCHAR,
    user_id VARCHAR NOT NULL,
    policy VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    propensity DOUBLE,
    expected_profit DOUBLE,
    send_at TIMESTAMPTZ,
    holdout BOOLEAN NOT NULL,
    reasons VARCHAR NOT NULL,
    context VARCHAR NOT NULL,
    outcome_observed_at TIMESTAMPTZ,
    recovered BOOLEAN,
    revenue DOUBLE,
    discount DOUBLE,
    margin DOUBLE
)
"""

#: Columns a caller gives to :meth:`DecisionLog.append` (the others have defaults).
REQUIRED = ("decided_at", "user_id", "policy", "version", "action")
COLUMNS = (
    "decision_id", "decided_at", "cart_id", "user_id", "policy", "version", "action", "propensity",
    "expected_profit", "send_at", "holdout", "reasons", "context", "outcome_observed_at", "recovered",
    "revenue", "discount", "margin",
)  # fmt: skip
OUTCOMES = ("recovered", "revenue", "discount", "margin")


def decision_id(subject: str, decided_at: pd.Timestamp, policy: str, version: str) -> str:
    """The stable id of a decision about ``subject`` (a cart, else a customer)."""
    return str(uuid.uuid5(_NAMESPACE, f"{subject}|{decided_at.isoformat()}|{policy}|{version}"))


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


class DecisionLog:
    """Append-only decisions in ``path`` (default ``HOME/decisions.duckdb``)."""

    def __init__(self, settings: Settings, path: Path | None = None, *, read_only: bool = False) -> None:
        self.path = path or settings.home / "decisions.duckdb"
        if read_only and not self.path.exists():
            raise BadInputError(f"no decision log at {self.path}: run `winback plan` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = (
            duckdb.connect(str(self.path), read_only=True)
            if read_only
            else connect_waiting(self.path, what="decision log", wait_seconds=settings.lock_wait_seconds)
        )
        self.con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            self.con.execute(_SCHEMA)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, decisions: pd.DataFrame | Iterable[Mapping[str, Any]]) -> int:
        """Add decisions (one transaction); returns how many were new (already logged ones are kept)."""
        frame = decisions.copy() if isinstance(decisions, pd.DataFrame) else pd.DataFrame(list(decisions))
        if frame.empty:
            return 0
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise BadInputError(f"decisions: missing columns {missing}; expected at least {list(REQUIRED)}")
        unknown = sorted(set(frame.columns) - set(COLUMNS))
        if unknown:
            raise BadInputError(f"decisions: unknown columns {unknown}; expected some of {list(COLUMNS)}")
        frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
        for column in COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        bad = frame["propensity"].notna() & ~frame["propensity"].astype(float).between(
            0, 1, inclusive="right"
        )
        if bad.any():
            row = int(bad.to_numpy().argmax())
            value = float(frame["propensity"].iloc[row])
            expected = "expected a probability in (0, 1]"
            raise BadInputError(f"decisions row {row}: propensity {value!r}: {expected}")
        frame["holdout"] = frame["holdout"].fillna(False).astype(bool)
        frame["reasons"] = frame["reasons"].map(lambda r: _json(list(r) if r is not None else []))
        frame["context"] = frame["context"].map(lambda c: _json(c if c is not None else {}))
        subject = frame["cart_id"].where(frame["cart_id"].notna(), frame["user_id"]).astype(str)
        ids = [
            decision_id(s, t, p, v)
            for s, t, p, v in zip(
                subject, frame["decided_at"], frame["policy"], frame["version"], strict=True
            )
        ]
        frame["decision_id"] = frame["decision_id"].where(
            frame["decision_id"].notna(), pd.Series(ids, index=frame.index)
        )
        frame = frame.drop_duplicates("decision_id")[list(COLUMNS)]
        before = self.count()
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.register("incoming", frame)
            self.con.execute(
                "INSERT INTO decisions SELECT * FROM incoming "
                "WHERE decision_id NOT IN (SELECT decision_id FROM decisions)"
            )
            self.con.unregister("incoming")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return self.count() - before

    def record_outcomes(self, outcomes: pd.DataFrame) -> int:
        """Fill in what happened (``decision_id`` plus some of ``recovered``, ``revenue``, ``discount``,
        ``margin``, ``outcome_observed_at``); returns the number of decisions updated."""
        if "decision_id" not in outcomes.columns:
            raise BadInputError("outcomes: missing column 'decision_id'")
        given = [c for c in (*OUTCOMES, "outcome_observed_at") if c in outcomes.columns]
        if not given:
            raise BadInputError(f"outcomes: expected some of {[*OUTCOMES, 'outcome_observed_at']}")
        frame = outcomes[["decision_id", *given]].copy()
        if "outcome_observed_at" not in frame.columns:
            frame["outcome_observed_at"] = pd.Timestamp.now(tz="UTC")
            given.append("outcome_observed_at")
        sets = ", ".join(f"{c} = o.{c}" for c in given)
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.register("o", frame)
            updated = self.con.execute(
                f"UPDATE decisions SET {sets} FROM o WHERE decisions.decision_id = o.decision_id"
            ).fetchone()
            self.con.unregister("o")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return int(updated[0]) if updated else 0

    def erase(self, user_id: str) -> int:
        """Delete a customer's decisions (erasure); how many went."""
        row = self.con.execute("DELETE FROM decisions WHERE user_id = ?", [user_id]).fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        row = self.con.execute("SELECT count(*) FROM decisions").fetchone()
        return int(row[0]) if row else 0

    def read(self, policy: str | None = None) -> pd.DataFrame:
        """Every decision (of ``policy`` if given), oldest first (then by customer and cart)."""
        where, params = ("WHERE policy = ?", [policy]) if policy else ("", [])
        return self.con.execute(
            f"SELECT * FROM decisions {where} ORDER BY decided_at, user_id, cart_id, policy, version", params
        ).df()

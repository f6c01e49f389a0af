"""What measurement reads, opened once: the event store, the decision log, and the report's filters.

:class:`MeasureData` is what every section of the report (and each page of the dashboard) takes, with a
:class:`Filters`: the period (``since`` / ``until``, by default the whole event log) and optionally one
flow (the policy that decided) and one channel. It caches what several sections share (the sessionised
events, the carts, the prepared decisions), so a report computes each once.

Decisions are prepared for the experiment (:func:`prepare_decisions`): only those whose outcome is
recorded (``winback outcomes``) count, each gets its channel, whether a message was sent, its margin
after the discount and the message's cost (the reward of :func:`winback.decide.plan.log_rewards`), the
revenue a vendor would attribute to it (its order, when a message was sent), its customer's consent (to
match holdout customers to an action's channel), its week, its customer's segment when it was made, and an
integer code of its customer (``customer``, what the experiment sums over).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from winback.config import Settings
from winback.decide.actions import CHANNELS, Action
from winback.decide.catalogue import Catalogue, load_catalogue
from winback.decide.plan import log_rewards
from winback.errors import BadInputError
from winback.events.normalize import sql_string
from winback.events.store import EventStore
from winback.features.engine import EVENT_COLUMNS, FeatureSource
from winback.features.tables import FeatureTables, parse_time

__all__ = ["SEGMENTS", "Filters", "MeasureData", "prepare_decisions", "read_decisions"]

#: A customer's segment when a decision was made, by their orders before it.
SEGMENTS = ("new (no order before)", "returning (1-2 orders)", "loyal (3+ orders)")


@dataclass(frozen=True)
class Filters:
    """What a report or a dashboard page shows: a period (UTC; None: from the first / to the last event),
    and optionally one flow (policy) and one channel (``email``, ``sms``, ``push``) of the decisions."""

    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None
    policy: str | None = None
    channel: str | None = None

    @classmethod
    def parse(
        cls,
        since: str | None = None,
        until: str | None = None,
        policy: str | None = None,
        channel: str | None = None,
    ) -> Filters:
        """Filters from the command line or a query string; BadInputError naming a bad value."""
        if channel is not None and channel not in CHANNELS:
            raise BadInputError(f"--channel {channel!r}: expected one of {', '.join(CHANNELS)}")
        start = parse_time(since, "--since") if since else None
        end = parse_time(until, "--until") if until else None
        if start is not None and end is not None and end <= start:
            raise BadInputError(f"--until {until} is not after --since {since}: expected a later --until")
        return cls(start, end, policy or None, channel)


@dataclass(frozen=True)
class Period:
    """The period a report covers, resolved against the event log."""

    since: pd.Timestamp
    until: pd.Timestamp

    @property
    def days(self) -> float:
        return float((self.until - self.since).total_seconds()) / 86_400

    def label(self) -> str:
        return f"{self.since:%Y-%m-%d} to {self.until:%Y-%m-%d}"


#: The log's alias on the event store's connection while it is read (see :func:`read_decisions`).
_LOG = "winback_decision_log"
#: Numbers of a decision's context that measurement reads.
_NUMBERS = ("value", "abandon_probability", "churn_probability")


def _segment_sql() -> str:
    return (
        f"CASE WHEN n_before = 0 THEN '{SEGMENTS[0]}' WHEN n_before <= 2 THEN '{SEGMENTS[1]}' "
        f"ELSE '{SEGMENTS[2]}' END"
    )


def read_decisions(con: duckdb.DuckDBPyConnection, path: Path) -> pd.DataFrame:
    """The decision log at ``path`` with the context fields measurement uses, each decision's ``week``
    (its Monday, UTC) and its customer's ``segment`` (:data:`SEGMENTS`, by their orders in the event
    store before the decision), oldest first.

    One query on ``con`` (the event store's connection, in UTC) with the log attached read-only for its
    duration: DuckDB parses the contexts and finds each decision's orders before it (an ASOF join), and
    the rows come back through Arrow (strings need no Python objects), which on a million decisions
    takes a fraction of reading the log and joining the segments in pandas.
    """
    # Each context parsed once, into the fields read (as text where the log may hold any JSON type).
    fields = {"consent": "VARCHAR[]", "consent_known": "VARCHAR"} | dict.fromkeys(_NUMBERS, "VARCHAR")
    known = "coalesce(TRY_CAST(c.consent_known AS BOOLEAN), true)"
    flags = ", ".join(
        f"CASE WHEN c.consent IS NULL OR NOT {known} THEN true "
        f"ELSE list_contains(c.consent, '{channel}') END AS consent_{channel}"
        for channel in CHANNELS
    )
    numbers = ", ".join(f"TRY_CAST(c.{k} AS DOUBLE) AS {k}" for k in _NUMBERS)
    query = f"""
        WITH orders AS (
            SELECT coalesce(user_id, 'anonymous:' || anonymous_id) AS user_id, min(timestamp) AS ordered_at
            FROM event_log WHERE event_type = 'purchase'
            GROUP BY 1, coalesce(order_id, CAST(timestamp AS VARCHAR))
        ),
        numbered AS (  -- orders up to each order (orders at the same moment count together)
            SELECT user_id, ordered_at, count(*) OVER (PARTITION BY user_id ORDER BY ordered_at) AS n
            FROM orders
        ),
        before AS (  -- each decision's orders before it: the ASOF join carries the keys only
            SELECT d.rowid AS row, coalesce(o.n, 0) AS n_before
            FROM {_LOG}.decisions d ASOF LEFT JOIN numbered o
              ON d.user_id = o.user_id AND d.decided_at > o.ordered_at
        ),
        parsed AS (
            SELECT *, rowid AS row, json_transform(context, '{json.dumps(fields)}') AS c
            FROM {_LOG}.decisions
        )
        SELECT decision_id, decided_at, cart_id, user_id, policy, version, action, propensity,
               expected_profit, send_at, holdout, outcome_observed_at, recovered, revenue, discount,
               margin, {flags}, {numbers},
               strftime(date_trunc('week', decided_at), '%Y-%m-%d') AS week,
               {_segment_sql()} AS segment
        FROM parsed JOIN before USING (row)
        ORDER BY decided_at, decision_id
    """
    con.execute(f"ATTACH {sql_string(str(path))} AS {_LOG} (READ_ONLY)")
    try:
        frame = con.sql(query).to_arrow_table().to_pandas()
    finally:
        con.execute(f"DETACH {_LOG}")
    # Arrow gives a nullable boolean as objects; the log's outcome is yes, no or not yet known.
    frame["recovered"] = frame["recovered"].astype("boolean")
    return frame


def prepare_decisions(decisions: pd.DataFrame, catalogue: Catalogue) -> pd.DataFrame:
    """The decisions with a recorded outcome, ready for :func:`winback.measure.experiments.compare` (see
    the module docstring); ``decisions`` as :func:`read_decisions` reads them (``segment`` and ``week``
    columns, if present, are kept)."""
    known = decisions["recovered"].notna() | decisions["outcome_observed_at"].notna()
    frame = decisions.copy() if known.all() else decisions[known].copy()  # a filter copies every row
    frame["recovered"] = frame["recovered"].fillna(False).astype(bool).astype(float)
    for column in ("revenue", "discount"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(0.0).astype(float)
    frame["margin"] = log_rewards(frame, catalogue).to_numpy() if len(frame) else np.zeros(0)
    channel_of = {a: Action.parse(str(a)).channel or "none" for a in frame["action"].unique()}
    frame["channel"] = frame["action"].map(channel_of).astype(str)
    messaged = (frame["channel"] != "none").to_numpy()
    frame["attributed"] = np.where(messaged & (frame["recovered"] > 0), frame["revenue"], 0.0)
    frame["holdout"] = frame["holdout"].astype(bool)
    if "week" not in frame.columns:
        decided = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
        frame["week"] = decided.dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
    frame["all"] = "all decisions"
    frame["customer"] = pd.factorize(frame["user_id"])[0]  # what experiments.compare sums per customer
    if "segment" not in frame.columns:
        frame["segment"] = "all customers"
    return frame.reset_index(drop=True)


class MeasureData:
    """The event store (read-only), the decision log (if there is one), the catalogue, and caches.

    Use as a context manager; one instance serves one report (or one dashboard request).
    """

    def __init__(self, settings: Settings, *, catalogue: Catalogue | None = None) -> None:
        self.settings = settings
        self.catalogue = catalogue or load_catalogue()
        self.store = EventStore(settings, read_only=True)
        self.con = self.store.con
        self.con.execute("SET memory_limit = ?", [settings.feature_memory_limit])
        import ibis

        backend = ibis.duckdb.from_connection(self.con)
        self.source = FeatureSource("duckdb", backend, backend.table("events").select(*EVENT_COLUMNS))
        self.tables = FeatureTables(self.source, settings)
        self.log_path = settings.home / "decisions.duckdb"
        self._cache: dict[tuple[Any, ...], Any] = {}

    def close(self) -> None:
        self.source.release()
        self.store.close()

    def __enter__(self) -> MeasureData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- the period --------------------------------------------------------------------------------

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last event, or None for an empty store."""

        def read() -> tuple[pd.Timestamp, pd.Timestamp] | None:
            # fetchall: a result left unfinished (fetchone) makes DuckDB refuse the next relation query
            rows = self.con.execute("SELECT min(timestamp), max(timestamp) FROM event_log").fetchall()
            row = rows[0] if rows else None
            if row is None or row[0] is None:
                return None
            return pd.Timestamp(row[0]).tz_convert("UTC"), pd.Timestamp(row[1]).tz_convert("UTC")

        return self._cached(("span",), read)

    def period(self, filters: Filters) -> Period | None:
        """The period ``filters`` select, bounded by the data; None when the store is empty."""
        span = self.span()
        if span is None:
            return None
        since = filters.since or span[0].floor("D")
        until = filters.until or span[1] + timedelta(seconds=1)
        return Period(since, until)

    def currency(self) -> str:
        def read() -> str:
            rows = self.con.execute(
                "SELECT currency, count(*) FROM event_log WHERE currency IS NOT NULL "
                "AND event_type = 'purchase' GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
            ).fetchall()
            return str(rows[0][0]) if rows else self.settings.default_currency

        return self._cached(("currency",), read)

    # -- decisions ---------------------------------------------------------------------------------

    def all_decisions(self) -> pd.DataFrame:
        """Every logged decision (an empty frame without a decision log), with its customer's segment
        (:func:`read_decisions`)."""

        def read() -> pd.DataFrame:
            if not self.log_path.exists():
                return pd.DataFrame()
            return read_decisions(self.con, self.log_path)

        return self._cached(("decisions",), read)

    def decisions(self, filters: Filters) -> pd.DataFrame:
        """The period's decisions with outcomes, prepared (:func:`prepare_decisions`), of the filtered
        flow; with a channel filter, the decisions on that channel and the holdout."""

        def make() -> pd.DataFrame:
            frame = self._in_period(filters)
            if frame.empty:
                return frame
            prepared = prepare_decisions(frame, self.catalogue)
            if filters.channel:
                keep = prepared["holdout"] | (prepared["channel"] == filters.channel)
                keep &= prepared[f"consent_{filters.channel}"]
                prepared = prepared[keep].reset_index(drop=True)
            return prepared

        return self._cached(("prepared", filters), make)

    def _in_period(self, filters: Filters) -> pd.DataFrame:
        frame = self.all_decisions()
        period = self.period(filters)
        if frame.empty or period is None:
            return frame
        decided = pd.to_datetime(frame["decided_at"], utc=True)
        keep = (decided >= period.since) & (decided < period.until)
        if filters.policy:
            keep &= frame["policy"] == filters.policy
        return frame if keep.all() else frame[keep]  # a filter copies every column

    def contexts(self, decision_ids: pd.Series) -> pd.Series:
        """The logged context (JSON) of each decision id, aligned with ``decision_ids``."""
        with duckdb.connect(str(self.log_path), read_only=True) as con:
            con.register("wanted", pd.DataFrame({"decision_id": decision_ids.astype(str).to_numpy()}))
            found = con.execute(
                "SELECT d.decision_id, d.context FROM decisions d JOIN wanted USING (decision_id)"
            ).df()
        return decision_ids.astype(str).map(found.set_index("decision_id")["context"])

    def waiting(self, filters: Filters) -> int:
        """Decisions of the period whose outcome is not recorded yet."""
        frame = self._in_period(filters)
        if frame.empty:
            return 0
        return int((frame["recovered"].isna() & frame["outcome_observed_at"].isna()).sum())

    def policies(self) -> list[str]:
        frame = self.all_decisions()
        return sorted(frame["policy"].astype(str).unique()) if not frame.empty else []

    # -- events ------------------------------------------------------------------------------------

    def carts(self, filters: Filters) -> pd.DataFrame:
        """The carts started in the period (:meth:`FeatureTables.carts`), with ``started_at``."""

        def make() -> pd.DataFrame:
            period = self.period(filters)
            all_carts = self._cached(("carts",), self.tables.carts)
            if period is None or all_carts.empty:
                return all_carts
            started = pd.to_datetime(all_carts["started_ts"], unit="s", utc=True)
            keep = (started >= period.since) & (started < period.until)
            return all_carts[keep].assign(started_at=started[keep]).reset_index(drop=True)

        return self._cached(("carts", replace(filters, policy=None, channel=None)), make)

"""The abandonment detector: keeps every cart's state from the stored events, notices each cart crossing
its idle threshold, decides then with the configured policy, logs the decision and schedules its
message; on a schedule it records the decisions' outcomes.

One :class:`Detector` (``winback detect``; several may run against PostgreSQL) runs three threads:

1. **Fold** (catch-up thread). Read the events stored since its cursor from the feed
   (winback.serve.feed, commit order) and fold them into the live state
   (:func:`winback.serve.carts.apply_events`), cursor and state in one transaction. The cursor row is
   locked while a batch is folded in, so several detectors never apply an event twice.
2. **Prepare** (preparing thread). A cart's due time (last event + idle threshold) is known in
   advance, so up to ``prepare_seconds`` (2 s) before it the decision is made, as of the due time, with
   :func:`winback.decide.plan.plan_decisions` exactly as ``winback plan`` makes it: the permanent
   holdout (:mod:`winback.decide.holdout`), the policy (a static flow of the catalogue, ``random``
   with exact propensities, or the ``uplift`` policy of ``winback train policy``), and the guardrails
   -- consent and addresses from the customers' profiles less their unsubscribes, frequency caps
   against the messages already scheduled or sent, quiet hours in the customer's time zone, the largest
   coupon, a monthly discount budget paced over the month -- and its outbox row with its coupon code
   (:func:`winback.act.outbox.message_rows`). A due cart with no prepared decision (just started, or
   changed at the last moment) is decided as of now and handed over at once.
3. **Store** (storing thread, which does nothing else): sleep until the next prepared decision falls
   due, then store it: the cart still open, due, and unchanged since the decision was prepared (its
   ``version``; ``FOR UPDATE SKIP LOCKED``, so a cart another transaction holds is skipped), no
   behaviour event of its session stored after its last activity (one not folded in yet: the customer
   is back; the cart is then postponed by a second and prepared again once its events are in), the
   decision (unique per cart: no cart is ever decided twice), and its message and coupon in the outbox.
   On PostgreSQL all of it is one statement (:data:`_STORE`) on a connection of the store's own, so a
   decision costs one round trip; on SQLite (in-process, no round trips) a look and one transaction.
   Then, for big carts, a staff alert (winback.act.alerts) from a background thread.

Carts due longer ago than ``max_late`` are ``expired``: a message about them would be late; ``winback
plan`` still sees them. The catch-up thread also runs the periodic jobs: outcomes
(winback.serve.outcomes), expiry, the outbox gauges; it and the preparing thread start no work in the
``_FOLD_GUARD`` before a prepared decision falls due. ``tick()`` runs one round of everything in the
calling thread.

Why a process of its own rather than a loop in ``winback worker``: the worker spends its time in SMTP
and webhook round trips (hundreds of milliseconds when a provider is slow) and scales with the sending
volume; the detector has a latency target measured in milliseconds and scales with the event rate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from winback.act.outbox import (
    Contact,
    as_utc,
    coupon_of,
    decision_key,
    idempotency_key,
    insert_messages,
    message_rows,
    unsubscribes,
    utcnow,
    write_transaction,
)
from winback.config import Settings
from winback.decide.actions import Action, Channel
from winback.decide.catalogue import Catalogue, load_catalogue
from winback.decide.holdout import DEFAULT_SALT, DEFAULT_SHARE, in_holdout
from winback.decide.log import decision_id
from winback.decide.plan import CustomerConsent, load_chooser, plan_decisions
from winback.decide.policy import Policy, UpliftPolicy
from winback.errors import BadInputError
from winback.events.schema import EVENT_FIELDS, EVENT_SCHEMA
from winback.serve.carts import BEHAVIOUR, COLUMNS, Applied, IdleThresholds, apply_events
from winback.serve.db import carts, decisions, events, outbox
from winback.serve.feed import Cursor, ensure_cursor, read_cursor, read_events, save_cursor
from winback.serve.metrics import DetectorMetrics
from winback.serve.profiles import read_profiles

__all__ = ["Decided", "Detector", "DetectorStats"]

log = logging.getLogger("winback.detect")
CURSOR = "detector"
_LATENCIES = 100_000  # latencies kept for the stats' percentiles
#: A due cart found active again is looked at after this (by then its events are folded in).
_RECHECK = timedelta(seconds=1)
#: No catch-up or preparing (holding the database's locks, and this process's CPU and interpreter) started
#: in the last ``_FOLD_GUARD`` seconds before a prepared decision falls due.
_FOLD_GUARD = 0.05
#: Columns of the plan's table and of its decision-log rows that a stored decision takes.
_PLANNED = ("cart_id", "user_id", "action", "send_at", "coupon", "recommended")
_LOGGED = ("policy", "version", "propensity", "expected_profit", "holdout", "reasons", "context")
#: How long a cart just decided or postponed is remembered, so that a preparation which read it before
#: is dropped (far longer than a preparation takes).
_SETTLED_SECONDS = 30.0
#: The columns of a stored decision (less ``updated_at``) and of a scheduled message (less its times).
_DECISION_COLUMNS = (
    "decision_id", "cart_id", "user_id", "decided_at", "abandoned_at", "due_at", "policy", "version",
    "action", "channel", "send_at", "propensity", "expected_profit", "holdout", "discount_reserved",
    "reasons", "context", "message_key",
)  # fmt: skip
_MESSAGE_COLUMNS = (
    "idempotency_key", "decision_id", "user_id", "cart_id", "channel", "recipient", "template", "payload",
    "utc_offset_minutes", "send_at", "status", "attempts", "next_attempt_at",
)  # fmt: skip

#: The store on PostgreSQL in one statement (so one round trip): lock the carts still open, due and
#: unchanged (skipping those another transaction holds: a fold, another detector); of those, postpone
#: the ones with a behaviour event stored after their last activity (not folded in yet: the customer is
#: back), mark the others decided; insert their decisions (unique per cart), their messages (unique per
#: idempotency key) and their coupons. What each step did comes back as (what, cart_id) rows.
_STORE = f"""
WITH wanted AS (
    SELECT * FROM jsonb_to_recordset(%(carts)s::jsonb) AS w(cart_id text, version integer)
), fresh AS (
    SELECT c.cart_id, c.user_key, c.last_event_at FROM carts c JOIN wanted w USING (cart_id)
    WHERE c.version = w.version AND c.status = 'open' AND c.due_at <= %(now)s
    FOR UPDATE OF c SKIP LOCKED
), active AS (
    SELECT f.cart_id FROM fresh f
    WHERE NOT starts_with(f.user_key, 'anonymous:') AND EXISTS (
        SELECT FROM events e
        WHERE e.user_id = f.user_key AND e.timestamp > f.last_event_at AND e.timestamp <= %(now)s
        AND e.event_type IN ({", ".join(f"'{t}'" for t in sorted(BEHAVIOUR))})
        AND CASE WHEN starts_with(f.cart_id, f.user_key || '#')  -- a session by the gap: no session id
            THEN e.session_id IS NULL AND e.timestamp - f.last_event_at <= %(gap)s
            ELSE e.session_id = f.cart_id END)
), postponed AS (
    UPDATE carts c SET due_at = %(recheck)s, version = c.version + 1, updated_at = %(now)s
    FROM active a WHERE c.cart_id = a.cart_id RETURNING c.cart_id
), held AS (
    UPDATE carts c SET status = 'decided', version = c.version + 1, updated_at = %(now)s
    FROM fresh f WHERE c.cart_id = f.cart_id AND f.cart_id NOT IN (SELECT cart_id FROM active)
    RETURNING c.cart_id
), stored AS (
    INSERT INTO decisions ({", ".join(_DECISION_COLUMNS)}, updated_at)
    SELECT {", ".join(f"d.{c}" for c in _DECISION_COLUMNS)}, %(wall)s
    FROM jsonb_populate_recordset(NULL::decisions, %(decisions)s::jsonb) d JOIN held h USING (cart_id)
    ON CONFLICT (cart_id) DO NOTHING RETURNING cart_id
), sent AS (
    INSERT INTO outbox ({", ".join(_MESSAGE_COLUMNS)}, created_at, updated_at)
    SELECT {", ".join(f"m.{c}" for c in _MESSAGE_COLUMNS)}, %(now)s, %(now)s
    FROM jsonb_populate_recordset(NULL::outbox, %(messages)s::jsonb) m JOIN stored s USING (cart_id)
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key
), issued AS (
    INSERT INTO coupons (code, user_id, message_id, percent, status, created_at, expires_at)
    SELECT k.code, k.user_id, s.id, k.percent, k.status, %(now)s, k.expires_at
    FROM jsonb_to_recordset(%(coupons)s::jsonb)
        AS k(idempotency_key text, code text, user_id text, percent float8, status text,
             expires_at timestamptz)
    JOIN sent s USING (idempotency_key)
    ON CONFLICT (message_id) DO NOTHING
)
SELECT 'held', cart_id FROM held UNION ALL SELECT 'postponed', cart_id FROM postponed
UNION ALL SELECT 'stored', cart_id FROM stored UNION ALL SELECT 'sent', NULL FROM sent
"""


@dataclass
class _Outcome:
    """What one store did: carts marked decided (held), postponed, decisions stored, messages."""

    held: set[str] = field(default_factory=set)
    postponed: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)
    messages: int = 0


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a JSON array for PostgreSQL's ``jsonb_to_recordset`` (timestamps in ISO 8601)."""
    return json.dumps(rows, default=_plain, allow_nan=False)


@dataclass(frozen=True)
class Decided:
    """One cart decided."""

    cart_id: str
    user_id: str
    action: str
    holdout: bool
    due_at: datetime
    latency: float  # seconds from due_at to the decision stored (wall clock)


@dataclass(frozen=True)
class Prepared:
    """A decision made ahead of its cart's due time, stored then if the cart has not changed."""

    cart: Mapping[str, Any]  # the cart as it was read
    due_at: datetime
    row: Mapping[str, Any]  # the decision as it is stored (less its updated_at, the wall time then)
    message: Mapping[str, Any] | None  # its outbox row (winback.act.outbox.message_rows), if it sends one

    @property
    def cart_id(self) -> str:
        return str(self.cart["cart_id"])


@dataclass
class DetectorStats:
    """What a detector did."""

    events: int = 0
    carts_opened: int = 0
    abandoned: int = 0
    expired: int = 0
    decided: int = 0
    messages: int = 0
    holdout: int = 0
    cancelled: int = 0
    outcomes: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES))

    def as_dict(self) -> dict[str, Any]:
        found = np.asarray(self.latencies, dtype=float) * 1000
        quantiles = (
            {f"latency_ms_p{q}": round(float(np.percentile(found, q)), 2) for q in (50, 90, 99)}
            | {"latency_ms_max": round(float(found.max()), 2)}
            if found.size
            else {}
        )
        plain = {k: v for k, v in self.__dict__.items() if k not in ("actions", "latencies")}
        return plain | {"actions": dict(self.actions)} | quantiles


def _epoch(value: datetime) -> float:
    return as_utc(value).timestamp()


class Detector:
    """The detector loop over the service's database (see the module docstring).

    Parameters
    ----------
    engine
        The service's database (migrated).
    settings
        The home (for a trained ``uplift`` policy and the recommender), the session gap, the idle
        threshold (``abandon_idle_minutes``), the attribution window, coupons, alerts.
    policy
        A policy name (:func:`winback.decide.plan.policy_names`) or a policy.
    thresholds
        Idle thresholds per kind of cart; default: ``abandon_idle_minutes`` for every cart.
    monthly_budget
        Discount the decisions may reserve per calendar month (coupon face value), paced over the month;
        None: no limit.
    max_late
        Carts that went due longer ago than this are expired, not decided.
    prepare_seconds
        How long before its due time a cart's decision is prepared.
    recommend
        Whether ``+recs`` messages carry products from the home's trained recommender (if there is one).
    outcomes_every
        Seconds between runs of :func:`winback.serve.outcomes.record_outcomes` (0: never).
    window_days
        The outcomes' window: a decision's outcome is recorded once it has closed, from the first order
        within it; default: the settings' ``recovery_window_days``.
    clock
        The time (tests move it).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        policy: str | Policy = "static-10h",
        catalogue: Catalogue | None = None,
        holdout_share: float = DEFAULT_SHARE,
        holdout_salt: str = DEFAULT_SALT,
        thresholds: IdleThresholds | None = None,
        monthly_budget: float | None = None,
        max_late: timedelta = timedelta(hours=24),
        batch_events: int = 5_000,
        batch_carts: int = 200,
        prepare_seconds: float = 2.0,
        detector_id: str | None = None,
        recommend: bool = True,
        alerts: bool = True,
        outcomes_every: float = 300.0,
        window_days: float | None = None,
        metrics: DetectorMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        in_holdout([], holdout_share)  # a bad share is refused here, not at the first cart
        if monthly_budget is not None and not monthly_budget >= 0:
            raise BadInputError(f"--monthly-budget {monthly_budget}: expected an amount of 0 or more")
        if window_days is not None and not window_days > 0:
            raise BadInputError(f"--window-days {window_days}: expected a number of days > 0")
        if batch_events < 1 or batch_carts < 1:
            raise BadInputError(f"batch sizes {batch_events}, {batch_carts}: expected 1 or more")
        self.engine = engine
        self.settings = settings
        self.catalogue = catalogue or load_catalogue()
        self.clock = clock
        seed = int(clock().timestamp()) % 2**31
        self.policy = (
            load_chooser(settings, policy, self.catalogue, seed=seed) if isinstance(policy, str) else policy
        )
        self.holdout_share = holdout_share
        self.holdout_salt = holdout_salt
        self.thresholds = thresholds or IdleThresholds(float(settings.abandon_idle_minutes))
        self.monthly_budget = monthly_budget
        self.max_late = max_late
        self.batch_events = batch_events
        self.batch_carts = batch_carts
        self.lead = timedelta(seconds=prepare_seconds)
        # Shared by the preparing and the storing thread, under the lock (a condition: a decision
        # prepared for a cart due already wakes the storing thread).
        self._lock = threading.Condition()
        self._prepared: dict[str, Prepared] = {}
        self._in_flight: dict[str, Prepared] = {}  # decisions being stored, by cart
        self._settled: dict[str, tuple[int, float]] = {}  # carts just decided or postponed (see _settle)
        self._next_store: float | None = None  # when the next prepared decision is due (wall clock)
        self._store_connection: Connection | None = None
        self.detector_id = detector_id or f"{socket.gethostname()}:{os.getpid()}"
        self.session_gap = timedelta(minutes=settings.session_gap_minutes)
        self.outcomes_every = outcomes_every
        self.window_days = float(settings.recovery_window_days if window_days is None else window_days)
        self.metrics = metrics or DetectorMetrics()
        self.stats = DetectorStats()
        self.recommender = self._recommender() if recommend else None
        self._alerts = (
            ThreadPoolExecutor(1, thread_name_prefix="winback-alerts")
            if alerts and settings.alert_webhook_url
            else None
        )
        with write_transaction(engine) as connection:
            ensure_cursor(connection, CURSOR)
        self._last_outcomes = time.monotonic()
        self._last_gauges = 0.0
        self._last_summary = time.monotonic()

    def _recommender(self) -> Any:
        from winback.recommend.tasks import load_recommender

        try:
            found, _ = load_recommender(self.settings)
        except BadInputError as error:
            log.info("no recommended products in messages: %s", error)
            return None
        return found

    # -- 1. catch up ---------------------------------------------------------------------------------

    def _apply_batch(self) -> Applied | None:
        """Fold the next batch of the feed in (None when another detector is folding)."""
        if self.engine.dialect.name == "sqlite":  # a cheap look first, before taking the write lock
            with self.engine.connect() as connection:
                found, _ = read_events(
                    connection, read_cursor(connection, CURSOR) or Cursor(), 1, ("event_id",)
                )
            if not found:
                return Applied()
        with write_transaction(self.engine) as connection:
            if self.engine.dialect.name == "postgresql":
                # The live state is derived from the stored events and moves with its cursor in this
                # transaction: lost in a database crash, both are folded again. No need to wait for the disk.
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            cursor = read_cursor(connection, CURSOR, lock=True)
            if cursor is None:
                return None
            rows, after = read_events(connection, cursor, self.batch_events, COLUMNS)
            done = apply_events(
                connection, rows, thresholds=self.thresholds, session_gap=self.session_gap, now=self.clock()
            )
            if rows:
                save_cursor(connection, CURSOR, after)
        return done

    def catch_up(self) -> int:
        """Fold in every event stored so far (batch by batch); how many."""
        total = 0
        while True:
            done = self._apply_batch()
            if done is None or not done.events:
                return total
            total += done.events
            self.stats.events += done.events
            self.stats.carts_opened += done.carts_opened
            self.stats.cancelled += done.messages_cancelled
            self.metrics.events.inc(done.events)
            self.metrics.cancelled.inc(done.messages_cancelled)
            if done.last_event_at is not None:
                self.metrics.feed_lag.set(max((utcnow() - done.last_event_at).total_seconds(), 0.0))
            if done.events < self.batch_events:
                return total

    # -- 2. prepare ----------------------------------------------------------------------------------

    def _open(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Open carts due in ``[since, until]``, oldest first, at most ``batch_carts``: a read."""
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(carts)
                .where(carts.c.status == "open", carts.c.due_at >= since, carts.c.due_at <= until)
                .order_by(carts.c.due_at)
                .limit(self.batch_carts)
            )
            return [dict(r) for r in found.mappings()]

    def due(self, now: datetime) -> list[dict[str, Any]]:
        """Open carts due by ``now`` (not those too late to decide)."""
        return self._open(now - self.max_late, now)

    def expire(self, now: datetime) -> int:
        """Mark the open carts that went due longer than ``max_late`` ago ``expired``; how many."""
        with write_transaction(self.engine) as connection:
            expired = int(
                connection.execute(
                    carts.update()
                    .where(carts.c.status == "open", carts.c.due_at < now - self.max_late)
                    .values(status="expired", version=carts.c.version + 1, updated_at=now)
                ).rowcount
            )
        if expired:
            self.stats.expired += expired
            self.metrics.expired.inc(expired)
            log.info(
                "expired carts=%d (due more than %s ago: left to `winback plan`)", expired, self.max_late
            )
        return expired

    def _facts(
        self, connection: Connection, users: Sequence[str], now: datetime
    ) -> tuple[dict[str, CustomerConsent], dict[str, Contact], dict[str, dict[Channel, float]]]:
        """Consent (profiles less unsubscribes since), contacts, and the last message per channel
        (scheduled or sent: what the frequency caps count)."""
        profiles = read_profiles(connection, users)
        left = unsubscribes(connection, list(profiles))
        consent: dict[str, CustomerConsent] = {}
        contacts: dict[str, Contact] = {}
        for user, profile in profiles.items():
            offset = profile.offset_at(now)
            consent[user] = CustomerConsent(profile.channels(left.get(user)), offset)
            contacts[user] = Contact(profile.email, profile.phone, profile.push_token, offset, profile.name)
        last: dict[str, dict[Channel, float]] = {}
        for user, channel, at in connection.execute(
            sa.select(outbox.c.user_id, outbox.c.channel, sa.func.max(outbox.c.send_at))
            .where(outbox.c.user_id.in_(list(users)), outbox.c.status.in_(("scheduled", "claimed", "sent")))
            .group_by(outbox.c.user_id, outbox.c.channel)
        ):
            last.setdefault(user, {})[channel] = _epoch(at)
        return consent, contacts, last

    def _budget(self, connection: Connection, now: datetime) -> float | None:
        """What this round may reserve of the monthly budget: at most the month's pace so far (plus the
        pacer's slack), and never past the budget."""
        if self.monthly_budget is None:
            return None
        from winback.decide.guardrails import MonthlyPacer

        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        spent = float(
            connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(decisions.c.discount_reserved), 0.0)).where(
                    decisions.c.decided_at >= start
                )
            ).scalar_one()
        )
        pacer = MonthlyPacer(self.monthly_budget)
        allowed = self.monthly_budget * min(pacer.elapsed_share(now.timestamp()) + pacer.slack, 1.0)
        return max(min(allowed, self.monthly_budget) - spent, 0.0)

    def _features(
        self, connection: Connection, subjects: pd.DataFrame, consent: Mapping[str, CustomerConsent]
    ) -> tuple[pd.DataFrame, list[str]]:
        """The uplift policy's features of the carts, from the customers' events in the service."""
        from winback.decide.plan import with_policy_features

        users = sorted(set(subjects["user_id"]))
        rows = connection.execute(
            sa.select(*[events.c[c] for c in EVENT_FIELDS]).where(events.c.user_id.in_(users))
        ).all()
        columns = {name: [getattr(r, name) for r in rows] for name in EVENT_FIELDS}
        columns["timestamp"] = [as_utc(t) for t in columns["timestamp"]]
        return with_policy_features(subjects, consent, pa.table(columns, schema=EVENT_SCHEMA))

    def plan(self, found: Sequence[Mapping[str, Any]], now: datetime) -> list[Prepared]:
        """Decide for the carts ``found`` as of ``now`` (facts read now); nothing is written."""
        if not found:
            return []
        subjects = pd.DataFrame(
            {
                "cart_id": [c["cart_id"] for c in found],
                "user_id": [c["user_key"] for c in found],
                "abandoned_at": [pd.Timestamp(as_utc(c["last_event_at"])) for c in found],
                "value": [float(c["value"]) for c in found],
                "n_items": [float(c["n_items"]) for c in found],
                "idle_minutes": [float(c["idle_minutes"]) for c in found],
                "checkout_started": [float(bool(c["checkout_started"])) for c in found],
            }
        )
        items = {c["cart_id"]: json.loads(c["items"]) for c in found}
        pending = self._pending(set(items))  # before reading the database: nothing falls in between
        with self.engine.connect() as connection:
            consent, contacts, last = self._facts(connection, list(subjects["user_id"]), now)
            budget = self._budget(connection, now)
            features: list[str] = []
            if isinstance(self.policy, UpliftPolicy):
                subjects, features = self._features(connection, subjects, consent)
        for p in pending:  # what is prepared counts as if stored: caps and budget see it
            if p.message is not None:
                user, channel = str(p.row["user_id"]), p.row["channel"]
                at = _epoch(p.row["send_at"])
                last.setdefault(user, {})[channel] = max(last.get(user, {}).get(channel, at), at)
            if budget is not None:
                budget = max(budget - float(p.row["discount_reserved"]), 0.0)
        plan = plan_decisions(
            subjects, pd.Timestamp(now), self.policy, self.catalogue, budget=budget, consent=consent,
            holdout_share=self.holdout_share, holdout_salt=self.holdout_salt, last_messages=last,
            recommend=self._recommend(items), context_columns=("n_items", "idle_minutes", "checkout_started"),
            feature_columns=features,
        )  # fmt: skip
        by_id = {c["cart_id"]: c for c in found}
        rows: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        planned = zip(*(plan.table[c].tolist() for c in _PLANNED), strict=True)
        chosen = zip(*(plan.decisions[c].tolist() for c in _LOGGED), strict=True)
        for (cart_id, user, action, send_at, coupon, recommended), logged in zip(
            planned, chosen, strict=True
        ):
            policy, version, propensity, profit, holdout, reasons, context = logged
            cart = by_id[cart_id]
            send = None if pd.isna(send_at) else pd.Timestamp(send_at).floor("us").to_pydatetime()
            parsed = Action.parse(action)
            key = (
                decision_key(user, cart_id, action, send) if parsed.is_message and send is not None else None
            )
            row = {
                "decision_id": decision_id(cart_id, pd.Timestamp(now), policy, version),
                "cart_id": cart_id,
                "user_id": user,
                "decided_at": now,
                "abandoned_at": as_utc(cart["last_event_at"]),
                "due_at": as_utc(cart["due_at"]),
                "policy": policy,
                "version": version,
                "action": action,
                "channel": parsed.channel,
                "send_at": send,
                "propensity": None if pd.isna(propensity) else float(propensity),
                "expected_profit": None if pd.isna(profit) else float(profit),
                "holdout": bool(holdout),
                "discount_reserved": round(parsed.coupon * float(cart["value"]), 2),
                "reasons": json.dumps(list(reasons)),
                "context": json.dumps(context, default=str, sort_keys=True),
                "message_key": idempotency_key(key) if key is not None else None,
            }
            if key is not None:
                messages.append({"cart_id": cart_id, "user_id": user, "action": action,
                                 "channel": parsed.channel, "send_at": send, "coupon": coupon,
                                 "recommended": recommended})  # fmt: skip
            rows.append(row)
        # The outbox rows too (coupon codes drawn now): storing is then one statement of ready values.
        outbox_rows, _ = message_rows(
            messages, contacts, carts=items, coupon_valid_days=self.settings.coupon_valid_days,
            currency=self.settings.default_currency,
        )  # fmt: skip
        by_cart = {m["cart_id"]: m for m in outbox_rows}
        return [
            Prepared(by_id[r["cart_id"]], r["due_at"], r, by_cart.get(r["cart_id"])) for r in rows
        ]  # fmt: skip

    def _pending(self, replanned: set[str]) -> list[Prepared]:
        """The decisions prepared or being stored, less those of the carts planned again now: two carts
        of one customer due within ``prepare_seconds`` must not both get a message the frequency cap
        allows only once, nor together reserve more of the budget than is left."""
        with self._lock:
            return [
                p for p in (*self._prepared.values(), *self._in_flight.values()) if p.cart_id not in replanned
            ]

    def prepare(self, now: datetime, *, due_too: bool = False) -> int:
        """Prepare the decisions of the carts due within ``prepare_seconds`` (with ``due_too``, also of
        the carts due already that have none: decided as of ``now``); how many were new."""
        since = now - self.max_late if due_too else now
        found = [c for c in self._open(since, now + self.lead) if self._unprepared(c)]
        if not found:
            return 0
        late = [c for c in found if as_utc(c["due_at"]) <= now]
        soon = [c for c in found if as_utc(c["due_at"]) > now]
        made = self.plan(late, now)  # due already: handed to the storing thread at once
        if soon:  # decided as of the latest due time among them
            made += self.plan(soon, max(as_utc(c["due_at"]) for c in soon))
        with self._lock:
            for prepared in made:
                if self._unprepared(prepared.cart):  # not stored meanwhile by the other thread
                    self._prepared[prepared.cart_id] = prepared
            self._lock.notify_all()
        return len(found)

    def _unprepared(self, cart: Mapping[str, Any]) -> bool:
        """Whether a cart (as read) wants a decision prepared: none prepared for this version of it, it is
        not being stored, and it was not just decided or postponed at this version."""
        cart_id, version = cart["cart_id"], int(cart["version"])
        with self._lock:
            prepared = self._prepared.get(cart_id)
            if prepared is not None and int(prepared.cart["version"]) == version:
                return False
            settled = self._settled.get(cart_id)
            return cart_id not in self._in_flight and (settled is None or settled[0] != version)

    def _recommend(self, items: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
        recommender = self.recommender
        if recommender is None:
            return None

        def recommend(cart_id: str | None, user_id: str) -> tuple[list[str], str]:
            products = [str(i["product_id"]) for i in items.get(cart_id or "", ())]
            found = recommender.for_cart(products, 3, user_key=user_id)
            return [c.product_id for c in found], found.reason

        return recommend

    def _active(
        self, connection: Connection, claimed: Sequence[Mapping[str, Any]], now: datetime
    ) -> set[str]:
        """The claimed carts with events stored after their last activity that are not folded in yet (the
        catch-up runs after deciding, to keep it off the path from threshold to decision): one query on
        the customers' recent events."""
        known = [c for c in claimed if not str(c["user_key"]).startswith("anonymous:")]
        if not known:
            return set()
        since = min(as_utc(c["last_event_at"]) for c in known)
        later: dict[tuple[str, str | None], list[datetime]] = {}
        for user, session, at in connection.execute(
            sa.select(events.c.user_id, events.c.session_id, events.c.timestamp).where(
                events.c.user_id.in_(sorted({str(c["user_key"]) for c in known})),
                events.c.timestamp > since,
                events.c.timestamp <= now,
                events.c.event_type.in_(sorted(BEHAVIOUR)),
            )
        ):
            later.setdefault((user, session), []).append(as_utc(at))
        active = set()
        for cart in known:
            last, user = as_utc(cart["last_event_at"]), str(cart["user_key"])
            numbered = str(cart["cart_id"]).startswith(f"{user}#")  # a session by the gap, not the source's
            times = later.get((user, None) if numbered else (user, str(cart["cart_id"])), [])
            if any(last < t and (not numbered or t - last <= self.session_gap) for t in times):
                active.add(str(cart["cart_id"]))
        return active

    def _postpone(self, cart_ids: set[str], now: datetime) -> set[str]:
        """Carts found active again: looked at once their events are folded in; those postponed."""
        with write_transaction(self.engine) as connection:
            return set(
                connection.execute(
                    carts.update()
                    .where(
                        carts.c.cart_id.in_(sorted(cart_ids)), carts.c.status == "open", carts.c.due_at <= now
                    )
                    .values(due_at=now + _RECHECK, version=carts.c.version + 1, updated_at=now)
                    .returning(carts.c.cart_id)
                ).scalars()
            )

    # -- 3. store ------------------------------------------------------------------------------------

    def store(self, ready: Sequence[Prepared], now: datetime) -> list[Decided]:
        """Store the decisions ``ready`` (their carts due by ``now``) whose carts are still open, due,
        unchanged and idle (no event of theirs waiting to be folded in: those are postponed), with their
        messages; the ones stored."""
        if not ready:
            return []
        if self.engine.dialect.name == "postgresql":
            outcome = self._store_postgresql(ready, now)
        else:
            outcome = self._store_sqlite(ready, now)
        finished = time.time()
        self._settle(ready, outcome)
        held, stored = outcome.held, outcome.stored
        self.stats.abandoned += len(held)
        self.metrics.abandoned.inc(len(held))
        out = []
        for p in ready:
            if p.cart_id not in stored:
                continue
            row = p.row
            latency = finished - p.due_at.timestamp()
            out.append(
                Decided(
                    p.cart_id,
                    str(row["user_id"]),
                    str(row["action"]),
                    bool(row["holdout"]),
                    p.due_at,
                    latency,
                )
            )
            self.stats.latencies.append(latency)
            self.stats.actions[str(row["action"])] += 1
            self.stats.holdout += int(bool(row["holdout"]))
            self.metrics.latency.observe(max(latency, 0.0))
            self.metrics.decisions.labels(str(row["action"]), str(bool(row["holdout"])).lower()).inc()
        self.stats.decided += len(out)
        self.stats.messages += outcome.messages
        if self._alerts is not None and out:
            self._alert([p for p in ready if p.cart_id in stored])
        return out

    def _store_postgresql(self, ready: Sequence[Prepared], now: datetime) -> _Outcome:
        """The store on PostgreSQL: one statement (:data:`_STORE`), on a connection of its own that
        commits without waiting for the disk -- one round trip from the due time to the decision stored.

        Visible to every session at once, on disk within wal_writer_delay (200 ms). Lost only if
        PostgreSQL itself crashes before that, and then wholly: the cart is open again and decided again.
        No message of it can have gone out: the worker claims a message in a synchronous commit, which
        flushes the log up to it first. (SQLite runs synchronous=NORMAL, the same bargain.)"""
        messages = [p.message for p in ready if p.message is not None]
        coupons = [
            dict(c, idempotency_key=m["idempotency_key"]) for m in messages if (c := coupon_of(m)) is not None
        ]
        wall = utcnow()  # the rows' updated_at: what `winback sync` reads decisions by
        parameters = {
            "carts": _json([{"cart_id": p.cart_id, "version": p.cart["version"]} for p in ready]),
            "decisions": _json([p.row for p in ready]),
            "messages": _json(messages),
            "coupons": _json(coupons),
            "now": now,
            "wall": wall,
            "recheck": now + _RECHECK,
            "gap": self.session_gap,
        }
        try:
            found = self._connection().exec_driver_sql(_STORE, parameters).all()
        except sa.exc.DBAPIError:
            self._disconnect()
            raise
        outcome = _Outcome()
        for what, cart_id in found:
            if what == "sent":
                outcome.messages += 1
            else:
                getattr(outcome, what).add(cart_id)
        return outcome

    def _connection(self) -> Connection:
        """The store's own connection (PostgreSQL): autocommit, commits not waiting for the disk (see
        :meth:`_store_postgresql`), held open, so no round trip to check it out."""
        if self._store_connection is None or self._store_connection.invalidated:
            self._disconnect()
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("SET synchronous_commit = off")
            self._store_connection = connection
        return self._store_connection

    def _disconnect(self) -> None:
        if self._store_connection is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):  # already broken
                self._store_connection.close()
            self._store_connection = None

    def _store_sqlite(self, ready: Sequence[Prepared], now: datetime) -> _Outcome:
        """The store on SQLite: a look for events not folded in yet, then one transaction (in-process:
        statements cost no round trips)."""
        outcome = _Outcome()
        with self.engine.connect() as connection:
            active = self._active(connection, [p.cart for p in ready], now)
        if active:
            outcome.postponed = self._postpone(active, now)
            ready = [p for p in ready if p.cart_id not in active]
            if not ready:
                return outcome
        version = {p.cart_id: p.cart["version"] for p in ready}
        with write_transaction(self.engine) as connection:
            unchanged = (  # open, due and unchanged still
                sa.select(carts.c.cart_id).where(
                    sa.tuple_(carts.c.cart_id, carts.c.version).in_(sorted(version.items())),
                    carts.c.status == "open",
                    carts.c.due_at <= now,
                )
            )
            outcome.held = set(
                connection.execute(
                    carts.update()
                    .where(carts.c.cart_id.in_(unchanged.scalar_subquery()))
                    .values(status="decided", version=carts.c.version + 1, updated_at=now)
                    .returning(carts.c.cart_id)
                ).scalars()
            )
            mine = [dict(p.row, updated_at=utcnow()) for p in ready if p.cart_id in outcome.held]
            if mine:
                outcome.stored = set(
                    connection.execute(
                        sqlite.insert(decisions)
                        .on_conflict_do_nothing(index_elements=["cart_id"])
                        .returning(decisions.c.cart_id),
                        mine,
                    ).scalars()
                )
            messages = [p.message for p in ready if p.cart_id in outcome.stored and p.message is not None]
            outcome.messages = insert_messages(connection, messages, now).scheduled
        return outcome

    def _settle(self, tried: Sequence[Prepared], outcome: _Outcome) -> None:
        """Remember the carts just decided or postponed at the version they were read: a preparation
        that read them before the store (running meanwhile in the other thread) is then dropped."""
        moment = time.monotonic()
        with self._lock:
            for p in tried:
                if p.cart_id in outcome.held or p.cart_id in outcome.postponed:
                    self._settled.pop(p.cart_id, None)
                    self._settled[p.cart_id] = (int(p.cart["version"]), moment)
            while self._settled:  # oldest first
                oldest = next(iter(self._settled))
                if moment - self._settled[oldest][1] < _SETTLED_SECONDS:
                    break
                del self._settled[oldest]

    def _alert(self, decided: Sequence[Prepared]) -> None:
        """Staff alerts for the big carts just decided (never the holdout's), posted in the background."""
        from winback.act.alerts import find_alerts, send_alerts

        frame = pd.DataFrame(
            [
                {
                    "cart_id": p.cart_id,
                    "user_id": p.cart["user_key"],
                    "cart_value": float(p.cart["value"]),
                    "reasons": f"idle {float(p.cart['idle_minutes']):g} min; {int(p.cart['n_items'])} items"
                    + ("; checkout started" if p.cart["checkout_started"] else ""),
                }
                for p in decided
                if not p.row["holdout"] and not str(p.cart["user_key"]).startswith("anonymous:")
            ]
        )
        if frame.empty:
            return
        alerts = find_alerts(
            frame, pd.DataFrame(), cart_value=self.settings.alert_cart_value,
            customer_value=self.settings.alert_customer_value,
            churn_probability=self.settings.alert_churn_probability,
        )  # fmt: skip
        if not alerts or self._alerts is None:
            return
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        url, timeout = str(self.settings.alert_webhook_url), self.settings.webhook_timeout_seconds

        def post() -> None:
            report = send_alerts(alerts, url, secret, timeout)
            if report.failed:
                log.warning(
                    "staff alerts: %d sent, %d failed (%s)", report.sent, report.failed, report.first_error
                )

        self._alerts.submit(post)

    def store_prepared(self) -> list[Decided]:
        """Store the prepared decisions whose carts are due now."""
        now = self.clock()
        with self._lock:
            ready = [p for p in self._prepared.values() if p.due_at <= now]
            for p in ready:
                del self._prepared[p.cart_id]
                self._in_flight[p.cart_id] = p
        try:
            return self.store(ready, now)
        finally:
            with self._lock:
                for p in ready:
                    self._in_flight.pop(p.cart_id, None)

    def decide_due(self) -> list[Decided]:
        """Decide on the spot the carts due now that have no prepared decision (batch by batch)."""
        out: list[Decided] = []
        while True:
            now = self.clock()
            found = [c for c in self.due(now) if self._unprepared(c)]
            if not found:
                return out
            decided = self.store(self.plan(found, now), now)
            out += decided
            if not decided:  # what is left is another detector's, or active again: the next round
                return out

    def next_due(self) -> datetime | None:
        """When the next open cart falls due (of those not too late to decide)."""
        since = self.clock() - self.max_late
        with self.engine.connect() as connection:
            due = connection.execute(
                sa.select(sa.func.min(carts.c.due_at)).where(
                    carts.c.status == "open", carts.c.due_at >= since
                )
            ).scalar()
        return as_utc(due) if due is not None else None

    def record_outcomes(self) -> int:
        """Outcomes of the decisions whose window has closed (winback.serve.outcomes)."""
        from winback.serve.outcomes import record_outcomes

        done = record_outcomes(
            self.engine,
            self.catalogue,
            window_days=self.window_days,
            now=self.clock(),
        )
        self.stats.outcomes += done
        self.metrics.outcomes.inc(done)
        if done:
            log.info("outcomes recorded=%d", done)
        return done

    def _gauges(self) -> None:
        now = self.clock()
        with self.engine.connect() as connection:
            counts: dict[str, int] = dict(
                connection.execute(
                    sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
                ).all()
            )
            oldest = connection.execute(
                sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
                    outbox.c.status == "scheduled", outbox.c.next_attempt_at <= now
                )
            ).scalar()
        for status in ("scheduled", "claimed", "sent", "failed", "dead", "cancelled"):
            self.metrics.queue_depth.labels(status).set(int(counts.get(status, 0)))
        self.metrics.queue_age.set((now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0)

    def _periodic(self) -> None:
        """Outcomes, expiry and gauges, and a summary line, each on its own schedule."""
        moment = time.monotonic()
        if self.outcomes_every and moment - self._last_outcomes >= self.outcomes_every:
            self._last_outcomes = moment
            self.record_outcomes()
        if moment - self._last_gauges >= 5.0:
            self._last_gauges = moment
            self.expire(self.clock())
            self._gauges()
        if moment - self._last_summary >= 60.0:
            self._last_summary = moment
            summary = self.stats.as_dict()
            shown = ("events", "carts_opened", "abandoned", "decided", "messages", "holdout", "expired")
            log.info(
                "%s latency_ms_p99=%s",
                " ".join(f"{k}={summary[k]}" for k in shown),
                summary.get("latency_ms_p99", "-"),
            )

    def tick(self) -> tuple[int, int]:
        """One round of everything in the calling thread: store what is prepared and due, decide what is
        due and not prepared, catch up, decide again, prepare what falls due soon, and the periodic jobs;
        (events folded in, carts decided). :meth:`run` does the same in two threads."""
        decided = self.store_prepared() + self.decide_due()
        applied = self.catch_up()
        decided += self.decide_due()
        self.prepare(self.clock())
        self._periodic()
        return applied, len(decided)

    def _until_next(self) -> float | None:
        """Seconds until the next prepared decision falls due (None: none prepared); also published for
        the other threads as ``_next_store`` (a wall-clock time)."""
        with self._lock:
            if not self._prepared:
                self._next_store = None
                return None
            wait = (min(p.due_at for p in self._prepared.values()) - self.clock()).total_seconds()
            self._next_store = time.time() + wait
            return wait

    def _yield_to_store(self, stop: threading.Event, since: float) -> bool:
        """In the catch-up and preparing threads: whether to wait, because a prepared decision is to be
        stored within ``_FOLD_GUARD`` (keeping the database's locks and this process's CPU free for it),
        unless this thread has waited 0.25 s since ``since`` (a monotonic time)."""
        soon = self._next_store
        if soon is not None and 0 <= soon - time.time() < _FOLD_GUARD and time.monotonic() - since < 0.25:
            stop.wait(soon - time.time() + 0.005)
            return True
        return False

    def _fold(self, stop: threading.Event, poll_interval: float, failed: list[BaseException]) -> None:
        """The catch-up thread: fold events in as they are stored, and the periodic jobs."""
        try:
            folded = time.monotonic()
            while not stop.is_set():
                if self._yield_to_store(stop, folded):
                    continue
                folded = time.monotonic()
                try:
                    self.catch_up()  # everything stored so far (in batches of up to batch_events)
                    self._periodic()
                    stop.wait(poll_interval)  # then let a batch gather: tiny batches cost the most per event
                except sa.exc.OperationalError as error:  # the database went away for a moment
                    log.warning("detector %s: database error, retrying: %s", self.detector_id, error)
                    stop.wait(max(poll_interval, 0.5))
        except BaseException as error:  # stop the detector, which raises it
            failed.append(error)
            stop.set()

    def _prepare_loop(self, stop: threading.Event, poll_interval: float, failed: list[BaseException]) -> None:
        """The preparing thread: decisions for the carts falling due soon, and for those due already
        without one (just started, or changed at the last moment), handed to the storing thread."""
        try:
            prepared = time.monotonic()
            while not stop.is_set():
                if self._yield_to_store(stop, prepared):
                    continue
                prepared = time.monotonic()
                try:
                    self.prepare(self.clock(), due_too=True)
                    stop.wait(poll_interval)
                except sa.exc.OperationalError as error:
                    log.warning("detector %s: database error, retrying: %s", self.detector_id, error)
                    stop.wait(max(poll_interval, 0.5))
        except BaseException as error:
            failed.append(error)
            stop.set()

    def run(
        self, stop: threading.Event | None = None, *, once: bool = False, poll_interval: float = 0.05
    ) -> DetectorStats:
        """Detect until ``stop`` is set; with ``once``, until nothing is left to fold in or decide now.

        Three threads: one folds the events in as they are stored (:meth:`catch_up`) and runs the
        periodic jobs (outcomes, expiry, gauges); one prepares decisions (:meth:`prepare`); this one
        sleeps until the next prepared decision falls due and stores it, and does nothing else, so a due
        cart never waits for a catch-up or a preparation in progress (its events not folded in yet are
        found by the store, which postpones it). ``once`` runs :meth:`tick` in this thread only."""
        stop = stop or threading.Event()
        failed: list[BaseException] = []
        helpers = []
        if not once:
            for name, target in (("winback-fold", self._fold), ("winback-prepare", self._prepare_loop)):
                helper = threading.Thread(
                    target=target, args=(stop, poll_interval, failed), name=name, daemon=True
                )
                helper.start()
                helpers.append(helper)
        try:
            while not stop.is_set():
                try:
                    if once:
                        applied, decided = self.tick()
                        if not applied and not decided:
                            break
                        continue
                    self.store_prepared()
                except sa.exc.OperationalError as error:  # the database went away for a moment
                    log.warning("detector %s: database error, retrying: %s", self.detector_id, error)
                    stop.wait(max(poll_interval, 0.5))
                    continue
                with self._lock:  # until the next falls due, or one due already is prepared
                    soon = self._until_next()
                    if soon is None or soon > 0:
                        self._lock.wait(poll_interval if soon is None else min(soon, poll_interval))
        finally:
            stop.set()
            for helper in helpers:
                helper.join()
            self.close()
        if failed:
            raise failed[0]
        return self.stats

    def close(self) -> None:
        self._disconnect()
        if self._alerts is not None:
            self._alerts.shutdown(wait=True)
            self._alerts = None

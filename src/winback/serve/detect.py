"""The abandonment detector: keeps every cart's state from the stored events, notices each cart crossing
its idle threshold, decides at that moment with the configured policy, logs the decision and schedules
its message; on a schedule it records the decisions' outcomes.

One :class:`Detector` loop (``winback detect``; several may run against PostgreSQL):

1. **Catch up.** Read the events stored since its cursor from the feed (winback.serve.feed, commit
   order) and fold them into the live state (:func:`winback.serve.carts.apply_events`), cursor and state
   in one transaction. The cursor row is locked while a batch is folded in, so several detectors never
   apply an event twice (a detector finding it locked skips to deciding).
2. **Claim.** Carts whose ``due_at`` (last event + idle threshold) has passed are claimed like the
   outbox's messages: ``UPDATE carts ... WHERE cart_id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` on
   PostgreSQL, inside ``BEGIN IMMEDIATE`` on SQLite, with a lease (a detector that dies leaves its claims
   to the others once the lease runs out). Carts due longer ago than ``max_late`` are ``expired``: a
   message about them would be late; ``winback plan`` still sees them.
3. **Decide**, outside any transaction, with :func:`winback.decide.plan.plan_decisions`, exactly as
   ``winback plan`` does: the permanent holdout (:mod:`winback.decide.holdout`), the policy (a static
   flow of the catalogue, ``random`` with exact propensities, or the ``uplift`` policy of ``winback train
   policy``), and the guardrails -- consent and addresses from the customers' profiles less their
   unsubscribes, frequency caps against the messages already scheduled or sent, quiet hours in the
   customer's time zone, the largest coupon, and a monthly discount budget paced over the month.
4. **Store**, one transaction: the claim still held (an event folded in meanwhile voids it), the
   decision (unique per cart, so no cart is ever decided twice), and its message in the outbox
   (:func:`winback.act.outbox.schedule_in`). Then, for big carts, a staff alert (winback.act.alerts),
   sent from a background thread.

Between rounds it sleeps until the next cart falls due, at most ``poll_interval`` (events are caught up
at least that often, so the catch-up at a due time is short). ``tick()`` runs one round.

Why a process of its own rather than a loop in ``winback worker``: the worker spends its time in SMTP
and webhook round trips (hundreds of milliseconds when a provider is slow) and scales with the sending
volume; the detector has a latency target measured in milliseconds and scales with the event rate.
"""

from __future__ import annotations

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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from winback.act.outbox import (
    Contact,
    as_utc,
    decision_key,
    idempotency_key,
    schedule_in,
    send_facts,
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
from winback.serve.carts import BEHAVIOUR, Applied, IdleThresholds, apply_events
from winback.serve.db import carts, decisions, events, outbox
from winback.serve.feed import Cursor, ensure_cursor, read_cursor, read_events, save_cursor
from winback.serve.metrics import DetectorMetrics

__all__ = ["Decided", "Detector", "DetectorStats"]

log = logging.getLogger("winback.detect")
CURSOR = "detector"
_LATENCIES = 100_000  # latencies kept for the stats' percentiles
#: A claimed cart found active again is looked at after this (by then its events are folded in).
_RECHECK = timedelta(seconds=1)
#: Columns of the plan's table and of its decision-log rows that a stored decision takes.
_PLANNED = ("cart_id", "user_id", "action", "send_at", "coupon", "recommended")
_LOGGED = ("policy", "version", "propensity", "expected_profit", "holdout", "reasons", "context")


@dataclass(frozen=True)
class Decided:
    """One cart decided."""

    cart_id: str
    user_id: str
    action: str
    holdout: bool
    due_at: datetime
    latency: float  # seconds from due_at to the decision stored (wall clock)


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
    recommend
        Whether ``+recs`` messages carry products from the home's trained recommender (if there is one).
    outcomes_every
        Seconds between runs of :func:`winback.serve.outcomes.record_outcomes` (0: never).
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
        detector_id: str | None = None,
        recommend: bool = True,
        alerts: bool = True,
        outcomes_every: float = 300.0,
        metrics: DetectorMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        in_holdout([], holdout_share)  # a bad share is refused here, not at the first cart
        if monthly_budget is not None and not monthly_budget >= 0:
            raise BadInputError(f"--monthly-budget {monthly_budget}: expected an amount of 0 or more")
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
        self.detector_id = detector_id or f"{socket.gethostname()}:{os.getpid()}"
        self.session_gap = timedelta(minutes=settings.session_gap_minutes)
        self.outcomes_every = outcomes_every
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
            cursor = read_cursor(connection, CURSOR, lock=True)
            if cursor is None:
                return None
            rows, after = read_events(connection, cursor, self.batch_events)
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
            if done.last_received_at is not None:
                self.metrics.feed_lag.set(max((utcnow() - done.last_received_at).total_seconds(), 0.0))
            if done.events < self.batch_events:
                return total

    # -- 2. claim ------------------------------------------------------------------------------------

    def due(self, now: datetime) -> list[dict[str, Any]]:
        """Up to ``batch_carts`` open carts due by ``now`` (oldest first): a read, no lock taken."""
        with self.engine.connect() as connection:
            found = (
                connection.execute(
                    sa.select(carts)
                    .where(
                        carts.c.status == "open",
                        carts.c.due_at <= now,
                        carts.c.due_at >= now - self.max_late,
                    )
                    .order_by(carts.c.due_at)
                    .limit(self.batch_carts)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in found]

    def expire(self, now: datetime) -> int:
        """Mark the open carts that went due longer than ``max_late`` ago ``expired``; how many."""
        with write_transaction(self.engine) as connection:
            expired = int(
                connection.execute(
                    carts.update()
                    .where(carts.c.status == "open", carts.c.due_at < now - self.max_late)
                    .values(status="expired", updated_at=now)
                ).rowcount
            )
        if expired:
            self.stats.expired += expired
            self.metrics.expired.inc(expired)
            log.info(
                "expired carts=%d (due more than %s ago: left to `winback plan`)", expired, self.max_late
            )
        return expired

    # -- 3. decide -----------------------------------------------------------------------------------

    def _facts(
        self, connection: Connection, users: Sequence[str], now: datetime
    ) -> tuple[dict[str, CustomerConsent], dict[str, Contact], dict[str, dict[Channel, float]]]:
        """Consent (profiles less unsubscribes since), contacts, and the last message per channel
        (scheduled or sent: what the frequency caps count)."""
        facts = send_facts(self.engine, users)
        consent: dict[str, CustomerConsent] = {}
        contacts: dict[str, Contact] = {}
        for user, profile in facts.profiles.items():
            offset = profile.offset_at(now)
            consent[user] = CustomerConsent(profile.channels(facts.unsubscribed.get(user)), offset)
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

    def _postpone(self, cart_ids: set[str], now: datetime) -> None:
        """Carts found active again: looked at once their events are folded in."""
        with write_transaction(self.engine) as connection:
            connection.execute(
                carts.update()
                .where(carts.c.cart_id.in_(sorted(cart_ids)), carts.c.status == "open", carts.c.due_at <= now)
                .values(due_at=now + _RECHECK, updated_at=now)
            )

    def decide(self, claimed: Sequence[Mapping[str, Any]], now: datetime) -> list[Decided]:
        """Decide, log and schedule the due carts read by :meth:`due`; the ones this detector stored (a
        cart another detector decided first, or that became active meanwhile, is left out)."""
        if not claimed:
            return []
        self.stats.abandoned += len(claimed)
        self.metrics.abandoned.inc(len(claimed))
        with self.engine.connect() as connection:
            active = self._active(connection, claimed, now)
        if active:
            self._postpone(active, now)
            claimed = [c for c in claimed if c["cart_id"] not in active]
            if not claimed:
                return []
        subjects = pd.DataFrame(
            {
                "cart_id": [c["cart_id"] for c in claimed],
                "user_id": [c["user_key"] for c in claimed],
                "abandoned_at": [pd.Timestamp(as_utc(c["last_event_at"])) for c in claimed],
                "value": [float(c["value"]) for c in claimed],
                "n_items": [float(c["n_items"]) for c in claimed],
                "idle_minutes": [float(c["idle_minutes"]) for c in claimed],
                "checkout_started": [float(bool(c["checkout_started"])) for c in claimed],
            }
        )
        items = {c["cart_id"]: json.loads(c["items"]) for c in claimed}
        with self.engine.connect() as connection:
            consent, contacts, last = self._facts(connection, list(subjects["user_id"]), now)
            budget = self._budget(connection, now)
            features: list[str] = []
            if isinstance(self.policy, UpliftPolicy):
                subjects, features = self._features(connection, subjects, consent)
        plan = plan_decisions(
            subjects, pd.Timestamp(now), self.policy, self.catalogue, budget=budget, consent=consent,
            holdout_share=self.holdout_share, holdout_salt=self.holdout_salt, last_messages=last,
            recommend=self._recommend(items), context_columns=("n_items", "idle_minutes", "checkout_started"),
            feature_columns=features,
        )  # fmt: skip
        return self._store(claimed, plan.table, plan.decisions, items, contacts, now)

    def _recommend(self, items: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
        recommender = self.recommender
        if recommender is None:
            return None

        def recommend(cart_id: str | None, user_id: str) -> tuple[list[str], str]:
            products = [str(i["product_id"]) for i in items.get(cart_id or "", ())]
            found = recommender.for_cart(products, 3, user_key=user_id)
            return [c.product_id for c in found], found.reason

        return recommend

    # -- 4. store ------------------------------------------------------------------------------------

    def _store(
        self,
        claimed: Sequence[Mapping[str, Any]],
        table: pd.DataFrame,
        logged: pd.DataFrame,
        items: Mapping[str, Sequence[Mapping[str, Any]]],
        contacts: Mapping[str, Contact],
        now: datetime,
    ) -> list[Decided]:
        due = {c["cart_id"]: as_utc(c["due_at"]) for c in claimed}
        last = {c["cart_id"]: as_utc(c["last_event_at"]) for c in claimed}
        values = {c["cart_id"]: float(c["value"]) for c in claimed}
        rows, messages = [], []
        planned = zip(*(table[c].tolist() for c in _PLANNED), strict=True)
        chosen = zip(*(logged[c].tolist() for c in _LOGGED), strict=True)
        for (cart, user, action, send_at, coupon, recommended), log_row in zip(planned, chosen, strict=True):
            policy, version, propensity, profit, holdout, reasons, context = log_row
            send = None if pd.isna(send_at) else pd.Timestamp(send_at).floor("us").to_pydatetime()
            parsed = Action.parse(action)
            key = decision_key(user, cart, action, send) if parsed.is_message and send is not None else None
            rows.append(
                {
                    "decision_id": decision_id(cart, pd.Timestamp(now), policy, version),
                    "cart_id": cart,
                    "user_id": user,
                    "decided_at": now,
                    "abandoned_at": last[cart],
                    "due_at": due[cart],
                    "policy": policy,
                    "version": version,
                    "action": action,
                    "channel": parsed.channel,
                    "send_at": send,
                    "propensity": propensity,
                    "expected_profit": None if pd.isna(profit) else float(profit),
                    "holdout": bool(holdout),
                    "discount_reserved": round(parsed.coupon * values[cart], 2),
                    "reasons": json.dumps(list(reasons)),
                    "context": json.dumps(context, default=str, sort_keys=True),
                    "message_key": idempotency_key(key) if key is not None else None,
                    "updated_at": utcnow(),  # wall time: what `winback sync` reads changes by
                }
            )
            if key is not None:
                messages.append(
                    {"cart_id": cart, "user_id": user, "action": action, "channel": parsed.channel,
                     "send_at": send, "coupon": coupon, "recommended": recommended}
                )  # fmt: skip
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with write_transaction(self.engine) as connection:
            still = (  # open and due still (not extended since it was read, nor decided by another)
                sa.select(carts.c.cart_id)
                .where(
                    carts.c.cart_id.in_([r["cart_id"] for r in rows]),
                    carts.c.status == "open",
                    carts.c.due_at <= now,
                )
                .with_for_update(skip_locked=True)
            )
            held = set(
                connection.execute(
                    carts.update()
                    .where(carts.c.cart_id.in_(still.scalar_subquery()))
                    .values(status="decided", updated_at=now)
                    .returning(carts.c.cart_id)
                ).scalars()
            )
            mine = [r for r in rows if r["cart_id"] in held]
            stored = set()
            if mine:
                stored = set(
                    connection.execute(
                        insert(decisions)
                        .on_conflict_do_nothing(index_elements=["cart_id"])
                        .returning(decisions.c.cart_id),
                        mine,
                    ).scalars()
                )
            scheduled = schedule_in(
                connection,
                [m for m in messages if m["cart_id"] in stored],
                contacts,
                carts={c: items[c] for c in stored},
                coupon_valid_days=self.settings.coupon_valid_days,
                currency=self.settings.default_currency,
                now=now,
            )
        finished = time.time()
        out = []
        for row in rows:
            if row["cart_id"] not in stored:
                continue
            latency = finished - row["due_at"].timestamp()
            out.append(
                Decided(row["cart_id"], row["user_id"], row["action"], row["holdout"], row["due_at"], latency)
            )
            self.stats.latencies.append(latency)
            self.stats.actions[row["action"]] += 1
            self.stats.holdout += int(row["holdout"])
            self.metrics.latency.observe(max(latency, 0.0))
            self.metrics.decisions.labels(row["action"], str(row["holdout"]).lower()).inc()
        self.stats.decided += len(out)
        self.stats.messages += scheduled.scheduled
        if self._alerts is not None and out:
            self._alert([c for c in claimed if c["cart_id"] in stored], table)
        return out

    def _alert(self, decided: Sequence[Mapping[str, Any]], table: pd.DataFrame) -> None:
        """Staff alerts for the big carts just decided (never the holdout's), posted in the background."""
        from winback.act.alerts import find_alerts, send_alerts

        held = set(table.loc[table["holdout"].astype(bool), "cart_id"].astype(str))
        frame = pd.DataFrame(
            [
                {
                    "cart_id": c["cart_id"],
                    "user_id": c["user_key"],
                    "cart_value": float(c["value"]),
                    "reasons": f"idle {float(c['idle_minutes']):g} min; {int(c['n_items'])} items"
                    + ("; checkout started" if c["checkout_started"] else ""),
                }
                for c in decided
                if c["cart_id"] not in held and not str(c["user_key"]).startswith("anonymous:")
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

    def decide_due(self) -> list[Decided]:
        """Decide every cart due now (batch by batch)."""
        out: list[Decided] = []
        while True:
            now = self.clock()
            found = self.due(now)
            if not found:
                return out
            decided = self.decide(found, now)
            out += decided
            if not decided:  # what is left is another detector's, or active again: the next round
                return out

    # -- the loop ------------------------------------------------------------------------------------

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
            window_days=float(self.settings.recovery_window_days),
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

    def tick(self) -> tuple[int, int]:
        """One round: decide what is due, catch up, and the periodic jobs; (events, carts decided)."""
        decided = self.decide_due()
        applied = self.catch_up()
        decided += self.decide_due()
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
        return applied, len(decided)

    def run(
        self, stop: threading.Event | None = None, *, once: bool = False, poll_interval: float = 0.05
    ) -> DetectorStats:
        """Detect until ``stop`` is set; with ``once``, until nothing is left to fold in or decide now."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                try:
                    applied, decided = self.tick()
                except sa.exc.OperationalError as error:  # the database went away for a moment
                    log.warning("detector %s: database error, retrying: %s", self.detector_id, error)
                    stop.wait(max(poll_interval, 0.5))
                    continue
                if once and not applied and not decided:
                    break
                if applied or decided:
                    continue
                due = self.next_due()
                wait = poll_interval
                if due is not None:
                    wait = min(max((due - self.clock()).total_seconds(), 0.0), poll_interval)
                stop.wait(wait)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        if self._alerts is not None:
            self._alerts.shutdown(wait=True)
            self._alerts = None

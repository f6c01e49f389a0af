"""What each logged decision led to, read from the event log once its attribution window has closed.

A decision's outcome is the customer's first order after the decision, within ``window_days`` (the
settings' ``recovery_window_days``, 7 by default: the window the simulator's recoveries fall in):
``recovered``, ``revenue`` (the order's line items, price x quantity), ``discount`` and ``margin`` (the
catalogue's margin on the revenue, less the discount; the channel cost is charged when the log is
evaluated). Every decision gets one, whatever its action, holdout included: doing nothing is the
comparison every other action is measured against.

The discount is the decision's own coupon on that order, counted only when the order used a coupon (a
``coupon``, ``discount`` or ``discount_codes`` property, as the simulator and the Segment, GA4 and Shopify
adapters write them): an order without one did not redeem it. A decision is given its outcome only once
the event log covers its whole window, so a later run never has to revise it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import ibis
import numpy as np
import pandas as pd

from winback.decide.actions import Action
from winback.decide.catalogue import Catalogue
from winback.decide.log import DecisionLog
from winback.errors import BadInputError
from winback.events.schema import used_coupon

#: Days after a decision in which the customer's first order counts as its outcome (the default of the
#: settings' ``recovery_window_days``).
WINDOW_DAYS = 7.0


@dataclass
class OutcomeReport:
    """What :func:`record_outcomes` did."""

    recorded: int
    recovered: int
    waiting: int
    revenue: float
    discount: float
    window_days: float


def no_orders() -> pd.DataFrame:
    """An empty frame of orders with the column types of a full one (text ids, UTC times, money,
    flags): untyped empty columns are ``object``, which ``pd.merge_asof`` refuses to join with text."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=str),
            "order_id": pd.Series([], dtype=str),
            "ordered_at": pd.Series([], dtype="datetime64[ns, UTC]"),
            "revenue": pd.Series([], dtype="float64"),
            "coupon": pd.Series([], dtype=bool),
        }
    )


def orders_after(events: ibis.Table, users: list[str], since: pd.Timestamp) -> pd.DataFrame:
    """The orders of ``users`` at or after ``since``: ``user_id``, ``order_id``, ``ordered_at``,
    ``revenue`` and ``coupon`` (whether it used one), oldest first."""
    purchases = events.filter(
        (events.event_type == "purchase")
        & (events.timestamp >= since.to_pydatetime())
        & events.user_id.isin(users)
    )
    rows = purchases.select(
        "user_id", "order_id", "timestamp", "properties", money=purchases.price * purchases.quantity
    ).to_pandas()
    if rows.empty:
        return no_orders()
    rows["order_id"] = rows["order_id"].fillna(rows["user_id"] + "@" + rows["timestamp"].astype(str))
    rows["coupon"] = rows["properties"].map(used_coupon)
    orders = rows.groupby(["user_id", "order_id"], sort=False).agg(
        ordered_at=("timestamp", "min"), revenue=("money", "sum"), coupon=("coupon", "max")
    )
    orders["revenue"] = orders["revenue"].fillna(0.0)
    return orders.reset_index().sort_values(["ordered_at", "order_id"], kind="stable", ignore_index=True)


def observe(
    decisions: pd.DataFrame, orders: pd.DataFrame, catalogue: Catalogue, window_days: float = WINDOW_DAYS
) -> pd.DataFrame:
    """Each decision's outcome from ``orders`` (:func:`orders_after`): the first order of its customer in
    ``(decided_at, decided_at + window_days]``. Columns ``decision_id`` and :data:`~.log.OUTCOMES`."""
    window = pd.Timedelta(days=window_days)
    left = decisions[["decision_id", "user_id", "decided_at", "action"]].copy()
    # merge_asof joins keys of one type only: times in one unit (pandas 3 infers it from the data, so an
    # empty column's differs) and ids as text on both sides (under pandas 3 a column of strings is
    # ``str``, an empty or database-read one may be ``object``).
    left["decided_at"] = pd.to_datetime(left["decided_at"], utc=True).dt.as_unit("ns")
    left = left.sort_values("decided_at", kind="stable")
    right = orders.copy()
    right["ordered_at"] = pd.to_datetime(right["ordered_at"], utc=True).dt.as_unit("ns")
    left["user_id"] = left["user_id"].astype(str)
    right["user_id"] = right["user_id"].astype(str)
    right = right.sort_values("ordered_at", kind="stable")
    matched = pd.merge_asof(
        left, right, left_on="decided_at", right_on="ordered_at", by="user_id",
        direction="forward", allow_exact_matches=False, tolerance=window,
    )  # fmt: skip
    recovered = matched["ordered_at"].notna().to_numpy()
    revenue = np.where(recovered, matched["revenue"].to_numpy(dtype=float, na_value=0.0), 0.0)
    coupon = np.array([Action.parse(str(a)).coupon for a in matched["action"]], dtype=float)
    used = matched["coupon"].fillna(False).to_numpy(dtype=bool) & recovered
    discount = np.round(np.where(used, coupon * revenue, 0.0), 2)
    return pd.DataFrame(
        {
            "decision_id": matched["decision_id"].to_numpy(),
            "recovered": recovered,
            "revenue": np.round(revenue, 2),
            "discount": discount,
            "margin": np.round(catalogue.default_margin * revenue - discount, 2),
        }
    )


def record_outcomes(
    log: DecisionLog,
    events: ibis.Table,
    catalogue: Catalogue,
    *,
    window_days: float = WINDOW_DAYS,
    until: pd.Timestamp | None = None,
) -> OutcomeReport:
    """Give every decision without an outcome whose window has closed by ``until`` (default: the last
    event in the log) its outcome, in one transaction. Decisions still inside their window wait."""
    if not window_days > 0:
        raise BadInputError(f"--window-days {window_days}: expected a number of days > 0")
    decisions = log.read()
    pending = decisions[decisions["outcome_observed_at"].isna()]
    if until is None:
        last = events.timestamp.max().to_pandas()
        if last is None or pd.isna(last):
            raise BadInputError("events: the event log is empty; ingest events before recording outcomes")
        until = pd.Timestamp(last)
    until = until.tz_localize("UTC") if until.tzinfo is None else until
    decided = pd.to_datetime(pending["decided_at"], utc=True)
    closed = pending[decided + pd.Timedelta(days=window_days) <= until]
    if closed.empty:
        return OutcomeReport(0, 0, len(pending), 0.0, 0.0, window_days)
    since = pd.Timestamp(pd.to_datetime(closed["decided_at"], utc=True).min())
    users = sorted(set(closed["user_id"].astype(str)))
    orders = orders_after(events, users, since - timedelta(seconds=1))
    outcome = observe(closed, orders, catalogue, window_days)
    outcome["outcome_observed_at"] = until
    recorded = log.record_outcomes(outcome)
    return OutcomeReport(
        recorded,
        int(outcome["recovered"].sum()),
        len(pending) - len(closed),
        float(outcome["revenue"].sum()),
        float(outcome["discount"].sum()),
        window_days,
    )

"""Attribution in the service: which sent message each purchase follows, and the decision log's
outcomes from it.

:func:`attribute_purchases` gives every order (the ``purchase`` events of the service's database,
grouped by ``order_id``) the **last** message the customer was sent (a recorded delivery) within
``window_days`` before it (the settings' ``recovery_window_days``): its outbox message id and decision
id. This is last-touch attribution: it says which message an order followed, not that the message
caused it (the holdout measures that). :func:`log_outcomes` turns it into the decision log's outcomes
(:meth:`winback.decide.log.DecisionLog.record_outcomes`) for the messages whose window has closed:
``recovered`` (an order was attributed to the message), ``revenue`` (the first such order), and
``discount`` (the message's coupon share of it, when the order used a coupon). Decisions without a
message (``nothing``, the holdout) get theirs from ``winback outcomes`` over the event store.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.act.outbox import as_utc, decision_key, utcnow
from winback.decide.log import DecisionLog
from winback.events.schema import used_coupon
from winback.serve.db import deliveries, events, outbox

__all__ = ["Attribution", "attribute_purchases", "log_outcomes"]


@dataclass(frozen=True)
class Attribution:
    """One order and the message it is attributed to (None: no message in the window before it)."""

    user_id: str
    order_id: str
    ordered_at: datetime
    revenue: float
    used_coupon: bool
    message_id: int | None = None
    decision_id: str | None = None
    sent_at: datetime | None = None


def attribute_purchases(
    engine: Engine, *, window_days: float = 7.0, since: datetime | None = None
) -> list[Attribution]:
    """Every order since ``since`` (default: all), oldest first, with the last message delivered to its
    customer in ``[ordered_at - window_days, ordered_at]``."""
    window = timedelta(days=window_days)
    where = [events.c.event_type == "purchase", events.c.user_id.is_not(None)]
    if since is not None:
        where.append(events.c.timestamp >= since)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                events.c.user_id,
                events.c.order_id,
                events.c.timestamp,
                events.c.price,
                events.c.quantity,
                events.c.value,
                events.c.properties,
            ).where(*where)
        ).all()
        users = sorted({r.user_id for r in rows})
        sent: dict[str, list[tuple[datetime, int, str | None]]] = defaultdict(list)
        for start in range(0, len(users), 500):
            for user, at, message, decision in connection.execute(
                sa.select(
                    deliveries.c.user_id, deliveries.c.sent_at, deliveries.c.message_id, outbox.c.decision_id
                )
                .join(outbox, outbox.c.id == deliveries.c.message_id)
                .where(deliveries.c.user_id.in_(users[start : start + 500]))
            ):
                sent[user].append((as_utc(at), int(message), decision))
    for found in sent.values():
        found.sort()
    orders: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        at = as_utc(r.timestamp)
        key = (r.user_id, r.order_id or f"{r.user_id}@{at.isoformat()}")
        order = orders.setdefault(key, {"at": at, "lines": 0.0, "value": None, "coupon": False})
        order["at"] = min(order["at"], at)
        if r.price is not None:
            order["lines"] += float(r.price) * int(r.quantity or 1)
        if r.value is not None:
            order["value"] = float(r.value)
        order["coupon"] = order["coupon"] or used_coupon(r.properties)
    out = []
    for (user, order_id), order in orders.items():
        at = order["at"]
        revenue = order["lines"] if order["lines"] > 0 else (order["value"] or 0.0)
        found = sent.get(user, [])
        i = bisect.bisect_right([f[0] for f in found], at)  # the deliveries at or before the order
        attribution = Attribution(user, order_id, at, round(revenue, 2), order["coupon"])
        if i and found[i - 1][0] >= at - window:
            sent_at, message, decision = found[i - 1]
            attribution = Attribution(
                user, order_id, at, round(revenue, 2), order["coupon"], message, decision, sent_at
            )
        out.append(attribution)
    return sorted(out, key=lambda a: (a.ordered_at, a.order_id))


def log_outcomes(
    engine: Engine, log: DecisionLog, *, window_days: float = 7.0, until: datetime | None = None
) -> int:
    """Record in ``log`` the outcome of every sent message whose window closed by ``until`` (default:
    now) and whose decision the log holds (matched on customer, cart, action and send time); how many
    decisions were updated."""
    until = as_utc(until) if until is not None else utcnow()
    window = timedelta(days=window_days)
    with engine.connect() as connection:
        messages = connection.execute(
            sa.select(outbox.c.id, outbox.c.decision_id, outbox.c.payload, deliveries.c.sent_at).join(
                deliveries, deliveries.c.message_id == outbox.c.id
            )
        ).all()
    closed = [m for m in messages if m.decision_id and as_utc(m.sent_at) + window <= until]
    if not closed:
        return 0
    first: dict[int, Attribution] = {}
    for a in attribute_purchases(engine, window_days=window_days):
        if a.message_id is not None and a.message_id not in first:
            first[a.message_id] = a
    logged = log.read()
    by_key: dict[str, str] = {}
    for row in logged.to_dict("records"):
        send_at: Any = row["send_at"]
        if send_at is None or pd.isna(send_at):
            continue
        cart: Any = row["cart_id"]
        cart = None if cart is None or pd.isna(cart) else str(cart)
        key = decision_key(
            str(row["user_id"]), cart, str(row["action"]), pd.Timestamp(send_at).to_pydatetime()
        )
        by_key[key] = str(row["decision_id"])
    records = []
    for m in closed:
        decision = by_key.get(m.decision_id)
        if decision is None:
            continue
        order = first.get(int(m.id))
        coupon = (json.loads(m.payload).get("coupon") or {}).get("percent") or 0.0
        revenue = order.revenue if order else 0.0
        discount = round(revenue * float(coupon) / 100, 2) if order and order.used_coupon else 0.0
        records.append(
            {
                "decision_id": decision,
                "recovered": order is not None,
                "revenue": revenue,
                "discount": discount,
                "outcome_observed_at": pd.Timestamp(until),
            }
        )
    if not records:
        return 0
    return log.record_outcomes(pd.DataFrame(records))

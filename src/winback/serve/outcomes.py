"""Outcomes of the detector's decisions, recorded in the service's ``decisions`` table once their window
has closed (the detector runs this on a schedule; ``winback sync`` carries them to the decision log).

A decision's outcome is what ``winback outcomes`` records for the home's decision log
(:func:`winback.decide.outcomes.observe`, the same definition for every arm, holdout included): the
customer's first order within ``window_days`` after the decision -- ``recovered``, ``revenue``, the
coupon's ``discount`` when the order used one, and the catalogue's ``margin`` -- read from the
service's own events. Beside it, for messaged decisions, ``attributed_revenue``: the revenue of the
orders that last-touch attribution (:func:`winback.act.attribution.attribute_purchases`) gives to the
decision's message, which says which message an order followed, not what it caused.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.act.attribution import attribute_purchases
from winback.act.outbox import as_utc, utcnow, write_transaction
from winback.decide.catalogue import Catalogue
from winback.decide.outcomes import no_orders, observe, orders_after
from winback.serve.db import decisions, events, outbox

__all__ = ["record_outcomes"]


def _orders(engine: Engine, users: list[str], since: datetime) -> pd.DataFrame:
    """The orders of ``users`` from ``since``, as :func:`orders_after` reads them from the event store."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                events.c.user_id, events.c.order_id, events.c.timestamp, events.c.properties,
                events.c.price, events.c.quantity, events.c.event_type,
            ).where(
                events.c.event_type == "purchase", events.c.user_id.in_(users), events.c.timestamp >= since
            )
        ).all()  # fmt: skip
    frame = pd.DataFrame(
        rows, columns=["user_id", "order_id", "timestamp", "properties", "price", "quantity", "event_type"]
    )
    if frame.empty:
        return no_orders()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.astype({"price": "float64", "quantity": "float64"})
    table = ibis.memtable(frame)
    return orders_after(table, users, pd.Timestamp(since))


def record_outcomes(
    engine: Engine, catalogue: Catalogue, *, window_days: float = 7.0, now: datetime | None = None
) -> int:
    """Record the outcome of every decision whose window closed by ``now`` and has none yet; how many."""
    now = as_utc(now) if now is not None else utcnow()
    closed_before = now - timedelta(days=window_days)
    with engine.connect() as connection:
        pending = pd.DataFrame(
            connection.execute(
                sa.select(
                    decisions.c.decision_id, decisions.c.user_id, decisions.c.decided_at, decisions.c.action,
                    decisions.c.message_key,
                ).where(decisions.c.outcome_observed_at.is_(None), decisions.c.decided_at <= closed_before)
            ).all(),
            columns=["decision_id", "user_id", "decided_at", "action", "message_key"],
        )  # fmt: skip
    if pending.empty:
        return 0
    pending["decided_at"] = pd.to_datetime(pending["decided_at"], utc=True)
    since = pending["decided_at"].min().to_pydatetime() - timedelta(seconds=1)
    users = sorted(set(pending["user_id"].astype(str)))
    outcome = observe(pending, _orders(engine, users, since), catalogue, window_days).set_index("decision_id")
    attributed: dict[str, float] = {}
    keys = [k for k in pending["message_key"].dropna()]
    if keys:
        with engine.connect() as connection:
            message_keys = dict(
                connection.execute(
                    sa.select(outbox.c.id, outbox.c.idempotency_key).where(outbox.c.idempotency_key.in_(keys))
                ).all()
            )
        for order in attribute_purchases(engine, window_days=window_days, since=since):
            key = message_keys.get(order.message_id) if order.message_id is not None else None
            if key is not None:
                attributed[key] = attributed.get(key, 0.0) + order.revenue
    updates = []
    for row in pending.to_dict("records"):
        found = outcome.loc[row["decision_id"]]
        key = row["message_key"]
        updates.append(
            {
                "id": row["decision_id"],
                "recovered": bool(found["recovered"]),
                "revenue": float(found["revenue"]),
                "discount": float(found["discount"]),
                "margin": float(found["margin"]),
                "attributed_revenue": round(attributed.get(key, 0.0), 2) if isinstance(key, str) else None,
            }
        )
    with write_transaction(engine) as connection:
        done = connection.execute(
            decisions.update()
            .where(decisions.c.decision_id == sa.bindparam("id"), decisions.c.outcome_observed_at.is_(None))
            .values(
                recovered=sa.bindparam("recovered"), revenue=sa.bindparam("revenue"),
                discount=sa.bindparam("discount"), margin=sa.bindparam("margin"),
                attributed_revenue=sa.bindparam("attributed_revenue"),
                outcome_observed_at=now, updated_at=utcnow(),
            ),
            updates,
        )  # fmt: skip
    return int(done.rowcount)

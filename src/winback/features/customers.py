"""Mart: one row per customer as of a moment, for churn, CLV, segments and early warnings.

Point in time: every feature uses only events before ``as_of``; the optional label columns use only the
``horizon_days`` after it. The population is customers with at least one purchase before ``as_of``:
churn in a non-contractual shop is a buyer's lapse, not a visitor's failure to convert.

The ``bg_*`` columns are the BG/NBD summary in days (lifetimes' convention): ``bg_frequency`` counts
repeat purchase days, ``bg_recency`` is the age in days at the last purchase day, ``bg_T`` the age at
``as_of``, and ``bg_monetary`` the mean value of the repeat purchase days (0 without repeats).
"""

from __future__ import annotations

import ibis
from ibis import _

from winback.features.carts import line_value

CUSTOMER_FEATURES = (
    "orders",
    "revenue",
    "avg_order_value",
    "recency_days",
    "tenure_days",
    "days_since_first_seen",
    "days_since_last_event",
    "events_7d",
    "events_30d",
    "events_90d",
    "events_prev_90d",
    "sessions_30d",
    "sessions_prev_30d",
    "purchases_90d",
    "purchases_prev_90d",
    "activity_trend_30d",
    "carts",
    "abandoned_carts",
    "abandon_rate",
    "discount_share",
    "distinct_products",
    "bg_frequency",
    "bg_recency",
    "bg_T",
    "bg_monetary",
)

_DAY = 86_400.0


def customer_features(sessioned: ibis.Table, as_of: float, horizon_days: int | None = None) -> ibis.Table:
    """Customers who bought before ``as_of`` (epoch seconds), with :data:`CUSTOMER_FEATURES`.

    With ``horizon_days``, also the labels ``purchases_in_horizon``, ``revenue_in_horizon`` and
    ``churned`` (no purchase in ``[as_of, as_of + horizon)``).
    """
    past = sessioned.filter(sessioned.ts < as_of)
    t = past.mutate(
        money=line_value(past),
        age=(as_of - past.ts) / _DAY,
        day=(past.ts / _DAY).floor().cast("int64"),
        is_purchase=past.event_type == "purchase",
        coupon=ibis.coalesce(past.properties.contains('"coupon"'), False),
    )
    purchase = t.is_purchase
    order_key = ibis.coalesce(t.order_id, t.event_id)  # a purchase without an order id is its own order

    def within(lo: float, hi: float, age: ibis.Value = t.age) -> ibis.Value:
        return (age >= lo) & (age < hi)

    def n_events(lo: float, hi: float) -> ibis.Value:
        return within(lo, hi).cast("int64").sum()

    base = t.group_by("user_key").aggregate(
        first_seen_ts=t.ts.min(),
        last_event_ts=t.ts.max(),
        events_7d=n_events(0, 7),
        events_30d=n_events(0, 30),
        events_prev_30d=n_events(30, 60),
        events_90d=n_events(0, 90),
        events_prev_90d=n_events(90, 180),
    )
    # Distinct counts over all events are costly (one hash table each): count orders over the purchase
    # events only, and sessions from one row per session.
    bought = t.filter(purchase).mutate(order_key=order_key)
    n_orders = bought.order_key.nunique
    purchases = bought.group_by("user_key").aggregate(
        orders=n_orders(),
        discounted_orders=n_orders(where=bought.coupon),
        revenue=bought.money.sum(),
        first_purchase_ts=bought.ts.min(),
        last_purchase_ts=bought.ts.max(),
        purchases_90d=n_orders(where=within(0, 90, bought.age)),
        purchases_prev_90d=n_orders(where=within(90, 180, bought.age)),
        distinct_products=bought.product_id.nunique(),
    )
    purchases = purchases.filter(purchases.orders > 0)

    sessions = t.group_by(["user_key", "session_key"]).aggregate(
        has_cart=(_.event_type == "add_to_cart").any(),
        purchased=_.is_purchase.any(),
        in_30d=within(0, 30).any(),
        in_prev_30d=within(30, 60).any(),
    )
    cart_counts = sessions.group_by("user_key").aggregate(
        carts=_.has_cart.cast("int64").sum(),
        abandoned_carts=(_.has_cart & ~_.purchased).cast("int64").sum(),
        sessions_30d=_.in_30d.cast("int64").sum(),
        sessions_prev_30d=_.in_prev_30d.cast("int64").sum(),
    )
    days = (
        t.filter(purchase)
        .group_by(["user_key", "day"])
        .aggregate(day_money=_.money.sum())
        .group_by("user_key")
        .aggregate(
            purchase_days=_.day.count(),
            first_day=_.day.min(),
            last_day=_.day.max(),
            first_day_money=_.day_money.argmin(_.day),
            day_money_total=_.day_money.sum(),
        )
    )
    joined = purchases.join(base, "user_key").join(cart_counts, "user_key").join(days, "user_key")
    as_of_day = int(as_of // _DAY)
    frequency = joined.purchase_days - 1
    out = joined.select(
        "user_key",
        orders=joined.orders,
        revenue=joined.revenue,
        avg_order_value=joined.revenue / joined.orders,
        recency_days=(as_of - joined.last_purchase_ts) / _DAY,
        tenure_days=(as_of - joined.first_purchase_ts) / _DAY,
        days_since_first_seen=(as_of - joined.first_seen_ts) / _DAY,
        days_since_last_event=(as_of - joined.last_event_ts) / _DAY,
        events_7d=joined.events_7d,
        events_30d=joined.events_30d,
        events_90d=joined.events_90d,
        events_prev_90d=joined.events_prev_90d,
        sessions_30d=joined.sessions_30d,
        sessions_prev_30d=joined.sessions_prev_30d,
        purchases_90d=joined.purchases_90d,
        purchases_prev_90d=joined.purchases_prev_90d,
        activity_trend_30d=(joined.events_30d + 1) / (joined.events_prev_30d + 1),
        carts=joined.carts,
        abandoned_carts=joined.abandoned_carts,
        abandon_rate=joined.abandoned_carts / ibis.ifelse(joined.carts > 0, joined.carts, ibis.null("int64")),
        discount_share=joined.discounted_orders / joined.orders,
        distinct_products=joined.distinct_products,
        bg_frequency=frequency,
        bg_recency=(joined.last_day - joined.first_day).cast("float64"),
        bg_T=(as_of_day - joined.first_day).cast("float64"),
        bg_monetary=ibis.ifelse(
            frequency > 0, (joined.day_money_total - joined.first_day_money) / frequency, 0.0
        ),
    )
    if horizon_days is None:
        return out
    end = as_of + horizon_days * _DAY
    future = sessioned.filter(
        (sessioned.ts >= as_of) & (sessioned.ts < end) & (sessioned.event_type == "purchase")
    )
    future = future.mutate(
        money=line_value(future), order_key=ibis.coalesce(future.order_id, future.event_id)
    )
    labels = future.group_by("user_key").aggregate(
        purchases_in_horizon=_.order_key.nunique(), revenue_in_horizon=_.money.sum()
    )
    labelled = out.left_join(labels, "user_key")
    return labelled.select(
        *out.columns,
        purchases_in_horizon=ibis.coalesce(labelled.purchases_in_horizon, 0),
        revenue_in_horizon=ibis.coalesce(labelled.revenue_in_horizon, 0.0),
        churned=ibis.coalesce(labelled.purchases_in_horizon, 0) == 0,
    )

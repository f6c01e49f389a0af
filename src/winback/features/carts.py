"""Intermediate and mart tables of carts: per-session summaries, customer history before each session,
and point-in-time cart snapshots for the abandonment model.

Definitions (DESIGN.md): a cart is a session with at least one ``add_to_cart``; it is abandoned when the
session ends without a purchase (the session gap and the idle threshold are both 30 minutes by default);
it is recovered when the same customer buys one of its items within the recovery window after it.

Point in time: a snapshot is the cart's state just after one of its events (from the first add to the
last event before any purchase), and its history columns use only the customer's earlier sessions, so a
model trained on snapshots can score a live cart at any moment of its life.
"""

from __future__ import annotations

import ibis
from ibis import _

#: Features of a cart snapshot, in the order models see them.
CART_FEATURES = (
    "events_so_far",
    "views_so_far",
    "adds_so_far",
    "removes_so_far",
    "items_in_cart",
    "cart_value",
    "mean_item_price",
    "checkout_started",
    "minutes_in_session",
    "minutes_in_cart",
    "minutes_since_previous_event",
    "hour",
    "weekday",
    "past_sessions",
    "past_carts",
    "past_abandoned",
    "past_abandon_rate",
    "past_recoveries",
    "past_orders",
    "past_revenue",
    "days_since_last_purchase",
    "days_since_first_seen",
    "discount_share",
    "price_vs_usual",
)

_DAY = 86_400.0
#: The event columns cart snapshots read (fewer columns through the shared scan: less memory).
_SNAPSHOT_INPUTS = (
    "event_id",
    "event_type",
    "timestamp",
    "user_key",
    "session_key",
    "ts",
    "product_id",
    "price",
    "quantity",
    "value",
    "order_id",
    "properties",
)


def line_value(t: ibis.Table) -> ibis.Value:
    """Money of an event line: price x quantity, else the order total ``value`` (as in events stats)."""
    return ibis.coalesce(t.price * ibis.coalesce(t.quantity, 1), t.value, ibis.literal(0.0))


def _is(t: ibis.Table, event_type: str) -> ibis.Value:
    return ibis.ifelse(t.event_type == event_type, 1, 0)


def session_summary(sessioned: ibis.Table, recovery_window_days: int = 7) -> ibis.Table:
    """One row per session: its span, cart and purchase, and whether the purchase recovered a cart.

    ``is_recovery``: the session bought an item that sat in one of the customer's abandoned carts whose
    session ended within ``recovery_window_days`` before the purchase.
    """
    t = sessioned.mutate(
        money=line_value(sessioned),
        coupon=ibis.coalesce(sessioned.properties.contains('"coupon"'), False),
    )
    keys = ["user_key", "session_key"]
    sessions = t.group_by(keys).aggregate(
        started=_.ts.min(),
        ended=_.ts.max(),
        has_cart=(_.event_type == "add_to_cart").any(),
        purchased=(_.event_type == "purchase").any(),
        added_price_sum=_.price.sum(where=_.event_type == "add_to_cart"),
        added_count=(_.price.notnull() & (_.event_type == "add_to_cart")).cast("int64").sum(),
    )
    # Orders need a distinct count: over the purchase events only, which are few.
    orders = (
        t.filter(_.event_type == "purchase")
        .group_by(keys)
        .aggregate(
            orders=_.order_id.nunique() + _.order_id.isnull().cast("int64").sum(),
            revenue=_.money.sum(),
            discounted=_.coupon.any(),
        )
    )
    with_orders = sessions.left_join(orders, keys)
    sessions = with_orders.select(
        "user_key",
        "session_key",
        "started",
        "ended",
        "has_cart",
        "purchased",
        orders=ibis.coalesce(with_orders.orders, 0),
        revenue=with_orders.revenue,
        discounted=ibis.coalesce(with_orders.discounted, False),
        added_price_sum=with_orders.added_price_sum,
        added_count=with_orders.added_count,
    )
    recoveries = (
        recovery_pairs(sessioned, sessions, recovery_window_days)
        .select(recovered_session="recovered_by")
        .distinct()
    )
    joined = sessions.left_join(recoveries, sessions.session_key == recoveries.recovered_session)
    return joined.select(*sessions.columns, is_recovery=joined.recovered_session.notnull())


def session_history(summary: ibis.Table) -> ibis.Table:
    """Each session with the customer's history before it (earlier sessions only)."""
    before = ibis.window(
        group_by=summary.user_key, order_by=[summary.started, summary.session_key], rows=(None, -1)
    )

    def past(value: ibis.Value) -> ibis.Value:
        return ibis.coalesce(value.sum().over(before), 0)

    def count(flag: ibis.Value) -> ibis.Value:
        return past(flag.cast("int64"))

    return summary.mutate(
        past_sessions=ibis.coalesce(summary.session_key.count().over(before), 0),
        past_carts=count(summary.has_cart),
        past_abandoned=count(summary.has_cart & ~summary.purchased),
        past_recoveries=count(summary.is_recovery),
        past_orders=past(summary.orders),
        past_revenue=past(ibis.coalesce(summary.revenue, 0.0)),
        past_discounted=count(summary.discounted),
        past_added_price_sum=past(ibis.coalesce(summary.added_price_sum, 0.0)),
        past_added_count=past(summary.added_count),
        last_purchase_ts=ibis.ifelse(summary.purchased, summary.ended, ibis.null("float64"))
        .max()
        .over(before),
        first_seen_ts=summary.started.min().over(before),
    )


def carts(sessioned: ibis.Table, *, idle_minutes: int = 30, recovery_window_days: int = 7) -> ibis.Table:
    """One row per cart: ``cart_id`` (the session key), ``user_key``, times, final contents, outcome.

    ``abandoned_ts`` is the last event plus the idle threshold (null for purchased carts).
    """
    t = sessioned.mutate(money=line_value(sessioned), qty=ibis.coalesce(sessioned.quantity, 1))
    # Only the sessions with an add are carts: aggregating theirs alone skips most sessions. A session
    # has one customer, so grouping by the session key alone is the same grouping, with smaller keys.
    carted = t.filter(t.event_type == "add_to_cart").select("session_key").distinct()
    t = t.semi_join(carted, "session_key")
    per_cart = t.group_by("session_key").aggregate(
        user_key=_.user_key.arbitrary(),
        started_ts=_.ts.min(where=_.event_type == "add_to_cart"),
        last_event_ts=_.ts.max(),
        n_items=(_.qty * _is(_, "add_to_cart") - _.qty * _is(_, "remove_from_cart")).sum(),
        value=(_.money * _is(_, "add_to_cart") - _.money * _is(_, "remove_from_cart")).sum(),
        purchased=(_.event_type == "purchase").any(),
    )
    per_cart = per_cart.filter(per_cart.started_ts.notnull())
    ended = per_cart.select("session_key", "purchased", ended="last_event_ts")
    recovered = recovery_pairs(sessioned, ended, recovery_window_days).select("cart").distinct()
    joined = per_cart.left_join(recovered, per_cart.session_key == recovered.cart)
    return joined.select(
        cart_id=joined.session_key,
        user_key=joined.user_key,
        started_ts=joined.started_ts,
        last_event_ts=joined.last_event_ts,
        n_items=joined.n_items,
        value=joined.value,
        abandoned=~joined.purchased,
        abandoned_ts=ibis.ifelse(
            joined.purchased, ibis.null("float64"), joined.last_event_ts + idle_minutes * 60.0
        ),
        recovered=joined.cart.notnull(),
    )


def recovery_pairs(sessioned: ibis.Table, sessions: ibis.Table, recovery_window_days: int) -> ibis.Table:
    """Pairs (``cart``, ``recovered_by``): an abandoned cart and a later session of the same customer that
    bought one of its items within ``recovery_window_days`` after the cart's last event.

    ``sessions`` has ``session_key``, ``purchased`` and ``ended`` (last event) of at least every session
    with an add.
    """
    carts_ = sessioned.filter(_.event_type == "add_to_cart").join(
        sessions.filter(~_.purchased).select("session_key", cart_ended="ended"), "session_key"
    )
    items = carts_.select("user_key", "product_id", cart="session_key", cart_ended="cart_ended").distinct()
    bought = sessioned.filter(_.event_type == "purchase").select(
        "user_key", "product_id", recovered_by="session_key", bought_at="ts"
    )
    hit = items.join(
        bought,
        [
            items.user_key == bought.user_key,
            items.product_id == bought.product_id,
            items.cart_ended < bought.bought_at,
            bought.bought_at <= items.cart_ended + recovery_window_days * _DAY,
        ],
    )
    return hit.select("cart", "recovered_by")


def cart_snapshots(
    sessioned: ibis.Table,
    *,
    recovery_window_days: int = 7,
    as_of: float | None = None,
    active_since: float | None = None,
) -> ibis.Table:
    """Point-in-time cart states: one row per event of a cart from its first add until before any purchase.

    Columns: ``cart_id``, ``user_key``, ``ts`` (the moment of the snapshot, epoch seconds), every name
    in :data:`CART_FEATURES`, and the label ``abandoned`` (the session ended without a purchase). With
    ``as_of`` (epoch seconds) only events before it count, so ``abandoned`` means "not bought by then"
    and a cart still open then is not yet decided: use that for scoring. With ``active_since`` (epoch
    seconds) only carts with an event at or after it are built (scoring the carts active lately need not
    window over the whole history).
    """
    source = sessioned if as_of is None else sessioned.filter(sessioned.ts < as_of)
    source = source.select(*_SNAPSHOT_INPUTS)
    t = source.mutate(money=line_value(source), qty=ibis.coalesce(source.quantity, 1))
    # Windows are per session, so sessions without an add (most of them) can go first: they give no state.
    carted = t.filter(t.event_type == "add_to_cart").select("session_key").distinct()
    if active_since is not None:
        carted = carted.semi_join(t.filter(t.ts >= active_since).select("session_key"), "session_key")
    t = t.semi_join(carted, "session_key")
    # One sort of the session's events serves both frames: up to the event, and the whole session.
    order = [t.ts, t.event_id]
    upto = ibis.window(group_by=t.session_key, order_by=order, rows=(None, 0))
    whole = ibis.window(group_by=t.session_key, order_by=order)
    adds = _is(t, "add_to_cart")
    removes = _is(t, "remove_from_cart")
    state = t.mutate(
        events_so_far=t.ts.count().over(upto),
        views_so_far=_is(t, "view").sum().over(upto),
        adds_so_far=adds.sum().over(upto),
        removes_so_far=removes.sum().over(upto),
        items_in_cart=(t.qty * adds - t.qty * removes).sum().over(upto),
        cart_value=(t.money * adds - t.money * removes).sum().over(upto),
        checkout_started=_is(t, "checkout_start").max().over(upto),
        purchases_so_far=_is(t, "purchase").sum().over(upto),
        session_start=t.ts.min().over(whole),
        first_add=ibis.ifelse(t.event_type == "add_to_cart", t.ts, ibis.null("float64")).min().over(whole),
        previous_ts=t.ts.lag().over(whole),
        session_purchased=_is(t, "purchase").max().over(whole),
    )
    snaps = state.filter((state.adds_so_far > 0) & (state.purchases_so_far == 0))
    history = session_history(session_summary(source, recovery_window_days))
    joined = snaps.join(history.drop("user_key"), "session_key")
    usual_price = joined.past_added_price_sum / ibis.ifelse(
        joined.past_added_count > 0, joined.past_added_count, ibis.null("int64")
    )
    mean_price = joined.cart_value / ibis.ifelse(
        joined.items_in_cart > 0, joined.items_in_cart, ibis.null("int64")
    )
    local = joined.timestamp
    out = joined.select(
        cart_id=joined.session_key,
        user_key=joined.user_key,
        ts=joined.ts,
        events_so_far=joined.events_so_far,
        views_so_far=joined.views_so_far,
        adds_so_far=joined.adds_so_far,
        removes_so_far=joined.removes_so_far,
        items_in_cart=joined.items_in_cart,
        cart_value=joined.cart_value,
        mean_item_price=mean_price,
        checkout_started=joined.checkout_started,
        minutes_in_session=(joined.ts - joined.session_start) / 60.0,
        minutes_in_cart=(joined.ts - joined.first_add) / 60.0,
        minutes_since_previous_event=(joined.ts - joined.previous_ts) / 60.0,
        hour=local.hour(),
        weekday=local.day_of_week.index(),
        past_sessions=joined.past_sessions,
        past_carts=joined.past_carts,
        past_abandoned=joined.past_abandoned,
        past_abandon_rate=joined.past_abandoned
        / ibis.ifelse(joined.past_carts > 0, joined.past_carts, ibis.null("int64")),
        past_recoveries=joined.past_recoveries,
        past_orders=joined.past_orders,
        past_revenue=joined.past_revenue,
        days_since_last_purchase=(joined.ts - joined.last_purchase_ts) / _DAY,
        days_since_first_seen=(joined.ts - joined.first_seen_ts) / _DAY,
        discount_share=joined.past_discounted
        / ibis.ifelse(joined.past_orders > 0, joined.past_orders, ibis.null("int64")),
        price_vs_usual=mean_price / usual_price,
        abandoned=joined.session_purchased == 0,
    )
    return out

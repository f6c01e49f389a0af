"""The report's fast paths give the numbers of the straightforward computations they replace, on a small
shop that ran winback with a holdout (real DuckDB stores and decision log)."""

from __future__ import annotations

import bisect

import duckdb
import ibis
import pandas as pd

from winback.config import Settings
from winback.events.store import EventStore
from winback.features.carts import line_value, recovery_pairs
from winback.measure import demand
from winback.measure.data import SEGMENTS, Filters, MeasureData


def _segments_one_by_one(settings: Settings, decisions: pd.DataFrame) -> list[str]:
    """Each decision's segment by counting, in pandas, its customer's orders strictly before it."""
    with EventStore(settings, read_only=True) as store:
        orders = store.con.execute(
            "SELECT coalesce(user_id, 'anonymous:' || anonymous_id) AS user_id, min(timestamp) AS at "
            "FROM event_log WHERE event_type = 'purchase' "
            "GROUP BY 1, coalesce(order_id, CAST(timestamp AS VARCHAR))"
        ).df()
    times = {user: sorted(group["at"]) for user, group in orders.groupby("user_id")}
    out = []
    for user, decided in zip(decisions["user_id"], decisions["decided_at"], strict=True):
        before = bisect.bisect_left(times.get(user, []), decided)  # orders strictly before the decision
        out.append(SEGMENTS[0] if before == 0 else SEGMENTS[1] if before <= 2 else SEGMENTS[2])
    return out


def test_decisions_read_with_segments_in_one_query(measured_shop: Settings) -> None:
    with duckdb.connect(str(measured_shop.home / "decisions.duckdb"), read_only=True) as con:
        logged = con.execute(
            "SELECT decision_id, recovered FROM decisions ORDER BY decided_at, decision_id"
        ).df()
    with MeasureData(measured_shop) as data:
        frame = data.all_decisions()
    assert frame["decision_id"].tolist() == logged["decision_id"].tolist()
    assert frame["recovered"].dtype == "boolean"
    assert frame["recovered"].isna().sum() == logged["recovered"].isna().sum()
    expected = _segments_one_by_one(measured_shop, frame)
    assert frame["segment"].tolist() == expected
    assert len(set(expected)) == 3  # the shop has customers of every segment: the check bites
    decided = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
    weeks = decided.dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
    assert frame["week"].tolist() == weeks.tolist()


def _carts_over_every_session(sessioned: ibis.Table) -> ibis.Table:
    """Carts the straightforward way: every session aggregated, those without an add dropped after."""
    t = sessioned.mutate(money=line_value(sessioned), qty=ibis.coalesce(sessioned.quantity, 1))
    adds, removes = t.event_type == "add_to_cart", t.event_type == "remove_from_cart"
    per = t.group_by(["user_key", "session_key"]).aggregate(
        started_ts=t.ts.min(where=adds),
        last_event_ts=t.ts.max(),
        n_items=(t.qty * adds.cast("int64") - t.qty * removes.cast("int64")).sum(),
        value=(t.money * adds.cast("int64") - t.money * removes.cast("int64")).sum(),
        purchased=(t.event_type == "purchase").any(),
    )
    per = per.filter(per.started_ts.notnull())
    ended = per.select("session_key", "purchased", ended="last_event_ts")
    recovered = recovery_pairs(sessioned, ended, 7).select("cart").distinct()
    joined = per.left_join(recovered, per.session_key == recovered.cart)
    return joined.select(
        cart_id=joined.session_key,
        user_key=joined.user_key,
        started_ts=joined.started_ts,
        last_event_ts=joined.last_event_ts,
        n_items=joined.n_items,
        value=joined.value,
        abandoned=~joined.purchased,
        abandoned_ts=ibis.ifelse(joined.purchased, ibis.null("float64"), joined.last_event_ts + 1800.0),
        recovered=joined.cart.notnull(),
    )


def _abandoned_items_over_every_session(data: MeasureData) -> pd.DataFrame:
    """Abandoned items the straightforward way: each session's end and purchase from all its events."""
    s = data.tables.sessioned
    per_session = s.group_by("session_key").aggregate(
        ended=s.ts.max(), purchased=(s.event_type == "purchase").any()
    )
    added = s.filter((s.event_type == "add_to_cart") & s.product_id.notnull())
    items = (
        added.join(per_session.filter(~per_session.purchased), "session_key")
        .group_by(["user_key", "session_key", "product_id"])
        .aggregate(
            category=lambda t: t.category.arbitrary(),
            price=lambda t: t.price.max(),
            quantity=lambda t: ibis.coalesce(t.quantity, 1).sum(),
            ended=lambda t: t.ended.max(),
        )
    )
    bought = s.filter(s.event_type == "purchase").select(
        bought_user="user_key", bought_product="product_id", bought_at="ts"
    )
    hit = items.join(
        bought,
        [
            items.user_key == bought.bought_user,
            items.product_id == bought.bought_product,
            items.ended < bought.bought_at,
            bought.bought_at <= items.ended + 7 * 86_400.0,
        ],
    ).select(hit_session="session_key", hit_product="product_id")
    marked = items.left_join(
        hit.distinct(), [items.session_key == hit.hit_session, items.product_id == hit.hit_product]
    )
    out = marked.select("product_id", "price", "quantity", recovered=marked.hit_session.notnull())
    return data.source.execute(out)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_carts_and_demand_from_the_carted_sessions_only(measured_shop: Settings) -> None:
    """Carts aggregated over the sessions with an add only, and demand signals read from the carts,
    equal the aggregation over every session."""
    with MeasureData(measured_shop) as data:
        fast = data.tables.carts()
        plain = data.source.execute(
            _carts_over_every_session(data.tables.sessioned).order_by(["started_ts", "cart_id"])
        )
        pd.testing.assert_frame_equal(fast, plain)
        assert fast["recovered"].any()
        items = demand.abandoned_items(data, Filters())
        expected = _abandoned_items_over_every_session(data)
        assert len(items) > 100
        pd.testing.assert_frame_equal(_sorted(items.drop(columns="category")), _sorted(expected))

"""The simulated event log: deterministic, canonical, realistic rates, seasonality, and policy feedback.

Rates are measured from the log the way the rest of winback reads it (sessions by id, carts as sessions
with an add to cart, recovery as a later purchase of a cart item within 7 days), not from the truth.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from winback.decide.actions import Action
from winback.events.schema import EVENT_SCHEMA, EVENT_TYPES
from winback.sim import SimulationResult, simulate, write_events, write_truth


@pytest.fixture(scope="module")
def shop() -> SimulationResult:
    return simulate(customers=2000, days=120, seed=11)


def sql(result: SimulationResult, query: str) -> pd.DataFrame:
    """Run ``query`` over the tables ``ev`` (events), ``carts``, ``cart_items`` and ``customers``."""
    con = duckdb.connect()
    con.register("ev", result.events)
    con.register("carts", result.carts.drop(columns=["items"]))
    items = result.carts[["cart_id", "user_id", "abandoned_at"]].assign(
        product_id=result.carts["items"].map(list)
    )
    con.register("cart_items", items.explode("product_id"))
    con.register("customers", result.customers)
    return con.sql(query).df()


def test_same_seed_same_shop_other_seed_other_shop() -> None:
    a, b, c = (simulate(customers=300, days=40, seed=s) for s in (5, 5, 6))
    assert a.events.equals(b.events)
    assert a.carts.equals(b.carts)
    assert a.customers.equals(b.customers)
    assert not a.events.equals(c.events)


def test_events_are_canonical(shop: SimulationResult) -> None:
    events = shop.events
    assert events.schema.equals(EVENT_SCHEMA)
    frame = events.to_pandas()
    assert frame["event_id"].is_unique
    assert frame["event_id"].str.fullmatch(r"sim-11-\d+").all()
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["timestamp"].min() >= pd.Timestamp("2024-01-01", tz="UTC")
    assert frame["timestamp"].max() < pd.Timestamp("2024-04-30", tz="UTC")
    assert set(frame["event_type"]) <= set(EVENT_TYPES)
    assert frame["user_id"].str.fullmatch(r"u\d{6}").all()
    assert frame["session_id"].str.fullmatch(r"s\d+").all()
    product = frame[frame["event_type"].isin(["view", "add_to_cart", "remove_from_cart", "purchase"])]
    assert product["product_id"].str.fullmatch(r"p\d{5}").all()
    assert product["category"].str.fullmatch(r"[a-z]+\.[a-z]+").all()
    purchases = frame[frame["event_type"] == "purchase"]
    assert purchases[["user_id", "session_id", "price", "quantity", "order_id"]].notna().all().all()
    assert (purchases["price"] > 0).all()
    assert (purchases["quantity"] >= 1).all()
    assert (purchases["currency"] == "USD").all()
    assert frame["properties"].isna().all()  # no policy: no messages, no coupons


def test_rates_are_realistic(shop: SimulationResult) -> None:
    sessions = sql(
        shop,
        """
        SELECT count(*) AS events, count(*) FILTER (event_type = 'view') AS views,
               bool_or(event_type = 'add_to_cart') AS cart, bool_or(event_type = 'purchase') AS bought
        FROM ev GROUP BY session_id
        """,
    )
    carts = sessions[sessions["cart"]]
    assert 0.6 <= 1 - carts["bought"].mean() <= 0.8  # abandonment
    assert 3 <= sessions["views"].mean() <= 7
    assert 4 <= sessions["events"].mean() <= 9
    assert 0.15 <= sessions["cart"].mean() <= 0.35
    # Natural recovery, measured from the log on carts with a full 7-day window.
    recovered = sql(
        shop,
        """
        SELECT c.cart_id, c.recovered, EXISTS (
            SELECT 1 FROM cart_items i JOIN ev e ON e.user_id = i.user_id AND e.product_id = i.product_id
            WHERE i.cart_id = c.cart_id AND e.event_type = 'purchase'
              AND e.timestamp > i.abandoned_at AND e.timestamp <= i.abandoned_at + INTERVAL 7 DAY
        ) AS measured
        FROM carts c WHERE c.abandoned_at < TIMESTAMPTZ '2024-04-22 00:00:00+00'
        """,
    )
    assert 0.08 <= recovered["measured"].mean() <= 0.22
    assert (recovered["measured"] == recovered["recovered"]).all()  # the log agrees with the truth
    assert len(shop.events) == pytest.approx(0.5 * 2000 * 120, rel=0.15)  # documented size


def test_a_30_minute_gap_recovers_the_sessions(shop: SimulationResult) -> None:
    gaps = sql(
        shop,
        """
        WITH b AS (
            SELECT session_id, lag(session_id) OVER w AS previous_session,
                   timestamp - lag(timestamp) OVER w AS gap
            FROM ev WINDOW w AS (PARTITION BY user_id ORDER BY timestamp, event_id)
        )
        SELECT min(gap) FILTER (session_id <> previous_session) AS between,
               max(gap) FILTER (session_id = previous_session) AS within
        FROM b
        """,
    ).iloc[0]
    assert gaps["between"] > pd.Timedelta(minutes=30)
    assert gaps["within"] < pd.Timedelta(minutes=30)


def test_sessions_happen_only_while_a_customer_is_alive(shop: SimulationResult) -> None:
    outside = sql(
        shop,
        """
        SELECT count(*) AS n FROM ev JOIN customers c USING (user_id)
        WHERE ev.session_id IS NOT NULL AND (ev.timestamp < c.acquired_at OR ev.timestamp >= c.churn_at)
        """,
    )
    assert outside["n"].iloc[0] == 0
    assert 0.5 < shop.customers["alive_at_end"].mean() < 1
    assert (shop.customers["acquired_at"] > pd.Timestamp("2024-01-01", tz="UTC")).mean() > 0.2


def test_seasonality_by_local_hour_and_month() -> None:
    year = simulate(customers=1500, days=366, seed=3)
    sessions = sql(
        year,
        """
        SELECT hour(min(timestamp) + to_seconds(CAST(any_value(c.utc_offset_hours) * 3600 AS BIGINT)))
                   AS local_hour,
               month(min(timestamp)) AS month
        FROM ev JOIN customers c USING (user_id) GROUP BY session_id
        """,
    )
    hours = sessions["local_hour"]
    assert hours.between(19, 21).sum() > 5 * hours.between(2, 4).sum()
    per_day = (
        sessions.groupby("month").size()
        / pd.Series(pd.date_range("2024-01-01", "2024-12-31").month).value_counts().sort_index()
    )
    assert per_day[[11, 12]].mean() > 1.2 * per_day[[8, 9, 10]].mean()


def spam(carts: pd.DataFrame) -> list[Action]:
    """A 15% coupon by e-mail an hour after every abandonment."""
    return [Action.parse("coupon15/email/1h")] * len(carts)


@pytest.fixture(scope="module")
def spammed() -> tuple[SimulationResult, SimulationResult]:
    return simulate(customers=2500, days=150, seed=21), simulate(
        customers=2500, days=150, seed=21, policy=spam
    )


def test_a_policy_sees_only_observable_columns() -> None:
    seen: list[pd.DataFrame] = []

    def watch(carts: pd.DataFrame) -> list[Action]:
        seen.append(carts)
        return [Action()] * len(carts)

    simulate(customers=200, days=10, seed=1, policy=watch)
    assert set(seen[0].columns) == {
        "cart_id", "user_id", "abandoned_at", "value", "n_items", "consent_email", "consent_sms",
        "consent_push",
    }  # fmt: skip
    with pytest.raises(ValueError, match="actions for"):
        simulate(customers=200, days=10, seed=1, policy=lambda carts: [])


def test_messages_and_coupon_orders_are_logged(spammed: tuple[SimulationResult, SimulationResult]) -> None:
    _, noisy = spammed
    frame = noisy.events.to_pandas()
    types = frame["event_type"].value_counts()
    assert types["message_sent"] > 1000
    assert 0.35 < types["message_opened"] / types["message_sent"] < 0.55  # e-mail opens about 45%
    messages = frame[frame["event_type"].str.startswith("message")]
    assert messages["session_id"].isna().all()
    assert messages["properties"].str.contains('"channel":"email"').all()
    coupons = frame[frame["properties"].str.contains('"coupon":"WINBACK15"', na=False)]
    assert (coupons["event_type"] == "purchase").all()
    assert len(coupons) > 50
    line = coupons.iloc[0]
    list_price = noisy.products.set_index("product_id").loc[line["product_id"], "price"]
    assert line["price"] == pytest.approx(round(list_price * 0.85, 2))
    # The truth says what the policy did, cart by cart.
    carts = noisy.carts
    assert (carts["action"] == "coupon15/email/1h").all()
    assert carts.loc[~carts["consent_email"], "sent"].sum() == 0
    assert carts["discount"].sum() > 0


def test_spamming_unsubscribes_and_churns(spammed: tuple[SimulationResult, SimulationResult]) -> None:
    quiet, noisy = spammed
    assert quiet.customers["unsubscribed_email_at"].isna().all()
    assert noisy.customers["unsubscribed_email_at"].notna().sum() > 0
    assert (noisy.events["event_type"].to_pandas() == "unsubscribed").sum() > 0
    # Same seed, same customers and lifetimes: messaging can only have cut them short.
    shortened = noisy.customers["churn_at"] < noisy.customers["initial_churn_at"]
    assert shortened.sum() > 20
    assert noisy.customers["alive_at_end"].sum() < quiet.customers["alive_at_end"].sum()
    # An unsubscribed customer is never messaged on that channel again.
    unsubscribed = noisy.customers.set_index("user_id")["unsubscribed_email_at"]
    after = noisy.carts["abandoned_at"] > noisy.carts["user_id"].map(unsubscribed)
    assert after.sum() > 0
    assert not noisy.carts.loc[after, "sent"].any()


def test_coupon_harvesters_learn_to_abandon(spammed: tuple[SimulationResult, SimulationResult]) -> None:
    quiet, noisy = spammed
    assert quiet.customers["harvest_level"].max() == 0
    harvesters = noisy.customers["harvest_propensity"] > 0.5
    assert noisy.customers.loc[harvesters, "harvest_level"].mean() > 0.1
    assert noisy.customers.loc[~harvesters, "harvest_level"].mean() < 0.02

    def late_purchase_rate(result: SimulationResult) -> float:
        rate = sql(
            result,
            """
            WITH s AS (
                SELECT session_id, any_value(user_id) AS user_id, min(timestamp) AS t,
                       bool_or(event_type = 'add_to_cart') AS cart, bool_or(event_type = 'purchase') AS bought
                FROM ev WHERE session_id IS NOT NULL GROUP BY session_id
            )
            SELECT avg(bought::INT) AS rate FROM s JOIN customers c USING (user_id)
            WHERE cart AND c.harvest_propensity > 0.5 AND t >= TIMESTAMPTZ '2024-03-15 00:00:00+00'
            """,
        )
        return float(rate["rate"].iloc[0])

    assert late_purchase_rate(noisy) < 0.75 * late_purchase_rate(quiet)


def test_write_events_and_truth(shop: SimulationResult, tmp_path: Path) -> None:
    small = shop.events.slice(0, 1000)
    write_events(small, tmp_path / "e.parquet")
    assert pq.read_table(tmp_path / "e.parquet").equals(small)
    write_events(small, tmp_path / "e.csv")
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0].startswith('"event_id","event_type","timestamp"')
    assert len(lines) == 1001
    assert '"2024-01-01T' in lines[1]
    assert 'Z"' in lines[1]
    paths = write_truth(shop, tmp_path / "truth")
    carts = pd.read_parquet(paths["carts"])
    assert len(carts) == len(shop.carts)
    assert list(carts["items"].iloc[0]) == list(shop.carts["items"].iloc[0])
    assert len(pd.read_parquet(paths["customers"])) == 2000
    assert np.isclose(pd.read_parquet(paths["carts"])["p_natural"], shop.carts["p_natural"]).all()

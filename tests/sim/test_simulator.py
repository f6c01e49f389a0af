"""The shop simulator: deterministic, realistic rates, and the causal effects it promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import Action, default_catalogue
from winback.events.schema import EVENT_SCHEMA
from winback.sim import SimulationResult, expected_outcomes, realised_outcomes, simulate


@pytest.fixture(scope="module")
def shop() -> SimulationResult:
    return simulate(customers=3000, days=120, seed=11)


def test_same_seed_same_shop_other_seed_other_shop() -> None:
    a, b, c = (simulate(customers=300, days=40, seed=s) for s in (5, 5, 6))
    assert a.events.equals(b.events)
    assert a.carts.equals(b.carts)
    assert not a.events.equals(c.events)


def test_schema_and_identity(shop: SimulationResult) -> None:
    events = shop.events
    assert events.schema.equals(EVENT_SCHEMA)
    frame = events.to_pandas()
    assert frame["event_id"].is_unique
    assert frame["timestamp"].is_monotonic_increasing
    purchases = frame[frame["event_type"] == "purchase"]
    assert purchases[["user_id", "price", "quantity", "order_id"]].notna().all().all()
    assert (purchases["price"] > 0).all()


def test_realistic_rates(shop: SimulationResult) -> None:
    frame = shop.events.to_pandas()
    sessions = frame.groupby("session_id")["event_type"].agg(set)
    carts = sessions[sessions.map(lambda s: "add_to_cart" in s)]
    abandoned = carts.map(lambda s: "purchase" not in s).mean()
    assert 0.62 <= abandoned <= 0.78
    assert 0.08 <= shop.carts["recovered"].mean() <= 0.22
    assert 3 <= len(frame) / len(sessions) <= 10  # events per session
    # A natural recovery is a later session of the same user buying an item of the cart.
    recovered = shop.carts[shop.carts["recovered"]].iloc[0]
    later = frame[(frame["user_id"] == recovered["user_id"]) & (frame["event_type"] == "purchase")
                  & (frame["timestamp"] > recovered["abandoned_at"])]  # fmt: skip
    assert len(later) > 0


def test_sessions_are_recoverable_with_a_30_minute_gap(shop: SimulationResult) -> None:
    frame = shop.events.to_pandas().sort_values(["user_id", "timestamp"])
    behaviour = frame[frame["session_id"].notna()]
    gap = behaviour.groupby("user_id")["timestamp"].diff()
    new_session = behaviour["session_id"] != behaviour.groupby("user_id")["session_id"].shift()
    assert (gap[new_session & gap.notna()] > pd.Timedelta(minutes=30)).all()
    assert (gap[~new_session] < pd.Timedelta(minutes=30)).all()


def test_seasonality_by_local_hour_and_month() -> None:
    year = simulate(customers=1500, days=365, seed=3)
    frame = year.events.to_pandas()
    offsets = year.customers.set_index("user_id")["tz_offset_hours"]
    local_hour = (frame["timestamp"] + pd.to_timedelta(frame["user_id"].map(offsets), unit="h")).dt.hour
    assert (local_hour.between(19, 21)).sum() > 4 * (local_hour.between(2, 4)).sum()
    by_month = frame.groupby(frame["timestamp"].dt.month).size()
    assert by_month[[11, 12]].mean() > 1.2 * by_month[[8, 9]].mean()


def test_coupons_help_only_the_price_sensitive(shop: SimulationResult) -> None:
    carts = shop.carts
    coupon, reminder = Action.parse("coupon15/email/24h"), Action.parse("reminder/email/24h")
    table = expected_outcomes(carts, [coupon, reminder], shop.config)
    wide = table.pivot(index="cart_id", columns="action", values="p_recover").loc[carts["cart_id"]]
    lift = (wide[coupon.name] - wide[reminder.name]).to_numpy()
    sensitive = carts["price_sensitivity"].to_numpy() > 0.6
    insensitive = carts["price_sensitivity"].to_numpy() < 0.3
    assert lift[sensitive].mean() > 0.05
    assert lift[insensitive].max() == pytest.approx(0.0, abs=1e-12)
    # ...and the discount is paid by people who would have bought anyway.
    assert table.loc[table["action"] == coupon.name, "discount"].sum() > 0


def test_reminders_within_the_hour_hurt_and_a_day_later_help(shop: SimulationResult) -> None:
    actions = [Action(), *(Action.parse(f"reminder/email/{h}h") for h in (1, 6, 24, 72))]
    table = expected_outcomes(shop.carts, actions, shop.config).groupby("action")["incremental_margin"].mean()
    assert table["reminder/email/1h"] < 0 < table["reminder/email/72h"] < table["reminder/email/24h"]
    assert table["nothing"] == 0


def test_common_random_numbers_make_differences_exact(shop: SimulationResult) -> None:
    carts = shop.carts
    nothing = realised_outcomes(carts, Action(), shop.config)
    assert (nothing["recovered"].to_numpy() == carts["recovered"].to_numpy()).all()
    # A channel the customer never consented to changes nothing, cart by cart.
    no_sms = carts[~carts["can_sms"]]
    sms = realised_outcomes(no_sms, Action.parse("coupon15/sms/24h"), shop.config)
    assert (sms["recovered"].to_numpy() == no_sms["recovered"].to_numpy()).all()
    assert not sms["sent"].any()
    # A helpful action only ever adds recoveries where it matters: no cart is lost by a 24 h reminder
    # unless its customer would have bought and the message opened with negative lift (not at 24 h).
    remind = realised_outcomes(carts, Action.parse("reminder/email/24h"), shop.config)
    assert (remind["recovered"].to_numpy() >= carts["recovered"].to_numpy()).all()


def test_closed_form_expectation_matches_realisations(shop: SimulationResult) -> None:
    carts = shop.carts
    for action in (Action.parse("reminder/email/1h"), Action.parse("coupon10+recs/push/6h")):
        expected = expected_outcomes(carts, action, shop.config)["p_recover"].mean()
        realised = realised_outcomes(carts, action, shop.config)["recovered"].mean()
        standard_error = np.sqrt(expected * (1 - expected) / len(carts))
        assert abs(expected - realised) < 4 * standard_error


def test_every_catalogue_action_is_priced(shop: SimulationResult) -> None:
    catalogue = default_catalogue()
    assert len(catalogue) == 97
    assert {Action.parse(a.name) for a in catalogue} == set(catalogue)
    table = expected_outcomes(shop.carts.head(200), catalogue, shop.config)
    assert len(table) == 200 * 97
    assert table["p_recover"].between(0, 1).all()


def test_spamming_coupons_unsubscribes_churns_and_teaches_harvesting() -> None:
    def spam(carts: pd.DataFrame) -> list[Action]:
        return [Action.parse("coupon15/email/1h")] * len(carts)

    quiet = simulate(customers=3000, days=240, seed=21)
    noisy = simulate(customers=3000, days=240, seed=21, policy=spam)
    types = noisy.events.to_pandas()["event_type"].value_counts()
    assert types["message_sent"] > 1000
    assert types["message_opened"] < types["message_sent"]
    assert types["unsubscribed"] > 0
    assert noisy.customers["unsubscribed_email"].sum() > 0
    assert noisy.customers["alive_at_end"].sum() < quiet.customers["alive_at_end"].sum()
    learners = noisy.customers["harvest_propensity"] > 0
    assert noisy.customers.loc[learners, "harvest_level"].mean() > 0.05
    assert quiet.customers["harvest_level"].max() == 0
    # Harvesters abandon more once they have learnt: their carts' in-session purchase rate falls.
    harvesters = set(noisy.customers.loc[noisy.customers["harvest_propensity"] > 0.5, "user_id"])

    def late_purchase_rate(result: SimulationResult) -> float:
        frame = result.events.to_pandas()
        frame = frame[
            frame["user_id"].isin(harvesters) & (frame["timestamp"] >= pd.Timestamp("2024-06-01", tz="UTC"))
        ]
        sessions = frame.groupby("session_id")["event_type"].agg(set)
        carts = sessions[sessions.map(lambda s: "add_to_cart" in s)]
        return float(carts.map(lambda s: "purchase" in s).mean())

    assert late_purchase_rate(noisy) < 0.8 * late_purchase_rate(quiet)


def test_policy_must_answer_every_cart() -> None:
    with pytest.raises(ValueError, match="actions for"):
        simulate(customers=200, days=30, seed=1, policy=lambda carts: [])


def test_price_sensitive_customers_swap_for_cheaper_substitutes(shop: SimulationResult) -> None:
    frame = shop.events.to_pandas()
    cart = frame[frame["event_type"].isin(["add_to_cart", "remove_from_cart"])]
    previous = cart.groupby("session_id").shift()
    swap = (
        (cart["event_type"] == "add_to_cart")
        & (previous["event_type"] == "remove_from_cart")
        & (cart["category"] == previous["category"])
        & (cart["price"] < previous["price"])
    )
    assert swap.sum() > 20
    swappers = shop.customers.set_index("user_id").loc[cart.loc[swap, "user_id"], "price_sensitivity"]
    assert swappers.mean() > shop.customers["price_sensitivity"].mean()

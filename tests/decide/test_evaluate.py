"""The simulator truth harness: point-in-time features, logged rewards as the simulator realised them, and
policies scored on later carts (the oracle on top, the uplift policy above the 10 h reminder)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from winback.decide.evaluate import (
    FEATURES,
    POLICIES,
    evaluate_seed,
    fit_uplift,
    history_features,
    logged_shop,
    simulate_policies,
)
from winback.errors import BadInputError
from winback.sim import realised_outcomes

#: A small log: the holdout, the baselines' actions and a few that work, so a small shop has rows per arm.
SMALL_LOG = (
    "nothing",
    "reminder/email/1h",
    "reminder/email/10h",
    "coupon10/email/24h",
    "reminder+recs/email/24h",
    "reminder+recs/sms/24h",
)
LATENT = {"price_sensitivity", "forgetfulness", "loyalty", "harvest_propensity", "harvest_level", "p_natural",
          "open_email", "open_sms", "open_push", "messages_7d", "natural_recovered"}  # fmt: skip


@pytest.fixture(scope="module")
def small_shop():  # type: ignore[no-untyped-def]
    return logged_shop(3, 1500, 60, logged_actions=SMALL_LOG)


def test_features_are_what_a_shop_sees() -> None:
    assert not LATENT & set(FEATURES)
    assert not any(name.startswith("u_") for name in FEATURES)


def test_history_features_count_a_hand_made_log() -> None:
    t0 = pd.Timestamp("2024-03-01 10:00", tz="UTC")
    minute = pd.Timedelta(minutes=1)
    rows = [  # (type, at, session, order, price, quantity, properties)
        ("view", t0, "s1", None, 10.0, None, None),
        ("add_to_cart", t0 + minute, "s1", None, 10.0, 1, None),
        ("purchase", t0 + 2 * minute, "s1", "o1", 10.0, 1, None),
        ("purchase", t0 + 2 * minute, "s1", "o1", 5.0, 2, None),
        ("message_sent", t0 + 60 * minute, None, None, None, None, '{"action":"x","channel":"email"}'),
        ("message_opened", t0 + 90 * minute, None, None, None, None, '{"action":"x","channel":"email"}'),
        ("message_sent", t0 + 95 * minute, None, None, None, None, '{"action":"x","channel":"sms"}'),
        ("purchase", t0 + 120 * minute, "s2", "o2", 8.0, 1, '{"coupon":"WINBACK10"}'),
        ("view", t0 + 24 * 60 * minute, "s3", None, 3.0, None, None),  # at the cart's abandonment: not before
    ]
    events = pa.table(
        {
            "event_type": [r[0] for r in rows],
            "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "user_id": ["u1"] * len(rows),
            "session_id": [r[2] for r in rows],
            "order_id": [r[3] for r in rows],
            "price": pa.array([r[4] for r in rows], pa.float64()),
            "quantity": pa.array([r[5] for r in rows], pa.int32()),
            "properties": [r[6] for r in rows],
        }
    )
    carts = pd.DataFrame({"user_id": ["u1", "u2"], "abandoned_at": [t0 + 24 * 60 * minute, t0]})
    decisions = pd.DataFrame(
        {"user_id": ["u1", "u1"], "abandoned_at": [t0 - 2 * minute, t0 + 24 * 60 * minute],
         "action": ["nothing", "reminder/email/24h"], "recovered_at": [t0 + 2 * minute, pd.NaT]}
    )  # fmt: skip
    got = history_features(events, carts, decisions)
    first = got.iloc[0]
    expected = {
        "visits": 2, "carts_started": 1, "orders": 2, "revenue": 28.0, "coupon_orders": 1, "clicks": 0,
        "sent_email": 1, "opened_email": 1, "sent_sms": 1, "opened_sms": 0, "sent_push": 0, "abandoned": 1,
        "messaged": 0, "recovered": 1, "recovered_unmessaged": 1, "open_rate_email": 2 / 3,
        "open_rate_sms": 1 / 3, "open_rate_push": 1 / 2, "natural_rate": 1.15 / 2,
    }  # fmt: skip
    assert {k: first[k] for k in expected} == pytest.approx(expected)
    assert first["days_since_first_visit"] == pytest.approx(1.0)
    assert first["days_since_last_order"] == pytest.approx((24 * 60 - 120) / (24 * 60))
    stranger = got.iloc[1]  # no history at all
    priors = ["natural_rate", "days_since_last_order", *(f"open_rate_{c}" for c in ("email", "sms", "push"))]
    assert (stranger.drop(priors) == 0).all()
    assert math.isnan(stranger["days_since_last_order"])
    assert stranger["open_rate_email"] == pytest.approx(0.5)


def test_history_features_are_point_in_time(small_shop) -> None:  # type: ignore[no-untyped-def]
    events, carts = small_shop.shop.events, small_shop.carts
    cutoff = pd.Timestamp(small_shop.shop.config.start, tz="UTC") + pd.Timedelta(days=30)
    before = carts[carts["abandoned_at"] < cutoff]
    decisions = carts[["user_id", "abandoned_at", "action", "recovered_at"]]
    full = history_features(events, before, decisions)
    past_events = events.filter(
        pa.compute.less(events["timestamp"], pa.scalar(cutoff, events["timestamp"].type))
    )
    past = decisions[decisions["abandoned_at"] < cutoff].copy()
    past["recovered_at"] = past["recovered_at"].where(past["recovered_at"] < cutoff)
    truncated = history_features(past_events, before, past)
    pd.testing.assert_frame_equal(full, truncated)
    assert full["visits"].max() > 1  # there is history to leak
    assert full["sent_email"].sum() > 0


def test_logged_rewards_are_what_the_simulator_realised(small_shop) -> None:  # type: ignore[no-untyped-def]
    carts = small_shop.carts
    realised = realised_outcomes(carts, carts["action"], small_shop.shop.config)
    np.testing.assert_allclose(carts["reward"].to_numpy(), realised["margin"].to_numpy(), atol=1e-9)
    assert sorted(carts["action"].unique()) == sorted(SMALL_LOG)
    # Uniform over what the customer consented to: nothing, four e-mails, one SMS.
    candidates = 1 + 4 * carts["consent_email"].astype(int) + carts["consent_sms"].astype(int)
    np.testing.assert_allclose(carts["propensity"], 1 / candidates)
    for channel in ("email", "sms"):
        assert carts.loc[carts["action"].str.contains(f"/{channel}/"), f"consent_{channel}"].all()


def test_the_uplift_policy_is_trained_on_earlier_carts_only(small_shop) -> None:  # type: ignore[no-untyped-def]
    first_test = small_shop.carts.loc[small_shop.test, "abandoned_at"].min()
    last_train = small_shop.carts.loc[small_shop.train, "abandoned_at"].max()
    assert first_test - last_train >= pd.Timedelta(days=7)
    policy = fit_uplift(small_shop, seed=3)
    assert sum(policy.purchase.arm_rows_.values()) == int(small_shop.train.sum())
    assert list(policy.purchase.feature_names_in_) == list(FEATURES)


def test_policies_against_the_truth_on_a_small_shop() -> None:
    table = evaluate_seed(0, 3000, 90, logged_actions=SMALL_LOG, n_boot=20)
    value = table.set_index("name")["profit_per_cart"]
    assert list(table["name"]) == list(POLICIES)
    single = value.drop(["oracle", "oracle-flow", "fitted-q", "static-1h-24h-72h"])
    assert (value["oracle"] >= single - 1e-12).all()  # the best single action beats single actions
    assert (value["oracle-flow"] >= value.drop("oracle-flow") - 1e-12).all()
    assert value["oracle"] >= value["oracle-logged"] >= value["uplift"]
    assert value["uplift"] > value["static-10h"]
    assert value["fitted-q"] > 0
    assert value["bandit"] > 0
    coupons = table.set_index("name").loc["coupon-everyone"]
    assert coupons["coupon_low"] < 0 < coupons["coupon_high"]  # coupons lose on the price-insensitive
    by_name = table.set_index("name")
    for name in ("oracle", "oracle-flow", "fitted-q", "bandit", "static-1h-24h-72h"):
        assert math.isnan(by_name.loc[name, "ope_estimate"])  # not in the one-action log
    assert (
        by_name["ope_margin"]
        .drop(["oracle", "oracle-flow", "fitted-q", "bandit", "static-1h-24h-72h"])
        .notna()
        .all()
    )
    assert (
        by_name.loc["static-1h-24h-72h", "messages_per_cart"]
        > 2 * by_name.loc["static-10h", "messages_per_cart"]
    )


def test_the_three_step_flow_is_scored_whole() -> None:
    """static-1h-24h-72h: its whole flow, above its 1 h step alone and still below the 24 h reminder."""
    from winback.sim.flows import expected_flow_outcomes

    shop = logged_shop(1, 1500, 60, logged_actions=SMALL_LOG)
    carts = shop.carts[shop.test]
    config = shop.shop.config
    flow = ["reminder/email/1h", "reminder/email/24h", "coupon10/email/72h"]
    whole = expected_flow_outcomes(carts, flow, config)["incremental_margin"].mean()
    first = expected_flow_outcomes(carts, flow[:1], config)["incremental_margin"].mean()
    assert first < 0 < whole
    table = evaluate_seed(1, 1500, 60, policies=("static-1h-24h-72h",), logged_actions=SMALL_LOG, n_boot=20)
    assert table["profit_per_cart"].iloc[0] == pytest.approx(whole)


def test_simulate_policies_averages_seeds_with_a_t_interval() -> None:
    tables: list[pd.DataFrame] = []
    table = simulate_policies(["static-10h", "oracle"], 1200, 60, seeds=(1, 2), logged_actions=SMALL_LOG,
                              n_boot=20, per_seed=tables)  # fmt: skip
    per_seed = pd.concat(tables)
    for name, row in table.set_index("name").iterrows():
        values = per_seed.loc[per_seed["name"] == name, "profit_per_cart"].to_numpy()
        half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / math.sqrt(2)
        assert row["profit_per_cart"] == pytest.approx(values.mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((values.mean() - half, values.mean() + half))
        assert row["seeds"] == 2


def test_bad_input_is_refused() -> None:
    with pytest.raises(BadInputError, match="train_days 5"):
        logged_shop(0, 200, 60, train_days=5)
    with pytest.raises(BadInputError, match="must include 'nothing'"):
        logged_shop(0, 200, 60, logged_actions=("reminder/email/24h",))
    with pytest.raises(BadInputError, match="policy 'fitted-r'"):
        evaluate_seed(0, 200, 60, policies=("fitted-r",))
    with pytest.raises(BadInputError, match="seeds"):
        simulate_policies(seeds=())

"""The holdout analysis against the simulator's truth, and its interval formulas against published values.

Coverage: one simulated shop's abandoned carts keep their latent truth (what each would do under every
action). Each replication draws a new random holdout of customers and new outcomes for every cart from
the simulator's own response model (fresh random numbers per cart), analyses it as the report does, and
checks whether each 95% interval contains the true difference: the mean over the carts of the exact
expected outcome under the policy's action minus that under doing nothing (for conversion, over
customers, of the chance that any of their carts is bought). Over many replications about 95% must.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import CHANNELS, NOTHING, Action
from winback.measure.experiments import (
    MIN_CUSTOMERS,
    compare,
    headline,
    newcombe_interval,
    welch_interval,
    wilson_interval,
)
from winback.measure.simulated import simulate_with_holdout
from winback.sim import ShopConfig, expected_outcomes, realised_outcomes
from winback.sim.response import UNIFORMS

REPLICATIONS = 300


def test_wilson_and_newcombe_match_newcombe_1998() -> None:
    # Newcombe (1998), Statistics in Medicine 17, table II: 56/70 - 48/80, method 10: 0.0524 to 0.3339
    low, high = newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # ... and 9/10 - 3/10: 0.1705 to 0.8090
    low, high = newcombe_interval(9, 10, 3, 10)
    assert (round(low, 4), round(high, 4)) == (0.1705, 0.809)
    # Wilson's interval of 0/10 (Newcombe 1998b, table I): 0 to 0.2775
    assert [round(v, 4) for v in wilson_interval(0, 10)] == [0.0, 0.2775]


def test_welch_matches_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.exponential(3.0, 40), rng.exponential(2.0, 400)
    low, high = welch_interval(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    result = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert low == pytest.approx(result.low)
    assert high == pytest.approx(result.high)


@pytest.fixture(scope="module")
def carts() -> tuple[pd.DataFrame, ShopConfig]:
    """A shop's abandoned carts with their truth, and the action the randomising policy would give each
    (whatever the holdout: the holdout is redrawn per replication)."""
    log = simulate_with_holdout(3, ShopConfig(customers=2500, days=75))
    carts = log.shop.carts.reset_index(drop=True)
    rng = np.random.default_rng(1)
    pool = [Action.parse(a) for a in ("reminder+recs/email/24h", "coupon10+recs/email/24h",
                                      "reminder/email/1h", "reminder+recs/sms/24h")]  # fmt: skip
    chosen = []
    for row in carts[[f"consent_{c}" for c in CHANNELS]].to_dict("records"):
        allowed = [a for a in pool if row[f"consent_{a.channel}"]]
        chosen.append(allowed[rng.integers(len(allowed))].name if allowed else NOTHING.name)
    carts["policy_action"] = chosen
    return carts, log.shop.config


def _truth(carts: pd.DataFrame, config: ShopConfig) -> dict[str, float]:
    treated = expected_outcomes(carts, carts["policy_action"], config)
    nothing = expected_outcomes(carts, NOTHING, config)
    truth = {m: float((treated[c] - nothing[c]).mean()) for m, c in
             (("recovery", "p_recover"), ("revenue", "revenue"), ("margin", "margin"))}  # fmt: skip

    def any_bought(p: pd.Series) -> pd.Series:
        return 1 - (1 - p).groupby(carts["user_id"].to_numpy()).prod()

    truth["conversion"] = float(
        (any_bought(treated["p_recover"].reset_index(drop=True)) - any_bought(nothing["p_recover"])).mean()
    )
    return truth


def _replicate(
    carts: pd.DataFrame, config: ShopConfig, rng: np.random.Generator, share: float
) -> pd.DataFrame:
    """One experiment: a fresh holdout of customers and fresh outcomes, prepared as the report reads them."""
    users = carts["user_id"].unique()
    held_users = set(users[rng.random(users.size) < share])
    held = carts["user_id"].isin(held_users).to_numpy()
    actions = pd.Series(np.where(held, NOTHING.name, carts["policy_action"]), index=carts.index)
    fresh = carts.copy()
    fresh[list(UNIFORMS)] = rng.random((len(carts), len(UNIFORMS)))
    out = realised_outcomes(fresh, actions, config)
    return pd.DataFrame(
        {
            "user_id": carts["user_id"].to_numpy(),
            "holdout": held,
            "recovered": out["recovered"].to_numpy(dtype=float),
            "revenue": out["revenue"].to_numpy(dtype=float),
            "discount": out["discount"].to_numpy(dtype=float),
            "margin": out["margin"].to_numpy(dtype=float),
            "attributed": np.where(out["sent"] & out["recovered"], out["revenue"], 0.0),
            "action": actions.to_numpy(),
            "channel": [Action.parse(a).channel or "none" for a in actions],
            **{f"consent_{c}": carts[f"consent_{c}"].to_numpy(dtype=bool) for c in CHANNELS},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize(("customers", "share"), [(None, 0.1), (400, 0.2)], ids=["whole-shop", "small"])
def test_intervals_cover_the_simulators_truth(
    carts: tuple[pd.DataFrame, ShopConfig], customers: int | None, share: float
) -> None:
    frame, config = carts
    if customers is not None:  # a small shop: the sizes where warnings start
        keep = frame["user_id"].drop_duplicates().sample(customers, random_state=0)
        frame = frame[frame["user_id"].isin(set(keep))].reset_index(drop=True)
    truth = _truth(frame, config)
    rng = np.random.default_rng(2)
    covered = {m: 0 for m in truth}
    for _ in range(REPLICATIONS):
        table = compare(_replicate(frame, config, rng, share), "all").set_index("metric")
        for metric, value in truth.items():
            covered[metric] += bool(table.loc[metric, "ci_low"] <= value <= table.loc[metric, "ci_high"])
    rates = {m: n / REPLICATIONS for m, n in covered.items()}
    # 95% nominal; with 300 replications the estimate's own standard error is 1.3 points
    spread = 3 * math.sqrt(0.95 * 0.05 / REPLICATIONS)
    print(f"coverage of 95% intervals ({customers or 'all'} customers, holdout {share:.0%}): {rates}")
    assert all(0.95 - spread <= r <= 0.995 for r in rates.values()), (rates, truth)


def test_by_action_matches_channel_consent_and_warns(carts: tuple[pd.DataFrame, ShopConfig]) -> None:
    frame, config = carts
    experiment = _replicate(frame, config, np.random.default_rng(5), 0.1)
    table = compare(experiment, "action")
    assert "conversion" not in set(table["metric"])  # not comparable per customer for an action
    sms = table[(table["group"] == "reminder+recs/sms/24h") & (table["metric"] == "recovery")].iloc[0]
    consented = experiment["holdout"] & experiment["consent_sms"]
    assert sms["decisions_control"] == int(consented.sum())
    small = compare(experiment[experiment["user_id"].isin(experiment["user_id"].unique()[:60])], "all")
    assert small["warning"].str.startswith("too few customers").all()
    assert (small["customers_control"] < MIN_CUSTOMERS).all()


def test_headline_scales_the_difference_and_shows_the_attributed_gap(
    carts: tuple[pd.DataFrame, ShopConfig],
) -> None:
    frame, config = carts
    experiment = _replicate(frame, config, np.random.default_rng(6), 0.1)
    found = headline(experiment)
    assert found is not None
    assert found.margin is not None
    assert found.ci_low is not None
    treated = experiment[~experiment["holdout"]]
    control = experiment[experiment["holdout"]]
    expected = (treated["margin"].mean() - control["margin"].mean()) * len(treated)
    assert found.margin == pytest.approx(expected)
    assert found.ci_low < found.margin < found.ci_high
    assert found.discount == pytest.approx(treated["discount"].sum())
    # a vendor counts every order after a message: far more than the messages added
    assert found.attributed_revenue > 2 * (found.incremental_revenue or 0)


def test_no_holdout_gives_no_headline_and_no_intervals(carts: tuple[pd.DataFrame, ShopConfig]) -> None:
    frame, config = carts
    experiment = _replicate(frame, config, np.random.default_rng(7), 0.0)
    assert headline(experiment) is None
    table = compare(experiment, "all")
    assert table["control"].isna().all()
    assert table["ci_low"].isna().all()
    assert table["warning"].str.contains("too few customers").all()

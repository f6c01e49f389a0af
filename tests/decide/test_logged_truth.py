"""The decision log against the simulator's truth: the log's rewards are each cart's own realisation of the
per-cart model the truth is the expectation of, so each logged arm's realised mean agrees with the exact
expectation within sampling error, and off-policy estimates are unbiased over redraws of the carts' own
random numbers. What an off-policy estimate misses by on one shop is that sampling noise, not a gap
between the log and the truth (docs/decide.md, "Off-policy estimates")."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from winback.decide.evaluate import LOGGED_ACTIONS, LoggedShop, logged_shop
from winback.decide.ope import evaluate, one_hot
from winback.sim import expected_outcomes, realised_outcomes
from winback.sim.response import UNIFORMS

REDRAWS = 40


@pytest.fixture(scope="module")
def run() -> LoggedShop:
    return logged_shop(7, 4000, 90)


def redrawn_margins(carts: pd.DataFrame, run: LoggedShop, seed: int) -> np.ndarray:
    """Realised margin of each cart's logged action, one row per fresh draw of every cart's uniforms."""
    rng = np.random.default_rng(seed)
    fresh = carts.copy()
    out = np.empty((REDRAWS, len(carts)))
    for i in range(REDRAWS):
        fresh[list(UNIFORMS)] = rng.random((len(carts), len(UNIFORMS)))
        out[i] = realised_outcomes(fresh, fresh["action"], run.shop.config)["margin"].to_numpy()
    return out


def test_each_logged_arm_realises_its_expectation(run: LoggedShop) -> None:
    carts = run.carts
    reward = carts["reward"].to_numpy()
    expected = expected_outcomes(carts, carts["action"], run.shop.config)["margin"].to_numpy()
    draws = redrawn_margins(carts, run, seed=1)
    z = []
    for action, rows in carts.groupby("action").indices.items():
        arm = draws[:, rows].mean(axis=1)  # the arm's mean margin on other draws of the same carts
        spread = arm.std(ddof=1)  # its sampling error on one draw
        assert abs(arm.mean() - expected[rows].mean()) < 4 * spread / math.sqrt(REDRAWS), action
        z.append((reward[rows].mean() - expected[rows].mean()) / spread)
    assert len(z) == len(LOGGED_ACTIONS)
    # The log's own draw: every arm within 4 standard errors, and jointly no more spread than chance.
    assert np.all(np.abs(z) < 4), z
    assert float(np.sum(np.square(z))) < stats.chi2.ppf(0.999, len(z)), z


def test_off_policy_estimates_are_unbiased_over_the_carts_own_draws(run: LoggedShop) -> None:
    carts = run.carts[run.test]
    config = run.shop.config
    log = carts[["action", "propensity", "reward"]]
    names = list(LOGGED_ACTIONS)
    exact = pd.DataFrame(
        {a: expected_outcomes(carts, a, config)["margin"].to_numpy() for a in names}, index=log.index
    )
    remind = one_hot(["reminder/email/10h" if c else "nothing" for c in carts["consent_email"]], names,
                     index=log.index)  # fmt: skip
    hold = one_hot(["nothing"] * len(log), names, index=log.index)
    truth = float(((remind - hold) * exact).sum(axis=1).mean())

    def incremental(rewards: np.ndarray) -> float:
        found = evaluate(log.assign(reward=rewards), remind, baseline=hold, reward_model=exact,
                         estimators=("dr",), n_boot=1)  # fmt: skip
        return found["dr"].value

    estimates = np.array([incremental(r) for r in redrawn_margins(carts, run, seed=2)])
    spread = estimates.std(ddof=1)
    assert abs(estimates.mean() - truth) < 4 * spread / math.sqrt(REDRAWS)
    # The log's own estimate is one such draw; on a shop this size one draw's error is several times
    # the true increment, which is why a single small shop's estimate cannot be within 10% of it.
    assert abs(incremental(log["reward"].to_numpy()) - truth) < 4 * spread
    assert spread > abs(truth)

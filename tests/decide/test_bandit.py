"""The Thompson bandit: it finds the best arm per context of a synthetic problem, its propensities are the
probabilities it acts with, its exploration stays under the cap, it never sends what it was not allowed,
its posterior is the ridge solution computed independently; and, played through a small simulated shop,
it earns more in the last month than in the first and beats "coupon to everyone" where coupons are
wasted."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import NOTHING, Action
from winback.decide.bandit import EXPLORED, OnlineRun, ThompsonBandit, consent_mask, run_online
from winback.decide.catalogue import load_catalogue
from winback.decide.context import DecisionContext
from winback.decide.guardrails import Guardrails
from winback.decide.policy import Guarded, StaticPolicy
from winback.errors import BadInputError
from winback.sim import Effects, ShopConfig, expected_outcomes, simulate

REMINDER, COUPON = Action.parse("reminder/email/24h"), Action.parse("coupon10/email/24h")
ARMS = [NOTHING, REMINDER, COUPON]
#: Margin rate (reward / cart value) of each arm for the two segments (-1, +1) of the synthetic problem:
#: the reminder is best for segment -1, the coupon for segment +1.
RATE = {-1: np.array([0.05, 0.07, 0.04]), 1: np.array([0.05, 0.06, 0.09])}
NOISE = 0.05
#: Monday 2024-06-10 10:00 UTC: a 24 h delay lands in the daytime for a UTC customer (no quiet hours).
MORNING = datetime(2024, 6, 10, 10, tzinfo=UTC).timestamp()


def synthetic_carts(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "value": np.exp(rng.normal(np.log(60), 0.8, n)),
            "n_items": rng.integers(1, 4, n),
            "consent_email": True,
            "segment": rng.choice([-1.0, 1.0], n),
        }
    )


def synthetic_rewards(carts: pd.DataFrame, actions: list[Action], rng: np.random.Generator) -> np.ndarray:
    arm = np.array([ARMS.index(a) for a in actions])
    rate = np.where(carts["segment"] > 0, RATE[1][arm], RATE[-1][arm])
    value = carts["value"].to_numpy()
    return value * (rate + NOISE * rng.standard_normal(len(carts)))


def trained(rounds: int, seed: int = 0, **params: float) -> ThompsonBandit:
    """A bandit that played ``rounds`` batches of 100 synthetic carts, learning after each."""
    rng = np.random.default_rng(seed)
    bandit = ThompsonBandit(ARMS, features=["segment"], seed=seed, **params)  # type: ignore[arg-type]
    for _ in range(rounds):
        carts = synthetic_carts(100, rng)
        chosen = [d.action for d in bandit.decide_batch(carts, ARMS)]
        bandit.update(carts, chosen, synthetic_rewards(carts, chosen, rng))
    return bandit


def segment_context(segment: float, **changes: object) -> DecisionContext:
    base: dict[str, object] = {
        "user_id": "u1", "now": MORNING, "cart_id": "c1", "abandoned_at": MORNING, "value": 60.0,
        "consent": frozenset({"email"}), "in_stock": True, "features": {"segment": segment, "n_items": 2},
    }  # fmt: skip
    return DecisionContext(**{**base, **changes})  # type: ignore[arg-type]


def segment_cart(segment: float) -> pd.DataFrame:
    return pd.DataFrame({"value": [60.0], "n_items": [2], "consent_email": [True], "segment": [segment]})


# --------------------------------------------------------------------------- learning


def test_converges_to_the_best_arm_per_context() -> None:
    bandit = trained(40)
    rng = np.random.default_rng(99)
    carts = synthetic_carts(2000, rng)
    greedy = bandit.scores(carts).argmax(axis=1)
    best = np.where(carts["segment"] > 0, 2, 1)  # coupon for +1, reminder for -1
    assert (greedy == best).mean() > 0.97
    chosen = np.array([ARMS.index(d.action) for d in bandit.decide_batch(carts, ARMS)])
    for segment, arm in ((-1, 1), (1, 2)):
        on = (carts["segment"] == segment).to_numpy()
        assert (chosen[on] == arm).mean() >= 0.85  # at most a fifth explores, and often draws it again


def test_posterior_mean_is_the_ridge_solution_and_learning_is_order_free() -> None:
    rng = np.random.default_rng(3)
    carts = synthetic_carts(600, rng)
    actions = [ARMS[i] for i in rng.integers(0, 3, len(carts))]
    rewards = synthetic_rewards(carts, actions, rng)
    for shared in (False, True):
        once = ThompsonBandit(ARMS, features=["segment"], shared_baseline=shared)
        once.update(carts, actions, rewards)
        pieces = ThompsonBandit(ARMS, features=["segment"], shared_baseline=shared)
        for part in np.array_split(rng.permutation(len(carts)), 7):
            pieces.update(carts.iloc[part], [actions[i] for i in part], rewards[part])
        np.testing.assert_allclose(pieces.scores(carts), once.scores(carts), rtol=1e-9, atol=1e-9)

        # Independently: features, design and ridge solution written out by hand.
        value = carts["value"].to_numpy()
        x = np.column_stack(
            [np.ones(len(carts)), np.log(value / 60), np.log(carts["n_items"].to_numpy()),
             np.ones(len(carts)), np.zeros(len(carts)), np.zeros(len(carts)), carts["segment"]]
        )  # fmt: skip
        d, arm = x.shape[1], np.array([ARMS.index(a) for a in actions])
        design = np.zeros((len(carts), 3 * d))
        prior = np.full(3 * d, 1.0)
        for i, k in enumerate(arm):
            if shared:  # baseline block 0, effect blocks 1 (reminder) and 2 (coupon)
                design[i, :d] = x[i]
                if k:
                    design[i, k * d : (k + 1) * d] = x[i]
            else:
                design[i, k * d : (k + 1) * d] = x[i]
        if shared:
            for k in (1, 2):
                prior[k * d], prior[k * d + 1 : (k + 1) * d] = 10.0, 100.0
        y = rewards / value
        coef = np.linalg.solve(np.diag(prior) + design.T @ design, design.T @ y).reshape(3, d)
        per_arm = x @ coef.T
        if shared:
            per_arm[:, 1:] += per_arm[:, [0]]
        np.testing.assert_allclose(once.scores(carts), per_arm * value[:, None], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- propensities and exploration


def test_propensities_are_the_probabilities_it_acts_with() -> None:
    bandit = trained(3)  # a few hundred rewards: uncertain, so the Thompson draws spread over the arms
    reference = copy.deepcopy(bandit)
    reference.n_draws = 50_000
    exact = reference.probabilities(segment_cart(1.0), ARMS)[0]
    assert exact.sum() == pytest.approx(1.0)
    assert (exact > 0.02).sum() >= 2  # the test needs a posterior that is not settled

    n = 4000
    decisions = [bandit.decide(segment_context(1.0), ARMS) for _ in range(n)]
    chosen = np.array([ARMS.index(d.action) for d in decisions])
    propensity = np.array([d.propensity for d in decisions])
    assert ((propensity > 0) & (propensity <= 1)).all()
    frequency = np.bincount(chosen, minlength=3) / n
    tolerance = 4.5 * np.sqrt(exact * (1 - exact) / n) + 1e-3
    assert (np.abs(frequency - exact) <= tolerance).all(), (frequency, exact)
    # Exact propensities make inverse weighting unbiased: E[1{A = a} / p(A)] = 1 for every arm it may take.
    for arm in np.flatnonzero(exact > 0.05):
        weights = (chosen == arm) / propensity
        assert weights.mean() == pytest.approx(1.0, abs=4.5 * weights.std() / math.sqrt(n))
    # The greedy arm's propensity includes the share that does not explore.
    greedy = int(exact.argmax())
    assert (propensity[chosen == greedy] >= 1 - bandit.max_explore).all()
    assert (propensity[chosen != greedy] <= bandit.max_explore).all()


def test_batch_decisions_match_single_ones_in_distribution() -> None:
    bandit = trained(3)
    carts = pd.concat([segment_cart(-1.0)] * 3000, ignore_index=True)
    exact = copy.deepcopy(bandit)
    exact.n_draws = 50_000
    p = exact.probabilities(carts.head(1), ARMS)[0]
    chosen = np.array([ARMS.index(d.action) for d in bandit.decide_batch(carts, ARMS)])
    frequency = np.bincount(chosen, minlength=3) / len(carts)
    # One batch shares its draws, so allow for the draw set's own spread on top of the binomial's.
    np.testing.assert_allclose(frequency, p, atol=0.03)


def test_exploration_stays_under_the_cap() -> None:
    bandit = ThompsonBandit(ARMS, features=["segment"], max_explore=0.2, seed=5)  # the prior: all arms alike
    carts = synthetic_carts(1000, np.random.default_rng(5))
    decisions = bandit.decide_batch(carts, ARMS)
    greedy = bandit.scores(carts).argmax(axis=1)
    deviates = np.array([ARMS.index(d.action) for d in decisions]) != greedy
    assert 0.05 < deviates.mean() <= 0.2  # it explores, and a batch never passes ceil(0.2 n)
    assert deviates.tolist() == [d.reasons[0].startswith(EXPLORED) for d in decisions]

    singles = [bandit.decide(segment_context(1.0), ARMS) for _ in range(3000)]
    share = np.mean([d.reasons[0].startswith(EXPLORED) for d in singles])
    assert share <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / 3000)  # one at a time: Bernoulli(0.2) gates

    greedy_only = ThompsonBandit(ARMS, max_explore=0.0).decide_batch(carts, ARMS)
    assert {d.propensity for d in greedy_only} == {1.0}
    assert {d.action for d in greedy_only} == {NOTHING}  # no data: every arm ties, the first one wins


# --------------------------------------------------------------------------- what it may send


def test_never_sends_what_it_is_not_allowed() -> None:
    bandit = trained(40)
    carts = synthetic_carts(500, np.random.default_rng(8))
    # The coupon is the best arm for half the carts; leave it out of allowed, or mask it for some carts.
    for d in bandit.decide_batch(carts, [NOTHING, REMINDER]):
        assert d.action in (NOTHING, REMINDER)
    mask = np.ones((len(carts), 3), dtype=bool)
    mask[::2, 2] = False
    chosen = [d.action for d in bandit.decide_batch(carts, ARMS, mask)]
    assert COUPON not in chosen[::2]
    assert COUPON in chosen[1::2]
    assert bandit.decide(segment_context(1.0), [REMINDER]).action == REMINDER
    nothing = bandit.decide(segment_context(1.0), [Action.parse("reminder/sms/24h")])
    assert (nothing.action, nothing.propensity) == (NOTHING, 1.0)
    assert (bandit.probabilities(carts, ARMS, mask)[::2, 2] == 0).all()


def test_a_grouped_arm_sends_its_first_allowed_action_and_guardrails_apply() -> None:
    push = Action.parse("reminder/push/24h")
    bandit = ThompsonBandit({"nothing": ["nothing"], "reminder": [REMINDER, push]}, max_explore=0.0)
    bandit.update(segment_cart(1.0), [push], [30.0])  # the reminder arm, learnt through its push member
    assert bandit.arm_names == ["nothing", "reminder"]
    guarded = Guarded(bandit, Guardrails(load_catalogue()))
    assert guarded.decide(segment_context(1.0, consent=frozenset({"email", "push"}))).action == REMINDER
    assert guarded.decide(segment_context(1.0, consent=frozenset({"push"}))).action == push
    assert guarded.decide(segment_context(1.0, consent=frozenset())).action == NOTHING
    night = MORNING + 12 * 3600  # 22:00 UTC: the 24 h reminder would land in the quiet hours
    late = guarded.decide(segment_context(1.0, now=night, abandoned_at=night))
    assert late.action == NOTHING
    assert any("quiet hours" in r for r in late.reasons)


def test_bad_input_is_refused() -> None:
    with pytest.raises(BadInputError, match="max_explore"):
        ThompsonBandit(max_explore=1.5)
    with pytest.raises(BadInputError, match="may not overlap"):
        ThompsonBandit({"a": [REMINDER], "b": [REMINDER, COUPON]})
    with pytest.raises(BadInputError, match="arms"):
        ThompsonBandit(["reminder/fax/24h"])
    bandit = ThompsonBandit(ARMS)
    with pytest.raises(BadInputError, match="not in any arm"):
        bandit.update(segment_cart(1.0), ["coupon15/email/24h"], [1.0])
    with pytest.raises(BadInputError, match="'value'"):
        bandit.update(pd.DataFrame({"n_items": [1]}), [NOTHING], [0.0])
    with pytest.raises(BadInputError, match="mask"):
        bandit.decide_batch(segment_cart(1.0), ARMS, np.ones((1, 2), dtype=bool))
    with pytest.raises(BadInputError, match="feature"):
        ThompsonBandit(ARMS, features=["segment"]).decide_batch(
            segment_cart(1.0).drop(columns="segment"), ARMS
        )


# --------------------------------------------------------------------------- the simulated shop


def months(run: OnlineRun) -> np.ndarray:
    return run.by_period(30, start=0).query("period < 3")["profit_per_cart"].to_numpy()


def test_run_online_scores_the_truth_and_delays_feedback() -> None:
    shop = simulate(customers=300, days=40, seed=2)
    static = run_online(StaticPolicy(REMINDER), shop.carts, shop.config)
    truth = expected_outcomes(shop.carts, REMINDER, shop.config)["incremental_margin"]
    assert static.log["true_incremental_margin"].mean() == pytest.approx(truth.mean(), rel=1e-12)
    assert (static.log["propensity"] == 1).all()
    assert static.daily["carts"].sum() == len(shop.carts)

    bandit = run_online(ThompsonBandit(seed=2), shop.carts, shop.config, feedback_delay_days=7)
    learnt = bandit.log.dropna(subset=["learnt_on_day"])
    assert len(learnt) > 0.5 * len(shop.carts)
    assert (learnt["learnt_on_day"] - learnt["day"] >= 7).all()
    assert bandit.daily.loc[bandit.daily["day"] < 7, "learnt"].eq(0).all()
    consented = consent_mask(
        shop.carts.set_index("cart_id").loc[bandit.log["cart_id"]], ThompsonBandit().actions
    )
    sent = [ThompsonBandit().actions.index(Action.parse(a)) for a in bandit.log["action"]]
    assert consented[np.arange(len(sent)), sent].all()  # only channels the customer consented to


def test_learns_over_a_quarter_in_a_small_shop() -> None:
    shop = simulate(customers=2000, days=90, seed=0)
    first, _, last = months(run_online(ThompsonBandit(seed=0), shop.carts, shop.config))
    assert last > first + 0.2


def test_beats_coupon_to_everyone_where_coupons_are_wasted() -> None:
    # Coupons half as persuasive as the default: a 10% coupon to everyone pays many who would buy anyway.
    config = replace(ShopConfig(customers=2000, days=90), effects=Effects(coupon_lift=0.8))
    shop = simulate(seed=1, config=config)
    bandit = months(run_online(ThompsonBandit(seed=1), shop.carts, config))
    coupon = months(run_online(StaticPolicy(COUPON), shop.carts, config))
    assert bandit[2] > coupon[2] + 0.1
    assert bandit[2] > bandit[0]

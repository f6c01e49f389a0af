"""Policies: exact propensities, the uplift policy's profit arithmetic, guardrails never bypassed, the
budget allocator against brute force and the integer programme, and the speed of one decision."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import NOTHING, Action
from winback.decide.catalogue import load_catalogue
from winback.decide.context import DecisionContext
from winback.decide.guardrails import DiscountBudget, Guardrails
from winback.decide.policy import (
    Decision,
    Guarded,
    Policy,
    RandomPolicy,
    StaticPolicy,
    UpliftPolicy,
    allocate,
    context_from_row,
    redemption_shares,
)
from winback.decide.uplift import UpliftModel
from winback.errors import BadInputError

CATALOGUE = load_catalogue()
MORNING = datetime(2024, 6, 10, 10, tzinfo=UTC).timestamp()
ARMS = ["nothing", "reminder/email/24h", "coupon10/email/24h", "reminder/sms/24h"]
FEATURES = ["value", "consent_email", "consent_sms", "consent_push", "x"]
SMALL_TREES = {"n_estimators": 20, "num_leaves": 4, "min_child_samples": 100}


def ctx(**changes: object) -> DecisionContext:
    base: dict[str, object] = {
        "user_id": "u1", "now": MORNING, "cart_id": "c1", "abandoned_at": MORNING, "value": 80.0,
        "consent": frozenset({"email", "sms", "push"}), "in_stock": True,
    }  # fmt: skip
    return DecisionContext(**{**base, **changes})  # type: ignore[arg-type]


def carts_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "value": rng.lognormal(4.0, 0.6, n).round(2),
            "consent_email": (rng.random(n) < 0.9).astype(float),
            "consent_sms": (rng.random(n) < 0.4).astype(float),
            "consent_push": (rng.random(n) < 0.4).astype(float),
            "x": rng.normal(size=n),
        }
    )


@pytest.fixture(scope="module")
def trained() -> tuple[pd.DataFrame, dict[str, UpliftModel]]:
    """A randomised log where the 24 h e-mail reminder helps customers with x > 0, the coupon helps
    everyone a little, and the SMS helps a lot; one fitted purchase model per learner."""
    n = 6000
    X = carts_table(n, 1)  # noqa: N806
    rng = np.random.default_rng(2)
    t = rng.choice(ARMS, n)
    lift = {"nothing": 0.0, "reminder/email/24h": 0.0, "coupon10/email/24h": 0.06, "reminder/sms/24h": 0.12}
    p = 0.15 + np.array([lift[a] for a in t]) + 0.10 * ((t == "reminder/email/24h") & (X["x"] > 0))
    y = rng.random(n) < p
    models = {
        learner: UpliftModel(learner=learner, params=SMALL_TREES, threads=1, min_arm_rows=50).fit(X, t, y)
        for learner in ("t", "x", "dr")
    }
    return X, models


# --------------------------------------------------------------------------- static and random


def test_static_policies_from_the_catalogue_flows_take_the_first_step_with_propensity_one() -> None:
    steps = {name: StaticPolicy.from_flow(CATALOGUE, name).action.name for name in CATALOGUE.flows}
    assert steps == {
        "static-10h": "reminder/email/10h",
        "static-1h-24h-72h": "reminder/email/1h",  # the first of three steps: one action per cart
        "coupon-everyone": "coupon10/email/24h",
    }
    policy = StaticPolicy.from_flow(CATALOGUE, "coupon-everyone")
    assert isinstance(policy, Policy)
    coupon = Action.parse("coupon10/email/24h")
    decision = policy.decide(ctx(), [NOTHING, coupon])
    assert (decision.action, decision.propensity, decision.policy) == (coupon, 1.0, "coupon-everyone")
    refused = policy.decide(ctx(), [NOTHING])
    assert (refused.action, refused.propensity) == (NOTHING, 1.0)
    mask = np.array([[True, True], [True, False]])
    batch = policy.decide_batch(pd.DataFrame({"value": [1.0, 2.0]}), [NOTHING, coupon], mask)
    assert [d.action for d in batch] == [coupon, NOTHING]
    with pytest.raises(BadInputError, match="flow 'klaviyo'"):
        StaticPolicy.from_flow(CATALOGUE, "klaviyo")
    with pytest.raises(FrozenInstanceError):
        decision.propensity = 0.5  # type: ignore[misc]


def test_random_policy_propensities_are_exact_and_its_draws_uniform() -> None:
    subset = [
        NOTHING,
        *(Action.parse(a) for a in ("reminder/email/24h", "coupon10/email/24h", "reminder/sms/6h")),
    ]
    policy = RandomPolicy(subset, seed=3)
    allowed = [*CATALOGUE.actions]
    no_sms = [a for a in allowed if a.channel != "sms"]
    decision = policy.decide(ctx(), no_sms)
    assert decision.propensity == pytest.approx(1 / 3)
    assert decision.action in subset
    draws = Counter(policy.decide(ctx(), allowed).action.name for _ in range(8000))
    assert set(draws) == {a.name for a in subset}
    assert max(abs(c / 8000 - 0.25) for c in draws.values()) < 0.02

    carts = pd.DataFrame({"value": np.ones(6000)})
    mask = np.ones((6000, len(allowed)), dtype=bool)
    sms = np.array([a.channel == "sms" for a in allowed])
    mask[:3000, sms] = False  # the first half has no SMS consent: three candidates, the rest four
    probabilities = policy.probabilities(carts, allowed, mask)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    decisions = policy.decide_batch(carts, allowed, mask)
    expected = np.r_[np.full(3000, 1 / 3), np.full(3000, 1 / 4)]
    np.testing.assert_allclose([d.propensity for d in decisions], expected)
    assert all(d.action.channel != "sms" for d in decisions[:3000])
    later = Counter(d.action.name for d in decisions[3000:])
    assert max(abs(c / 3000 - 0.25) for c in later.values()) < 0.03
    assert RandomPolicy(subset).decide(ctx(), [Action.parse("reminder/push/1h")]).action == NOTHING


# --------------------------------------------------------------------------- uplift


def test_uplift_profit_is_margin_on_the_effect_less_discount_and_channel_cost(
    trained: tuple[pd.DataFrame, dict[str, UpliftModel]],
) -> None:
    _, models = trained
    shares = {"coupon10/email/24h": 0.4}
    policy = UpliftPolicy(models["t"], CATALOGUE, redemption=shares)
    carts = carts_table(50, 9)
    actions = [Action.parse(a) for a in ARMS] + [Action.parse("reminder/push/6h")]
    est = policy.estimates(carts, actions)
    p = models["t"].outcomes(carts[FEATURES])
    v = carts["value"].to_numpy()
    margin = CATALOGUE.margin()
    for j, a in enumerate(actions[1:4], start=1):
        coupon_cost = a.coupon * shares.get(a.name, 1.0) * v * p[a.name]
        expected = margin * v * (p[a.name] - p["nothing"]) - coupon_cost - CATALOGUE.channel_cost(a.channel)
        np.testing.assert_allclose(est.profit[:, j], expected, rtol=1e-10)
        np.testing.assert_allclose(est.discount[:, j], coupon_cost, rtol=1e-10)
    assert (est.profit[:, 0] == 0).all()
    assert np.isnan(est.profit[:, 4]).all()  # never logged: cannot be scored, never chosen
    np.testing.assert_allclose(est.baseline, margin * v * p["nothing"])
    decisions = policy.decide_batch(carts, actions)
    best = np.where(np.nanmax(est.profit, axis=1) > 0, np.nanargmax(est.profit, axis=1), 0)
    assert [d.action for d in decisions] == [actions[j] for j in best]
    assert all(d.propensity == 1.0 and d.action.name != "reminder/push/6h" for d in decisions)


def test_a_revenue_model_replaces_value_times_purchase(
    trained: tuple[pd.DataFrame, dict[str, UpliftModel]],
) -> None:
    X, models = trained  # noqa: N806
    rng = np.random.default_rng(3)
    t = rng.choice(ARMS, len(X))
    spend = X["value"].to_numpy() * (rng.random(len(X)) < 0.2 + 0.1 * (t == "reminder/sms/24h"))
    revenue = UpliftModel(outcome="continuous", learner="t", params=SMALL_TREES, threads=1).fit(X, t, spend)
    policy = UpliftPolicy(models["t"], CATALOGUE, revenue=revenue)
    carts = carts_table(30, 5)
    actions = [Action.parse(a) for a in ARMS]
    est = policy.estimates(carts, actions)
    r = revenue.outcomes(carts[FEATURES])
    for j, a in enumerate(actions[1:], start=1):
        expected = (CATALOGUE.margin() * (r[a.name] - r["nothing"]) - a.coupon * r[a.name]
                    - CATALOGUE.channel_cost(a.channel))  # fmt: skip
        np.testing.assert_allclose(est.profit[:, j], expected, rtol=1e-10)
    row = carts.iloc[0]
    one = policy.decide(ctx(value=row["value"], features={"x": row["x"], "consent_push": row["consent_push"]},
                            consent=frozenset({"email", "sms"})), actions)  # fmt: skip
    assert one.expected_profit == pytest.approx(est.profit[0, actions.index(one.action)], rel=1e-9)
    with pytest.raises(BadInputError, match="binary"):
        UpliftPolicy(revenue, CATALOGUE)


@pytest.mark.parametrize("learner", ["t", "x", "dr"])
def test_one_decision_agrees_with_the_batch(
    trained: tuple[pd.DataFrame, dict[str, UpliftModel]], learner: str
) -> None:
    _, models = trained
    policy = UpliftPolicy(models[learner], CATALOGUE)
    carts = carts_table(20, 4)
    actions = [Action.parse(a) for a in ARMS]
    batch = policy.decide_batch(carts, actions)
    for row, decision in zip(carts.to_dict("records"), batch, strict=True):
        context = ctx(value=row["value"], features={"x": row["x"], "consent_push": row["consent_push"]},
                      consent=frozenset(c for c in ("email", "sms") if row[f"consent_{c}"]))  # fmt: skip
        one = policy.decide(context, actions)
        assert one.action == decision.action
        assert one.expected_profit == pytest.approx(decision.expected_profit, rel=1e-9, abs=1e-12)
    assert policy._fast.usable  # the pandas-free path agreed with UpliftModel.outcomes and stays in use


def test_the_learned_policy_sends_what_works(trained: tuple[pd.DataFrame, dict[str, UpliftModel]]) -> None:
    _, models = trained
    policy = UpliftPolicy(models["t"], CATALOGUE)
    actions = [Action.parse(a) for a in ARMS]
    chosen = policy.decide(ctx(value=100.0, features={"x": 0.0, "consent_push": 1.0}), actions)
    assert chosen.action.name == "reminder/sms/24h"
    assert chosen.expected_profit > 0
    no_sms = policy.decide(ctx(value=100.0, consent=frozenset({"email"}), features={"x": 1.0}), actions[:3])
    assert no_sms.action.channel == "email"


def test_epsilon_greedy_propensities_match_the_draws(
    trained: tuple[pd.DataFrame, dict[str, UpliftModel]],
) -> None:
    _, models = trained
    policy = UpliftPolicy(models["t"], CATALOGUE, epsilon=0.2, seed=5)
    actions = [Action.parse(a) for a in ARMS]
    context = ctx(value=100.0, features={"x": 0.0, "consent_push": 1.0})
    draws = [policy.decide(context, actions) for _ in range(4000)]
    greedy = UpliftPolicy(models["t"], CATALOGUE).decide(context, actions).action
    for action, count in Counter(d.action for d in draws).items():
        expected = 0.8 + 0.2 / 4 if action == greedy else 0.2 / 4
        np.testing.assert_allclose([d.propensity for d in draws if d.action == action], expected)
        assert abs(count / 4000 - expected) < 0.025
    batch = policy.decide_batch(carts_table(3000, 6), actions)
    propensities = np.array([d.propensity for d in batch])
    assert np.isclose(propensities, 0.85).sum() + np.isclose(propensities, 0.05).sum() == 3000


def test_redemption_shares_pool_rare_actions() -> None:
    actions = ["coupon10/email/24h"] * 100 + ["coupon5/sms/6h"] * 2 + ["reminder/email/24h"] * 10
    recovered = [True] * 100 + [True, True] + [True] * 10
    redeemed = [i < 40 for i in range(100)] + [True, True] + [False] * 10
    shares = redemption_shares(actions, recovered, redeemed, prior_weight=20)
    pooled = 42 / 102
    assert shares["coupon10/email/24h"] == pytest.approx((40 + 20 * pooled) / 120)
    assert shares["coupon5/sms/6h"] == pytest.approx((2 + 20 * pooled) / 22)
    assert "reminder/email/24h" not in shares


# --------------------------------------------------------------------------- guardrails


class AlwaysSms:
    """A policy that ignores what it is allowed: a 15% SMS coupon in an hour, for everyone."""

    name, version = "always-sms", "1"
    action = Action.parse("coupon15/sms/1h")

    def decide(self, context: DecisionContext, allowed: object) -> Decision:
        return Decision(self.action, 1.0, self.name, self.version)

    def decide_batch(self, carts: pd.DataFrame, allowed: object, mask: object = None) -> list[Decision]:
        return [Decision(self.action, 1.0, self.name, self.version) for _ in range(len(carts))]


def test_guarded_never_returns_a_refused_action() -> None:
    guardrails = Guardrails(CATALOGUE, DiscountBudget(0.0))
    stubborn = Guarded(AlwaysSms(), guardrails)  # type: ignore[arg-type]
    decision = stubborn.decide(ctx(consent=frozenset({"email"})))
    assert decision.action == NOTHING
    assert any("coupon15/sms/1h refused (no consent for sms)" in r for r in decision.reasons)

    rng = np.random.default_rng(0)
    policy = Guarded(RandomPolicy(seed=1), Guardrails(CATALOGUE, DiscountBudget(20.0)))
    for _ in range(300):
        consent = frozenset(c for c in ("email", "sms", "push") if rng.random() < 0.5)
        context = ctx(
            consent=consent,
            value=float(rng.uniform(10, 400)),
            utc_offset_minutes=int(rng.choice([-480, 0, 60, 600])),
            is_harvester=bool(rng.random() < 0.2),
            last_message_at={"email": MORNING - 3600 * float(rng.uniform(0, 30))},
            in_stock=bool(rng.random() < 0.9),
        )
        passed, _ = policy.guardrails.allowed(context, CATALOGUE.actions)
        decided = policy.decide(context)
        assert decided.action in passed
        assert decided.propensity == pytest.approx(1 / len(passed))


def test_guarded_batches_check_every_cart(trained: tuple[pd.DataFrame, dict[str, UpliftModel]]) -> None:
    _, models = trained
    carts = carts_table(200, 8)
    carts["user_id"] = [f"u{i}" for i in range(200)]
    carts["abandoned_at"] = pd.Timestamp(MORNING, unit="s", tz="UTC")
    guarded = Guarded(UpliftPolicy(models["t"], CATALOGUE), Guardrails(CATALOGUE))
    decisions = guarded.decide_batch(carts)
    for row, decision in zip(carts.to_dict("records"), decisions, strict=True):
        passed, _ = guarded.guardrails.allowed(context_from_row(row), CATALOGUE.actions)
        assert decision.action in passed
    assert {d.action.channel for d in decisions} >= {"sms", "email"}
    stubborn = Guarded(AlwaysSms(), Guardrails(CATALOGUE)).decide_batch(carts)  # type: ignore[arg-type]
    sent = [d.action.channel == "sms" for d in stubborn]
    assert sent == carts["consent_sms"].astype(bool).tolist()  # 11:00 UTC: only consent stops it
    assert 0 < sum(sent) < 200


# --------------------------------------------------------------------------- budget


def brute_force(profit: np.ndarray, discount: np.ndarray, budget: float) -> float:
    best = -np.inf
    for choice in itertools.product(range(profit.shape[1]), repeat=profit.shape[0]):
        rows = np.arange(profit.shape[0])
        if discount[rows, choice].sum() <= budget + 1e-9:
            best = max(best, profit[rows, choice].sum())
    return float(best)


def random_instance(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Nothing (0, 0), a reminder (profit, no discount) and three coupons of rising discount."""
    rng = np.random.default_rng(seed)
    reminder = rng.normal(0.5, 0.5, n)
    discount = np.column_stack([np.zeros((n, 2)), np.sort(rng.uniform(0.5, 6.0, (n, 3)), axis=1)])
    gain = rng.normal(0.6, 0.6, (n, 3)) * discount[:, 2:] ** 0.5
    profit = np.column_stack([np.zeros(n), reminder, reminder[:, None] + gain])
    return profit, discount


@pytest.mark.parametrize("budget", [0.0, 3.0, 10.0, 40.0])
def test_allocate_against_brute_force(budget: float) -> None:
    profit, discount = random_instance(6, seed=int(budget))
    rows = np.arange(6)
    for method in ("greedy", "exact"):
        chosen = allocate(profit, discount, budget, method=method)  # type: ignore[arg-type]
        assert discount[rows, chosen].sum() <= budget + 1e-9
        total = profit[rows, chosen].sum()
        best = brute_force(profit, discount, budget)
        if method == "exact":
            assert total == pytest.approx(best)
        else:  # greedy loses at most the one upgrade that no longer fitted
            assert best - np.ptp(profit, axis=1).max() - 1e-9 <= total <= best + 1e-9


def test_allocate_respects_the_budget_and_zero_means_no_coupons() -> None:
    profit, discount = random_instance(3000, seed=11)
    rows = np.arange(3000)
    none = allocate(profit, discount, 0.0)
    assert (discount[rows, none] == 0).all()
    np.testing.assert_array_equal(none, np.where(profit[:, 1] > 0, 1, 0))  # the best without discount
    unlimited = allocate(profit, discount, np.inf)
    np.testing.assert_array_equal(unlimited, profit.argmax(axis=1))
    spent_unlimited = discount[rows, unlimited].sum()
    previous = profit[rows, none].sum()
    for share in (0.1, 0.3, 0.6):
        chosen = allocate(profit, discount, share * spent_unlimited)
        assert discount[rows, chosen].sum() <= share * spent_unlimited + 1e-6
        total = profit[rows, chosen].sum()
        assert total >= previous  # more budget never earns less
        previous = total
    small = slice(0, 300)
    budget = 0.3 * discount[rows[small], unlimited[small]].sum()
    exact = allocate(profit[small], discount[small], budget, method="exact")
    greedy = allocate(profit[small], discount[small], budget)
    picked = np.arange(300)
    assert profit[small][picked, greedy].sum() >= 0.99 * profit[small][picked, exact].sum()


def test_allocate_refuses_bad_input() -> None:
    profit, discount = random_instance(4, seed=1)
    with pytest.raises(BadInputError, match="budget -1"):
        allocate(profit, discount, -1.0)
    with pytest.raises(BadInputError, match="same shape"):
        allocate(profit, discount[:, :3], 1.0)
    with pytest.raises(BadInputError, match="row 0: no allowed action without discount"):
        allocate(profit, discount, 1.0, allowed=np.array([[False, False, True, True, True]] * 4))


def test_uplift_batch_under_a_budget(trained: tuple[pd.DataFrame, dict[str, UpliftModel]]) -> None:
    _, models = trained
    # Coupons pay for customers with x < 0 (no reminder effect) once 30% of recoveries redeem them.
    policy = UpliftPolicy(models["t"], CATALOGUE, redemption={"coupon10/email/24h": 0.3})
    carts = carts_table(500, 12)
    actions = [Action.parse(a) for a in ARMS[:3]]
    unlimited = policy.decide_batch(carts, actions)
    assert 100 < sum(d.action.coupon > 0 for d in unlimited) < 400
    est = policy.estimates(carts, actions)
    free = policy.decide_batch(carts, actions, budget=0.0)
    assert all(d.action.coupon == 0 for d in free)
    column = {a: j for j, a in enumerate(actions)}
    chosen = [column[d.action] for d in policy.decide_batch(carts, actions, budget=25.0)]
    assert est.discount[np.arange(500), chosen].sum() <= 25.0 + 1e-9
    assert 0 < sum(actions[j].coupon > 0 for j in chosen) < sum(d.action.coupon > 0 for d in unlimited)


# --------------------------------------------------------------------------- speed


def test_one_guarded_uplift_decision_is_fast(trained: tuple[pd.DataFrame, dict[str, UpliftModel]]) -> None:
    _, models = trained
    guarded = Guarded(UpliftPolicy(models["t"], CATALOGUE), Guardrails(CATALOGUE, DiscountBudget(1000.0)))
    context = ctx(consent=frozenset({"email", "push"}), features={"x": 0.3, "consent_push": 1.0})
    guarded.decide(context)  # the first decision checks the fast path against UpliftModel.outcomes
    timings = []
    for _ in range(300):
        start = time.perf_counter()
        guarded.decide(context)
        timings.append(time.perf_counter() - start)
    assert float(np.median(timings)) < 2e-3

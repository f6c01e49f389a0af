"""Fitted Q iteration over multi-step flows: the randomised log, backward fitting, and a policy that
learns flows that beat doing nothing and the usual flow by the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import NOTHING, Action
from winback.decide.context import DecisionContext
from winback.decide.fitted_q import DECISION_HOURS, OFFERS, FittedQPolicy, log_trajectories, offers_at
from winback.decide.policy import Policy, consent_mask
from winback.errors import BadInputError
from winback.sim import SimulationResult, simulate
from winback.sim.flows import expected_flow_outcomes

FEATURES = ["value", "n_items", "consent_email", "consent_sms", "consent_push"]


@pytest.fixture(scope="module")
def shop() -> SimulationResult:
    return simulate(customers=6000, days=120, seed=21)


@pytest.fixture(scope="module")
def halves(shop: SimulationResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    carts = shop.carts.sort_values("abandoned_at", kind="stable").reset_index(drop=True)
    cut = len(carts) * 2 // 3
    return carts.iloc[:cut].reset_index(drop=True), carts.iloc[cut:].reset_index(drop=True)


def test_the_log_is_a_randomised_multi_step_period(shop: SimulationResult, halves) -> None:  # type: ignore[no-untyped-def]
    train, _ = halves
    log = log_trajectories(train, shop.config, seed=1)
    t = log.transitions
    assert set(t["point"]) == set(range(len(DECISION_HOURS)))
    assert set(t["action"]) <= {"nothing", *OFFERS}
    assert all(len(f) <= 3 for f in log.flows)
    assert (t["sent_in_flow"] <= 3).all()
    # Propensities: nothing half the time while something is allowed; each offer its share of the rest.
    first = t[t["point"] == 0]
    assert abs((first["action"] == "nothing").mean() - 0.5) < 0.03
    sent = first[first["action"] != "nothing"]
    per_channel = {"email": 5, "sms": 2, "push": 2}  # the offers on each channel
    offers = sum(
        train.loc[sent["row"], f"consent_{c}"].to_numpy(dtype=int) * k for c, k in per_channel.items()
    )
    np.testing.assert_allclose(sent["propensity"].to_numpy(), 0.5 / offers)
    # A cart reaches a decision point only if not recovered before; returns add up to the realised margin.
    returns = t.groupby("row")["reward"].sum()
    margin = log.outcome["margin"]
    alive_at_first = np.unique(first["row"])
    recovered_early = (log.outcome["recovered"] & (log.outcome["recovery_offset"] < 3600))[alive_at_first]
    assert not recovered_early.any()
    np.testing.assert_allclose(returns.reindex(alive_at_first).to_numpy(), margin[alive_at_first], atol=1e-9)
    later = t[t["point"] == 3]
    assert len(later) < len(first)


def test_fitted_q_beats_doing_nothing_and_the_usual_flow(shop: SimulationResult, halves) -> None:  # type: ignore[no-untyped-def]
    train, test = halves
    log = log_trajectories(train, shop.config, seed=2)
    policy = FittedQPolicy(FEATURES, seed=2).fit(log, train[FEATURES].astype(float))
    assert isinstance(policy, Policy)
    assert policy.n_transitions_ == len(log.transitions)
    plans = policy.plan(test[FEATURES].astype(float))
    assert all(len(p) <= 3 for p in plans)
    assert all(list(a.delay_hours for a in p) == sorted(a.delay_hours for a in p) for p in plans)
    flows = pd.Series([tuple(a.name for a in p) for p in plans], index=test.index)
    truth = expected_flow_outcomes(test, flows, shop.config)["incremental_margin"].mean()
    klaviyo = expected_flow_outcomes(
        test, ["reminder/email/1h", "reminder/email/24h", "coupon10/email/72h"], shop.config
    )["incremental_margin"].mean()
    assert truth > max(klaviyo, 0.3)
    # Consent is respected: no step on a channel the customer did not consent to.
    for plan, (_, row) in zip(plans, test.iterrows(), strict=True):
        assert all(row[f"consent_{a.channel}"] for a in plan)


def test_decide_follows_the_plan_and_the_policy_interface(shop: SimulationResult, halves) -> None:  # type: ignore[no-untyped-def]
    train, test = halves
    log = log_trajectories(train, shop.config, seed=3)
    policy = FittedQPolicy(FEATURES, seed=3, folds=1).fit(log, train[FEATURES].astype(float))
    carts = test[FEATURES].astype(float).iloc[:40]
    plans = policy.plan(carts)
    catalogue = [NOTHING, *(a for h in DECISION_HOURS for a in offers_at(h))]
    for plan, (_, row) in zip(plans, carts.iterrows(), strict=True):
        sent: tuple[Action, ...] = ()
        for h in DECISION_HOURS:
            ctx = DecisionContext(
                user_id="u", now=h * 3600.0, abandoned_at=0.0, value=float(row["value"]),
                consent=frozenset(c for c in ("email", "sms", "push") if row[f"consent_{c}"]),
                features={k: float(row[k]) for k in FEATURES}, sent_in_flow=sent,
            )  # fmt: skip
            allowed = [a for a in catalogue if a.channel is None or ctx.can_message(a.channel)]
            decision = policy.decide(ctx, allowed)
            assert decision.propensity == 1.0
            assert decision.policy == "fitted-q"
            if decision.action.is_message:
                assert decision.action.delay_hours == h
                assert decision.expected_profit is not None
                assert decision.expected_profit > 0
                sent = (*sent, decision.action)
        assert sent == plan
    batch = policy.decide_batch(carts, catalogue, consent_mask(carts, catalogue))
    assert [d.action for d in batch] == [p[0] if p and p[0].delay_hours == 1 else NOTHING for p in plans]


def test_pessimism_sends_an_offer_only_when_its_gain_clears_its_standard_errors(
    shop: SimulationResult,
    halves,  # type: ignore[no-untyped-def]
) -> None:
    train, test = halves
    log = log_trajectories(train, shop.config, seed=4)
    states, carts = train[FEATURES].astype(float), test[FEATURES].astype(float)
    plain = FittedQPolicy(FEATURES, seed=4, pessimism=0.0).fit(log, states)
    careful = FittedQPolicy(FEATURES, seed=4).fit(log, states)
    assert careful.pessimism == 2.0
    sent = {name: sum(map(len, p.plan(carts))) for name, p in (("plain", plain), ("careful", careful))}
    assert 0 < sent["careful"] < sent["plain"]
    # Each flow's first step beats waiting by more than its bar (nothing sent before it in the flow).
    X, n, plans = carts.to_numpy(), len(carts), careful.plan(carts)  # noqa: N806
    checked = 0
    for i, h in enumerate(DECISION_HOURS):
        q = careful.q_values(X, np.column_stack([np.full(n, float(h)), np.zeros(n), np.zeros(n)]))
        bar = careful._penalty([fold[i] for fold in careful.heads_])
        assert bar[0] == 0
        assert (bar[1:] > 0).all()
        for r, plan in enumerate(plans):
            if plan and plan[0].delay_hours == h:
                arm = 1 + OFFERS.index(plan[0].name.rsplit("/", 1)[0])
                assert q[r, arm] - bar[arm] > q[r, 0]
                checked += 1
    assert checked > 0
    hopeless = FittedQPolicy(FEATURES, seed=4, pessimism=1e6).fit(log, states)
    assert all(p == () for p in hopeless.plan(carts))  # nothing is that sure: wait, send nothing


def test_bad_input(shop: SimulationResult, halves) -> None:  # type: ignore[no-untyped-def]
    train, _ = halves
    with pytest.raises(BadInputError, match="p_wait"):
        log_trajectories(train, shop.config, p_wait=1.0)
    with pytest.raises(BadInputError, match="missing columns"):
        log_trajectories(train[["value"]], shop.config)
    with pytest.raises(BadInputError, match="not fitted"):
        FittedQPolicy(FEATURES).plan(train[FEATURES])
    with pytest.raises(BadInputError, match="folds"):
        FittedQPolicy(FEATURES, folds=3)
    with pytest.raises(BadInputError, match="pessimism -1"):
        FittedQPolicy(FEATURES, pessimism=-1)
    log = log_trajectories(train.iloc[:300], shop.config)
    with pytest.raises(BadInputError, match="missing column"):
        FittedQPolicy([*FEATURES, "loyalty_score"]).fit(log, train[FEATURES])

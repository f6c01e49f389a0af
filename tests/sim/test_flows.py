"""Multi-step flows: one step is response.py exactly, realisations average to the expectation, the
send-time re-check, unsubscribes and the lifts of several opened messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import Action
from winback.errors import BadInputError
from winback.sim import SimulationResult, simulate
from winback.sim.flows import (
    Steps,
    check_flow,
    expected_flow,
    expected_flow_outcomes,
    realise_flow,
    realised_flow_outcomes,
    step_uniforms,
)
from winback.sim.response import CART_COLUMNS, UNIFORMS, Treatments, expected, realise

KLAVIYO = ("reminder/email/1h", "reminder/email/24h", "coupon10/email/72h")


@pytest.fixture(scope="module")
def shop() -> SimulationResult:
    return simulate(customers=1500, days=90, seed=5)


def _facts(carts: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: carts[c].to_numpy() for c in ["cart_id", *CART_COLUMNS]}


@pytest.mark.parametrize(
    "name", ["nothing", "reminder/email/1h", "coupon15+recs/sms/24h", "reminder/push/72h", "coupon5/email/6h"]
)
def test_a_one_step_flow_is_the_single_step_model(shop: SimulationResult, name: str) -> None:
    facts, n = _facts(shop.carts), len(shop.carts)
    action = Action.parse(name)
    single = expected(facts, Treatments.repeat(action, n), shop.config)
    flow = expected_flow(facts, Steps.repeat([action], n), shop.config)
    for key, value in single.items():
        np.testing.assert_allclose(flow[key], value, rtol=1e-12, atol=1e-12, err_msg=key)
    once = realise(facts, Treatments.repeat(action, n), shop.config)
    steps = realise_flow(facts, Steps.repeat([action], n), shop.config)
    for key in (
        "recovered",
        "recovery_offset",
        "revenue",
        "discount",
        "cost",
        "margin",
        "incremental_margin",
    ):
        assert np.array_equal(steps[key], once[key]), key
    for key in ("sent", "opened", "clicked", "unsubscribed"):
        assert np.array_equal(steps[key] > 0, once[key]), key
    if action.is_message:
        assert np.array_equal(steps["open_offset"][:, 0][once["opened"]], once["open_offset"][once["opened"]])
        assert once["sent"].any()
        assert once["recovered"].any()


def test_realisations_average_to_the_expectation(shop: SimulationResult) -> None:
    carts = shop.carts.iloc[:2000]
    facts, n = _facts(carts), len(carts)
    for flow in (KLAVIYO, ("coupon10+recs/sms/1h", "reminder/sms/6h", "coupon15/email/24h")):
        steps = Steps.repeat(flow, n)
        truth = expected_flow(facts, steps, shop.config)
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(150):  # the same carts with fresh random numbers
            fresh = dict(facts) | {u: rng.random(n) for u in UNIFORMS}
            out = realise_flow(fresh, steps, shop.config)
            draws.append(
                [out[k].mean() for k in ("recovered", "sent", "opened", "discount", "cost", "margin")]
            )
        means, se = np.mean(draws, axis=0), np.std(draws, axis=0, ddof=1) / np.sqrt(len(draws))
        expect = [truth[k].mean() for k in ("p_recover", "p_send", "p_open", "discount", "cost", "margin")]
        assert (np.abs(means - expect) < 4 * se + 1e-9).all(), (flow, means, expect, se)


def test_the_send_time_recheck_and_who_pays_the_discount(shop: SimulationResult) -> None:
    carts = shop.carts
    out = realise_flow(_facts(carts), Steps.repeat(KLAVIYO, len(carts)), shop.config)
    recovered_at = np.where(out["recovered"], out["recovery_offset"], np.iinfo(np.int64).max)
    for k in range(3):
        sent = out["step_sent"][:, k]
        assert (recovered_at[sent] > out["send_offset"][sent, k]).all()  # never after a recovery
        cancelled = out["step_reached"][:, k] == 0
        assert (recovered_at[cancelled] <= out["send_offset"][cancelled, k]).all()
        assert (
            out["open_offset"][out["step_opened"][:, k], k] > out["send_offset"][out["step_opened"][:, k], k]
        ).all()
    assert out["step_sent"][:, 1].sum() < out["step_sent"][:, 0].sum()  # recoveries stop later steps
    # Opens come before the next send; the 72 h coupon is the only step that pays a discount.
    opened0 = out["step_opened"][:, 0]
    assert (out["open_offset"][opened0, 0] + 120 <= out["send_offset"][opened0, 1]).all()
    paid = out["discount"] > 0
    assert paid.any()
    assert (out["recovered_by"][paid] == 2).all()
    np.testing.assert_allclose(out["discount"][paid], np.round(0.10 * carts["value"].to_numpy()[paid], 2))
    assert np.allclose(out["cost"], 0.001 * out["sent"])


def test_an_unsubscribe_stops_the_flow_on_that_channel(shop: SimulationResult) -> None:
    from dataclasses import replace

    config = replace(shop.config, unsubscribe_rate={"email": 0.5, "sms": 0.5, "push": 0.5})
    carts = shop.carts
    flow = ("reminder/email/6h", "reminder/email/24h", "reminder/push/72h")
    out = realise_flow(_facts(carts), Steps.repeat(flow, len(carts)), config)
    left = out["step_unsubscribed"][:, 0] & ~out["recovered"]
    assert left.sum() > 50
    assert not out["step_sent"][left, 1].any()  # the e-mail channel is closed
    assert out["step_sent"][left & carts["consent_push"].to_numpy(), 2].all()  # push is not
    steps = Steps.repeat(flow, len(carts))
    truth = expected_flow(_facts(carts), steps, config)
    calm = expected_flow(
        _facts(carts), steps, replace(config, unsubscribe_rate=dict.fromkeys(config.unsubscribe_rate, 0.0))
    )
    assert truth["step_send"][:, 1].mean() < calm["step_send"][:, 1].mean() - 0.05
    np.testing.assert_allclose(truth["step_send"][:, 2], calm["step_send"][:, 2], atol=0.2)
    se = out["unsubscribed"].std() / np.sqrt(len(carts))
    assert abs(out["unsubscribed"].mean() - truth["p_unsubscribe"].mean()) < 4 * se


def test_lifts_combine_by_the_best_and_an_early_reminder_still_hurts(shop: SimulationResult) -> None:
    carts = shop.carts
    gain = {
        " > ".join(f): expected_flow_outcomes(carts, list(f), shop.config)["incremental_margin"].mean()
        for f in (
            ("reminder/email/24h",),
            ("reminder/email/1h", "reminder/email/24h"),
            ("reminder/email/24h", "reminder/email/72h"),
            ("reminder/email/24h", "coupon10/email/72h"),
        )
    }
    assert gain["reminder/email/1h > reminder/email/24h"] < gain["reminder/email/24h"]
    # A second reminder reaches those who did not open the first: it adds, but less than the first.
    second = gain["reminder/email/24h > reminder/email/72h"] - gain["reminder/email/24h"]
    assert 0 < second < gain["reminder/email/24h"]
    p = {
        f: expected_flow_outcomes(carts, f.split(" > "), shop.config)["p_recover"].mean()
        for f in ("reminder/email/24h", "reminder/email/24h > coupon10/email/72h")
    }
    assert p["reminder/email/24h > coupon10/email/72h"] > p["reminder/email/24h"]
    # Per cart: two opened reminders give no more than the better one (the best counts, then fatigue).
    n = len(carts)
    facts = _facts(carts) | {"open_email": np.ones(n), "consent_email": np.ones(n, dtype=bool)}
    both = expected_flow(facts, Steps.repeat(["reminder/email/24h", "reminder/email/72h"], n), shop.config)
    one = expected_flow(facts, Steps.repeat(["reminder/email/24h"], n), shop.config)
    assert (both["p_recover"] <= one["p_recover"] + 1e-12).all()


def test_step_uniforms_are_deterministic_open_and_leave_the_first_step_alone(shop: SimulationResult) -> None:
    facts = _facts(shop.carts)
    first = step_uniforms(facts, 0)
    assert all(np.array_equal(first[k], facts[k]) for k in first)
    second, third = step_uniforms(facts, 1), step_uniforms(facts, 2)
    assert all(np.array_equal(second[k], step_uniforms(facts, 1)[k]) for k in second)
    for u in (*second.values(), *third.values()):
        assert ((u > 0) & (u < 1)).all()
        assert abs(u.mean() - 0.5) < 0.02
        assert abs(np.corrcoef(u, facts["u_open"])[0, 1]) < 0.05
    assert abs(np.corrcoef(second["u_open"], third["u_open"])[0, 1]) < 0.05


def test_tables_and_bad_flows(shop: SimulationResult) -> None:
    carts = shop.carts.iloc[:50]
    per_cart = pd.Series([KLAVIYO if i % 2 else ("reminder/sms/24h",) for i in range(50)], index=carts.index)
    table = expected_flow_outcomes(carts, per_cart, shop.config)
    assert list(table["flow"].iloc[:2]) == ["reminder/sms/24h", " > ".join(KLAVIYO)]
    realised = realised_flow_outcomes(carts, per_cart, shop.config)
    assert {"recovered", "recovered_by", "margin"} <= set(realised.columns)
    assert len(realised) == 50
    assert check_flow(["nothing", "reminder/email/1h"]) == (Action.parse("reminder/email/1h"),)
    with pytest.raises(BadInputError, match="increasing delay"):
        check_flow(["reminder/email/24h", "reminder/email/1h"])
    with pytest.raises(BadInputError, match="at most 3"):
        check_flow([f"reminder/email/{h}h" for h in (1, 6, 24, 72)])
    with pytest.raises(BadInputError, match=r"flow\[0\]"):
        check_flow(["reminder/fax/1h"])

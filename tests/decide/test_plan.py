"""The plan's core: consent files, holdout, consent, frequency caps within a plan, the discount budget,
recommendations; and off-policy evaluation from a decision log against figures worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winback.config import Settings
from winback.decide.actions import Action
from winback.decide.catalogue import load_catalogue
from winback.decide.holdout import holdout_draw
from winback.decide.log import DecisionLog
from winback.decide.ope import evaluate as off_policy
from winback.decide.ope import one_hot
from winback.decide.plan import (
    UPLIFT_MISSING,
    CustomerConsent,
    context_from_json,
    evaluate_log,
    load_consent,
    make_policy,
    plan_decisions,
)
from winback.errors import BadInputError

CATALOGUE = load_catalogue()
NOW = pd.Timestamp(datetime(2024, 6, 10, 11, tzinfo=UTC))
ABANDONED = pd.Timestamp(datetime(2024, 6, 10, 10, tzinfo=UTC))  # + 10 h = 20:00 UTC, before quiet hours
EMAIL = CustomerConsent(frozenset({"email"}))


def carts(users: list[str], value: float = 100.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cart_id": [f"c{i}" for i in range(len(users))],
            "user_id": users,
            "abandoned_at": [ABANDONED] * len(users),
            "value": [value] * len(users),
        }
    )


def test_consent_file_formats_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "consent.csv"
    good.write_text("user_id,email,sms,utc_offset_minutes\nu1,true,0,120\nu2,no,YES,\nu3,,1,-300\n")
    found = load_consent(good)
    assert found["u1"] == CustomerConsent(frozenset({"email"}), 120)
    assert found["u2"] == CustomerConsent(frozenset({"sms"}), 0)
    assert found["u3"] == CustomerConsent(frozenset({"sms"}), -300)
    parquet = tmp_path / "consent.parquet"
    pd.DataFrame({"user_id": ["u1"], "push": [True]}).to_parquet(parquet)
    assert load_consent(parquet) == {"u1": CustomerConsent(frozenset({"push"}))}

    cases = {
        "user_id,email\nu1,maybe\n": "line 2, column email: found 'maybe', expected true or false",
        "user_id,email\nu1,1\nu1,0\n": "line 3: user_id u1 appears twice",
        "customer,email\nu1,1\n": "no user_id column",
        "user_id,fax\nu1,1\n": "no channel column",
        "user_id,email,utc_offset_minutes\nu1,1,900\n": "column utc_offset_minutes: found '900'",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(BadInputError, match=message):
            load_consent(bad)


def test_holdout_customers_get_nothing_and_the_rest_the_flow() -> None:
    users = [f"u{i:03d}" for i in range(200)]
    plan = plan_decisions(
        carts(users), NOW, make_policy("static-10h", CATALOGUE), CATALOGUE,
        consent=dict.fromkeys(users, EMAIL), holdout_share=0.3,
    )  # fmt: skip
    table = plan.table
    expected = [holdout_draw(u) < 0.3 for u in users]
    assert table["holdout"].tolist() == expected
    assert 40 < sum(expected) < 80
    held = table[table["holdout"]]
    assert (held["action"] == "nothing").all()
    assert held["reasons"].str.startswith("holdout:").all()
    sent = table[~table["holdout"]]
    assert (sent["action"] == "reminder/email/10h").all()
    assert (sent["send_at"] == ABANDONED + pd.Timedelta(hours=10)).all()
    assert (sent["channel"] == "email").all()
    assert (sent["propensity"] == 1.0).all()
    # every decision is in the log rows, with its context
    assert len(plan.decisions) == 200
    assert plan.decisions["holdout"].tolist() == expected
    context = context_from_json(plan.decisions["context"].iloc[0])
    assert context is not None
    assert context.consent == frozenset({"email"})


def test_consent_is_never_bypassed() -> None:
    kinds = {"email": EMAIL, "sms": CustomerConsent(frozenset({"sms"})), "none": CustomerConsent(frozenset())}
    users = [f"{kind}{i}" for i in range(50) for kind in (*kinds, "unknown")]
    consent = {u: kinds[u.rstrip("0123456789")] for u in users if not u.startswith("unknown")}
    for policy in ("static-10h", "random"):
        plan = plan_decisions(
            carts(users), NOW, make_policy(policy, CATALOGUE, seed=3), CATALOGUE,
            consent=consent, holdout_share=0.0,
        )  # fmt: skip
        table = plan.table
        for user, channel in zip(table["user_id"], table["channel"], strict=True):
            allowed = consent[user].consent if user in consent else frozenset()
            assert pd.isna(channel) or channel in allowed, (policy, user, channel)
        silent = table["user_id"].str.startswith(("none", "unknown"))
        assert (table.loc[silent, "action"] == "nothing").all()
        unknown = table["user_id"].str.startswith("unknown")
        assert table.loc[unknown, "reasons"].str.contains("no consent known").all()
    # random sends sms to the sms customers: only the allowed actions are drawn, with exact propensities
    sms = table[table["user_id"].str.startswith("sms")]
    assert (sms["action"] != "nothing").any()
    assert set(sms["action"]) <= {"nothing", "reminder+recs/sms/24h", "coupon10+recs/sms/24h"}
    assert np.allclose(sms["propensity"], 1 / 3)


def test_frequency_cap_counts_messages_of_the_same_plan_and_earlier_ones() -> None:
    plan = plan_decisions(
        carts(["u1", "u1", "u2"]), NOW, make_policy("static-10h", CATALOGUE), CATALOGUE,
        consent={"u1": EMAIL, "u2": EMAIL}, holdout_share=0.0,
        last_messages={"u2": {"email": (NOW - pd.Timedelta(hours=2)).timestamp()}},
    )  # fmt: skip
    table = plan.table
    # u1's second cart: its reminder would go out with the first one; u2 was e-mailed 2 h ago and the
    # 10 h reminder would go out 11 h after that, inside the 16 h cap
    assert table["action"].tolist() == ["reminder/email/10h", "nothing", "nothing"]
    assert "e-mail frequency cap: a message due in 9 h" in table["reasons"].iloc[1]
    assert "e-mail frequency cap: last message 2 h ago, 11 h from this send" in table["reasons"].iloc[2]
    plan = plan_decisions(
        carts(["u2"]), NOW, make_policy("static-10h", CATALOGUE), CATALOGUE, consent={"u2": EMAIL},
        holdout_share=0.0, last_messages={"u2": {"email": (NOW - pd.Timedelta(hours=8)).timestamp()}},
    )  # fmt: skip
    assert plan.table["action"].tolist() == ["reminder/email/10h"]  # 17 h after the last one


def test_budget_zero_gives_no_coupons_and_a_budget_is_never_overspent() -> None:
    users = [f"u{i}" for i in range(10)]
    consent = dict.fromkeys(users, EMAIL)
    coupons = make_policy("coupon-everyone", CATALOGUE)
    unlimited = plan_decisions(carts(users), NOW, coupons, CATALOGUE, consent=consent, holdout_share=0.0)
    assert (unlimited.table["coupon"] == 10).all()
    assert unlimited.discount_reserved == pytest.approx(100.0)  # 10 carts x 10% of 100
    none = plan_decisions(carts(users), NOW, coupons, CATALOGUE, budget=0, consent=consent, holdout_share=0.0)
    assert (none.table["coupon"] == 0).all()
    assert (none.table["action"] == "nothing").all()
    assert none.table["reasons"].str.contains("budget exhausted").all()
    some = plan_decisions(
        carts(users), NOW, coupons, CATALOGUE, budget=35, consent=consent, holdout_share=0.0
    )
    assert (some.table["coupon"] > 0).sum() == 3
    assert some.discount_reserved == pytest.approx(30.0)
    with pytest.raises(BadInputError, match="--budget -1"):
        plan_decisions(carts(users), NOW, coupons, CATALOGUE, budget=-1)


def test_recommendations_go_only_with_recs_actions() -> None:
    users = [f"u{i}" for i in range(60)]

    def recommend(cart_id: str | None, user_id: str) -> tuple[list[str], str]:
        return ([f"p-{cart_id}-1", f"p-{cart_id}-2"], "") if user_id != "u0" else ([], "cold start")

    plan = plan_decisions(
        carts(users), NOW, make_policy("random", CATALOGUE, seed=1), CATALOGUE,
        consent=dict.fromkeys(users, EMAIL), holdout_share=0.0, recommend=recommend,
    )  # fmt: skip
    table = plan.table
    recs = table["action"].map(lambda a: Action.parse(a).with_recommendations)
    assert recs.any()
    assert (~recs).any()
    assert (table.loc[~recs, "recommended"] == "").all()
    for cart, products, user in zip(
        table.loc[recs, "cart_id"], table.loc[recs, "recommended"], table.loc[recs, "user_id"], strict=True
    ):
        assert products == ("" if user == "u0" else f"p-{cart}-1 p-{cart}-2")


def test_unknown_policy_and_uplift_say_what_to_do() -> None:
    with pytest.raises(BadInputError, match="expected one of static-10h, static-1h-24h-72h"):
        make_policy("klaviyo", CATALOGUE)
    with pytest.raises(BadInputError) as error:
        make_policy("uplift", CATALOGUE)
    assert str(error.value) == UPLIFT_MISSING
    assert "--policy random" in UPLIFT_MISSING
    assert "winback policies evaluate --simulate" in UPLIFT_MISSING


# --------------------------------------------------------------------------- evaluation from the log


def _log_rows(propensity: float | None) -> pd.DataFrame:
    """Eight randomised decisions (nothing or the 10 h reminder, p = 0.5) and one holdout."""
    context = {"now": NOW.timestamp(), "abandoned_at": ABANDONED.timestamp(), "value": 100.0,
               "consent": ["email"], "utc_offset_minutes": 0, "last_message_at": {}}  # fmt: skip
    actions = ["nothing", "reminder/email/10h"] * 4 + ["nothing"]
    return pd.DataFrame(
        {
            "decided_at": NOW,
            "cart_id": [f"c{i}" for i in range(9)],
            "user_id": [f"u{i}" for i in range(9)],
            "policy": ["random"] * 8 + ["random"],
            "version": "1",
            "action": actions,
            "propensity": [propensity] * 8 + [1.0 if propensity else None],
            "holdout": [False] * 8 + [True],
            "context": [context] * 9,
        }
    )


def _with_outcomes(settings: Settings, propensity: float | None) -> pd.DataFrame:
    with DecisionLog(settings) as log:
        log.append(_log_rows(propensity))
        ids = log.read()["decision_id"]
        order = log.read()["cart_id"].str[1:].astype(int).to_numpy()
        margins = np.array([0, 30, 30, 0, 0, 30, 0, 30, 30], dtype=float)[order]
        log.record_outcomes(pd.DataFrame({"decision_id": ids, "recovered": margins > 0, "margin": margins}))
        return log.read()


def test_off_policy_figures_match_a_hand_computation(settings: Settings) -> None:
    decisions = _with_outcomes(settings, 0.5)
    found, notes = evaluate_log(decisions, CATALOGUE, n_boot=300)
    by_name = {row["name"]: row for row in found}
    # Rewards: the reminder rows earned 30, 30, 30, 0 less 0.001 each; the randomised nothing rows 0, 30,
    # 0, 0; the holdout row 30 (every policy does nothing there).
    cost = CATALOGUE.channel_cost("email")
    remind = (90 - 4 * cost) / 0.5 / 9  # IPS: weight 2 on the reminder rows
    nothing = (30 / 0.5 + 30) / 9  # weight 2 on the randomised nothing rows, 1 on the holdout
    ips = by_name["static-10h"]["estimates"]["ips"]
    assert ips["margin_per_decision"] == pytest.approx(remind + 30 / 9)  # the holdout row does nothing
    assert by_name["nothing"]["estimates"]["ips"]["margin_per_decision"] == pytest.approx(nothing)
    assert ips["profit_per_cart"] == pytest.approx(remind + 30 / 9 - nothing)
    assert ips["ci_low"] < ips["profit_per_cart"] < ips["ci_high"]
    assert by_name["static-10h"]["estimator"] == "dr"
    logged = by_name["logged"]
    assert logged["margin_per_decision"] == pytest.approx((150 - 4 * cost) / 9)
    assert logged["policies"] == {"random": 9}
    assert by_name["nothing"]["profit_per_cart"] == 0.0
    # DR and SNIPS as ope.evaluate computes them (the paired figures use the same formulas)
    frame = pd.DataFrame({"action": decisions["action"], "propensity": decisions["propensity"]})
    frame["reward"] = decisions["margin"] - np.where(frame["action"] == "nothing", 0.0, cost)
    columns = ["nothing", "reminder/email/10h", "coupon10/email/24h", "reminder/email/1h"]
    means = frame.groupby("action")["reward"].mean()
    model = pd.DataFrame([[means.get(c, means["nothing"]) for c in columns]] * 9, columns=columns)
    target = one_hot(["nothing" if h else "reminder/email/10h" for h in decisions["holdout"]], columns)
    direct = off_policy(frame, target, reward_model=model, estimators=("dr", "snips"), n_boot=10)
    for estimator in ("dr", "snips"):
        figures = by_name["static-10h"]["estimates"][estimator]
        assert figures["margin_per_decision"] == pytest.approx(direct[estimator].value)
    # coupon-everyone's coupon was never logged: IPS knows nothing of it, and says so
    assert any("never logged" in n for n in notes)
    assert any("effective sample size 1.0" in w for w in by_name["coupon-everyone"]["warnings"])


def test_a_log_without_propensities_or_outcomes_is_refused(settings: Settings, tmp_path: Path) -> None:
    decisions = _with_outcomes(settings, None)
    with pytest.raises(
        BadInputError, match=r"no propensities.*IPS, SNIPS, DR are refused.*--estimator direct"
    ):
        evaluate_log(decisions, CATALOGUE)
    found, notes = evaluate_log(decisions, CATALOGUE, estimators=("ips", "direct"), n_boot=50)
    assert all(row["estimator"] in ("direct", "mean") for row in found)
    assert any("IPS are refused" in n for n in notes)
    with DecisionLog(settings, tmp_path / "other.duckdb") as log:
        log.append(_log_rows(0.5))
        pending = log.read()
    with pytest.raises(BadInputError, match="none has an outcome"):
        evaluate_log(pending, CATALOGUE)

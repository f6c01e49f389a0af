"""UpliftModel (T, X, DR) on synthetic trials with known effects, the metrics by hand, and bad input."""

# ruff: noqa: N806  (scikit-learn's X for feature tables)
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from winback.decide.uplift import Learner, UpliftModel, qini_auc, qini_curve, uplift_at_k
from winback.errors import BadInputError

LEARNERS: list[Learner] = ["t", "x", "dr"]


def trial(n: int, seed: int, logged: bool = False) -> dict[str, Any]:
    """Three arms. A adds +0.25 to the purchase probability where x1 > 0 (nothing elsewhere); B adds
    +0.2 where x1 < -0.5 and -0.15 elsewhere. So the best treatment is B below -0.5, nothing in
    (-0.5, 0), A above 0. Randomised with shares 1/3, or logged: A far likelier where x1 > 0 (where
    buyers are also likelier), so a naive comparison of arms is confounded."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-1, 1, n)
    X = pd.DataFrame(
        {
            "x1": x1,
            "x2": rng.normal(size=n),
            "device": pd.Categorical(rng.choice(["mobile", "desktop"], n)),
        }
    )
    tau_a = np.where(x1 > 0, 0.25, 0.0)
    tau_b = np.where(x1 < -0.5, 0.2, -0.15)
    if logged:
        p_a, p_b = 0.15 + 0.5 * (x1 > 0), np.full(n, 0.25)
        u = rng.random(n)
        t = np.where(u < p_a, "A", np.where(u < p_a + p_b, "B", "nothing"))
        e = np.where(t == "A", p_a, np.where(t == "B", p_b, 1 - p_a - p_b))
    else:
        t = rng.choice(["nothing", "A", "B"], n)
        e = np.full(n, 1 / 3)
    p = 0.3 + 0.1 * (x1 > 0) + tau_a * (t == "A") + tau_b * (t == "B")
    bought = (rng.random(n) < p).astype(int)
    best = np.select([tau_b > 0, tau_a > 0], ["B", "A"], "nothing")
    return {"X": X, "t": t, "y": bought, "e": e, "tau_a": tau_a, "tau_b": tau_b, "best": best}


@pytest.fixture(scope="module")
def train() -> dict[str, Any]:
    return trial(9000, 0)


@pytest.fixture(scope="module")
def test() -> dict[str, Any]:
    return trial(6000, 1)


@pytest.fixture(scope="module")
def fitted(train: dict[str, Any]) -> dict[str, UpliftModel]:
    return {
        name: UpliftModel(learner=name, threads=1).fit(train["X"], train["t"], train["y"], train["e"])
        for name in LEARNERS
    }


@pytest.mark.parametrize("learner", LEARNERS)
def test_learners_rank_and_size_the_effects(
    learner: Learner, fitted: dict[str, UpliftModel], test: dict[str, Any]
) -> None:
    model = fitted[learner]
    effects = model.effects(test["X"])
    assert list(effects.columns) == ["A", "B"]
    assert model.treatments_ == ["nothing", "A", "B"]
    assert model.fallback_ == {}
    assert model.propensity_source_ == "given"
    y, t = test["y"], test["t"]
    random_score = np.random.default_rng(5).random(len(y))
    model_at_30 = uplift_at_k(y, t, effects["A"], treated="A", control="nothing")
    random_at_30 = uplift_at_k(y, t, random_score, treated="A", control="nothing")
    # Random top 30%: the average effect (0.125); the model's top 30% lies in x1 > 0 (effect 0.25).
    assert model_at_30 > 0.18
    assert model_at_30 > random_at_30 + 0.06
    assert qini_auc(y, t, effects["A"], treated="A", control="nothing") > qini_auc(
        y, t, random_score, treated="A", control="nothing"
    )
    tau_a, tau_b = test["tau_a"], test["tau_b"]
    # Sizes per region within 0.05 of the truth; B's sign is recovered where it is negative.
    assert effects["A"][tau_a > 0].mean() == pytest.approx(0.25, abs=0.05)
    assert effects["A"][tau_a == 0].mean() == pytest.approx(0.0, abs=0.05)
    assert effects["B"][tau_b > 0].mean() == pytest.approx(0.2, abs=0.05)
    assert effects["B"][tau_b < 0].mean() == pytest.approx(-0.15, abs=0.05)
    assert np.corrcoef(effects["B"], tau_b)[0, 1] > 0.6
    outcomes = model.outcomes(test["X"])
    assert list(outcomes.columns) == ["nothing", "A", "B"]
    np.testing.assert_allclose(outcomes[["A", "B"]].sub(outcomes["nothing"], axis=0), effects, atol=1e-12)


@pytest.mark.parametrize("learner", LEARNERS)
def test_multi_treatment_choice_per_region(
    learner: Learner, fitted: dict[str, UpliftModel], test: dict[str, Any]
) -> None:
    model = fitted[learner]
    centres = pd.DataFrame(
        {
            "x1": [-0.8, -0.25, 0.5],
            "x2": [0.0, 0.0, 0.0],
            "device": pd.Categorical(["mobile"] * 3, categories=["desktop", "mobile"]),
        }
    )
    assert model.best_treatment(centres).tolist() == ["B", "nothing", "A"]
    chosen = model.best_treatment(test["X"]).to_numpy()
    assert (chosen == test["best"]).mean() > 0.7  # errors only near the region borders
    # A cost larger than any probability effect leaves A unchosen.
    assert model.best_treatment(centres, costs={"A": 1.0}).tolist() == ["B", "nothing", "nothing"]


def test_continuous_outcome_revenue() -> None:
    rng = np.random.default_rng(3)
    data = trial(9000, 2)
    value = rng.gamma(4.0, 12.5, 9000)  # order value, mean 50
    revenue = data["y"] * value
    model = UpliftModel(learner="dr", outcome="continuous", threads=1).fit(data["X"], data["t"], revenue)
    assert model.propensity_source_ == "arm shares"
    held = trial(6000, 4)
    effects = model.effects(held["X"])
    # E[revenue] effect = probability effect x mean order value (50).
    assert effects["A"][held["tau_a"] > 0].mean() == pytest.approx(12.5, abs=3.0)
    assert effects["A"][held["tau_a"] == 0].mean() == pytest.approx(0.0, abs=3.0)
    assert effects["B"][held["tau_b"] < 0].mean() == pytest.approx(-7.5, abs=3.0)
    held_revenue = held["y"] * rng.gamma(4.0, 12.5, 6000)
    random_score = rng.random(6000)
    at_30 = uplift_at_k(held_revenue, held["t"], effects["A"], treated="A", control="nothing")
    assert at_30 > uplift_at_k(held_revenue, held["t"], random_score, treated="A", control="nothing") + 3.0


@pytest.mark.parametrize("learner", LEARNERS)
def test_logged_data_with_known_propensities(learner: Learner, test: dict[str, Any]) -> None:
    data = trial(9000, 5, logged=True)
    t, y = data["t"], data["y"]
    naive = y[t == "A"].mean() - y[t == "nothing"].mean()
    assert naive > 0.17  # confounded: the true average effect of A is 0.125
    model = UpliftModel(learner=learner, threads=1).fit(data["X"], t, y, data["e"])
    effects = model.effects(test["X"])
    assert effects["A"].mean() == pytest.approx(0.125, abs=0.04)
    assert effects["A"][test["tau_a"] > 0].mean() == pytest.approx(0.25, abs=0.05)


def test_dr_uses_the_propensities_aipw_by_hand() -> None:
    """With every arm too small for trees the DR effect is the AIPW mean, computed here independently."""
    data = trial(600, 6, logged=True)
    t, y, e = data["t"], data["y"].astype(float), data["e"]
    model = UpliftModel(learner="dr", min_arm_rows=10_000, threads=1).fit(data["X"], t, y, e)
    assert set(model.fallback_) == {"nothing", "A", "B"}
    assert "fewer than min_arm_rows" in model.fallback_["A"]
    mean = {a: y[t == a].mean() for a in ("nothing", "A", "B")}
    treated, control = (t == "A"), (t == "nothing")
    aipw = np.mean(
        mean["A"] - mean["nothing"] + treated * (y - mean["A"]) / e - control * (y - mean["nothing"]) / e
    )
    effects = model.effects(data["X"].head(3))
    np.testing.assert_allclose(effects["A"], aipw, rtol=1e-12)
    assert abs(aipw - (mean["A"] - mean["nothing"])) > 0.01  # the propensities changed the answer


@pytest.mark.parametrize("learner", LEARNERS)
def test_small_arm_falls_back_to_its_mean(learner: Learner, train: dict[str, Any]) -> None:
    X, t, y = train["X"].head(4000), train["t"][:4000].copy(), train["y"][:4000].copy()
    rare = np.flatnonzero(t == "B")[30:]
    t[rare] = "nothing"  # B keeps 30 rows
    t[np.flatnonzero(t == "A")[:5]] = "coupon"  # 5 rows, made all non-buyers below
    y[t == "coupon"] = 0
    model = UpliftModel(learner=learner, threads=1).fit(X, t, y)
    assert model.fallback_["B"].startswith("30 rows, fewer than min_arm_rows=100")
    assert "coupon" in model.fallback_
    assert "A" not in model.fallback_
    effects = model.effects(X.head(50))
    assert effects["B"].nunique() == 1
    assert effects["coupon"].nunique() == 1
    assert effects["A"].nunique() > 1
    if learner == "t":
        in_b, in_c = t == "B", t == "nothing"
        assert effects["B"].iloc[0] == pytest.approx(y[in_b].mean() - y[in_c].mean(), abs=1e-12)
    binary_minority = UpliftModel(learner=learner, min_arm_rows=1, threads=1).fit(X, t, y)
    assert "rows with outcome 1, fewer than min_arm_minority=10" in binary_minority.fallback_["coupon"]


# --------------------------------------------------------------------------- metrics by hand

# Scores 4, 3, 2, 1 on rows (A, bought), (control, not), (A, not), (control, bought); a "B" row ignored.
Y = [1, 0, 0, 1, 1]
T = ["A", "c", "A", "c", "B"]
PERFECT = [4.0, 3.0, 2.0, 1.0, 9.0]
REVERSED = [1.0, 2.0, 3.0, 4.0, 9.0]


def test_uplift_at_k_by_hand() -> None:
    # Top 2 of the 4 A/control rows: (A, 1) and (c, 0) -> 1 - 0.
    assert uplift_at_k(Y, T, PERFECT, treated="A", control="c", k=0.5) == 1.0
    # By group: the best A row (bought) and the best control row (not) -> 1 - 0.
    assert uplift_at_k(Y, T, PERFECT, treated="A", control="c", k=0.5, strategy="by_group") == 1.0
    # Reversed: (c, 1) and (A, 0) -> 0 - 1.
    assert uplift_at_k(Y, T, REVERSED, treated="A", control="c", k=0.5) == -1.0
    with pytest.raises(BadInputError, match="no treated rows among the top share"):
        uplift_at_k(Y, T, REVERSED, treated="A", control="c", k=0.3)


def test_qini_by_hand() -> None:
    n, q = qini_curve(Y, T, PERFECT, treated="A", control="c")
    np.testing.assert_allclose(n, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(q, [0, 1, 1, 1, 0])
    # Curve area 3, random line (0,0)-(4,0) area 0, perfect ranking area 3 -> 1.
    assert qini_auc(Y, T, PERFECT, treated="A", control="c") == pytest.approx(1.0)
    # Reversed: points 0, 0, -1, -0.5, 0 -> area -1.5 -> -1.5 / 3.
    _, q = qini_curve(Y, T, REVERSED, treated="A", control="c")
    np.testing.assert_allclose(q, [0, 0, -1, -0.5, 0])
    assert qini_auc(Y, T, REVERSED, treated="A", control="c") == pytest.approx(-0.5)
    # Continuous outcomes: scaling y leaves the normalised area unchanged.
    assert qini_auc(np.multiply(Y, 37.5), T, REVERSED, treated="A", control="c") == pytest.approx(-0.5)


# --------------------------------------------------------------------------- bad input


def test_bad_input(train: dict[str, Any]) -> None:
    X, t, y, e = train["X"], train["t"], train["y"], train["e"]
    with pytest.raises(BadInputError, match="control: 'none' is not among the treatments"):
        UpliftModel(control="none").fit(X, t, y)
    with pytest.raises(BadInputError, match="treatment: expected 9000 treatment names"):
        UpliftModel().fit(X, t[:-1], y)
    with pytest.raises(BadInputError, match="y: expected 9000 outcomes"):
        UpliftModel().fit(X, t, y[1:])
    with pytest.raises(BadInputError, match="propensity: expected 9000 probabilities"):
        UpliftModel().fit(X, t, y, e[:10])
    for bad in (0.0, 1.5, np.nan, -0.2):
        with pytest.raises(BadInputError, match=r"propensity: expected probabilities in \(0, 1\]"):
            UpliftModel().fit(X, t, y, np.r_[e[:-1], bad])
    with pytest.raises(BadInputError, match="binary outcome must be 0/1"):
        UpliftModel().fit(X, t, y * 2.5)
    with pytest.raises(BadInputError, match="every row got the control"):
        UpliftModel().fit(X, np.full(len(y), "nothing"), y)
    with pytest.raises(BadInputError, match="learner: expected one of"):
        UpliftModel(learner="s").fit(X, t, y)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="column device"):
        UpliftModel().fit(X.assign(device=X["device"].astype(str)), t, y)
    with pytest.raises(BadInputError, match="not fitted yet"):
        UpliftModel().effects(X)
    with pytest.raises(BadInputError, match="treated: no rows got 'C'"):
        uplift_at_k(y, t, e, treated="C", control="nothing")
    with pytest.raises(BadInputError, match="score: expected finite scores"):
        qini_auc(y, t, np.r_[e[:-1], np.nan], treated="A", control="nothing")


def test_predict_checks_columns(fitted: dict[str, UpliftModel], test: dict[str, Any]) -> None:
    with pytest.raises(BadInputError, match="missing column"):
        fitted["t"].effects(test["X"].drop(columns=["x2"]))
    # Column order and an unseen category do not matter (unseen is missing).
    X = test["X"][["device", "x2", "x1"]].head(4).copy()
    same = fitted["t"].effects(X)
    np.testing.assert_allclose(same, fitted["t"].effects(test["X"].head(4)))
    X["device"] = pd.Categorical(["tablet"] * 4)
    assert np.isfinite(fitted["t"].effects(X).to_numpy()).all()

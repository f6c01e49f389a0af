"""Off-policy estimators: hand-computed answers on a four-row log, a synthetic contextual problem whose
true policy value is known (unbiasedness, interval coverage, DR's lower variance), the bootstrap against
the analytic standard error, and the checks that refuse or warn."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from winback.decide.actions import NOTHING, Action
from winback.decide.ope import NO_PROPENSITIES, Estimate, check_log, evaluate, one_hot
from winback.errors import BadInputError

ACTIONS = [NOTHING.name, Action("reminder", 0.0, "email", 24).name, Action("coupon", 0.10, "email", 24).name]

# ---------------------------------------------------------------------------------------------------
# A synthetic contextual problem with a known answer
# ---------------------------------------------------------------------------------------------------

#: Four kinds of abandoned cart, their shares, and the chance of a purchase after each action.
#: The outcome is fairly predictable (0.4-0.9) so that DR's gain over IPS is large: with a perfect
#: reward model DR only pays for the Bernoulli noise, IPS also for the weighted mean.
CONTEXT_SHARES = np.array([0.4, 0.3, 0.2, 0.1])
MEAN_REWARD = np.array(
    [
        [0.55, 0.70, 0.80],
        [0.60, 0.85, 0.75],
        [0.40, 0.50, 0.65],
        [0.70, 0.75, 0.90],
    ]
)
#: The logging policy: epsilon-greedy around a status-quo favourite per context.
EPSILON = 0.3
FAVOURITE = np.array([0, 0, 1, 0])
LOGGING = np.full(MEAN_REWARD.shape, EPSILON / 3)
LOGGING[np.arange(4), FAVOURITE] += 1 - EPSILON
#: The target policy: the best action per context, which the logging policy mostly does not take.
BEST = MEAN_REWARD.argmax(axis=1)
TRUE_VALUE = float(CONTEXT_SHARES @ MEAN_REWARD[np.arange(4), BEST])  # 0.795
LOGGING_VALUE = float(CONTEXT_SHARES @ (LOGGING * MEAN_REWARD).sum(axis=1))  # 0.6015

N_DECISIONS = 2_000
N_REPS = 100


def simulate_log(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """A decision log of ``n`` carts under the logging policy, and each decision's context."""
    context = rng.choice(4, size=n, p=CONTEXT_SHARES)
    cumulative = LOGGING[context].cumsum(axis=1)
    action = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    reward = (rng.random(n) < MEAN_REWARD[context, action]).astype(float)
    log = pd.DataFrame(
        {
            "action": np.array(ACTIONS, dtype=object)[action],
            "propensity": LOGGING[context, action],
            "reward": reward,
        },
        index=pd.RangeIndex(1000, 1000 + n, name="decision_id"),
    )
    return log, context


@pytest.fixture(scope="module")
def repetitions() -> dict[str, list[Estimate]]:
    """IPS, SNIPS and DR (with a perfect reward model) of the best-action policy on 100 fresh logs."""
    rng = np.random.default_rng(20261122)
    out: dict[str, list[Estimate]] = {"ips": [], "snips": [], "dr": []}
    for rep in range(N_REPS):
        log, context = simulate_log(N_DECISIONS, rng)
        target = one_hot(np.array(ACTIONS)[BEST[context]], ACTIONS, index=log.index)
        model = pd.DataFrame(MEAN_REWARD[context], columns=ACTIONS, index=log.index)
        results = evaluate(log, target, reward_model=model, n_boot=400, seed=rep)
        for name in out:
            out[name].append(results[name])
    return out


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_estimators_are_unbiased(repetitions: dict[str, list[Estimate]], name: str) -> None:
    values = np.array([e.value for e in repetitions[name]])
    standard_error = values.std(ddof=1) / math.sqrt(N_REPS)
    assert abs(values.mean() - TRUE_VALUE) < 3 * standard_error
    # ...and the test has power: the logging policy's own value is many standard errors away.
    assert abs(LOGGING_VALUE - TRUE_VALUE) > 10 * standard_error


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_intervals_cover_the_truth_about_95_percent_of_the_time(
    repetitions: dict[str, list[Estimate]], name: str
) -> None:
    covered = sum(e.ci_low <= TRUE_VALUE <= e.ci_high for e in repetitions[name])
    assert 85 <= covered <= 100
    assert all(e.ci_low < e.value < e.ci_high for e in repetitions[name])


def test_dr_with_a_perfect_model_has_much_lower_variance_than_ips(
    repetitions: dict[str, list[Estimate]],
) -> None:
    ips = np.array([e.value for e in repetitions["ips"]])
    dr = np.array([e.value for e in repetitions["dr"]])
    # Per-decision variances from the known distribution: IPS E[w^2 r] - V^2; DR with q = the true means
    # Var_x(mu_target) + E[w^2 mu (1 - mu)]. Their ratio is 0.215.
    rows = np.arange(4)
    mu, p = MEAN_REWARD[rows, BEST], LOGGING[rows, BEST]
    var_ips = float(CONTEXT_SHARES @ (mu / p)) - TRUE_VALUE**2
    var_dr = float(CONTEXT_SHARES @ mu**2) - TRUE_VALUE**2 + float(CONTEXT_SHARES @ (mu * (1 - mu) / p))
    assert ips.var(ddof=1) == pytest.approx(var_ips / N_DECISIONS, rel=0.35)
    assert dr.var(ddof=1) == pytest.approx(var_dr / N_DECISIONS, rel=0.35)
    assert dr.var(ddof=1) < 0.4 * ips.var(ddof=1)
    widths = {n: np.mean([e.ci_high - e.ci_low for e in repetitions[n]]) for n in ("ips", "dr")}
    assert widths["dr"] < 0.6 * widths["ips"]


def test_effective_sample_size_matches_the_weights() -> None:
    log, context = simulate_log(N_DECISIONS, np.random.default_rng(1))
    target = one_hot(np.array(ACTIONS)[BEST[context]], ACTIONS, index=log.index)
    estimate = evaluate(log, target, estimators=("ips",), n_boot=10)["ips"]
    agrees = log["action"].to_numpy() == target.idxmax(axis=1).to_numpy()
    w = np.where(agrees, 1 / log["propensity"].to_numpy(), 0.0)
    assert estimate.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert estimate.n == N_DECISIONS
    assert estimate.warnings == ()


# ---------------------------------------------------------------------------------------------------
# Known answers on four decisions
# ---------------------------------------------------------------------------------------------------


def four_decisions() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    a, b, c = ACTIONS
    log = pd.DataFrame(
        {"action": [a, b, a, c], "propensity": [0.5, 0.25, 0.5, 0.25], "reward": [1.0, 0.0, 0.0, 1.0]},
        index=["d1", "d2", "d3", "d4"],
    )
    target = pd.DataFrame(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], columns=ACTIONS, index=log.index
    )
    model = pd.DataFrame(np.full((4, 3), 0.5), columns=ACTIONS, index=log.index)
    return log, target, model


def test_hand_computed_values() -> None:
    log, target, model = four_decisions()
    # weights pi/propensity: 1/0.5, 1/0.25, 0.5/0.5, 1/0.25 = 2, 4, 1, 4; w*r = 2, 0, 0, 4.
    results = evaluate(log, target, reward_model=model, estimators=("ips", "snips", "dr", "direct"))
    assert results["ips"].value == pytest.approx(6 / 4)
    assert results["snips"].value == pytest.approx(6 / 11)
    # DR: 0.5 + mean(w * (r - 0.5)) = 0.5 + (1 - 2 - 0.5 + 2) / 4
    assert results["dr"].value == pytest.approx(0.625)
    assert results["direct"].value == pytest.approx(0.5)
    assert results["ips"].effective_sample_size == pytest.approx(121 / 37)
    assert results["direct"].effective_sample_size == 4
    assert list(results) == ["ips", "snips", "dr", "direct"]


def test_clipping_caps_the_weights_and_says_so() -> None:
    log, target, _ = four_decisions()
    ips = evaluate(log, target, estimators=("ips",), clip=2.0)["ips"]
    assert ips.value == pytest.approx((2 + 0 + 0 + 2) / 4)  # weights 2, 2, 1, 2
    assert any("2 of 4 importance weights capped at 2" in w for w in ips.warnings)


def test_snips_ignores_a_constant_added_to_every_reward_and_ips_does_not() -> None:
    log, target, _ = four_decisions()
    shifted = log.assign(reward=log["reward"] + 10)
    before = evaluate(log, target, estimators=("ips", "snips"))
    after = evaluate(shifted, target, estimators=("ips", "snips"))
    assert after["snips"].value == pytest.approx(before["snips"].value + 10)
    assert after["ips"].value == pytest.approx(before["ips"].value + 10 * 11 / 4)


# ---------------------------------------------------------------------------------------------------
# The bootstrap
# ---------------------------------------------------------------------------------------------------


def test_bootstrap_interval_matches_the_analytic_standard_error() -> None:
    """On a large uniform-random log the IPS mean is nearly normal, so the percentile interval should be
    about the estimate +/- 1.96 standard errors of the mean of w * r."""
    rng = np.random.default_rng(7)
    n = 20_000
    action = rng.integers(0, 3, n)
    reward = rng.gamma(2.0, 5.0, n) * (rng.random(n) < 0.3)  # a margin when a purchase happens
    log = pd.DataFrame({"action": np.array(ACTIONS)[action], "propensity": 1 / 3, "reward": reward})
    target = pd.DataFrame({ACTIONS[0]: 0.2, ACTIONS[1]: 0.3, ACTIONS[2]: 0.5}, index=log.index)
    ips = evaluate(log, target, estimators=("ips",), n_boot=2000, seed=3)["ips"]
    terms = target.to_numpy()[np.arange(n), action] * 3 * reward
    assert ips.value == pytest.approx(terms.mean())
    half_width = 1.959964 * terms.std(ddof=1) / math.sqrt(n)
    assert ips.ci_high - ips.ci_low == pytest.approx(2 * half_width, rel=0.1)
    assert (ips.ci_low + ips.ci_high) / 2 == pytest.approx(ips.value, abs=0.2 * half_width)
    assert ips.level == 0.95


def test_a_baseline_gives_the_difference_with_a_paired_interval() -> None:
    """Against a baseline every estimator is the target's less the baseline's, and the interval is that of
    the per-decision differences (both policies resampled together), not of either value."""
    rng = np.random.default_rng(11)
    n = 20_000
    action = rng.integers(0, 3, n)
    reward = rng.gamma(2.0, 5.0, n) * (rng.random(n) < 0.2 + 0.05 * action)
    log = pd.DataFrame({"action": np.array(ACTIONS)[action], "propensity": 1 / 3, "reward": reward})
    target = one_hot([ACTIONS[2]] * n, ACTIONS, index=log.index)
    hold = one_hot([ACTIONS[0]] * n, ACTIONS, index=log.index)
    model = pd.DataFrame(np.tile([1.5, 2.0, 2.5], (n, 1)), columns=ACTIONS, index=log.index)
    every = ("ips", "snips", "dr", "direct")
    both = evaluate(log, target, reward_model=model, estimators=every, baseline=hold, n_boot=1000, seed=2)
    alone = evaluate(log, target, reward_model=model, estimators=every, n_boot=10)
    held = evaluate(log, hold, reward_model=model, estimators=every, n_boot=10)
    for name in every:
        assert both[name].value == pytest.approx(alone[name].value - held[name].value)
    assert both["direct"].value == pytest.approx(1.0)
    # IPS of a difference: mean of 3 (1[a = 2] - 1[a = 0]) r, whose standard error the interval shows.
    terms = 3 * ((action == 2).astype(float) - (action == 0)) * reward
    half_width = 1.959964 * terms.std(ddof=1) / math.sqrt(n)
    ips = both["ips"]
    assert ips.ci_high - ips.ci_low == pytest.approx(2 * half_width, rel=0.1)
    assert ips.effective_sample_size == pytest.approx(min(alone["ips"].effective_sample_size,
                                                          held["ips"].effective_sample_size))  # fmt: skip
    with pytest.raises(BadInputError, match="baseline: expected the same action columns"):
        evaluate(log, target, baseline=hold[ACTIONS[:2]], estimators=("ips",))


def test_bootstrap_is_reproducible_and_levels_nest() -> None:
    log, context = simulate_log(500, np.random.default_rng(2))
    target = one_hot(np.array(ACTIONS)[BEST[context]], ACTIONS, index=log.index)
    first = evaluate(log, target, estimators=("snips",), seed=5)["snips"]
    again = evaluate(log, target, estimators=("snips",), seed=5)["snips"]
    other = evaluate(log, target, estimators=("snips",), seed=6)["snips"]
    narrow = evaluate(log, target, estimators=("snips",), seed=5, level=0.5)["snips"]
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.ci_low < narrow.ci_low < narrow.ci_high < first.ci_high


# ---------------------------------------------------------------------------------------------------
# Checks that refuse or warn
# ---------------------------------------------------------------------------------------------------


def test_a_log_without_propensities_is_refused_for_weighted_estimators() -> None:
    log, target, model = four_decisions()
    bare = log.drop(columns="propensity")
    for estimators in (("ips",), ("snips",), ("dr",)):
        with pytest.raises(BadInputError, match=NO_PROPENSITIES):
            evaluate(bare, target, reward_model=model, estimators=estimators)
    assert any(NO_PROPENSITIES in w for w in check_log(bare))
    # Only the direct method runs, on the reward model alone.
    assert evaluate(bare, target, reward_model=model, estimators=("direct",))["direct"].value == 0.5


def test_null_propensities_are_refused_too() -> None:
    log, target, _ = four_decisions()
    log.loc["d2", "propensity"] = np.nan
    with pytest.raises(BadInputError, match=NO_PROPENSITIES):
        evaluate(log, target, estimators=("ips",))
    assert check_log(log) == [
        f"propensity: 1 of 4 decisions have none; {NO_PROPENSITIES}; only 'direct' can run"
    ]


def test_tiny_propensities_are_warned_about() -> None:
    a, b, _ = ACTIONS
    log = pd.DataFrame(
        {"action": [a, b, a, b, a], "propensity": [0.002, 0.004, 0.5, 0.5, 0.5], "reward": [1, 0, 1, 0, 0]}
    )
    expected = "propensity: 2 of 5 decisions below 0.01: IPS weights up to 500; estimates will be noisy"
    assert check_log(log) == [expected]
    assert check_log(log, min_propensity=0.001) == []
    target = one_hot([a] * 5, ACTIONS, index=log.index)
    assert expected in evaluate(log, target, estimators=("ips",), n_boot=50)["ips"].warnings


def test_misaligned_target_rows_are_refused() -> None:
    log, target, model = four_decisions()
    with pytest.raises(BadInputError, match="target: rows are not aligned with the log"):
        evaluate(log, target.iloc[[1, 0, 2, 3]])
    with pytest.raises(BadInputError, match=r"target: rows are not aligned.*'d1'.*0"):
        evaluate(log, target.reset_index(drop=True))
    with pytest.raises(BadInputError, match=r"target: expected one row per logged decision \(4\), got 3"):
        evaluate(log, target.iloc[:3])
    with pytest.raises(BadInputError, match="reward_model: rows are not aligned"):
        evaluate(log, target, reward_model=model.iloc[::-1], estimators=("dr",))


def test_target_rows_must_be_probabilities_summing_to_one() -> None:
    log, target, _ = four_decisions()
    short = target.copy()
    short.loc["d3", ACTIONS[0]] = 0.4
    with pytest.raises(BadInputError, match=r"1 row\(s\) do not, e.g. row 'd3' sums to 0.9"):
        evaluate(log, short)
    negative = target.copy()
    negative.loc["d4"] = [-0.5, 0.5, 1.0]
    with pytest.raises(BadInputError, match="negative ones in row 'd4'"):
        evaluate(log, negative)
    gap = target.copy()
    gap.loc["d1", ACTIONS[1]] = np.nan
    with pytest.raises(BadInputError, match="target: expected finite numbers"):
        evaluate(log, gap)


def test_every_logged_action_needs_a_target_column() -> None:
    log, _, _ = four_decisions()
    without_coupon = one_hot([ACTIONS[0], ACTIONS[1], ACTIONS[0], ACTIONS[0]], ACTIONS[:2], index=log.index)
    with pytest.raises(BadInputError, match="no column for logged action") as caught:
        evaluate(log, without_coupon)
    assert f"'{ACTIONS[2]}': logged in 1 decisions" in str(caught.value)


def test_dr_and_direct_need_a_reward_model() -> None:
    log, target, model = four_decisions()
    for estimators in (("dr",), ("ips", "direct")):
        with pytest.raises(BadInputError, match=r"reward_model: .* need"):
            evaluate(log, target, estimators=estimators)
    with pytest.raises(BadInputError, match="reward_model: needs a predicted reward for every action"):
        evaluate(log, target, reward_model=model.drop(columns=ACTIONS[1]), estimators=("dr",))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda log: log.drop(columns="reward"), "log: no 'reward' column"),
        (lambda log: log.drop(columns="action"), "log: no 'action' column"),
        (lambda log: log.assign(reward=[1.0, None, 0.0, None]), "reward: 2 of 4 decisions have none"),
        (lambda log: log.assign(action=["a", None, "b", "c"]), "action: 1 of 4 decisions have none"),
        (
            lambda log: log.assign(reward=["1", "x", "0", "1"]),
            "reward: expected a number, got 'x' at row 'd2'",
        ),
        (
            lambda log: log.assign(propensity=[0.5, 0.0, 0.5, 1.5]),
            r"propensity: expected .* row 'd2', row 'd4'",
        ),
        (lambda log: log.iloc[:0], "log: no decisions"),
    ],
)
def test_bad_logs_are_refused_naming_the_column(
    change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    log, _, _ = four_decisions()
    with pytest.raises(BadInputError, match=message):
        check_log(change(log))


def test_no_overlap_is_reported_not_hidden() -> None:
    log, _, _ = four_decisions()
    never_logged = pd.DataFrame(
        {ACTIONS[0]: 0.0, ACTIONS[1]: 0.0, ACTIONS[2]: 0.0, "push": 1.0}, index=log.index
    )
    results = evaluate(log, never_logged, estimators=("ips", "snips"), n_boot=50)
    assert results["ips"].value == 0
    assert math.isnan(results["snips"].value)
    assert results["ips"].effective_sample_size == 0
    assert any("probability 0 to every logged action" in w for w in results["snips"].warnings)


def test_options_are_checked() -> None:
    log, target, _ = four_decisions()
    with pytest.raises(BadInputError, match="estimators 'ipw'"):
        evaluate(log, target, estimators=("ipw",))
    with pytest.raises(BadInputError, match="level 95"):
        evaluate(log, target, level=95)
    with pytest.raises(BadInputError, match="n_boot 0"):
        evaluate(log, target, n_boot=0)
    with pytest.raises(BadInputError, match="clip 0"):
        evaluate(log, target, clip=0)


def test_one_hot() -> None:
    table = one_hot([ACTIONS[2], ACTIONS[0]], ACTIONS, index=pd.Index(["x", "y"]))
    assert table.loc["x"].to_numpy().tolist() == [0.0, 0.0, 1.0]
    assert table.loc["y"].to_numpy().tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(BadInputError, match="'coupon99/email/24h' not among the columns"):
        one_hot(["coupon99/email/24h"], ACTIONS)

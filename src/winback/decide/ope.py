"""Off-policy evaluation: what a policy would have earned, estimated from another policy's decision log.

Every decision winback takes logs the action and the probability with which the logging policy chose it
(DESIGN.md, "Decisions"). That propensity is what lets any other policy be judged offline: re-weight each
logged reward by how much more (or less) often the target policy would have chosen the logged action.

- ``"ips"``: inverse propensity scoring, mean of ``w * r`` with ``w = pi(a|x) / propensity``. Unbiased
  when every propensity is right and positive; noisy when weights are large.
- ``"snips"``: self-normalised IPS, ``sum(w * r) / sum(w)``. Slightly biased, much less noisy, and
  invariant to adding a constant to every reward.
- ``"dr"``: doubly robust, the reward model's prediction for the target policy plus the weighted
  residual of the logged action. Unbiased if either the propensities or the reward model are right, and
  far less noisy than IPS when the model is good.
- ``"direct"``: the reward model alone. Needs no propensities, so it is the only one that runs on a log
  without them, and it is as biased as the model.

Intervals are bootstrap percentile intervals: decisions are resampled with replacement, all estimators on
the same resamples, and the estimate recomputed.

Examples
--------
>>> log = pd.DataFrame({"action": ["nothing", "reminder/email/24h", "nothing", "reminder/email/24h"],
...                     "propensity": [0.5, 0.5, 0.5, 0.5], "reward": [0.0, 1.0, 1.0, 1.0]})
>>> always_remind = one_hot(["reminder/email/24h"] * 4, ["nothing", "reminder/email/24h"])
>>> round(evaluate(log, always_remind, estimators=("ips",), n_boot=200)["ips"].value, 6)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from winback.errors import BadInputError

__all__ = ["ESTIMATORS", "Estimate", "check_log", "evaluate", "one_hot"]

#: The estimators :func:`evaluate` knows, in the order it reports them.
ESTIMATORS = ("ips", "snips", "dr", "direct")
#: Estimators that re-weight logged rewards and so need the logged propensities.
WEIGHTED = frozenset({"ips", "snips", "dr"})
#: Estimators that need a reward model.
MODELLED = frozenset({"dr", "direct"})

#: Below this effective sample size a percentile interval is not to be trusted.
MIN_EFFECTIVE_SAMPLE_SIZE = 100
#: Tolerance on "each row of target probabilities sums to 1".
ROW_SUM_TOLERANCE = 1e-6
#: Bootstrap counts are built this many cells (resamples x decisions) at a time, to bound memory.
_CHUNK_CELLS = 1 << 22

NO_PROPENSITIES = (
    "the decision log has no propensities: IPS, SNIPS and DR need the probability with which each logged "
    "action was chosen"
)


@dataclass(frozen=True)
class Estimate:
    """One estimator's answer for one target policy.

    Attributes
    ----------
    estimator
        ``"ips"``, ``"snips"``, ``"dr"`` or ``"direct"``.
    value
        Estimated mean reward per decision under the target policy.
    ci_low, ci_high
        Bootstrap percentile interval at ``level``.
    level
        Confidence level of the interval, e.g. 0.95.
    n
        Number of logged decisions used.
    effective_sample_size
        ``(sum w)^2 / sum w^2`` of the importance weights: how many decisions the estimate is really worth
        (``n`` for ``"direct"``, which weights nothing).
    warnings
        What makes this estimate less trustworthy than its interval suggests.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    level: float
    n: int
    effective_sample_size: float
    warnings: tuple[str, ...] = ()


def one_hot(actions: Sequence[str], columns: Sequence[str], *, index: pd.Index | None = None) -> pd.DataFrame:
    """Target probabilities of a deterministic policy that chose ``actions[i]`` for decision ``i``.

    Pass ``index=log.index`` so the table lines up with the decision log it will be evaluated on.

    >>> one_hot(["b", "a"], ["a", "b"]).to_numpy().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    names = [str(c) for c in columns]
    if len(set(names)) != len(names):
        raise BadInputError("columns: action names must be unique")
    chosen = pd.Index(names).get_indexer(pd.Index([str(a) for a in actions]))
    if (chosen < 0).any():
        unknown = sorted({str(a) for a, c in zip(actions, chosen, strict=True) if c < 0})
        raise BadInputError(f"actions: {_listing(unknown)} not among the columns ({_listing(names)})")
    probabilities = np.zeros((len(chosen), len(names)))
    probabilities[np.arange(len(chosen)), chosen] = 1.0
    if index is not None and len(index) != len(chosen):
        raise BadInputError(f"index: expected {len(chosen):,} labels (one per action), got {len(index):,}")
    return pd.DataFrame(probabilities, columns=names, index=index)


def check_log(log: pd.DataFrame, *, min_propensity: float = 0.01) -> list[str]:
    """What in a decision log will make off-policy estimates unreliable, as messages to show the user.

    ``log`` has one row per decision: ``action`` (the logged action's name), ``reward`` (a number) and,
    for IPS, SNIPS and DR, ``propensity`` (the probability with which the logging policy chose the logged
    action). Raises BadInputError when ``action`` or ``reward`` is missing or has nulls, or when a
    propensity is not a probability in (0, 1]; returns warnings for missing or small propensities.
    """
    _validated_log(log)
    return _propensity_warnings(log, min_propensity)


def evaluate(
    log: pd.DataFrame,
    target: pd.DataFrame,
    *,
    reward_model: pd.DataFrame | None = None,
    estimators: Iterable[str] = ("ips", "snips", "dr"),
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    clip: float | None = None,
    min_propensity: float = 0.01,
    baseline: pd.DataFrame | None = None,
) -> dict[str, Estimate]:
    """Estimate the mean reward per decision the ``target`` policy would have earned on ``log``.

    With a ``baseline`` policy, estimate instead how much more than the baseline the target would have
    earned per decision (its incremental value, e.g. over doing nothing): each estimator of the target
    less the same estimator of the baseline, computed on the same bootstrap resamples, so the interval is
    that of the difference (it is wider than the one of either value: the two are estimated from
    different decisions of the log).

    Parameters
    ----------
    log
        The decision log, as described in :func:`check_log`.
    target
        The target policy's probability of each action for each logged decision: the same index as
        ``log``, one column per action name, rows summing to 1 (see :func:`one_hot` for a deterministic
        policy). Every logged action needs a column (of zeros if the policy never chooses it).
    reward_model
        Predicted mean reward of each action for each decision, the same index and at least the columns
        of ``target``. Needed by ``"dr"`` and ``"direct"``.
    estimators
        Any of ``"ips"``, ``"snips"``, ``"dr"``, ``"direct"``.
    level
        Confidence level of the bootstrap percentile intervals.
    n_boot
        Number of bootstrap resamples.
    seed
        Seed of the resampling, so intervals are reproducible.
    clip
        If given, importance weights above it are capped: less variance, some bias.
    min_propensity
        Propensities below it are reported in each weighted estimate's warnings.
    baseline
        Another policy's probabilities, a table like ``target`` (the same action columns); if given,
        every estimate is of ``value(target) - value(baseline)``, and ``effective_sample_size`` is the
        smaller of the two policies'.

    Returns
    -------
    dict
        One :class:`Estimate` per requested estimator, keyed by its name.

    Examples
    --------
    >>> log = pd.DataFrame({"action": ["nothing", "reminder/email/24h"] * 2,
    ...                     "propensity": [0.5] * 4, "reward": [0.0, 1.0, 1.0, 3.0]})
    >>> names = ["nothing", "reminder/email/24h"]
    >>> remind, hold = one_hot([names[1]] * 4, names), one_hot([names[0]] * 4, names)
    >>> round(evaluate(log, remind, baseline=hold, estimators=("ips",), n_boot=50)["ips"].value, 6)
    1.5
    """
    wanted = _validated_estimators(estimators)
    if not 0 < level < 1:
        raise BadInputError(f"level {level}: expected a confidence level between 0 and 1, e.g. 0.95")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise BadInputError(f"n_boot {n_boot!r}: expected a positive number of bootstrap resamples")
    if clip is not None and not clip > 0:
        raise BadInputError(f"clip {clip}: expected a positive cap on the importance weights, or None")
    actions, reward = _validated_log(log)
    weighted = [e for e in wanted if e in WEIGHTED]
    if weighted and not _has_propensities(log):
        raise BadInputError(
            f"{NO_PROPENSITIES}; only 'direct' (with a reward model) can run, not {_listing(weighted)}"
        )
    names, pi = _validated_policy_table(target, "target", log.index)
    policies = [pi]
    if baseline is not None:
        policies.append(_validated_baseline(baseline, names, log.index))
    codes = pd.Index(names).get_indexer(pd.Index(actions))
    if (codes < 0).any():
        missing = pd.Series(actions[codes < 0]).value_counts()
        raise BadInputError(
            "target: no column for logged action(s); add one (of zeros if the target policy never chooses "
            "the action)",
            [f"{a!r}: logged in {c:,} decisions" for a, c in missing.items()],
        )
    q: NDArray[np.float64] | None = None
    if reward_model is not None:
        q = _validated_reward_model(reward_model, names, log.index)
    elif any(e in MODELLED for e in wanted):
        needing = [e for e in wanted if e in MODELLED]
        raise BadInputError(
            f"reward_model: {_listing(needing)} need(s) the predicted mean reward of every action for every "
            "decision (a table like target); without one use 'ips' or 'snips'"
        )

    n = len(reward)
    rows = np.arange(n)
    # Per-decision terms whose sums give every estimator: sum(w r), sum(w), sum(dr), sum(direct); one set
    # per policy (the target's, then the baseline's), so both are resampled together.
    columns: dict[str, NDArray[np.float64]] = {}
    shared_warnings = _propensity_warnings(log, min_propensity) if weighted else []
    ess = float(n)
    for k, probabilities in enumerate(policies):
        weights = np.ones(n)
        if weighted:
            propensity = log["propensity"].to_numpy(dtype=float)
            weights = probabilities[rows, codes] / propensity
            if clip is not None:
                capped = int((weights > clip).sum())
                if capped:
                    shared_warnings.append(
                        f"{'baseline ' if k else ''}clip: {capped:,} of {n:,} importance weights capped at "
                        f"{clip:g} (largest {weights.max():,.4g}); the estimate is biased towards the "
                        "logging policy's value"
                    )
                weights = np.minimum(weights, clip)
            columns[f"wr{k}"] = weights * reward
            columns[f"w{k}"] = weights
            ess = min(ess, _effective_sample_size(weights))
            overlap = _overlap_warnings(_effective_sample_size(weights), n)
            shared_warnings.extend(w.replace("target", "baseline") if k else w for w in overlap)
        if q is not None:
            direct = (probabilities * q).sum(axis=1)
            columns[f"direct{k}"] = direct
            if "dr" in wanted:
                columns[f"dr{k}"] = direct + weights * (reward - q[rows, codes])
    terms = np.column_stack(list(columns.values()))
    where = {name: j for j, name in enumerate(columns)}
    full = terms.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = bootstrap_sums(terms, n_boot, np.random.default_rng(seed))

    tail = 100 * (1 - level) / 2
    results: dict[str, Estimate] = {}
    for name in wanted:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(_contrast(name, full[None, :], where, n, len(policies))[0])
            replicates = _contrast(name, boot, where, n, len(policies))
        notes = list(shared_warnings) if name in WEIGHTED else []
        finite = np.isfinite(replicates)
        if not finite.all():
            notes.append(
                f"{name}: {int((~finite).sum()):,} of {n_boot:,} bootstrap resamples had no decision the "
                "target policy would take; the interval ignores them"
            )
        low, high = (
            np.percentile(replicates[finite], [tail, 100 - tail]) if finite.any() else (math.nan, math.nan)
        )
        results[name] = Estimate(
            estimator=name,
            value=value,
            ci_low=float(low),
            ci_high=float(high),
            level=level,
            n=n,
            effective_sample_size=ess if name in WEIGHTED else float(n),
            warnings=tuple(notes),
        )
    return results


# -- validation --------------------------------------------------------------------------------------


def _validated_estimators(estimators: Iterable[str]) -> list[str]:
    wanted = [estimators] if isinstance(estimators, str) else list(estimators)
    unknown = [e for e in wanted if e not in ESTIMATORS]
    if unknown or not wanted:
        given = _listing(unknown) if unknown else "(none)"
        raise BadInputError(f"estimators {given}: expected some of {_listing(ESTIMATORS)}")
    return list(dict.fromkeys(wanted))


def _validated_log(log: pd.DataFrame) -> tuple[NDArray[np.object_], NDArray[np.float64]]:
    """The logged action names and rewards, or BadInputError naming the column and rows at fault."""
    if not isinstance(log, pd.DataFrame):
        raise BadInputError(f"log: expected a DataFrame with action, propensity, reward; got {type(log)}")
    for column in ("action", "reward"):
        if column not in log.columns:
            raise BadInputError(
                f"log: no {column!r} column; expected one row per decision with action, propensity and "
                f"reward (found {_listing([str(c) for c in log.columns]) or 'no columns'})"
            )
    if len(log) == 0:
        raise BadInputError("log: no decisions to evaluate")
    _refuse_nulls(log, "action", "every decision needs the name of the action taken")
    _refuse_nulls(log, "reward", "every decision needs its observed reward (0 if nothing happened)")
    reward = _numeric(log, "reward", "a number")
    if not np.isfinite(reward).all():
        raise BadInputError(f"reward: expected finite numbers, got {_first_rows(log, ~np.isfinite(reward))}")
    if "propensity" in log.columns and log["propensity"].notna().any():
        propensity = _numeric(log, "propensity", "a probability")
        bad = ~((propensity > 0) & (propensity <= 1)) & ~np.isnan(propensity)
        if bad.any():
            raise BadInputError(
                f"propensity: expected the probability (in (0, 1]) with which the logged action was "
                f"chosen, got {_first_rows(log, bad)}"
            )
    actions = np.array([str(a) for a in log["action"].tolist()], dtype=object)
    return actions, reward


def _has_propensities(log: pd.DataFrame) -> bool:
    return "propensity" in log.columns and not log["propensity"].isna().any()


def _propensity_warnings(log: pd.DataFrame, min_propensity: float) -> list[str]:
    n = len(log)
    if "propensity" not in log.columns:
        return [f"propensity: no such column; {NO_PROPENSITIES}; only 'direct' can run"]
    missing = int(log["propensity"].isna().sum())
    if missing:
        return [
            f"propensity: {missing:,} of {n:,} decisions have none; {NO_PROPENSITIES}; only 'direct' can run"
        ]
    propensity = log["propensity"].to_numpy(dtype=float)
    small = propensity < min_propensity
    if not small.any():
        return []
    return [
        f"propensity: {int(small.sum()):,} of {n:,} decisions below {min_propensity:g}: IPS weights up to "
        f"{1 / propensity.min():,.4g}; estimates will be noisy"
    ]


def _validated_policy_table(
    table: pd.DataFrame, field: str, index: pd.Index
) -> tuple[list[str], NDArray[np.float64]]:
    """Action names and probabilities of a target table lined up with the log, or BadInputError."""
    values = _aligned_numbers(table, field, index)
    names = [str(c) for c in table.columns]
    negative = np.asarray((values < 0).any(axis=1))
    if negative.any():
        raise BadInputError(
            f"{field}: expected probabilities of at least 0, got negative ones in "
            f"{_first_rows(table, negative)}"
        )
    sums = values.sum(axis=1)
    off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise BadInputError(
            f"{field}: each row must be the target policy's probabilities over the actions, summing to 1; "
            f"{int(off.sum()):,} row(s) do not, e.g. row {table.index[first]!r} sums to {sums[first]:.6g}"
        )
    return names, values


def _validated_baseline(table: pd.DataFrame, names: list[str], index: pd.Index) -> NDArray[np.float64]:
    """The baseline policy's probabilities in the target's column order, or BadInputError."""
    have, values = _validated_policy_table(table, "baseline", index)
    if sorted(have) != sorted(names):
        raise BadInputError(
            "baseline: expected the same action columns as target; "
            f"only in target: {_listing(sorted(set(names) - set(have))) or 'none'}, "
            f"only in baseline: {_listing(sorted(set(have) - set(names))) or 'none'}"
        )
    return values[:, pd.Index(have).get_indexer(pd.Index(names))]


def _validated_reward_model(table: pd.DataFrame, names: list[str], index: pd.Index) -> NDArray[np.float64]:
    """Predicted rewards in the target's column order, or BadInputError."""
    values = _aligned_numbers(table, "reward_model", index)
    have = pd.Index([str(c) for c in table.columns])
    positions = have.get_indexer(pd.Index(names))
    if (positions < 0).any():
        raise BadInputError(
            "reward_model: needs a predicted reward for every action of target; missing "
            f"{_listing([a for a, p in zip(names, positions, strict=True) if p < 0])}"
        )
    return values[:, positions]


def _aligned_numbers(table: pd.DataFrame, field: str, index: pd.Index) -> NDArray[np.float64]:
    if not isinstance(table, pd.DataFrame):
        raise BadInputError(f"{field}: expected a DataFrame with one column per action, got {type(table)}")
    if len(table) != len(index):
        raise BadInputError(
            f"{field}: expected one row per logged decision ({len(index):,}), got {len(table):,}"
        )
    if not table.index.equals(index):
        differ = np.flatnonzero(table.index.to_numpy() != index.to_numpy())
        position = int(differ[0]) if differ.size else 0
        raise BadInputError(
            f"{field}: rows are not aligned with the log: at position {position:,} the log has "
            f"{index[position]!r} and {field} has {table.index[position]!r}; build it with index=log.index "
            "(or set it so if its rows are already in the log's order)"
        )
    names = [str(c) for c in table.columns]
    if len(set(names)) != len(names) or not names:
        raise BadInputError(f"{field}: expected one uniquely named column per action")
    try:
        values = table.to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise BadInputError(f"{field}: expected numbers in every column") from None
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise BadInputError(
            f"{field}: expected finite numbers, got nulls or infinities in {_first_rows(table, bad)}"
        )
    return values


def _refuse_nulls(log: pd.DataFrame, column: str, why: str) -> None:
    null = log[column].isna().to_numpy()
    if null.any():
        raise BadInputError(
            f"{column}: {int(null.sum()):,} of {len(log):,} decisions have none ({why}); "
            f"first at row {log.index[int(np.flatnonzero(null)[0])]!r}"
        )


def _numeric(log: pd.DataFrame, column: str, what: str) -> NDArray[np.float64]:
    converted = pd.to_numeric(log[column], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(converted) & log[column].notna().to_numpy()
    if bad.any():
        raise BadInputError(f"{column}: expected {what}, got {_first_rows(log, bad, log[column])}")
    return converted


def _first_rows(table: pd.DataFrame, bad: NDArray[np.bool_], values: pd.Series | None = None) -> str:
    positions = np.flatnonzero(bad)
    shown = []
    for p in positions[:3]:
        label = table.index[int(p)]
        shown.append(f"row {label!r}" if values is None else f"{values.iloc[int(p)]!r} at row {label!r}")
    more = f" and {positions.size - 3:,} more" if positions.size > 3 else ""
    return ", ".join(shown) + more


def _listing(items: Iterable[str]) -> str:
    return ", ".join(repr(i) for i in items)


# -- estimation --------------------------------------------------------------------------------------


def _from_sums(
    name: str, sums: NDArray[np.float64], where: dict[str, int], n: int, k: int = 0
) -> NDArray[np.float64]:
    """Each estimator of policy ``k`` from column sums of the per-decision terms (rows: full sample or
    resamples)."""
    if name == "ips":
        return sums[:, where[f"wr{k}"]] / n
    if name == "snips":
        return sums[:, where[f"wr{k}"]] / sums[:, where[f"w{k}"]]
    return sums[:, where[f"{name}{k}"]] / n


def _contrast(
    name: str, sums: NDArray[np.float64], where: dict[str, int], n: int, policies: int
) -> NDArray[np.float64]:
    """The target's estimate, less the baseline's when there are two policies."""
    value = _from_sums(name, sums, where, n)
    return value - _from_sums(name, sums, where, n, 1) if policies > 1 else value


def bootstrap_sums(terms: NDArray[np.float64], n_boot: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Column sums of ``terms`` over ``n_boot`` resamples of its rows with replacement.

    Each resample is drawn as ``n`` row indices, counted per row, and the counts multiplied into the
    terms; a chunk of resamples at a time keeps memory near ``_CHUNK_CELLS`` numbers.
    """
    n = terms.shape[0]
    per_chunk = max(1, _CHUNK_CELLS // n)
    dtype = np.int32 if n < 2**31 else np.int64
    sums = np.empty((n_boot, terms.shape[1]))
    for start in range(0, n_boot, per_chunk):
        size = min(per_chunk, n_boot - start)
        drawn = rng.integers(0, n, size=(size, n), dtype=dtype)
        counts = np.empty((size, n))
        for i in range(size):
            counts[i] = np.bincount(drawn[i], minlength=n)
        sums[start : start + size] = counts @ terms
    return sums


def _effective_sample_size(weights: NDArray[np.float64]) -> float:
    squares = float((weights**2).sum())
    return float(weights.sum()) ** 2 / squares if squares > 0 else 0.0


def _overlap_warnings(ess: float, n: int) -> list[str]:
    if ess == 0:
        return [
            "target: the target policy gives probability 0 to every logged action, so the log says nothing "
            "about it; IPS is 0 and SNIPS undefined whatever the policy is worth"
        ]
    if ess < MIN_EFFECTIVE_SAMPLE_SIZE:
        return [
            f"effective sample size {ess:,.1f} of {n:,} decisions: the target policy rarely takes the logged "
            "actions, so the interval is unreliable"
        ]
    return []

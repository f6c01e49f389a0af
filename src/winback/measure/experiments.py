"""The holdout experiment: what winback's decisions changed, treated against the randomised control.

Customers of the permanent holdout (:mod:`winback.decide.holdout`) are never messaged; everyone else is
decided for by a policy. Membership is random per customer, so the holdout's outcomes are what the
treated customers' would have been without winback, and the difference of the two arms is the effect
of winback's decisions (intention to treat: a treated customer for whom the policy chose nothing still
counts as treated). A vendor's "attributed" number counts every order after a message; it is shown
beside the difference, labelled as such, so the gap between the two is visible.

The unit of randomisation is the customer, and so the unit of every variance: within a group of
decisions (a flow, an action, a channel, a segment, a week) each customer's decisions are summed, and
each metric has the interval that suits it (``level``, 95% by default):

- **recovery rate, revenue and margin per decision** (a decision is one cart or customer decided for:
  a message's recipient, or its holdout counterpart; margin is after the discount and the message's
  cost): ratios of two sums over customers, whose decisions are not independent draws (one customer's
  carts are alike, and all of them are in the same arm). Their variance is the delta-method (cluster)
  variance over customers, and the difference gets a Welch t interval with the customers as units
  (``"delta-method Welch"``): skewed money (most decisions earn 0, a few large orders) is fine at
  these sizes, arms of very different sizes (a 10% holdout) are what Welch is for, and the coverage on
  the simulator's shops is checked by ``tests/measure/test_experiments.py``. A bootstrap would cost a
  thousand passes over a million decisions for the same answer;
- **conversion** (share of customers who ordered within the window of one of their decisions; for the
  breakdowns whose groups hold all of a customer's decisions in both arms: all, flow, segment, week):
  one independent yes/no per customer, so Newcombe's hybrid score interval for a difference of
  proportions (``"Newcombe"``), which keeps its coverage on small groups and rates near 0 or 1 where
  the textbook Wald interval does not.

Action and channel rows compare the decisions that got the action with the decisions of the holdout
customers who had consented to its channel (whom it could have reached). With a randomising policy
that is a randomised comparison; with any other it also reflects whom the policy chose.

A row warns when it cannot conclude: fewer than :data:`MIN_CUSTOMERS` customers in an arm, or an
interval that includes 0 (with the customers per arm the observed difference would need to exclude it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from winback.decide.actions import CHANNELS

__all__ = [
    "DIMENSIONS",
    "METRICS",
    "MIN_CUSTOMERS",
    "Arm",
    "Headline",
    "compare",
    "headline",
    "newcombe_interval",
    "uplift_by_decile",
    "welch_interval",
    "wilson_interval",
]

#: Fewest customers in an arm for a row to be read as a result.
MIN_CUSTOMERS = 30
#: The breakdowns of :func:`compare`: a column of the prepared decisions (see :mod:`.data`).
DIMENSIONS = ("all", "policy", "action", "channel", "segment", "week")
#: Metric key -> (label, method).
METRICS: dict[str, tuple[str, str]] = {
    "recovery": ("recovery rate", "delta-method Welch"),
    "conversion": ("conversion (customers who ordered)", "Newcombe"),
    "revenue": ("revenue per decision", "delta-method Welch"),
    "margin": ("margin per decision (after discount and message cost)", "delta-method Welch"),
}
#: Breakdowns whose groups select a subset of a treated customer's decisions (not comparable per customer).
_PER_DECISION_ONLY = ("action", "channel")


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``n`` > 0)."""
    z = _z(level)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: float, n1: float, x0: float, n0: float, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``x1/n1 - x0/n0`` (his method 10, from two Wilson intervals).

    >>> [round(v, 4) for v in newcombe_interval(56, 70, 48, 80)]  # Newcombe (1998), example (a)
    [0.0524, 0.3339]
    """
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, level)
    l0, u0 = wilson_interval(x0, n0, level)
    d = p1 - p0
    return d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def welch_interval(
    mean1: float, var1: float, n1: float, mean0: float, var0: float, n0: float, level: float = 0.95
) -> tuple[float, float]:
    """Welch's t interval of ``mean1 - mean0`` from each arm's mean, variance of one unit, and size."""
    a, b = var1 / n1, var0 / n0
    se = math.sqrt(a + b)
    d = mean1 - mean0
    if se == 0:
        return d, d
    df = (a + b) ** 2 / (a * a / max(n1 - 1, 1) + b * b / max(n0 - 1, 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return d - half, d + half


@dataclass(frozen=True)
class Arm:
    """One arm of one group, summed per customer: sums over its decisions, and for each per-decision
    figure the variance (over customers) of its ratio's linearisation."""

    customers: int
    decisions: int
    converted: int  # customers with an order within the window of one of their decisions
    sums: dict[str, float]  # recovered, revenue, margin, discount, attributed
    variances: dict[str, float]  # recovery, revenue, margin

    @classmethod
    def of(cls, customer: np.ndarray, frame: Mapping[str, Any], n_customers: int) -> Arm:
        """Sum ``frame``'s decisions per customer (``customer``: their codes among ``n_customers``);
        ``frame`` has the columns of :data:`_SUMS` (a DataFrame, or a dict of arrays)."""

        def per(values: np.ndarray | None = None) -> np.ndarray:
            return np.bincount(customer, weights=values, minlength=n_customers)

        n = per()
        present = n > 0
        n = n[present]
        if n.size == 0:
            return cls(0, 0, 0, dict.fromkeys(_SUMS, 0.0), dict.fromkeys(_RATIOS.values(), 0.0))
        totals = {c: per(np.asarray(frame[c], dtype=float))[present] for c in _SUMS}
        g = n.size
        variances = {}
        for metric, column in _RATIOS.items():
            ratio = totals[column].sum() / n.sum()
            # delta method: var(ratio) ~ var over customers of (y_c - ratio n_c) / mean(n), / G
            residual = (totals[column] - ratio * n) / n.mean()
            variances[metric] = float(np.square(residual).sum() / max(g - 1, 1))
        return cls(
            customers=g,
            decisions=int(n.sum()),
            converted=int((totals["recovered"] > 0).sum()),
            sums={c: float(v.sum()) for c, v in totals.items()},
            variances=variances,
        )

    def value(self, metric: str) -> float | None:
        """The arm's figure of ``metric`` (None for an empty arm)."""
        if not self.customers:
            return None
        if metric == "conversion":
            return self.converted / self.customers
        return self.sums[_RATIOS[metric]] / self.decisions


#: Columns summed per customer, and the per-decision ratio of each metric.
_SUMS = ("recovered", "revenue", "margin", "discount", "attributed")
_RATIOS = {"recovery": "recovered", "revenue": "revenue", "margin": "margin"}


def _difference(t: Arm, c: Arm, metric: str, level: float) -> tuple[float, float] | None:
    """The interval of treated minus control for ``metric`` (None when an arm has under 2 customers)."""
    if t.customers < 2 or c.customers < 2:
        return None
    if metric == "conversion":
        return newcombe_interval(t.converted, t.customers, c.converted, c.customers, level)
    mean_t, mean_c = t.value(metric), c.value(metric)
    assert mean_t is not None
    assert mean_c is not None
    return welch_interval(
        mean_t, t.variances[metric], t.customers, mean_c, c.variances[metric], c.customers, level
    )


def _warning(t: Arm, c: Arm, low: float | None, high: float | None, difference: float | None) -> str:
    """Why a row cannot be read as a result, or empty."""
    smaller = min(t.customers, c.customers)
    if smaller < MIN_CUSTOMERS:
        arm = "control (holdout)" if c.customers < t.customers else "treated"
        return f"too few customers to conclude: {smaller} in the {arm} arm (at least {MIN_CUSTOMERS} needed)"
    if low is None or high is None or difference is None:
        return ""
    if low <= 0 <= high:
        half = (high - low) / 2
        if difference != 0 and half > 0:
            needed = math.ceil(smaller * (half / abs(difference)) ** 2)
            return (
                f"inconclusive: the interval includes 0; if the difference held, about {needed:,} "
                "customers per arm would show it"
            )
        return "inconclusive: the interval includes 0"
    return ""


def _groups(frame: pd.DataFrame, by: str) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """(group, treated rows, control rows) of each value of ``by``, as row positions."""
    held = frame["holdout"].to_numpy(dtype=bool)
    if by == "all":
        yield "all decisions", np.flatnonzero(~held), np.flatnonzero(held)
        return
    # Integer codes of the values, and the rows sorted by them once: each group is then a slice, where
    # comparing a million strings (or masking a million rows) once per group is what takes time.
    codes, values = pd.factorize(frame[by].astype(str))
    names = [str(v) for v in values]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    rows = {code: order[bounds[code] : bounds[code + 1]] for code in range(len(names))}
    if by in ("action", "channel"):
        channels = frame["channel"].astype(str).to_numpy()
        for code in sorted((c for c in rows if (~held[rows[c]]).any()), key=names.__getitem__):
            treated = rows[code][~held[rows[code]]]
            channel = channels[treated[0]]
            eligible = frame[f"consent_{channel}"].to_numpy(dtype=bool) if channel in CHANNELS else True
            yield names[code], treated, np.flatnonzero(held & eligible)
        return
    for code in sorted(rows, key=names.__getitem__):
        mine = rows[code]
        yield names[code], mine[~held[mine]], mine[held[mine]]


def compare(
    decisions: pd.DataFrame,
    by: str = "all",
    *,
    metrics: Sequence[str] = tuple(METRICS),
    level: float = 0.95,
) -> pd.DataFrame:
    """Treated against holdout per value of ``by`` (one of :data:`DIMENSIONS`), one row per group and
    metric.

    ``decisions`` are prepared decisions with outcomes (:func:`winback.measure.data.prepare_decisions`:
    ``user_id``, ``holdout``, ``recovered``, ``revenue``, ``discount``, ``margin``, ``attributed``,
    ``channel``, ``consent_<channel>`` and the column ``by``).

    Returns columns ``dimension``, ``group``, ``metric``, ``label``, ``method``, ``treated``,
    ``control``, ``difference``, ``ci_low``, ``ci_high`` (None where an arm has under two customers),
    ``attributed`` (for revenue: the revenue per treated decision a vendor would attribute to its
    message; else None), ``customers_treated``, ``customers_control``, ``decisions_treated``,
    ``decisions_control``, ``incremental`` with ``incremental_low`` / ``incremental_high`` (difference x
    treated decisions: the total the decisions added, for revenue and margin; else None), ``discount``
    (given to the treated), ``warning``. Action and channel rows have no conversion (their groups hold
    only some of a treated customer's decisions).
    """
    if by not in DIMENSIONS:
        raise ValueError(f"by {by!r}: expected one of {', '.join(DIMENSIONS)}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics {unknown}: expected some of {', '.join(METRICS)}")
    if "customer" in decisions.columns:  # codes of user_id made once (prepare_decisions)
        codes = decisions["customer"].to_numpy(dtype=np.int64)
        n_customers = int(codes.max()) + 1 if len(codes) else 0
    else:
        codes, users = pd.factorize(decisions["user_id"])
        n_customers = len(users)
    wanted = [m for m in metrics if not (m == "conversion" and by in _PER_DECISION_ONLY)]
    numbers = {c: decisions[c].to_numpy(dtype=float) for c in _SUMS}  # what the arms sum
    rows = []
    for group, treated, control in _groups(decisions, by):
        t = Arm.of(codes[treated], {c: v[treated] for c, v in numbers.items()}, n_customers)
        c = Arm.of(codes[control], {c: v[control] for c, v in numbers.items()}, n_customers)
        for metric in wanted:
            value_t, value_c = t.value(metric), c.value(metric)
            difference = None if value_t is None or value_c is None else value_t - value_c
            interval = _difference(t, c, metric, level)
            low, high = interval if interval else (None, None)
            money = metric in ("revenue", "margin")
            rows.append(
                {
                    "dimension": by,
                    "group": group,
                    "metric": metric,
                    "label": METRICS[metric][0],
                    "method": METRICS[metric][1],
                    "treated": value_t,
                    "control": value_c,
                    "difference": difference,
                    "ci_low": low,
                    "ci_high": high,
                    "attributed": t.sums["attributed"] / t.decisions
                    if metric == "revenue" and t.decisions
                    else None,
                    "customers_treated": t.customers,
                    "customers_control": c.customers,
                    "decisions_treated": t.decisions,
                    "decisions_control": c.decisions,
                    "incremental": difference * t.decisions if money and difference is not None else None,
                    "incremental_low": low * t.decisions if money and low is not None else None,
                    "incremental_high": high * t.decisions if money and high is not None else None,
                    "discount": t.sums["discount"],
                    "warning": _warning(t, c, low, high, difference),
                }
            )
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = [
    "dimension", "group", "metric", "label", "method", "treated", "control", "difference", "ci_low",
    "ci_high", "attributed", "customers_treated", "customers_control", "decisions_treated",
    "decisions_control", "incremental", "incremental_low", "incremental_high", "discount", "warning",
]  # fmt: skip


@dataclass(frozen=True)
class Headline:
    """The report's first sentence: the margin winback's decisions added, with its interval."""

    margin: float | None  # incremental margin, after discounts and message costs
    ci_low: float | None
    ci_high: float | None
    discount: float  # given to the treated customers
    attributed_revenue: float  # what a vendor would report: revenue of orders after a message
    incremental_revenue: float | None
    decisions_treated: int
    customers_treated: int
    customers_control: int
    warning: str


def headline(decisions: pd.DataFrame, level: float = 0.95) -> Headline | None:
    """The whole period's incremental margin and its interval (difference per decision x treated
    decisions); None when there is no holdout or nothing treated."""
    table = compare(decisions, "all", metrics=("revenue", "margin"), level=level)
    rows: dict[str, dict[Any, Any]] = {str(r["metric"]): r for r in table.to_dict("records")}
    margin, revenue = rows["margin"], rows["revenue"]
    if _missing(margin["difference"]):
        return None
    treated = int(margin["decisions_treated"])
    return Headline(
        margin=float(margin["incremental"]),
        ci_low=None if _missing(margin["incremental_low"]) else float(margin["incremental_low"]),
        ci_high=None if _missing(margin["incremental_high"]) else float(margin["incremental_high"]),
        discount=float(margin["discount"]),
        attributed_revenue=0.0 if _missing(revenue["attributed"]) else float(revenue["attributed"]) * treated,
        incremental_revenue=None if _missing(revenue["incremental"]) else float(revenue["incremental"]),
        decisions_treated=treated,
        customers_treated=int(margin["customers_treated"]),
        customers_control=int(margin["customers_control"]),
        warning=str(margin["warning"]),
    )


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def uplift_by_decile(decisions: pd.DataFrame, score: str, *, bins: int = 10) -> pd.DataFrame:
    """Observed uplift per decile of ``score`` (a column known for treated and holdout decisions alike,
    e.g. the cart's value or its abandonment probability): recovery rate and margin per decision of
    each arm, and their difference. Deciles with an empty arm are left out."""
    known = decisions.loc[decisions[score].notna(), [score, "holdout", "recovered", "margin"]]
    if known.empty:
        return pd.DataFrame(columns=["decile", "low", "high", "treated", "control", "recovery_uplift",
                                     "margin_uplift", "decisions"])  # fmt: skip
    ranks = known[score].rank(method="first")
    decile = np.minimum((ranks.to_numpy() - 1) * bins // len(known), bins - 1).astype(int)
    rows = []
    for d, part in known.groupby(decile):
        held = part["holdout"].to_numpy(dtype=bool)
        if held.all() or not held.any():
            continue
        t, c = part[~held], part[held]
        rows.append(
            {
                "decile": int(str(d)) + 1,
                "low": float(part[score].min()),
                "high": float(part[score].max()),
                "treated": float(t["recovered"].mean()),
                "control": float(c["recovered"].mean()),
                "recovery_uplift": float(t["recovered"].mean() - c["recovered"].mean()),
                "margin_uplift": float(t["margin"].mean() - c["margin"].mean()),
                "decisions": len(part),
            }
        )
    return pd.DataFrame(rows)

# ruff: noqa: N803, N806  (scikit-learn's X for feature tables)
"""Uplift learners on the Hillstrom e-mail trial: uplift@30%, Qini and the value of the learned choice.

Usage: ``.venv/bin/python bench/hillstrom.py [--data PATH] [--seed 0] [--threads 0] [--random-draws 20]``
(about 40 s on one thread; the figures do not depend on ``--threads``, LightGBM runs deterministic).

Data: ``../shared/data/hillstrom.csv``, Kevin Hillstrom's MineThatData trial (64,000 customers randomised
in thirds to "Mens E-Mail", "Womens E-Mail", "No E-Mail"; outcomes over two weeks: ``visit``,
``conversion``, ``spend``). Features: recency, history, mens, womens, newbie (numeric), history_segment,
zip_code, channel (categories). Split: random 70/30, stratified by segment, seed ``--seed`` (0).

For each outcome (visit and conversion binary, spend continuous) three :class:`UpliftModel` learners are
fitted on the training rows with the design's propensities (1/3): the T-learner (the baseline, what the
published uplift@30% of about 0.066 for the women's e-mail on visit was measured with), the X-learner and
the DR-learner, all with LIGHTGBM_DEFAULTS (fixed before this benchmark; nothing is tuned on the test
rows). On the test rows, per e-mail against No E-Mail:

- uplift@30% ("u@30"): mean outcome of the e-mailed minus the not e-mailed among the top 30% by
  predicted effect (sklift's "overall" strategy; "by_group" is printed for the women's e-mail on visit
  as well), with its standard error ("SE", from the two groups' variances in the top 30%);
- Qini: normalised area between the Qini curve and the random line (sklift's ``qini_auc_score``; for
  spend the same formula on the continuous outcome).

Random scoring is the mean over ``--random-draws`` uniform random scores (its expectation is the average
effect for uplift@30% and 0 for Qini). Choice: each test customer gets the e-mail with the larger
positive predicted effect, else none; its value is the inverse-propensity (IPS) estimate on the test rows,
``mean(1[T = choice] y / (1/3))``, unbiased because the assignment was random with known shares, beside
the constant policies (all no e-mail, all mens, all womens) and the uniformly random policy (the mean
of the three). "vs none" is the IPS difference to sending nothing, "vs all mens" to the best constant
policy (the e-mail with the highest mean on the training rows), each with its standard error. Ratios are
against the T-learner run in the same command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import train_test_split

from winback.decide.uplift import UpliftModel, qini_auc, uplift_at_k

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hillstrom.csv"
CONTROL, MENS, WOMENS = "No E-Mail", "Mens E-Mail", "Womens E-Mail"
EMAILS = (WOMENS, MENS)
NUMERIC = ["recency", "history", "mens", "womens", "newbie"]
CATEGORICAL = ["history_segment", "zip_code", "channel"]
OUTCOMES = {"visit": "binary", "conversion": "binary", "spend": "continuous"}
LEARNERS = {"T (baseline)": "t", "X": "x", "DR": "dr"}
PROPENSITY = 1.0 / 3.0


def load(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features, and the segment with the three outcomes."""
    raw = pd.read_csv(path)
    X = raw[NUMERIC].astype(float)
    for c in CATEGORICAL:
        X[c] = raw[c].astype("category")
    return X, raw[["segment", *OUTCOMES]]


def scores_table(y: np.ndarray, t: np.ndarray, effects: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    for arm in EMAILS:
        short = arm.split()[0].lower()
        out[f"{short} u@30"] = uplift_at_k(y, t, effects[arm], treated=arm, control=CONTROL)
        out[f"{short} SE"] = uplift_at_k_se(y, t, effects[arm].to_numpy(), arm)
        out[f"{short} qini"] = qini_auc(y, t, effects[arm], treated=arm, control=CONTROL)
    return out


def uplift_at_k_se(y: np.ndarray, t: np.ndarray, score: np.ndarray, arm: str, k: float = 0.3) -> float:
    """Standard error of uplift@k ("overall"), from the two groups' variances among the top rows."""
    keep = (t == arm) | (t == CONTROL)
    y, t, score = y[keep], t[keep], score[keep]
    top = np.argsort(score, kind="mergesort")[::-1][: int(k * y.size)]
    treated, control = y[top][t[top] == arm], y[top][t[top] == CONTROL]
    return float(np.sqrt(treated.var(ddof=1) / treated.size + control.var(ddof=1) / control.size))


def ips(y: np.ndarray, t: np.ndarray, policy: np.ndarray) -> np.ndarray:
    """Per-row IPS terms of a policy's value (their mean is the estimate)."""
    out: np.ndarray = (t == policy) * y / PROPENSITY
    return out


def policy_row(y: np.ndarray, t: np.ndarray, policy: np.ndarray, best_constant: str) -> list[float]:
    """IPS value, and its differences (with standard errors) to sending nothing and to the best
    constant policy (the arm with the highest training mean)."""
    terms = ips(y, t, policy)
    out = [float(terms.mean())]
    for other in (CONTROL, best_constant):
        diff = terms - ips(y, t, np.full(t.size, other))
        out += [float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))]
    return out


def run_outcome(
    name: str,
    kind: str,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    args: argparse.Namespace,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    y_train, t_train = train[name].to_numpy(dtype=float), train["segment"].to_numpy()
    y, t = test[name].to_numpy(dtype=float), test["segment"].to_numpy()
    rows: dict[str, dict[str, float]] = {}
    policies: dict[str, list[float]] = {}
    best = str(train.groupby("segment")[name].mean().idxmax())
    extra: dict[str, Any] = {"best constant": best}
    for label, learner in LEARNERS.items():
        start = time.perf_counter()
        model = UpliftModel(
            learner=learner,  # type: ignore[arg-type]
            control=CONTROL,
            outcome=kind,  # type: ignore[arg-type]
            threads=args.threads,
            random_state=args.seed,
        ).fit(X_train, t_train, y_train, np.full(len(y_train), PROPENSITY))
        seconds = time.perf_counter() - start
        effects = model.effects(X_test)
        rows[label] = {**scores_table(y, t, effects), "fit s": seconds}
        choice = model.best_treatment(X_test).to_numpy()
        policies[f"{label} choice"] = policy_row(y, t, choice, best)
        share = {arm: float((choice == arm).mean()) for arm in (CONTROL, *EMAILS)}
        extra[f"{label} shares"] = share
        if learner == "t" and name == "visit":
            extra["by_group"] = uplift_at_k(
                y, t, effects[WOMENS], treated=WOMENS, control=CONTROL, strategy="by_group"
            )
    rng = np.random.default_rng(args.seed + 1)
    draws = [
        scores_table(y, t, pd.DataFrame({a: rng.random(len(y)) for a in EMAILS}))
        for _ in range(args.random_draws)
    ]
    rows[f"random ({args.random_draws} draws)"] = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
    constants = {
        "all none": CONTROL,
        "all mens": MENS,
        "all womens": WOMENS,
    }
    for label, arm in constants.items():
        policies[label] = policy_row(y, t, np.full(len(y), arm), best)
    values = np.array([policies[k] for k in constants])
    policies["random policy"] = [float(v) for v in values.mean(axis=0)]
    policies["random policy"][2::2] = [float("nan"), float("nan")]
    columns = ["IPS value", "vs none", "SE", f"vs all {best.split()[0].lower()}", "SE "]
    return pd.DataFrame(rows).T, pd.DataFrame(policies, index=columns).T, extra


def render(title: str, frame: pd.DataFrame, digits: int) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for c in frame.columns:
        table.add_column(str(c), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *("" if pd.isna(v) else f"{v:.{digits}f}" for v in row))
    return table


def ratio_lines(name: str, scores: pd.DataFrame, policies: pd.DataFrame) -> list[str]:
    score: dict[Any, Any] = scores.to_dict("index")
    policy: dict[Any, Any] = policies.to_dict("index")
    base = score["T (baseline)"]
    lines = []
    for label in ("X", "DR"):
        parts = [
            f"{c} {score[label][c] / base[c]:.2f}x"
            for c in scores.columns
            if c != "fit s" and not c.endswith("SE")
        ]
        gain = policy[f"{label} choice"]["vs none"] / policy["T (baseline) choice"]["vs none"]
        lines.append(f"  {name}: {label} / T: {', '.join(parts)}, choice gain vs none {gain:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="LightGBM threads (0: every core)")
    parser.add_argument("--random-draws", type=int, default=20)
    args = parser.parse_args()
    console = Console(width=140)
    X, meta = load(args.data)
    rows = np.arange(len(X))
    train_rows, test_rows = train_test_split(
        rows, test_size=0.3, stratify=meta["segment"], random_state=args.seed
    )
    X_train, X_test = X.iloc[train_rows], X.iloc[test_rows]
    train, test = meta.iloc[train_rows], meta.iloc[test_rows]
    console.print(
        f"Hillstrom: {len(X):,} customers; train {len(train_rows):,} / test {len(test_rows):,} "
        f"(random 70/30 stratified by segment, seed {args.seed})"
    )
    for arm in EMAILS:
        effects = {
            name: test.loc[test.segment == arm, name].mean() - test.loc[test.segment == CONTROL, name].mean()
            for name in OUTCOMES
        }
        console.print(
            f"  test average effect of {arm}: " + ", ".join(f"{k} {v:+.4f}" for k, v in effects.items())
        )
    ratios: list[str] = []
    for name, kind in OUTCOMES.items():
        scores, policies, extra = run_outcome(name, kind, X_train, X_test, train, test, args)
        digits = 3 if name == "spend" else 4
        console.print(render(f"{name} ({kind}): uplift@30% and Qini on the test rows", scores, digits))
        console.print(render(f"{name}: value per customer of each policy (IPS, test rows)", policies, digits))
        for label in LEARNERS:
            shares = extra[f"{label} shares"]
            console.print(
                f"  {label} choice sends: " + ", ".join(f"{arm} {share:.0%}" for arm, share in shares.items())
            )
        if "by_group" in extra:
            console.print(
                f"  T-learner uplift@30% for {WOMENS} on visit, sklift's by_group strategy: "
                f"{extra['by_group']:.4f} (published reference about 0.066)"
            )
        ratios += ratio_lines(name, scores, policies)
    console.print("Ratios against the T-learner baseline (same command):")
    for line in ratios:
        console.print(line)


if __name__ == "__main__":
    main()

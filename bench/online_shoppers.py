# ruff: noqa: N803, N806  (scikit-learn's X for feature tables)
"""Abandonment model on the UCI online-shoppers sessions: cross-validation, a time split and latency.

Usage: ``.venv/bin/python bench/online_shoppers.py [--data PATH] [--folds 5] [--latency-rows 2000]``

Data: ``../shared/data/online_shoppers_intention.csv`` (12,330 sessions, Sakar et al. 2019). The label
the models learn is abandonment (``not Revenue``); figures are reported for purchase, the rarer class
(``p_purchase = 1 - p_abandon``): ROC-AUC and Brier are the same either way, PR-AUC and lift are those
of finding buyers, which is the harder and more informative reading.

Three scores, each fitted on the training rows only:

- ``AbandonmentModel``: LightGBM, sigmoid calibration on the last 20% of the training rows (defaults).
- ``LogisticBaseline``: standardised logistic regression, one-hot categoricals.
- ``PageValues``: a LogisticBaseline on the single column ``PageValues`` (monotone in it, so its AUC is
  that of the raw column; the fit only makes it a probability so that it has a Brier score).

(a) 5-fold stratified cross-validation (shuffled, seed 0) on every session, all 17 features
(``Month`` as a category); (b) a time split, Feb-Oct train (7,605 sessions) -> Nov-Dec test (4,725),
without ``Month`` (Nov and Dec are never seen in training). Hyperparameters are the model's defaults,
fixed before looking at this data, except the calibration default (sigmoid rather than isotonic),
chosen after the two diagnostic rows printed below; nothing else is tuned on the test folds. Diagnostic
rows: the same model with isotonic calibration, and uncalibrated (trees fitted on all training rows).
No oversampling.

(c) single-row ``predict_proba`` latency of a fitted model, in-process, against LightGBM's own
``Booster.predict`` on the same row as the baseline.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import StratifiedKFold

from winback.models.abandonment import AbandonmentModel, LogisticBaseline
from winback.models.metrics import compare, render_comparison

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online_shoppers_intention.csv"
MONTHS = ["Feb", "Mar", "May", "June", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
CATEGORICAL = ["OperatingSystems", "Browser", "Region", "TrafficType", "VisitorType"]
COLUMNS = ["roc_auc", "pr_auc", "brier", "log_loss", "lift_top_decile"]


def load(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features (numeric, bool and category columns), abandonment labels, month index (0 = Feb)."""
    raw = pd.read_csv(path)
    month = raw["Month"].map({m: i for i, m in enumerate(MONTHS)}).to_numpy()
    X = raw.drop(columns=["Revenue"])
    for c in CATEGORICAL:
        X[c] = X[c].astype("category")
    X["Month"] = pd.Categorical(X["Month"], categories=MONTHS)
    abandoned = ~raw["Revenue"].to_numpy(dtype=bool)
    return X, abandoned, month


def score_all(
    X_tr: pd.DataFrame, y_tr: np.ndarray, X_te: pd.DataFrame, order: Any = None
) -> dict[str, np.ndarray]:
    """P(purchase) on the test rows from the three models and two diagnostics, fitted on the training rows."""
    models = {
        "AbandonmentModel": AbandonmentModel(random_state=0),
        "LogisticBaseline": LogisticBaseline(),
        "PageValues": LogisticBaseline(),
        "  diagnostic: isotonic": AbandonmentModel(random_state=0, calibration="isotonic"),
        "  diagnostic: uncalibrated": AbandonmentModel(random_state=0, calibration=None),
    }
    scores = {}
    for name, model in models.items():
        cols = ["PageValues"] if name == "PageValues" else list(X_tr.columns)
        if isinstance(model, AbandonmentModel):
            model.fit(X_tr[cols], y_tr, time_order=order)
        else:
            model.fit(X_tr[cols], y_tr)
        scores[name] = model.predict_proba(X_te[cols])[:, 0]
    return scores


def cross_validation(X: pd.DataFrame, y: np.ndarray, folds: int) -> pd.DataFrame:
    tables = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        scores = score_all(X.iloc[train], y[train], X.iloc[test])
        tables.append(compare(~y[test], scores))
    stacked = pd.concat(tables)
    mean = stacked.groupby(level=0, sort=False).mean()
    sd = stacked.groupby(level=0, sort=False).std()
    mean["roc_auc_sd"] = sd["roc_auc"]
    return mean


def time_split(X: pd.DataFrame, y: np.ndarray, month: np.ndarray) -> pd.DataFrame:
    train, test = month <= MONTHS.index("Oct"), month >= MONTHS.index("Nov")
    Xn = X.drop(columns=["Month"])
    scores = score_all(Xn[train], y[train], Xn[test], order=month[train])
    return compare(~y[test], scores)


def percentiles(f: Any, reps: int) -> tuple[float, float]:
    """p50 and p99 of one call of ``f``, in microseconds."""
    for _ in range(50):
        f()
    times = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        f()
        times[i] = time.perf_counter_ns() - t0
    return float(np.percentile(times, 50) / 1e3), float(np.percentile(times, 99) / 1e3)


def latency(X: pd.DataFrame, y: np.ndarray, reps: int) -> list[tuple[str, float, float]]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    Xn = X.drop(columns=["Month"])
    sig = AbandonmentModel(random_state=0).fit(Xn, y)
    iso = AbandonmentModel(random_state=0, calibration="isotonic").fit(Xn, y)
    raw = AbandonmentModel(random_state=0, calibration=None).fit(Xn, y)
    row_df = Xn.iloc[[123]]
    row_np = iso._encode_frame(row_df)  # the encoded row: numbers as they are, categories as codes
    booster = iso.estimator_.booster_
    # sklearn's own wrapper around the same frozen trees, calibrated on the same tail of rows
    n = len(Xn)
    tail = slice(n - math.ceil(0.2 * n), n)
    sk = CalibratedClassifierCV(FrozenEstimator(iso.estimator_), method="isotonic")
    sk.fit(pd.DataFrame(iso._encode_frame(Xn), columns=iso.estimator_.feature_name_)[tail], y[tail])
    row_sk = pd.DataFrame(row_np, columns=iso.estimator_.feature_name_)
    rows = [
        (
            "Booster.predict(raw_score), 1 thread (baseline)",
            *percentiles(lambda: booster.predict(row_np, raw_score=True, num_threads=1), reps),
        ),
        ("AbandonmentModel, numpy row, sigmoid", *percentiles(lambda: sig.predict_proba(row_np), reps)),
        ("AbandonmentModel, numpy row, isotonic", *percentiles(lambda: iso.predict_proba(row_np), reps)),
        ("AbandonmentModel, numpy row, uncalibrated", *percentiles(lambda: raw.predict_proba(row_np), reps)),
        ("AbandonmentModel, DataFrame row, sigmoid", *percentiles(lambda: sig.predict_proba(row_df), reps)),
        ("AbandonmentModel.explain(top=3), numpy row", *percentiles(lambda: sig.explain(row_np), reps)),
        ("AbandonmentModel.reasons(top=3), DataFrame row", *percentiles(lambda: sig.reasons(row_df), reps)),
        (
            "CalibratedClassifierCV(FrozenEstimator), isotonic",
            *percentiles(lambda: sk.predict_proba(row_sk), reps),
        ),
    ]
    return rows


def ratio_line(name: str, table: pd.DataFrame) -> str:
    model, base = table.loc["AbandonmentModel", "roc_auc"], table.loc["PageValues", "roc_auc"]
    return (
        f"{name}: ROC-AUC ratio AbandonmentModel / PageValues = {model / base:.3f} ({model:.3f} / {base:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--latency-rows", type=int, default=2000, help="timed calls per latency row")
    args = parser.parse_args()
    console = Console(width=120)
    X, y, month = load(args.data)
    console.print(f"{len(X):,} sessions, {(~y).mean():.1%} purchase; metrics for purchase = 1 - abandonment")

    t0 = time.perf_counter()
    cv = cross_validation(X, y, args.folds)
    console.print(
        render_comparison(
            cv,
            title=f"(a) {args.folds}-fold stratified CV, mean over folds ({time.perf_counter() - t0:.1f} s)",
            columns=[*COLUMNS, "roc_auc_sd"],
        )
    )
    console.print(ratio_line("CV", cv))

    t0 = time.perf_counter()
    ts = time_split(X, y, month)
    console.print(
        render_comparison(
            ts,
            title=f"(b) time split Feb-Oct -> Nov-Dec, no Month feature ({time.perf_counter() - t0:.1f} s)",
            columns=["n", "base_rate", *COLUMNS],
        )
    )
    console.print(ratio_line("time split", ts))

    rows = latency(X, y, args.latency_rows)
    base50 = rows[0][1]
    console.print(f"(c) single-row predict_proba latency, {args.latency_rows} calls each (µs)")
    for name, p50, p99 in rows:
        console.print(
            f"  {name:<52} p50 {p50:8.1f}  p99 {p99:8.1f}  p50 ratio vs baseline {p50 / base50:5.2f}"
        )


if __name__ == "__main__":
    main()

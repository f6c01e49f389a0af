"""How model results reach people and files: evaluation tables, top scores, score files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from winback.errors import BadInputError
from winback.files import written_atomically
from winback.models.metrics import render_comparison

_SHOWN = ["n", "base_rate", "roc_auc", "pr_auc", "brier", "lift_top_decile"]


def write_table(frame: pd.DataFrame | None, path: Path) -> None:
    """Write scores as Parquet or CSV by extension, atomically; with ``frame`` None only check ``path``."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise BadInputError(f"--out {path}: expected a .parquet or .csv file name")
    if frame is None:
        return
    with written_atomically(path) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def _comparison(metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict(metrics, orient="index")
    frame.index.name = "model"
    return frame


def render_evaluation(result: dict[str, Any], out: Console) -> None:
    """An evaluation (from :mod:`winback.models.tasks`) as tables."""
    model = result["model"]
    if model == "abandonment":
        out.print(
            f"abandonment, time split at {result['as_of']}: trained on {result['train_carts']:,} carts "
            f"before it, tested on {result['test_carts']:,} carts after it"
        )
        for label in ("every cart state", "at the first add"):
            out.print(render_comparison(_comparison(result[label]), title=f"scored {label}", columns=_SHOWN))
    elif model == "churn":
        out.print(
            f"churn within {result['horizon_days']} days, time split at {result['as_of']}: trained on "
            f"features as of {result['train_features_as_of'][:10]}"
            + (f" and {result['train_moments'] - 1} earlier moment(s)" if result["train_moments"] > 1 else "")
            + f" ({result['train_rows']:,} customer rows), "
            f"tested on {result['test_customers']:,} customers ({result['churn_rate']:.1%} churned)"
        )
        out.print(render_comparison(_comparison(result["metrics"]), columns=_SHOWN))
    else:
        p = result["purchases"]
        out.print(
            f"CLV, time split at {result['as_of']}: {result['customers']:,} customers, purchases over the "
            f"next {result['horizon_days']} days: actual {p['actual']:,.0f}, BG/NBD {p['BG/NBD']:,.1f}, "
            f"same rate as before {p['same rate as before']:,.1f}"
        )
        table = Table("repeat purchase days before", "customers", "actual", "BG/NBD", "same rate as before")
        for row in result["by_frequency"]:
            table.add_row(
                f"{row['repeat purchase days before']:g}"
                + ("+" if row["repeat purchase days before"] >= 7 else ""),
                f"{row['customers']:,}",
                f"{row['actual']:.3f}",
                f"{row['bgnbd']:.3f}",
                f"{row['naive']:.3f}",
            )
        out.print(table)
        mae = result["mae_per_customer"]
        out.print(
            f"mean absolute error per customer: BG/NBD {mae['BG/NBD']:.3f}, "
            f"same rate {mae['same rate as before']:.3f}"
        )
    if result.get("fallback"):
        out.print(f"note: {result['fallback']}")
    if "calibration" in result:
        table = Table("predicted", "observed", "count", title="calibration (deciles of the prediction)")
        for row in result["calibration"]:
            table.add_row(
                f"{row['mean_predicted']:.3f}", f"{row['observed_rate']:.3f}", f"{int(row['count']):,}"
            )
        out.print(table)


def render_scores(model: str, scores: pd.DataFrame, out: Console, *, top: int = 5) -> None:
    """The first ``top`` scored rows (riskiest carts, most likely churners, highest CLV)."""
    if scores.empty or top == 0:
        return
    if model == "abandonment":
        table = Table("cart", "customer", "value", "P(abandon)", "state", "why", title="riskiest carts")
        for _, r in scores.head(top).iterrows():
            table.add_row(
                str(r.cart_id),
                str(r.user_id),
                f"{r.cart_value:,.2f}",
                f"{r.abandon_probability:.2f}",
                str(r.state),
                str(r.reasons),
            )
    else:
        table = Table("customer", "P(churn)", "P(alive)", "CLV", "segment", "why")
        for _, r in scores.head(top).iterrows():
            table.add_row(
                str(r.user_id),
                _fmt(r.churn_probability, ".2f"),
                _fmt(r.p_alive, ".2f"),
                _fmt(r.clv, ",.2f"),
                str(r.segment or "-"),
                str(r.reasons or "-"),
            )
    out.print(table)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or pd.isna(value) else format(float(value), spec)

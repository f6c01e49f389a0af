"""Evaluation metrics shared by every binary model: ranking, probability quality, lift and calibration.

Every model in winback is judged the same way (on a time split, see DESIGN.md): how well it ranks
(ROC-AUC, average precision), how good its probabilities are (Brier score, log loss, a calibration table)
and how much richer in positives its top share is than the whole (lift). :func:`binary_report` gives all of
them for one score, :func:`compare` puts several scores side by side and :func:`render_comparison` turns
that into a table for the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from rich.table import Table
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from winback.errors import BadInputError

__all__ = ["auc_margin", "binary_report", "compare", "render_comparison"]

#: Columns of :func:`compare`'s table, in order.
COMPARISON_COLUMNS = ("n", "base_rate", "roc_auc", "pr_auc", "brier", "log_loss", "lift_top_decile")


def _labels(y_true: ArrayLike) -> NDArray[np.int8]:
    """``y_true`` as 0/1, or BadInputError if it is not binary or has only one class."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise BadInputError(f"y_true: expected a one-dimensional array of labels, got shape {y.shape}")
    if y.size == 0:
        raise BadInputError("y_true: expected at least one label, got none")
    if y.dtype == bool:
        y01 = y.astype(np.int8)
    else:
        try:
            yf = y.astype(float)
        except (TypeError, ValueError):
            raise BadInputError(
                f"y_true: expected 0/1 or boolean labels, got values such as {y[:3].tolist()!r}"
            ) from None
        if np.isnan(yf).any() or not np.isin(yf, (0.0, 1.0)).all():
            bad = np.unique(yf[~np.isin(yf, (0.0, 1.0))])[:3].tolist()
            raise BadInputError(f"y_true: expected 0/1 or boolean labels, got {bad!r}")
        y01 = yf.astype(np.int8)
    classes = np.unique(y01)
    if classes.size < 2:
        raise BadInputError(
            f"y_true: both classes are needed to evaluate a score, but all {y01.size} labels are "
            f"{int(classes[0])}"
        )
    return y01


def _scores(p: ArrayLike, n: int, name: str = "p") -> NDArray[np.float64]:
    s = np.asarray(p, dtype=float)
    if s.ndim != 1 or s.size != n:
        raise BadInputError(f"{name}: expected {n} scores (one per label), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise BadInputError(f"{name}: expected finite scores, got {int((~np.isfinite(s)).sum())} NaN/inf")
    return s


def _is_probability(s: NDArray[np.float64]) -> bool:
    return bool(s.min() >= 0.0 and s.max() <= 1.0)


def _lift(y: NDArray[np.int8], s: NDArray[np.float64], top_share: float) -> float:
    k = max(1, math.ceil(top_share * y.size))
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean() / y.mean())


def _calibration(y: NDArray[np.int8], p: NDArray[np.float64], bins: int) -> list[dict[str, float]]:
    """Quantile bins of ``p`` (edges as ``calibration_curve(strategy="quantile")``); no empty bins."""
    edges = np.quantile(p, np.linspace(0.0, 1.0, bins + 1))
    ids = np.searchsorted(edges[1:-1], p, side="left")
    table = []
    for b in range(bins):
        mask = ids == b
        count = int(mask.sum())
        if count:
            table.append(
                {
                    "mean_predicted": float(p[mask].mean()),
                    "observed_rate": float(y[mask].mean()),
                    "count": count,
                }
            )
    return table


def binary_report(
    y_true: ArrayLike, p: ArrayLike, *, top_share: float = 0.1, bins: int = 10
) -> dict[str, Any]:
    """Ranking, probability and lift metrics of one score against binary labels.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 or boolean labels; both classes must occur.
    p : array-like of shape (n,)
        Predicted probabilities of the positive class, in [0, 1].
    top_share : float, default 0.1
        Share of the highest-scored rows whose positive rate defines the lift (0.1: top decile).
    bins : int, default 10
        Number of quantile bins of the calibration table (fewer if ``p`` has many ties).

    Returns
    -------
    dict
        ``n``, ``base_rate``, ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``log_loss``,
        ``lift_top_decile`` (positive rate in the top share / base rate) and ``calibration``: a list of
        ``{"mean_predicted", "observed_rate", "count"}`` per bin, lowest scores first.

    Raises
    ------
    BadInputError
        If the labels are not binary, have a single class, or the scores are not finite probabilities
        of the same length.

    Examples
    --------
    >>> r = binary_report([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], bins=2)
    >>> r["roc_auc"], r["base_rate"], round(r["brier"], 6)
    (0.75, 0.5, 0.158125)
    """
    if not 0.0 < top_share <= 1.0:
        raise BadInputError(f"top_share: expected a share in (0, 1], got {top_share!r}")
    if bins < 1:
        raise BadInputError(f"bins: expected at least 1 bin, got {bins!r}")
    y = _labels(y_true)
    s = _scores(p, y.size)
    if not _is_probability(s):
        raise BadInputError(
            f"p: expected probabilities in [0, 1], got values from {s.min():.4g} to {s.max():.4g} "
            "(use compare() for scores that are not probabilities)"
        )
    return {
        "n": int(y.size),
        "base_rate": float(y.mean()),
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
        "brier": float(brier_score_loss(y, s)),
        "log_loss": float(log_loss(y, s, labels=[0, 1])),
        "lift_top_decile": _lift(y, s, top_share),
        "calibration": _calibration(y, s, bins),
    }


def auc_margin(auc: float, positives: int, negatives: int, level: float = 0.95) -> float:
    """Half-width of the ``level`` interval of a ROC-AUC measured on ``positives`` and ``negatives``:
    Hanley and McNeil's (1982) standard error, which models the two classes' score distributions as
    exponential, times the normal quantile. It says how precise an AUC measured on a sample is.

    >>> round(auc_margin(0.8, 500, 500), 4)
    0.0274
    """
    if positives < 1 or negatives < 1:
        raise BadInputError(
            f"auc_margin: expected both classes, got {positives} positives and {negatives} negatives"
        )
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2) * math.sqrt(max(variance, 0.0)))


def compare(y_true: ArrayLike, scores: Mapping[str, ArrayLike], *, top_share: float = 0.1) -> pd.DataFrame:
    """Several models' (or baselines') scores on the same labels, one row each.

    A score that is not a probability (any value outside [0, 1], e.g. a raw feature used as a baseline)
    is still ranked, but its ``brier`` and ``log_loss`` are NaN.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 or boolean labels; both classes must occur.
    scores : mapping of str to array-like of shape (n,)
        Name -> score (higher means more likely positive), in the order the rows should appear.
    top_share : float, default 0.1
        Share of the highest-scored rows used for the lift.

    Returns
    -------
    pandas.DataFrame
        Index: the names; columns: ``n, base_rate, roc_auc, pr_auc, brier, log_loss, lift_top_decile``.

    Examples
    --------
    >>> compare([0, 1, 0, 1], {"model": [0.2, 0.9, 0.1, 0.6], "feature": [3, 7, 0, 5]})["roc_auc"].tolist()
    [1.0, 1.0]
    """
    if not scores:
        raise BadInputError("scores: expected at least one named score, got none")
    y = _labels(y_true)
    rows = []
    for name, raw in scores.items():
        s = _scores(raw, y.size, name=f"scores[{name!r}]")
        prob = _is_probability(s)
        rows.append(
            {
                "n": int(y.size),
                "base_rate": float(y.mean()),
                "roc_auc": float(roc_auc_score(y, s)),
                "pr_auc": float(average_precision_score(y, s)),
                "brier": float(brier_score_loss(y, s)) if prob else math.nan,
                "log_loss": float(log_loss(y, s, labels=[0, 1])) if prob else math.nan,
                "lift_top_decile": _lift(y, s, top_share),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(list(scores), name="model"), columns=list(COMPARISON_COLUMNS))


def render_comparison(
    table: pd.DataFrame, *, title: str | None = None, columns: Sequence[str] | None = None
) -> Table:
    """A :func:`compare` table as a rich Table for the terminal (3 decimals; "-" for NaN).

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`compare` (or rows of the same columns, e.g. means over folds).
    title : str, optional
        Caption above the table.
    columns : sequence of str, optional
        Which columns to show, in order; all of ``table``'s by default.
    """
    shown = list(columns) if columns is not None else list(table.columns)
    missing = [c for c in shown if c not in table.columns]
    if missing:
        raise BadInputError(f"columns: not in the comparison table: {', '.join(missing)}")
    out = Table(title=title)
    out.add_column(str(table.index.name or "model"))
    for c in shown:
        out.add_column(c, justify="right")
    for name, row in table.iterrows():
        cells = []
        for c in shown:
            v = row[c]
            if isinstance(v, float) and math.isnan(v):
                cells.append("-")
            elif c == "n":
                cells.append(f"{int(v):,}")
            else:
                cells.append(f"{float(v):.3f}")
        out.add_row(str(name), *cells)
    return out

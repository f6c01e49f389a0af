"""Model health: are the deployed models still right, and has what they see moved?

For each deployed model (the registry's current version):

- **quality on recent outcomes**: the abandonment model scored at the first add of the carts started
  after its training cut and ended by the end of the period; the churn model on the customers as of
  ``until - horizon`` when that is after its cut (their horizon has passed). ROC-AUC and a calibration
  table (deciles of the prediction). A model trained on data up to now has no such outcomes yet: then
  the figures of its card (the time split within its training window) are shown, labelled as such.
- **feature drift**: the population stability index of each feature between the 30 days before the
  model's cut (what it learnt from) and the last 30 days of the period (what it scores now), on
  deciles of the reference. :data:`PSI_WATCH` (0.1) and :data:`PSI_ALERT` (0.25) are the usual
  thresholds: under 0.1 stable, 0.1-0.25 worth watching, above 0.25 the population has moved and the
  model should be retrained (``winback retrain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from winback.errors import BadInputError
from winback.features.carts import CART_FEATURES
from winback.features.customers import CUSTOMER_FEATURES
from winback.measure.data import Filters, MeasureData
from winback.models.metrics import binary_report
from winback.models.registry import ModelCard, load_model

__all__ = [
    "PSI_ALERT",
    "PSI_WATCH",
    "ModelHealth",
    "abandonment_health",
    "churn_health",
    "model_health",
    "psi",
]

PSI_WATCH = 0.10
PSI_ALERT = 0.25
#: Days of features on each side of the drift comparison.
DRIFT_DAYS = 30
#: Fewest recent outcomes (with both classes) to judge a model on.
MIN_OUTCOMES = 30
_SAMPLE = 200_000


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float | None:
    """Population stability index of ``recent`` against ``reference`` on the reference's quantile bins
    (missing values are a bin of their own); None when either side is empty.

    >>> round(psi(np.arange(1000.0), np.arange(1000.0)), 6)
    0.0
    """
    reference, recent = np.asarray(reference, dtype=float), np.asarray(recent, dtype=float)
    if reference.size == 0 or recent.size == 0:
        return None
    known = reference[np.isfinite(reference)]
    edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])) if known.size else np.array([])

    def shares(values: np.ndarray) -> np.ndarray:
        finite = np.isfinite(values)
        counts = np.bincount(np.searchsorted(edges, values[finite], side="right"), minlength=edges.size + 1)
        return np.append(counts, (~finite).sum()) / values.size

    p, q = np.clip(shares(reference), 1e-4, None), np.clip(shares(recent), 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class ModelHealth:
    """One deployed model's health."""

    name: str
    version: str | None = None
    trained_to: str | None = None
    source: str = ""  # what the quality figures are measured on
    n: int = 0
    auc: float | None = None
    calibration: list[dict[str, float]] = field(default_factory=list)
    drift: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["feature", "psi", "status"]))
    status: str = "not trained"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "trained_to": self.trained_to,
            "source": self.source,
            "n": self.n,
            "auc": self.auc,
            "calibration": self.calibration,
            "drift": self.drift.to_dict("records"),
            "status": self.status,
            "notes": self.notes,
        }


def _drift(reference: pd.DataFrame, recent: pd.DataFrame, features: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for feature in features:
        value = psi(
            pd.to_numeric(reference[feature], errors="coerce").to_numpy(dtype=float),
            pd.to_numeric(recent[feature], errors="coerce").to_numpy(dtype=float),
        )
        if value is None:
            continue
        status = "retrain" if value > PSI_ALERT else "watch" if value > PSI_WATCH else "stable"
        rows.append({"feature": feature, "psi": value, "status": status})
    frame = pd.DataFrame(rows, columns=["feature", "psi", "status"])
    return frame.sort_values("psi", ascending=False, ignore_index=True)


def _sample(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sample(_SAMPLE, random_state=0) if len(frame) > _SAMPLE else frame


def _status(health: ModelHealth) -> str:
    worst = health.drift["status"].tolist()
    if "retrain" in worst:
        return "retrain: features have drifted"
    if "watch" in worst:
        return "watch: some features are drifting"
    return "ok"


def _from_card(health: ModelHealth, card: ModelCard, auc_of: Any) -> None:
    """Quality figures from the card's time split, when no outcomes have come since training."""
    split = card.metrics.get("time_split") or {}
    health.source = (
        f"its card: the time split at {str(split.get('as_of', '?'))[:10]} within its training window"
    )
    auc = auc_of(split)
    health.auc = float(auc) if auc is not None else None
    health.calibration = list(split.get("calibration") or [])
    health.notes.append(
        f"no outcomes yet after its training cut ({card.as_of[:10]}): the figures are its card's; "
        "they are measured on recent outcomes once those are in the log"
    )


def abandonment_health(data: MeasureData, filters: Filters) -> ModelHealth:
    """The abandonment model's health (see the module docstring)."""
    health = ModelHealth("abandonment")
    period = data.period(filters)
    try:
        model, card = load_model(data.settings, "abandonment", features=list(CART_FEATURES))
    except BadInputError as error:
        health.notes.append(str(error))
        return health
    health.version, health.trained_to = card.version, card.as_of
    if period is None:
        health.status = "no data"
        return health
    cut = pd.Timestamp(card.as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    start = min(cut, period.until) - timedelta(days=DRIFT_DAYS)
    snaps = data._cached(("snapshots", start), lambda: data.tables.cart_snapshots(active_since=start))
    carts = data._cached(("carts",), data.tables.carts)
    idle = data.settings.abandon_idle_minutes * 60.0
    ended = snaps["cart_id"].map(carts.set_index("cart_id")["last_event_ts"] + idle)
    started = snaps["cart_id"].map(carts.set_index("cart_id")["started_ts"])
    fresh = snaps[(started >= cut.timestamp()) & (ended <= period.until.timestamp())]
    first = fresh.drop_duplicates("cart_id", keep="first")
    if len(first) >= MIN_OUTCOMES and first["abandoned"].nunique() == 2:
        p = model.predict_proba(first[list(CART_FEATURES)])[:, 1]
        report = binary_report(first["abandoned"].to_numpy(), p)
        health.source = f"{len(first):,} carts started after its cut, at the first add"
        health.n, health.auc, health.calibration = len(first), report["roc_auc"], list(report["calibration"])
    else:
        _from_card(
            health,
            card,
            lambda s: (s.get("at the first add") or {}).get("LightGBM (calibrated)", {}).get("roc_auc"),
        )
    reference = snaps[
        (snaps["ts"] >= (cut - timedelta(days=DRIFT_DAYS)).timestamp()) & (snaps["ts"] < cut.timestamp())
    ]
    recent = snaps[snaps["ts"] >= (period.until - timedelta(days=DRIFT_DAYS)).timestamp()]
    recent = recent[recent["ts"] < period.until.timestamp()]
    health.drift = _drift(_sample(reference), _sample(recent), CART_FEATURES)
    if period.until - timedelta(days=DRIFT_DAYS) < cut:
        health.notes.append("the last 30 days overlap its training window: drift shows once newer data comes")
    health.status = _status(health)
    return health


def churn_health(data: MeasureData, filters: Filters) -> ModelHealth:
    """The churn model's health (see the module docstring)."""
    health = ModelHealth("churn")
    period = data.period(filters)
    try:
        model, card = load_model(data.settings, "churn", features=list(CUSTOMER_FEATURES))
    except BadInputError as error:
        health.notes.append(str(error))
        return health
    health.version, health.trained_to = card.version, card.as_of
    if period is None:
        health.status = "no data"
        return health
    horizon = int(card.params.get("horizon_days", data.settings.churn_horizon_days))
    cut = pd.Timestamp(card.as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    moment = period.until - timedelta(days=horizon)
    tested = False
    if moment >= cut:
        test = data.tables.customers(moment, horizon)
        if len(test) >= MIN_OUTCOMES and test["churned"].nunique() == 2:
            p = model.predict_proba(test[list(CUSTOMER_FEATURES)])[:, 1]
            report = binary_report(test["churned"].to_numpy(), p)
            health.source = (
                f"{len(test):,} customers as of {moment:%Y-%m-%d}, churn over the {horizon} days after"
            )
            health.n, health.auc, health.calibration = (
                len(test),
                report["roc_auc"],
                list(report["calibration"]),
            )
            tested = True
    if not tested:
        _from_card(
            health, card, lambda s: (s.get("metrics") or {}).get("LightGBM + P(alive)", {}).get("roc_auc")
        )
    reference_at = pd.Timestamp(card.params.get("features_as_of") or cut - timedelta(days=horizon))
    span = data.span()
    reference_at = max(reference_at, span[0] + timedelta(days=1)) if span else reference_at
    health.drift = _drift(
        data.tables.customers(
            reference_at.tz_convert("UTC") if reference_at.tzinfo else reference_at.tz_localize("UTC")
        ),
        data.tables.customers(period.until),
        CUSTOMER_FEATURES,
    )
    health.status = _status(health)
    return health


def model_health(data: MeasureData, filters: Filters) -> list[ModelHealth]:
    """The health of every deployed model that has one (abandonment, churn)."""
    return [abandonment_health(data, filters), churn_health(data, filters)]


def clv_check(data: MeasureData) -> dict[str, Any] | None:
    """Predicted against actual purchases of the CLV model's time split (its card), or None."""
    try:
        from winback.models.registry import load_card

        card = load_card(data.settings, "clv")
    except BadInputError:
        return None
    split = card.metrics.get("time_split") or {}
    if not split.get("purchases"):
        return None
    return {"version": card.version, **split}

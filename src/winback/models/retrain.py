"""Retraining on fresh data that keeps the deployed model when the new one is worse.

A candidate is trained on everything before a holdout at the end of the data, and both the candidate
and the deployed model are scored on that same holdout (ROC-AUC): the abandonment model on the carts
started in its last ``holdout_days`` (at the first add), the churn model on the customers as of
``horizon`` days before the end (churn over those days). The deployed model must not have seen the
holdout (its training cut must be at or before the holdout's start), or the comparison would favour
it; then there is too little new data and nothing is retrained. The candidate replaces it only when it
is at least as good (``tolerance`` below is still "as good": AUCs this close are noise); then it is
trained again by :func:`winback.models.tasks.train` (deterministic, so the same model) and saved with
its card, and it becomes the current version; otherwise the deployed one stays current.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd

from winback.errors import BadInputError
from winback.features.carts import CART_FEATURES
from winback.features.customers import CUSTOMER_FEATURES
from winback.features.tables import FeatureTables
from winback.models import tasks
from winback.models.metrics import binary_report
from winback.models.registry import load_model

__all__ = ["RETRAINABLE", "RetrainResult", "retrain"]

#: The models with a holdout metric to compare on.
RETRAINABLE = ("abandonment", "churn")


@dataclass
class RetrainResult:
    """What :func:`retrain` found and did."""

    name: str
    holdout: str
    deployed_version: str
    deployed_auc: float
    candidate_auc: float
    replaced: bool
    version: str  # the current version after the run

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _cut(card_as_of: str) -> pd.Timestamp:
    cut = pd.Timestamp(card_as_of)
    return cut.tz_localize("UTC") if cut.tzinfo is None else cut


def retrain(
    name: str, tables: FeatureTables, *, holdout_days: int = 14, horizon_days: int | None = None,
    tolerance: float = 0.002,
) -> RetrainResult:  # fmt: skip
    """Retrain ``name`` (one of :data:`RETRAINABLE`) if a candidate on fresh data is at least as good on
    the same holdout (see the module docstring)."""
    if name not in RETRAINABLE:
        raise BadInputError(
            f"winback retrain {name}: expected one of {', '.join(RETRAINABLE)} (the models with a holdout to "
            f"compare on); retrain the others with `winback train {name}`"
        )
    features = list(CART_FEATURES if name == "abandonment" else CUSTOMER_FEATURES)
    deployed, card = load_model(tables.settings, name, features=features)
    end = tables.span().last + timedelta(seconds=1)
    if name == "abandonment":
        start = (end - timedelta(days=holdout_days)).floor("D")
    else:
        horizon_days = horizon_days or int(
            card.params.get("horizon_days") or tables.settings.churn_horizon_days
        )
        start = (end - timedelta(days=horizon_days)).floor("D")
    if _cut(card.as_of) > start:
        raise BadInputError(
            f"the deployed {name} model {card.version} was trained on data to {card.as_of[:10]}, after the "
            f"holdout would start ({start:%Y-%m-%d}): too little new data since to compare a new "
            "model fairly; "
            "retrain once more data has come"
        )
    if name == "abandonment":
        split = tasks._cart_split(tables, start, with_test=True)
        candidate = tasks.fit_abandonment(split.train, threads=tables.settings.threads)
        test = split.test.drop_duplicates("cart_id", keep="first")
        x, y = test[features], test["abandoned"].to_numpy()
        holdout = f"{len(test):,} carts started from {start:%Y-%m-%d}, at the first add"
    else:
        assert horizon_days is not None
        _, candidate, _ = tasks._churn_training(tables, start, horizon_days)
        test = tasks._labelled_customers(tables, start, horizon_days, "the retraining holdout")
        x, y = test[features], test["churned"].to_numpy()
        holdout = f"{len(test):,} customers as of {start:%Y-%m-%d}, churn over {horizon_days} days"
    old_auc = float(binary_report(y, deployed.predict_proba(x)[:, 1])["roc_auc"])
    new_auc = float(binary_report(y, candidate.predict_proba(x)[:, 1])["roc_auc"])
    replaced = new_auc >= old_auc - tolerance
    version = card.version
    if replaced:
        version = tasks.train(name, tables, start, horizon_days or 0).version
    return RetrainResult(name, holdout, card.version, old_auc, new_auc, replaced, version)

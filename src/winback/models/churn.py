"""Churn: the probability that a customer makes no purchase within the horizon, and what that costs.

Gradient-boosted trees on the customer features (:data:`winback.features.customers.CUSTOMER_FEATURES`)
with BG/NBD's P(alive) and expected purchases over the horizon added as features: the trees learn what
the buy-till-you-die model misses (browsing that stopped, abandoned carts, a dropping rhythm), and the
BG/NBD columns give them that model's reading of the purchase history. Both are also baselines.

Severity is the expected value lost over the horizon: ``churn_probability x`` the value the customer
would bring if retained (BG/NBD expected purchases given alive, times Gamma-Gamma's expected spend).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from winback.errors import BadInputError
from winback.models.abandonment import AbandonmentModel, check_columns
from winback.models.clv import BetaGeoModel, GammaGammaModel

#: Columns of the BG/NBD summary inside the customer features (days).
BG_COLUMNS = {
    "bg_frequency": "frequency",
    "bg_recency": "recency",
    "bg_T": "T",
    "bg_monetary": "monetary_value",
}


def bg_summary(customers: pd.DataFrame) -> pd.DataFrame:
    """The RFM summary (``frequency, recency, T, monetary_value``, in days) of customer features."""
    missing = [c for c in BG_COLUMNS if c not in customers.columns]
    if missing:
        raise BadInputError(f"customer features lack the BG/NBD columns {missing}")
    summary = customers[list(BG_COLUMNS)].rename(columns=BG_COLUMNS).astype(float)
    summary.attrs["time_unit"] = "day"
    return summary


class ChurnModel(ClassifierMixin, BaseEstimator):
    """Calibrated LightGBM churn classifier with BG/NBD P(alive) as a feature; the same contract as
    :class:`winback.models.abandonment.AbandonmentModel` (whose trees and calibration it reuses).

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples : see AbandonmentModel
    calibration : {"isotonic", "sigmoid", None}, default "isotonic"
    horizon_days : int, default 90
        The churn horizon; BG/NBD's expected purchases over it is a feature beside P(alive).
    penalizer_coef : float, default 0.001
        L2 penalty of the BG/NBD fit (keeps it finite on small shops).
    random_state : int or None, default None

    Attributes
    ----------
    bgnbd_ : BetaGeoModel
    spend_ : GammaGammaModel or None
        None when there were too few repeat buyers; severity then uses the mean order value.
    classifier_ : AbandonmentModel
        The trees (or, on little data, the logistic fallback: see ``classifier_.fallback_``).
    feature_names_in_ : ndarray
    """

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 20,
        calibration: str | None = "isotonic",
        horizon_days: int = 90,
        penalizer_coef: float = 0.001,
        random_state: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.calibration = calibration
        self.horizon_days = horizon_days
        self.penalizer_coef = penalizer_coef
        self.random_state = random_state

    def fit(
        self,
        X: pd.DataFrame,  # noqa: N803
        y: ArrayLike,
        *,
        time_order: ArrayLike | None = None,
    ) -> ChurnModel:
        """Fit on customer features ``X`` (with the ``bg_*`` columns) and churn labels ``y``."""
        if not isinstance(X, pd.DataFrame):
            raise BadInputError("ChurnModel.fit: expected the customer feature table as a DataFrame")
        summary = bg_summary(X)
        self.bgnbd_ = BetaGeoModel(penalizer_coef=self.penalizer_coef).fit(summary)
        repeat = summary[summary.frequency > 0]
        self.mean_spend_ = float(X["avg_order_value"].mean()) if "avg_order_value" in X else 0.0
        try:
            self.spend_: GammaGammaModel | None = GammaGammaModel(penalizer_coef=self.penalizer_coef).fit(
                repeat
            )
        except BadInputError:
            self.spend_ = None
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.classifier_ = AbandonmentModel(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            calibration=self.calibration,
            random_state=self.random_state,
        ).fit(self._with_bgnbd(X), y, time_order=time_order)
        self.classes_ = self.classifier_.classes_
        return self

    def _checked(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        check_is_fitted(self, "classifier_")
        if not isinstance(X, pd.DataFrame):
            raise BadInputError("ChurnModel: expected the customer feature table as a DataFrame")
        check_columns(X, self.feature_names_in_)
        return X[list(self.feature_names_in_)]

    def _with_bgnbd(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        summary = bg_summary(X)
        f, r, t = summary.frequency, summary.recency, summary["T"]
        out = X.copy()
        out["p_alive"] = self.bgnbd_.p_alive(f, r, t)
        out["bg_expected_purchases"] = self.bgnbd_.expected_purchases(self.horizon_days, f, r, t)
        return out

    def p_alive(self, X: pd.DataFrame) -> NDArray[np.float64]:  # noqa: N803
        """BG/NBD's probability that each customer is still active (the baseline score is 1 - this)."""
        summary = bg_summary(self._checked(X))
        return self.bgnbd_.p_alive(summary.frequency, summary.recency, summary["T"])

    def predict_proba(self, X: pd.DataFrame) -> NDArray[np.float64]:  # noqa: N803
        return self.classifier_.predict_proba(self._with_bgnbd(self._checked(X)))

    def predict(self, X: pd.DataFrame) -> NDArray[Any]:  # noqa: N803
        return self.classifier_.predict(self._with_bgnbd(self._checked(X)))

    def reasons(self, X: pd.DataFrame, top: int = 3, describe: Any = None) -> list[str]:  # noqa: N803
        return self.classifier_.reasons(self._with_bgnbd(self._checked(X)), top=top, describe=describe)

    def expected_purchases(self, X: pd.DataFrame, horizon_days: int) -> NDArray[np.float64]:  # noqa: N803
        """BG/NBD's expected number of purchases in the next ``horizon_days``."""
        summary = bg_summary(self._checked(X))
        return self.bgnbd_.expected_purchases(horizon_days, summary.frequency, summary.recency, summary["T"])

    def value_if_retained(self, X: pd.DataFrame, horizon_days: int) -> NDArray[np.float64]:  # noqa: N803
        """Expected purchase value over the horizon of a customer who is still active."""
        summary = bg_summary(self._checked(X))
        f, r, t = summary.frequency, summary.recency, summary["T"]
        alive = np.maximum(self.bgnbd_.p_alive(f, r, t), 1e-6)
        purchases = self.bgnbd_.expected_purchases(horizon_days, f, r, t) / alive
        if self.spend_ is not None:
            spend = self.spend_.conditional_expected_average_profit(f, summary.monetary_value)
        else:
            spend = np.full(len(summary), self.mean_spend_)
        return np.asarray(purchases * spend, dtype=float)

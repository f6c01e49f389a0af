# ruff: noqa: N803, N806  (scikit-learn's X for feature tables)
"""The estimator contract every winback model keeps, run over all models.

To add a model, append a :class:`Case` to ``CASES``: a name, a factory that returns an *unfitted*
estimator (given a ``random_state``), the training table ``X`` (a DataFrame), the labels ``y`` (None for
models fitted on ``X`` alone) and the name of the method whose output must be reproducible
(``predict_proba`` by default). Every test below then runs on it:

- ``sklearn.base.clone`` gives an unfitted copy with equal parameters;
- ``get_params`` / ``set_params`` round-trip, and unknown parameters are refused;
- ``fit`` returns ``self``; a pickle round trip predicts identically;
- the same ``random_state`` gives identical predictions;
- wrong columns at predict time raise ``BadInputError`` naming the column.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from winback.errors import BadInputError
from winback.features.customers import CUSTOMER_FEATURES
from winback.models.abandonment import AbandonmentModel, LogisticBaseline
from winback.models.churn import ChurnModel
from winback.models.clv import BetaGeoModel, GammaGammaModel, rfm_summary
from winback.models.segments import CustomerClusters


def carts(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A small synthetic carts table: numeric, boolean, categorical and missing values; abandoned labels."""
    rng = np.random.default_rng(seed)
    minutes = rng.exponential(30.0, n)
    value = rng.lognormal(3.5, 0.8, n)
    items = rng.integers(1, 6, n)
    returning = rng.random(n) < 0.4
    device = pd.Categorical(rng.choice(["mobile", "desktop", "tablet"], n, p=[0.6, 0.3, 0.1]))
    value[rng.random(n) < 0.05] = np.nan
    logit = 0.04 * (minutes - 30) - 0.8 * returning + 0.5 * (device == "mobile") + 0.1 * items
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    X = pd.DataFrame(
        {
            "minutes_idle": minutes,
            "cart_value": value,
            "items": items,
            "returning": returning,
            "device": device,
        }
    )
    return X, y


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[int | None], Any]
    X: pd.DataFrame
    y: np.ndarray | None = None
    output: str = "predict_proba"
    #: Feature-table models refuse unexpected columns too; models of a fixed summary (BG/NBD's
    #: frequency, recency, T) only need theirs to be present.
    strict_columns: bool = True

    def fit(self, estimator: Any) -> Any:
        return estimator.fit(self.X) if self.y is None else estimator.fit(self.X, self.y)

    def predict(self, estimator: Any, X: pd.DataFrame | None = None) -> np.ndarray:
        return np.asarray(getattr(estimator, self.output)(self.X if X is None else X))


def customers(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Synthetic customer features (every column of CUSTOMER_FEATURES, a consistent BG/NBD summary) and
    churn labels that depend on recency and activity."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.poisson(3.0, (n, len(CUSTOMER_FEATURES))).astype(float), columns=CUSTOMER_FEATURES
    )
    frame["bg_T"] = rng.uniform(20, 150, n).round()
    frame["bg_frequency"] = rng.poisson(2.0, n).astype(float)
    frame["bg_recency"] = np.where(frame.bg_frequency > 0, (frame.bg_T * rng.uniform(0.2, 1, n)).round(), 0.0)
    frame["bg_monetary"] = np.where(frame.bg_frequency > 0, rng.lognormal(4, 0.5, n), 0.0)
    frame["recency_days"] = frame.bg_T - frame.bg_recency
    frame["avg_order_value"] = rng.lognormal(4, 0.5, n)
    logit = 0.03 * (frame.recency_days - 40) - 0.2 * frame.events_30d
    return frame, rng.random(n) < 1 / (1 + np.exp(-logit))


X_CARTS, Y_CARTS = carts(800)
X_CUSTOMERS, Y_CUSTOMERS = customers(600)
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
X_SUMMARY = rfm_summary(  # BG/NBD needs data with a purchase-and-drop-out rhythm: the real CDNOW sample
    pd.read_csv(
        DATA / "cdnow" / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["master_id", "id", "date", "cds", "dollars"],
        dtype={"date": str},
    ).assign(timestamp=lambda t: pd.to_datetime(t.date, format="%Y%m%d")),
    customer_col="id",
    value_col="dollars",
    observation_end="1997-09-30",
).reset_index(drop=True)
X_REPEAT = X_SUMMARY[X_SUMMARY.frequency > 0].reset_index(drop=True)
X_SMALL, Y_SMALL = carts(120, seed=1)

CASES: list[Case] = [
    Case(
        "AbandonmentModel",
        lambda seed: AbandonmentModel(n_estimators=50, random_state=seed),
        X_CARTS,
        Y_CARTS,
    ),
    Case(
        "AbandonmentModel-isotonic",
        lambda seed: AbandonmentModel(n_estimators=50, calibration="isotonic", random_state=seed),
        X_CARTS,
        Y_CARTS,
    ),
    Case("AbandonmentModel-fallback", lambda seed: AbandonmentModel(random_state=seed), X_SMALL, Y_SMALL),
    Case("LogisticBaseline", lambda seed: LogisticBaseline(C=0.5, random_state=seed), X_CARTS, Y_CARTS),
    Case("ChurnModel", lambda seed: ChurnModel(n_estimators=50, random_state=seed), X_CUSTOMERS, Y_CUSTOMERS),
    Case(
        "BetaGeoModel",
        lambda seed: BetaGeoModel(),
        X_SUMMARY[["frequency", "recency", "T"]],
        output="predict",
        strict_columns=False,
    ),
    Case("GammaGammaModel", lambda seed: GammaGammaModel(), X_REPEAT, output="predict", strict_columns=False),
    Case(
        "CustomerClusters",
        lambda seed: CustomerClusters(random_state=seed or 0, k_max=4),
        X_CUSTOMERS[["recency_days", "orders", "avg_order_value"]],
        output="predict",
        strict_columns=False,
    ),
]


def by_name(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.name for c in cases])


def public_fitted_attributes(estimator: Any) -> list[str]:
    return [k for k in vars(estimator) if k.endswith("_") and not k.startswith("__")]


@by_name(CASES)
def test_clone_is_unfitted_with_equal_params(case: Case) -> None:
    fitted = case.fit(case.make(3))
    assert public_fitted_attributes(fitted), "fit must set learned attributes ending in _"
    copy = clone(fitted)
    assert type(copy) is type(fitted)
    assert copy.get_params() == fitted.get_params()
    assert public_fitted_attributes(copy) == []
    # __init__ stores its arguments only: a fresh object has exactly its parameters as attributes
    assert sorted(vars(case.make(3))) == sorted(copy.get_params())


@by_name(CASES)
def test_get_and_set_params(case: Case) -> None:
    estimator = case.make(3)
    params = estimator.get_params()
    assert estimator.set_params(**params) is estimator
    if "random_state" in params:  # models fitted by deterministic maximum likelihood have none
        assert params["random_state"] == 3
        assert estimator.set_params(random_state=11).get_params()["random_state"] == 11
    with pytest.raises(ValueError, match="no_such_parameter"):
        estimator.set_params(no_such_parameter=1)


@by_name(CASES)
def test_fit_returns_self_and_pickle_round_trip_predicts_the_same(case: Case) -> None:
    estimator = case.make(5)
    assert case.fit(estimator) is estimator
    before = case.predict(estimator)
    again = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(case.predict(again), before)
    if case.output == "predict_proba":
        assert before.shape == (len(case.X), 2)
        np.testing.assert_allclose(before.sum(axis=1), 1.0)
        assert ((before >= 0) & (before <= 1)).all()


@by_name(CASES)
def test_same_random_state_same_predictions(case: Case) -> None:
    first = case.predict(case.fit(case.make(7)))
    second = case.predict(case.fit(case.make(7)))
    np.testing.assert_array_equal(first, second)


@by_name(CASES)
def test_wrong_columns_at_predict_name_the_column(case: Case) -> None:
    estimator = case.fit(case.make(0))
    dropped = case.X.columns[-1]
    with pytest.raises(BadInputError, match=f"(?s)(missing|lack).*column.*{dropped}"):
        case.predict(estimator, case.X.drop(columns=[dropped]))
    if not case.strict_columns:
        return
    with pytest.raises(BadInputError, match=r"(?s)unexpected column.*surprise"):
        case.predict(estimator, case.X.assign(surprise=1.0))
    renamed = case.X.rename(columns={case.X.columns[0]: "renamed"})
    with pytest.raises(BadInputError, match=f"(?s){case.X.columns[0]}.*renamed"):
        case.predict(estimator, renamed)
    # the same columns in another order are fine
    np.testing.assert_array_equal(
        case.predict(estimator, case.X[case.X.columns[::-1]]), case.predict(estimator)
    )

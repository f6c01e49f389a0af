# ruff: noqa: N803, N806  (scikit-learn's names: X for the feature table, C for the logistic penalty)
"""Will this cart (or session) be abandoned? A calibrated LightGBM classifier with reasons, and its baseline.

:class:`AbandonmentModel` is gradient-boosted trees (LightGBM) whose probabilities are calibrated on a
held-out tail of the training rows, that explains each prediction by per-feature contributions
(LightGBM's ``pred_contrib``, SHAP values of the trees) and turns them into plain words. On small data
(fewer than 200 rows or fewer than 20 of the rarer class) it fits :class:`LogisticBaseline` instead and
says so in ``fallback_``.

:class:`LogisticBaseline` is a standardised logistic regression (one-hot for categorical columns) with the
same contract, used as the baseline every tree model must beat and as the small-data fallback.

Both follow scikit-learn's estimator contract and take any DataFrame of numeric (incl. boolean) and
pandas ``category`` columns: the carts and customers feature tables, or the UCI online-shoppers sessions.
The positive class is ``classes_[1]`` (the larger label: ``True`` / 1 = abandoned for carts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from winback.errors import BadInputError

__all__ = ["AbandonmentModel", "LogisticBaseline", "format_reasons"]

Contribution = tuple[str, float]
Describe = Mapping[str, str | Callable[[Any], str]]

CALIBRATIONS = ("isotonic", "sigmoid", None)


# --------------------------------------------------------------------------- validation and encoding


class _TabularClassifier(ClassifierMixin, BaseEstimator):
    """Shared input handling: validate a feature frame in ``fit``, check and encode it at predict.

    Features are encoded as one float matrix: numeric columns as they are (NaN = missing) and categorical
    columns as the codes of the categories seen in ``fit`` (NaN = missing or unseen). A numpy array given
    at predict time is taken to be that matrix already (columns in ``feature_names_in_`` order,
    categorical columns as codes), which is the fast path for scoring one cart at a time.
    """

    feature_names_in_: NDArray[np.object_]
    n_features_in_: int
    classes_: NDArray[Any]
    categories_: dict[str, pd.Index]
    category_codes_: dict[str, dict[Any, float]]

    # -- fit side

    def _validate_fit(
        self, X: Any, y: Any, sample_weight: Any
    ) -> tuple[NDArray[np.float64], NDArray[np.int8], NDArray[np.float64] | None, pd.DataFrame]:
        frame = self._as_frame_fit(X)
        if frame.shape[0] == 0:
            raise BadInputError("X: expected at least one row to fit on, got none")
        if frame.shape[1] == 0:
            raise BadInputError("X: expected at least one feature column, got none")
        names = [str(c) for c in frame.columns]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise BadInputError(f"X: column names must be unique; repeated: {', '.join(dup)}")
        frame.columns = pd.Index(names)
        bad = [
            f"{c} ({frame[c].dtype})"
            for c in names
            if not (isinstance(frame[c].dtype, pd.CategoricalDtype) or _is_numeric(frame[c]))
        ]
        if bad:
            raise BadInputError(
                "X: every column must be numeric, boolean or pandas 'category' "
                "(convert text with .astype('category'))",
                [f"column {b}" for b in bad],
            )
        categories = {
            c: frame[c].cat.categories for c in names if isinstance(frame[c].dtype, pd.CategoricalDtype)
        }
        inf = [c for c in names if c not in categories and np.isinf(frame[c].to_numpy(dtype=float)).any()]
        if inf:
            raise BadInputError(f"X: infinite values in column(s) {', '.join(inf)}; use NaN for missing")

        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != frame.shape[0]:
            raise BadInputError(
                f"y: expected {frame.shape[0]} labels (one per row of X), got shape {labels.shape}"
            )
        if pd.isna(labels).any():
            raise BadInputError(f"y: {int(pd.isna(labels).sum())} missing label(s); every row needs a label")
        classes, y01 = np.unique(labels, return_inverse=True)
        if classes.size != 2:
            raise BadInputError(
                f"y: expected two classes (e.g. abandoned or not), got {classes.size}: "
                f"{classes[:5].tolist()!r}"
            )
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=float)
            if weights.shape != (frame.shape[0],):
                raise BadInputError(
                    f"sample_weight: expected {frame.shape[0]} weights, got shape {weights.shape}"
                )
            if not np.isfinite(weights).all() or (weights < 0).any():
                raise BadInputError("sample_weight: expected finite, non-negative weights")

        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.classes_ = classes
        self.categories_ = categories
        self.category_codes_ = {
            c: {v: float(i) for i, v in enumerate(cats)} for c, cats in categories.items()
        }
        return self._encode(frame), y01.astype(np.int8), weights, frame

    @staticmethod
    def _as_frame_fit(X: Any) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return X.copy(deep=False)
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise BadInputError(f"X: expected a table (DataFrame or 2-D array), got shape {arr.shape}")
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])

    # -- predict side

    def _check_columns(self, X: pd.DataFrame) -> None:
        check_columns(X, self.feature_names_in_)

    def _encode(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """A checked frame (fitted columns, in order) as the float matrix the models see."""
        out = np.empty(frame.shape, dtype=np.float64)
        for j, c in enumerate(frame.columns):
            col = frame[c]
            if c in self.categories_:
                out[:, j] = _codes(col.array)
            else:
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def _encode_frame(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """Check a predict-time frame and encode it in one pass (the frame is not copied)."""
        self._check_columns(X)
        if not all(isinstance(c, str) for c in X.columns):
            X = X.rename(columns=str)
        dtypes = dict(zip(X.columns, X.dtypes, strict=True))
        for c in self.feature_names_in_:
            if c not in self.categories_ and not _is_numeric_dtype(dtypes[c]):
                raise BadInputError(f"X: column {c} must be numeric as in fit, got {dtypes[c]}")
        if X.shape[0] <= _SMALL_FRAME:
            small = self._encode_small(X)
            if small is not None:
                return small
        out = np.empty((X.shape[0], self.n_features_in_), dtype=np.float64)
        for j, c in enumerate(self.feature_names_in_):
            dtype = dtypes[c]
            if c in self.categories_:
                values = X[c].array
                if not (
                    isinstance(dtype, pd.CategoricalDtype) and dtype.categories.equals(self.categories_[c])
                ):
                    values = _as_categories(X[c], self.categories_[c]).array
                out[:, j] = _codes(values)
            else:
                out[:, j] = X[c].to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def _encode_small(self, X: pd.DataFrame) -> NDArray[np.float64] | None:
        """A few rows (one cart) through one object array: pandas' per-column cost dominates there.

        Categories are looked up by label, so a text column works as well as a categorical one. Returns
        None (use the column-wise path) if a numeric value does not convert, e.g. ``pd.NA``.
        """
        values = X[list(self.feature_names_in_)].to_numpy() if self._reorder(X) else X.to_numpy()
        out = np.empty(values.shape, dtype=np.float64)
        lookup = self.category_codes_
        for j, c in enumerate(self.feature_names_in_):
            codes = lookup.get(c)
            if codes is None:
                try:
                    out[:, j] = values[:, j]
                except (TypeError, ValueError):
                    return None
            else:
                out[:, j] = [codes.get(v, np.nan) for v in values[:, j]]
        return out

    def _reorder(self, X: pd.DataFrame) -> bool:
        return [str(c) for c in X.columns] != list(self.feature_names_in_)

    def _matrix(self, X: Any) -> NDArray[np.float64]:
        """The encoded matrix for prediction; a numeric numpy array of the right width passes through."""
        self._check_is_fitted()
        if isinstance(X, pd.DataFrame):
            return self._encode_frame(X)
        arr = np.asarray(X)
        if arr.dtype.kind not in "fiub":
            raise BadInputError(
                "X: expected a DataFrame, or a numeric array of encoded features (categories as codes), "
                f"got an array of {arr.dtype}"
            )
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
            raise BadInputError(
                f"X: expected {self.n_features_in_} feature columns "
                f"({', '.join(self.feature_names_in_)}), got shape {np.shape(X)}"
            )
        return arr.astype(np.float64, copy=False)

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise BadInputError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    # -- shared outputs

    def predict(self, X: Any) -> NDArray[Any]:
        """The more likely class of each row (probability of ``classes_[1]`` at least 0.5)."""
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def predict_proba(self, X: Any) -> NDArray[np.float64]:  # pragma: no cover - overridden
        raise NotImplementedError

    def explain(self, X: Any, top: int = 3) -> list[list[Contribution]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def reasons(self, X: Any, top: int = 3, describe: Describe | None = None) -> list[str]:
        """Each row's ``top`` contributions in plain words, e.g. ``"long time in cart (+0.41)"``.

        Parameters
        ----------
        X : DataFrame or array
            Rows to explain, with the fitted columns.
        top : int, default 3
            How many contributions per row (largest absolute value first).
        describe : mapping, optional
            Feature name -> a phrase (``"long time in cart"``) or a function of the row's value returning
            one. Features not in it are written ``name = value``.

        Returns
        -------
        list of str
            One string per row, contributions joined by ``"; "``; the signed numbers are log-odds.
        """
        M = self._matrix(X)
        contributions = self.explain(M, top=top)
        used = {name for row in contributions for name, _ in row}
        columns = {c: self._decode(c, M[:, j]) for j, c in enumerate(self.feature_names_in_) if c in used}
        return format_reasons(columns, contributions, describe)

    def _decode(self, name: str, column: NDArray[np.float64]) -> list[Any]:
        """An encoded column back to the values a person reads: category labels, numbers, None if missing."""
        cats = self.categories_.get(name)
        if cats is None:
            return [None if math.isnan(v) else v for v in column.tolist()]
        return [None if math.isnan(v) else cats[int(v)] for v in column.tolist()]


def check_columns(X: pd.DataFrame, names: Iterable[object]) -> None:
    """Refuse a table whose columns are not those a model was fitted on (in any order), naming them."""
    wanted = [str(c) for c in names]
    have = [str(c) for c in X.columns]
    if have == wanted:
        return
    missing = [c for c in wanted if c not in have]
    extra = [c for c in have if c not in wanted]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected column(s): {', '.join(extra)}")
        raise BadInputError("X: the columns differ from those the model was fitted on", problems)
    if len(set(have)) != len(have):
        raise BadInputError("X: column names must be unique")


def _as_categories(col: pd.Series, categories: pd.Index) -> pd.Series:
    """``col`` as a categorical with exactly ``categories`` (values outside them become missing)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        if col.cat.categories.equals(categories):
            return col
        col = col.astype(object)
    return pd.Series(pd.Categorical(col, categories=categories), index=col.index, name=col.name)


def _codes(values: Any) -> NDArray[np.float64]:
    codes = np.asarray(values.codes, dtype=np.float64)
    codes[codes < 0] = np.nan
    return codes


_THREADED_ROWS = 10_000  # rows from which predictions use n_jobs threads (below: one)
_SMALL_FRAME = 16  # rows up to which a predict-time DataFrame is encoded through one object array


def _is_numeric_dtype(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _is_numeric(col: pd.Series) -> bool:
    return _is_numeric_dtype(col.dtype)


def _top(contrib: NDArray[np.float64], names: Sequence[str], top: int) -> list[list[Contribution]]:
    if top < 1:
        raise BadInputError(f"top: expected at least 1 contribution per row, got {top!r}")
    k = min(top, contrib.shape[1])
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
    return [[(names[j], float(contrib[i, j])) for j in order[i]] for i in range(contrib.shape[0])]


def format_reasons(
    values: pd.DataFrame | Mapping[str, Sequence[Any]],
    contributions: Sequence[Sequence[Contribution]],
    describe: Describe | None = None,
) -> list[str]:
    """Contributions (from ``explain``) as one plain-words string per row.

    Parameters
    ----------
    values : DataFrame or mapping of column -> sequence
        The rows' feature values (at least the columns named in ``contributions``), row ``i`` of each.
    contributions : sequence of sequences of (str, float)
        Per row, ``(column, contribution)`` pairs as ``explain`` returns them.
    describe : mapping, optional
        Column -> phrase, or a function of the row's value returning one; others read ``name = value``.

    Examples
    --------
    >>> frame = pd.DataFrame({"cart_age_h": [30.0], "items": [2]})
    >>> format_reasons(frame, [[("cart_age_h", 0.41), ("items", -0.1)]], {"cart_age_h": "long time in cart"})
    ['long time in cart (+0.41); items = 2 (-0.10)']
    """
    describe = describe or {}
    out = []
    for i, row in enumerate(contributions):
        parts = []
        for name, value in row:
            column = values[name]
            raw = column.iloc[i] if isinstance(column, pd.Series) else column[i]
            phrase = describe.get(name)
            if callable(phrase):
                text = str(phrase(raw))
            elif phrase is not None:
                text = str(phrase)
            else:
                text = f"{name} = {_show(raw)}"
            parts.append(f"{text} ({value:+.2f})")
        out.append("; ".join(parts))
    return out


def _show(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"  # 3.0 -> "3", 0.123456 -> "0.1235"
    return str(value)


# --------------------------------------------------------------------------- logistic baseline


class LogisticBaseline(_TabularClassifier):
    """Standardised logistic regression, one-hot for categorical columns: the baseline and the fallback.

    Numeric columns are imputed with their median and standardised; categorical columns are one-hot
    encoded (missing or unseen categories get all zeros). Explanations are exact for a linear model:
    the contribution of a column is its coefficients times (its encoded value - the training mean), on
    the log-odds scale, so a row's contributions plus ``expected_logit_`` give its logit.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 regularisation strength.
    class_weight : dict, "balanced" or None, default None
        As in :class:`sklearn.linear_model.LogisticRegression` (None keeps probabilities calibrated).
    max_iter : int, default 1000
        Iterations of the lbfgs solver.
    random_state : int or None, default None
        Kept for the shared contract; the lbfgs solver is deterministic.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        Encoding and the fitted logistic regression.
    expected_logit_ : float
        Logit of the mean encoded training row (the base value of the explanations).
    classes_, feature_names_in_, n_features_in_, categories_
        The labels, the fitted columns, their number, and each categorical column's categories.

    Examples
    --------
    >>> X = pd.DataFrame({"minutes": [1.0, 2, 3, 10, 12, 15] * 10})
    >>> y = [0, 0, 0, 1, 1, 1] * 10
    >>> model = LogisticBaseline().fit(X, y)
    >>> bool(model.predict_proba(pd.DataFrame({"minutes": [14.0]}))[0, 1] > 0.9)
    True
    """

    def __init__(
        self,
        *,
        C: float = 1.0,
        class_weight: Mapping[Any, float] | str | None = None,
        max_iter: int = 1000,
        random_state: int | None = None,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: ArrayLike | None = None) -> LogisticBaseline:
        """Fit on a feature table ``X`` and binary labels ``y``; returns ``self``."""
        M, y01, weights, _ = self._validate_fit(X, y, sample_weight)
        self._fit_matrix(M, y01, weights)
        return self

    def _fit_matrix(
        self, M: NDArray[np.float64], y01: NDArray[np.int8], weights: NDArray[np.float64] | None
    ) -> None:
        names = list(self.feature_names_in_)
        cat_idx = [j for j, c in enumerate(names) if c in self.categories_]
        num_idx = [j for j, c in enumerate(names) if c not in self.categories_]
        parts: list[tuple[str, Any, list[int]]] = []
        owner: list[int] = []
        if num_idx:
            # keep_empty_features: a column that is all missing still gets its (zero) output, so the
            # mapping from outputs to columns below holds.
            parts.append(
                (
                    "num",
                    make_pipeline(
                        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()
                    ),
                    num_idx,
                )
            )
            owner += num_idx
        if cat_idx:
            cats = [np.arange(len(self.categories_[names[j]]), dtype=float) for j in cat_idx]
            parts.append(
                (
                    "cat",
                    make_pipeline(
                        _CodesToInt(),
                        OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False),
                    ),
                    cat_idx,
                )
            )
            for j, c in zip(cat_idx, cats, strict=True):
                owner += [j] * len(c)
        self.pipeline_ = Pipeline(
            [
                ("encode", ColumnTransformer(parts, remainder="drop")),
                (
                    "logistic",
                    LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter),
                ),
            ]
        )
        self.pipeline_.fit(M, y01, logistic__sample_weight=weights)
        T = self.pipeline_[:-1].transform(M)
        self.encoded_owner_ = np.asarray(owner)
        self.encoded_mean_ = np.average(T, axis=0, weights=weights)
        lr = self.pipeline_[-1]
        self.expected_logit_ = float(lr.intercept_[0] + lr.coef_[0] @ self.encoded_mean_)

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Probabilities of ``classes_[0]`` and ``classes_[1]``, shape (n, 2)."""
        M = self._matrix(X)
        proba: NDArray[np.float64] = self.pipeline_.predict_proba(M)
        return proba

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        """Log-odds of ``classes_[1]``."""
        M = self._matrix(X)
        d: NDArray[np.float64] = self.pipeline_.decision_function(M)
        return d

    def contributions(self, X: Any) -> NDArray[np.float64]:
        """Per-column contributions to the log-odds, shape (n, n_features); rows sum to logit - base."""
        M = self._matrix(X)
        T = self.pipeline_[:-1].transform(M)
        per_output = (T - self.encoded_mean_) * self.pipeline_[-1].coef_[0]
        out = np.zeros((T.shape[0], self.n_features_in_))
        np.add.at(out.T, self.encoded_owner_, per_output.T)
        return out

    def explain(self, X: Any, top: int = 3) -> list[list[Contribution]]:
        """Each row's ``top`` columns by absolute contribution to the log-odds, largest first."""
        return _top(self.contributions(X), list(self.feature_names_in_), top)


class _CodesToInt(BaseEstimator):
    """Category codes (NaN = missing/unseen) as floats with -1 for missing, so one-hot ignores them."""

    def fit(self, X: Any, y: Any = None) -> _CodesToInt:
        return self

    def transform(self, X: Any) -> NDArray[np.float64]:
        A = np.asarray(X, dtype=float)
        return np.where(np.isfinite(A), A, -1.0)


# --------------------------------------------------------------------------- LightGBM model


class AbandonmentModel(_TabularClassifier):
    """Calibrated LightGBM classifier for cart/session abandonment, with reasons for each prediction.

    Training rows are split in two: the trees are fitted on the first ``1 - calibration_share`` and the
    calibration map (isotonic or sigmoid, on the trees' raw margin) on the last ``calibration_share``,
    as scikit-learn's ``CalibratedClassifierCV(FrozenEstimator(model))`` would on a held-out set. "Last"
    means latest: pass ``time_order`` (timestamps or any sortable key) to ``fit``, or keep the rows in time
    order, so the probabilities are calibrated on the most recent period, the one closest to the future
    they will be used on. The trees are not refitted on the calibration rows (the map is fitted to the
    margins of these very trees).

    With fewer than ``fallback_min_rows`` rows or fewer than ``fallback_min_minority`` rows of the rarer
    class, the model fits a :class:`LogisticBaseline` instead and records why in ``fallback_``.

    Parameters
    ----------
    n_estimators : int, default 300
        Boosting rounds.
    learning_rate : float, default 0.05
        Shrinkage per round.
    num_leaves : int, default 15
        Leaves per tree (small trees for small tabular data).
    min_child_samples : int, default 20
        Minimum rows per leaf.
    subsample : float, default 0.8
        Share of rows bagged per round (every round).
    colsample_bytree : float, default 0.8
        Share of columns per tree.
    reg_lambda : float, default 1.0
        L2 regularisation of leaf values.
    calibration : {"sigmoid", "isotonic", None}, default "sigmoid"
        The calibration map fitted on the held-out tail. "sigmoid" (Platt scaling of the margin, two
        parameters) keeps the trees' ranking intact and suits calibration sets of a few hundred rows;
        "isotonic" is more flexible but piecewise constant (ties cost a little AUC) and wants thousands.
        None fits the trees on all rows and uses LightGBM's own probabilities.
    calibration_share : float, default 0.2
        Share of training rows (the latest) held out for calibration.
    fallback_min_rows, fallback_min_minority : int, default 200 and 20
        Below either, fit :class:`LogisticBaseline` instead.
    n_jobs : int, default 1
        LightGBM threads (-1: all cores) for fitting and for predicting batches of 10,000 rows or more
        (fewer rows are predicted on one thread). Results do not depend on it (LightGBM runs with
        ``deterministic=True``).
    random_state : int or None, default None
        Seed of the bagging and column sampling; None uses LightGBM's fixed default seeds.

    Attributes
    ----------
    estimator_ : lightgbm.LGBMClassifier or LogisticBaseline
        The fitted trees, or the fallback baseline.
    fallback_ : str or None
        Why the baseline was fitted instead of LightGBM; None when it was not.
    calibration_ : str or None
        The calibration actually applied ("isotonic", "sigmoid" or None).
    calibration_note_ : str or None
        Why a requested calibration was not applied (e.g. the held-out tail has one class only).
    expected_logit_ : float
        The base value of the explanations (trees' expected raw margin).
    classes_, feature_names_in_, n_features_in_, categories_
        The labels, the fitted columns, their number, and each categorical column's categories.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"minutes": rng.exponential(10, 1000), "items": rng.integers(1, 5, 1000)})
    >>> y = rng.random(1000) < 1 / (1 + np.exp(-(X["minutes"] - 10) / 3))
    >>> model = AbandonmentModel(random_state=0).fit(X, y)
    >>> model.fallback_ is None, model.calibration_
    (True, 'sigmoid')
    >>> model.reasons(X.head(1), top=1, describe={"minutes": "long time in cart"})  # doctest: +SKIP
    ['long time in cart (+1.83)']
    """

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 20,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        calibration: str | None = "sigmoid",
        calibration_share: float = 0.2,
        fallback_min_rows: int = 200,
        fallback_min_minority: int = 20,
        n_jobs: int = 1,
        random_state: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.calibration = calibration
        self.calibration_share = calibration_share
        self.fallback_min_rows = fallback_min_rows
        self.fallback_min_minority = fallback_min_minority
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(
        self, X: Any, y: Any, sample_weight: ArrayLike | None = None, *, time_order: ArrayLike | None = None
    ) -> AbandonmentModel:
        """Fit on a feature table ``X`` and binary labels ``y``; returns ``self``.

        Parameters
        ----------
        X : DataFrame or 2-D array
            Numeric, boolean or pandas ``category`` columns; NaN means missing.
        y : array-like of shape (n,)
            Two classes; ``classes_[1]`` (the larger label) is the one whose probability is predicted.
        sample_weight : array-like of shape (n,), optional
            Row weights for the trees, the calibration map and the fallback.
        time_order : array-like of shape (n,), optional
            A sortable time key per row; the latest ``calibration_share`` of rows calibrate. Without it,
            the last rows as given do.
        """
        if self.calibration not in CALIBRATIONS:
            raise BadInputError(
                f"calibration: expected 'isotonic', 'sigmoid' or None, got {self.calibration!r}"
            )
        if not 0.0 < self.calibration_share < 1.0:
            raise BadInputError(
                f"calibration_share: expected a share in (0, 1), got {self.calibration_share!r}"
            )
        M, y01, weights, _ = self._validate_fit(X, y, sample_weight)
        n = y01.size
        order = np.arange(n) if time_order is None else _time_order(time_order, n)
        minority = int(min(y01.sum(), n - y01.sum()))
        self.calibration_note_: str | None = None
        self.calibrator_: tuple[Any, ...] | None = None
        self.calibration_: str | None = None
        reason = None
        if n < self.fallback_min_rows:
            reason = f"{n} training rows, fewer than fallback_min_rows={self.fallback_min_rows}"
        elif minority < self.fallback_min_minority:
            reason = (
                f"{minority} rows of the rarer class, "
                f"fewer than fallback_min_minority={self.fallback_min_minority}"
            )
        if reason is not None:
            self.fallback_: str | None = f"{reason}: fitted LogisticBaseline instead of LightGBM"
            base = LogisticBaseline(random_state=self.random_state)
            base.feature_names_in_, base.n_features_in_ = self.feature_names_in_, self.n_features_in_
            base.classes_, base.categories_ = self.classes_, self.categories_
            base.category_codes_ = self.category_codes_
            base._fit_matrix(M, y01, weights)
            self.estimator_: Any = base
            self.expected_logit_ = base.expected_logit_
            return self
        self.fallback_ = None

        fit_rows = np.arange(n)
        cal_rows = np.arange(0)
        if self.calibration is not None:
            n_cal = math.ceil(self.calibration_share * n)
            fit_rows, cal_rows = order[: n - n_cal], order[n - n_cal :]
            have = np.unique(y01[cal_rows]).size == 2 and np.unique(y01[fit_rows]).size == 2
            if not have:
                self.calibration_note_ = (
                    f"the held-out tail ({n_cal} rows) or the rest has a single class; "
                    "trees fitted on all rows, uncalibrated"
                )
                fit_rows, cal_rows = np.arange(n), np.arange(0)

        self.estimator_ = self._lgbm().fit(
            M[fit_rows],
            y01[fit_rows],
            sample_weight=None if weights is None else weights[fit_rows],
            feature_name=[_lgb_name(c) for c in self.feature_names_in_],
            categorical_feature=[j for j, c in enumerate(self.feature_names_in_) if c in self.categories_],
        )
        booster = self.estimator_.booster_
        self.expected_logit_ = float(
            booster.predict(M[fit_rows][:1], pred_contrib=True, num_threads=1)[0, -1]
        )
        if cal_rows.size:
            held_out = M[cal_rows]
            margin = booster.predict(held_out, raw_score=True, num_threads=self._threads(held_out))
            w = None if weights is None else weights[cal_rows]
            self.calibrator_ = _fit_calibrator(str(self.calibration), margin, y01[cal_rows], w)
            self.calibration_ = self.calibration
        return self

    def _lgbm(self) -> Any:
        import lightgbm as lgb

        return lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1.0 else 0,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )

    def _threads(self, M: NDArray[np.float64]) -> int:
        """LightGBM threads for predicting ``M``: ``n_jobs`` for a batch, one for a few rows (threads cost
        more than they save there: measured p99 of one cart 90 us on one thread, 6 ms on two)."""
        return self.n_jobs if M.shape[0] >= _THREADED_ROWS else 1

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        """Uncalibrated log-odds of ``classes_[1]`` (the trees' raw margin, or the baseline's logit)."""
        M = self._matrix(X)
        if self.fallback_ is not None:
            return self.estimator_.pipeline_.decision_function(M)
        return self.estimator_.booster_.predict(M, raw_score=True, num_threads=self._threads(M))

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Calibrated probabilities of ``classes_[0]`` and ``classes_[1]``, shape (n, 2).

        A numeric numpy array is taken as the encoded feature matrix (``feature_names_in_`` order,
        categorical columns as category codes) and skips the DataFrame checks: the fast path for one row.
        """
        M = self._matrix(X)
        if self.fallback_ is not None:
            return self.estimator_.pipeline_.predict_proba(M)
        margin = self.estimator_.booster_.predict(M, raw_score=True, num_threads=self._threads(M))
        p1 = _apply_calibrator(self.calibrator_, margin)
        return np.column_stack([1.0 - p1, p1])

    def contributions(self, X: Any) -> NDArray[np.float64]:
        """Per-column contributions to the raw log-odds, shape (n, n_features).

        From LightGBM's ``pred_contrib=True`` (TreeSHAP): a row's contributions plus ``expected_logit_``
        give its uncalibrated margin. Calibration is monotone, so the signs keep their meaning.
        """
        M = self._matrix(X)
        if self.fallback_ is not None:
            return self.estimator_.contributions(M)
        return self.estimator_.booster_.predict(M, pred_contrib=True, num_threads=self._threads(M))[:, :-1]

    def explain(self, X: Any, top: int = 3) -> list[list[Contribution]]:
        """Each row's ``top`` columns by absolute contribution to the log-odds, largest first.

        Returns
        -------
        list of list of (str, float)
            Per row, ``(column, contribution)`` pairs; positive pushes towards ``classes_[1]``.
        """
        return _top(self.contributions(X), list(self.feature_names_in_), top)


def _lgb_name(name: str) -> str:
    """LightGBM refuses some characters in feature names; the names only matter inside the booster."""
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


def _time_order(time_order: ArrayLike, n: int) -> NDArray[np.intp]:
    t = np.asarray(time_order)
    if t.shape != (n,):
        raise BadInputError(f"time_order: expected {n} values (one per row of X), got shape {t.shape}")
    if pd.isna(t).any():
        raise BadInputError("time_order: missing values; every row needs a time to sort by")
    return np.argsort(t, kind="stable")


def _fit_calibrator(
    method: str, margin: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
) -> tuple[Any, ...]:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margin, y, sample_weight=w)
        return (
            "isotonic",
            np.asarray(iso.X_thresholds_, dtype=float),
            np.asarray(iso.y_thresholds_, dtype=float),
        )
    a, b = _platt(margin, y, w)
    return ("sigmoid", a, b)


def _apply_calibrator(calibrator: tuple[Any, ...] | None, margin: NDArray[np.float64]) -> NDArray[np.float64]:
    if calibrator is None:
        return 1.0 / (1.0 + np.exp(-margin))
    if calibrator[0] == "isotonic":
        # Same as IsotonicRegression.predict with out_of_bounds="clip" (linear between thresholds).
        return np.interp(margin, calibrator[1], calibrator[2])
    return 1.0 / (1.0 + np.exp(-(calibrator[1] * margin + calibrator[2])))


def _platt(
    margin: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
) -> tuple[float, float]:
    """Platt scaling p = sigmoid(a * margin + b) with Platt's smoothed targets (as sklearn's sigmoid)."""
    w = np.ones_like(margin) if w is None else w
    n_pos, n_neg = float(w[y == 1].sum()), float(w[y == 0].sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(ab: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        z = ab[0] * margin + ab[1]
        # log(1 + e^z) - t z, stably
        value = float(np.sum(w * (np.logaddexp(0.0, z) - t * z)))
        g = w * (1.0 / (1.0 + np.exp(-z)) - t)
        return value, np.array([float(g @ margin), float(g.sum())])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])

# ruff: noqa: N803, N806  (scikit-learn's names: X for the feature table, M for its encoded matrix)
"""Who does a treatment change? Multi-treatment uplift meta-learners on LightGBM, and their metrics.

Targeting by risk pays people who would have bought anyway (DESIGN.md, "What the evidence says");
winback targets by the *incremental* effect of each treatment. :class:`UpliftModel` estimates, per
customer, ``E[y | t, x] - E[y | control, x]`` for every non-control treatment ``t`` (a reminder, a coupon,
...), for a binary outcome (purchase) or a continuous one (revenue), from randomised or logged data whose
propensities are known (the probability each row got the treatment it got). Three learners:

- ``"t"`` (T-learner): one outcome model per treatment arm; the effect is the difference of two heads.
  Simple, and the baseline, but each head fits its arm's noise separately.
- ``"x"`` (X-learner, Kunzel et al. 2019): imputes each row's effect with the *other* arm's head
  (``y - mu_c(x)`` for treated rows, ``mu_t(x) - y`` for control rows), regresses those on ``x`` within
  each arm and blends the two by the arm shares ``g = n_t / (n_t + n_c)``:
  ``tau(x) = g tau_c(x) + (1 - g) tau_t(x)``, so the arm with more rows imputes for the other.
- ``"dr"`` (DR-learner, Kennedy 2023): regresses the doubly robust (AIPW) pseudo-outcome
  ``mu_t - mu_c + 1[T=t] (y - mu_t) / e - 1[T=c] (y - mu_c) / e`` on ``x``, over every row, with
  outcome heads cross-fitted (``folds``) so a row's pseudo-outcome never uses a head that saw it.
  ``e`` is the row's known propensity; it is unbiased even where the heads are wrong.

T and X need no propensities (each head is fitted within its arm, which is valid when assignment depends
on ``x`` only); DR uses them. Without ``propensity`` the data are taken as randomised and ``e`` is the
share of rows in the row's arm.

Small arms: an arm with fewer than ``min_arm_rows`` rows (or, for a binary outcome, fewer than
``min_arm_minority`` rows of its rarer outcome value) is not given trees: its head is the arm's mean, and
its effect is an average effect, the same for every customer (T: the difference of the arm means; X: the
mean imputed effects, blended; DR: the AIPW mean). A small control makes every effect such a constant.
``fallback_`` names each such arm and why.

Metrics: :func:`uplift_at_k` and :func:`qini_auc` follow scikit-uplift's definitions (``sklift.metrics``
0.5.1, checked to agree to 1e-12 on binary outcomes) for one treated arm against the control, and extend
them to continuous outcomes (spend), which sklift refuses; they do not need sklift installed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold

from winback.errors import BadInputError
from winback.models.abandonment import check_columns

__all__ = ["LIGHTGBM_DEFAULTS", "Learner", "Outcome", "UpliftModel", "qini_auc", "qini_curve", "uplift_at_k"]

Learner = Literal["t", "x", "dr"]
Outcome = Literal["binary", "continuous"]

LEARNERS = ("t", "x", "dr")
OUTCOMES = ("binary", "continuous")

#: LightGBM settings of every head and effect model (``params`` overrides them): small, regularised trees,
#: because an effect is a small difference between two noisy outcome models. Fixed before any benchmark.
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}

_THREADED_ROWS = 10_000  # rows from which predictions use every thread (below: one, faster for few rows)


# --------------------------------------------------------------------------- fitted pieces


class _Regressor:
    """A fitted LightGBM booster, or a constant when there were too few rows to grow trees on."""

    def __init__(self, booster: Any | None, constant: float) -> None:
        self.booster = booster
        self.constant = constant

    def predict(self, M: NDArray[np.float64], threads: int) -> NDArray[np.float64]:
        if self.booster is None:
            return np.full(M.shape[0], self.constant)
        out: NDArray[np.float64] = np.asarray(self.booster.predict(M, num_threads=threads), dtype=float)
        return out


# --------------------------------------------------------------------------- the model


class UpliftModel(BaseEstimator):
    """Per-customer incremental effect of each treatment against the control (T-, X- or DR-learner).

    Parameters
    ----------
    learner : {"t", "x", "dr"}, default "dr"
        The meta-learner (see the module docstring).
    control : str, default "nothing"
        The treatment every effect is measured against; it must occur in the training data.
    outcome : {"binary", "continuous"}, default "binary"
        Binary (0/1, e.g. purchased): heads are LightGBM classifiers and predict probabilities.
        Continuous (e.g. revenue): heads are L2 regressors and predict means.
    params : dict, optional
        LightGBM keyword arguments overriding :data:`LIGHTGBM_DEFAULTS`, for every head and effect model.
    threads : int, default 0
        LightGBM threads for fitting and for predicting 10,000 rows or more (0: every core). Results do not
        depend on it (``deterministic=True``).
    random_state : int, default 0
        Seed of LightGBM's bagging and of the DR-learner's folds.
    folds : int, default 3
        Cross-fitting folds of the DR-learner's outcome heads (at least 2).
    min_arm_rows : int, default 100
        Arms with fewer rows get the arm mean instead of trees (``fallback_`` says which and why).
    min_arm_minority : int, default 10
        For a binary outcome, arms with fewer rows of the rarer value (e.g. fewer than 10 buyers) too.

    Attributes
    ----------
    treatments_ : list of str
        The control first, then the other treatments seen in ``fit`` (sorted): the columns of
        :meth:`outcomes`; :meth:`effects` has the same without the control.
    arm_rows_ : dict of str to int
        Training rows per treatment.
    fallback_ : dict of str to str
        Arms fitted as their mean instead of trees, each with the reason; empty when none.
    propensity_source_ : str
        ``"given"``, or ``"arm shares"`` when ``fit`` had no propensities (the data taken as randomised).
    heads_ : dict of str to fitted model
        The outcome model of each arm, fitted on all its rows.
    effect_models_ : dict of str to fitted model
        The X-learner's ``(tau_t, tau_c, g)`` or the DR-learner's final regressor per non-control
        treatment; empty for the T-learner.
    feature_names_in_, n_features_in_, categories_
        The fitted columns, their number, and each categorical column's categories.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 6000
    >>> X = pd.DataFrame({"x": rng.normal(size=n)})
    >>> t = rng.choice(["nothing", "reminder"], n)
    >>> y = rng.random(n) < 0.2 + 0.2 * ((t == "reminder") & (X["x"] > 0))
    >>> model = UpliftModel(learner="dr").fit(X, t, y)
    >>> effect = model.effects(pd.DataFrame({"x": [-1.0, 1.0]}))["reminder"]
    >>> bool(abs(effect[0]) < 0.08 and 0.12 < effect[1] < 0.28)
    True
    """

    def __init__(
        self,
        learner: Learner = "dr",
        control: str = "nothing",
        outcome: Outcome = "binary",
        params: dict[str, Any] | None = None,
        threads: int = 0,
        random_state: int = 0,
        *,
        folds: int = 3,
        min_arm_rows: int = 100,
        min_arm_minority: int = 10,
    ) -> None:
        self.learner = learner
        self.control = control
        self.outcome = outcome
        self.params = params
        self.threads = threads
        self.random_state = random_state
        self.folds = folds
        self.min_arm_rows = min_arm_rows
        self.min_arm_minority = min_arm_minority

    # -- fit

    def fit(
        self,
        X: pd.DataFrame,
        treatment: Sequence[str] | ArrayLike,
        y: Sequence[float] | ArrayLike,
        propensity: Sequence[float] | ArrayLike | None = None,
    ) -> UpliftModel:
        """Fit on features ``X``, the treatment each row got, its outcome and (optionally) the
        probability it had of getting that treatment; returns ``self``.

        Parameters
        ----------
        X : DataFrame
            Numeric, boolean or pandas ``category`` columns; NaN means missing.
        treatment : sequence of str, length n
            One treatment name per row; ``control`` among them.
        y : sequence of float, length n
            The outcome: 0/1 (or bool) for ``outcome="binary"``, any finite number for continuous.
        propensity : sequence of float in (0, 1], length n, optional
            ``P(T = treatment[i] | x_i)`` as the assignment policy knew it; for a randomised trial the
            arm shares. Without it the arm shares are used.
        """
        self._check_hyperparameters()
        M = self._fit_encoding(X)
        n = M.shape[0]
        t = _treatment_array(treatment, n)
        yv = _outcome_array(y, n, self.outcome)
        arms = sorted(set(t.tolist()))
        if self.control not in arms:
            raise BadInputError(
                f"control: {self.control!r} is not among the treatments in the data "
                f"({', '.join(map(repr, arms))}); pass control= one of them"
            )
        if len(arms) < 2:
            raise BadInputError(
                f"treatment: every row got the control {self.control!r}; at least one other treatment "
                "is needed to estimate an effect"
            )
        self.treatments_ = [self.control, *[a for a in arms if a != self.control]]
        masks = {a: t == a for a in self.treatments_}
        self.arm_rows_ = {a: int(m.sum()) for a, m in masks.items()}
        if propensity is None:
            e = np.empty(n)
            for m in masks.values():
                e[m] = m.mean()
            self.propensity_source_ = "arm shares"
        else:
            e = _propensity_array(propensity, n)
            self.propensity_source_ = "given"
        self.fallback_ = {
            a: reason for a in self.treatments_ if (reason := self._arm_problem(yv[masks[a]])) is not None
        }
        self.heads_ = {a: self._fit_head(M[masks[a]], yv[masks[a]], a) for a in self.treatments_}
        self.effect_models_: dict[str, Any] = {}
        if self.learner == "x":
            self._fit_x(M, yv, masks)
        elif self.learner == "dr":
            self._fit_dr(M, t, yv, e, masks)
        return self

    def _check_hyperparameters(self) -> None:
        if self.learner not in LEARNERS:
            raise BadInputError(f"learner: expected one of {LEARNERS}, got {self.learner!r}")
        if self.outcome not in OUTCOMES:
            raise BadInputError(f"outcome: expected one of {OUTCOMES}, got {self.outcome!r}")
        if not isinstance(self.control, str) or not self.control:
            raise BadInputError(f"control: expected a treatment name, got {self.control!r}")
        if self.params is not None and not isinstance(self.params, Mapping):
            raise BadInputError(f"params: expected a dict of LightGBM settings, got {type(self.params)}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise BadInputError(
                f"threads: expected 0 (every core) or a positive number, got {self.threads!r}"
            )
        if not isinstance(self.folds, int) or self.folds < 2:
            raise BadInputError(f"folds: expected at least 2 cross-fitting folds, got {self.folds!r}")
        if self.min_arm_rows < 1 or self.min_arm_minority < 0:
            raise BadInputError(
                f"min_arm_rows / min_arm_minority: expected >= 1 / >= 0, got "
                f"{self.min_arm_rows!r} / {self.min_arm_minority!r}"
            )

    def _arm_problem(self, y_arm: NDArray[np.float64]) -> str | None:
        """Why an arm is too small for trees, or None."""
        if y_arm.size < self.min_arm_rows:
            return f"{y_arm.size} rows, fewer than min_arm_rows={self.min_arm_rows}: fitted as the arm mean"
        if self.outcome == "binary":
            positives = int(y_arm.sum())
            minority = min(positives, y_arm.size - positives)
            if minority < max(self.min_arm_minority, 1):
                value = 1 if positives <= y_arm.size - positives else 0
                return (
                    f"{minority} rows with outcome {value}, fewer than "
                    f"min_arm_minority={self.min_arm_minority}: fitted as the arm mean"
                )
        return None

    def _n_jobs(self) -> int:
        return self.threads or os.cpu_count() or 1

    def _threads(self, M: NDArray[np.float64]) -> int:
        return self._n_jobs() if M.shape[0] >= _THREADED_ROWS else 1

    def _lgbm(self, classifier: bool) -> Any:
        import lightgbm as lgb

        settings = {**LIGHTGBM_DEFAULTS, **(self.params or {})}
        settings.update(
            n_jobs=self._n_jobs(),
            random_state=self.random_state,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        return lgb.LGBMClassifier(**settings) if classifier else lgb.LGBMRegressor(**settings)

    def _fit_trees(self, M: NDArray[np.float64], target: NDArray[np.float64], classifier: bool) -> _Regressor:
        model = self._lgbm(classifier).fit(
            M,
            target.astype(np.int8) if classifier else target,
            categorical_feature=self._categorical_indices() or "auto",
        )
        return _Regressor(model.booster_, float(target.mean()))

    def _fit_head(self, M: NDArray[np.float64], y: NDArray[np.float64], arm: str) -> _Regressor:
        """Outcome model of one arm: trees, or the arm mean for an arm in ``fallback_``."""
        if arm in self.fallback_ or self._arm_problem(y) is not None:
            return _Regressor(None, float(y.mean()) if y.size else 0.0)
        return self._fit_trees(M, y, classifier=self.outcome == "binary")

    def _fit_effect(self, M: NDArray[np.float64], target: NDArray[np.float64], small: bool) -> _Regressor:
        """Regression of imputed effects / pseudo-outcomes on x; a constant for a small arm."""
        if small or target.size < self.min_arm_rows:
            return _Regressor(None, float(target.mean()))
        return self._fit_trees(M, target, classifier=False)

    def _fit_x(self, M: NDArray[np.float64], y: NDArray[np.float64], masks: Mapping[str, Any]) -> None:
        c = self.control
        in_c = masks[c]
        threads = self._threads(M)
        for arm in self.treatments_[1:]:
            in_t = masks[arm]
            small = arm in self.fallback_ or c in self.fallback_
            imputed_t = y[in_t] - self.heads_[c].predict(M[in_t], threads)
            imputed_c = self.heads_[arm].predict(M[in_c], threads) - y[in_c]
            tau_t = self._fit_effect(M[in_t], imputed_t, small)
            tau_c = self._fit_effect(M[in_c], imputed_c, small)
            g = float(in_t.sum() / (in_t.sum() + in_c.sum()))
            self.effect_models_[arm] = (tau_t, tau_c, g)

    def _fit_dr(
        self,
        M: NDArray[np.float64],
        t: NDArray[np.str_],
        y: NDArray[np.float64],
        e: NDArray[np.float64],
        masks: Mapping[str, Any],
    ) -> None:
        n = y.size
        # Out-of-fold predictions of every arm's head on every row (small arms: their mean throughout).
        mu = {a: np.full(n, self.heads_[a].constant) for a in self.treatments_}
        splitter = StratifiedKFold(n_splits=self.folds, shuffle=True, random_state=self.random_state)
        big = [a for a in self.treatments_ if a not in self.fallback_]
        # Stratify by arm; the small arms (which may have fewer rows than folds) share one stratum.
        strata = np.where(np.isin(t, big), t, "")
        if big:
            for fit_rows, held_out in splitter.split(M, strata):
                fit_t, fit_y = t[fit_rows], y[fit_rows]
                for a in big:
                    rows = fit_t == a
                    head = self._fit_head(M[fit_rows][rows], fit_y[rows], a)
                    mu[a][held_out] = head.predict(M[held_out], self._threads(M[held_out]))
        c = self.control
        residual_c = np.where(masks[c], (y - mu[c]) / e, 0.0)
        for arm in self.treatments_[1:]:
            pseudo = mu[arm] - mu[c] + np.where(masks[arm], (y - mu[arm]) / e, 0.0) - residual_c
            small = arm in self.fallback_ or c in self.fallback_
            self.effect_models_[arm] = self._fit_effect(M, pseudo, small)

    # -- encoding

    def _fit_encoding(self, X: Any) -> NDArray[np.float64]:
        if not isinstance(X, pd.DataFrame):
            raise BadInputError(f"X: expected a DataFrame of features, got {type(X).__name__}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise BadInputError(f"X: expected at least one row and one feature column, got shape {X.shape}")
        names = [str(c) for c in X.columns]
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise BadInputError(f"X: column names must be unique; repeated: {', '.join(dup)}")
        frame = X.set_axis(names, axis=1)
        bad = [
            f"column {c} ({frame[c].dtype})"
            for c in names
            if not (isinstance(frame[c].dtype, pd.CategoricalDtype) or _is_numeric_dtype(frame[c].dtype))
        ]
        if bad:
            raise BadInputError(
                "X: every column must be numeric, boolean or pandas 'category' "
                "(convert text with .astype('category'))",
                bad,
            )
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.categories_ = {
            c: frame[c].cat.categories for c in names if isinstance(frame[c].dtype, pd.CategoricalDtype)
        }
        M = self._encode(frame)
        inf = [c for j, c in enumerate(names) if np.isinf(M[:, j]).any()]
        if inf:
            raise BadInputError(f"X: infinite values in column(s) {', '.join(inf)}; use NaN for missing")
        return M

    def _categorical_indices(self) -> list[int]:
        return [j for j, c in enumerate(self.feature_names_in_) if c in self.categories_]

    def _encode(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """Numeric columns as floats, categorical ones as codes of the fitted categories (unseen: NaN)."""
        out = np.empty((frame.shape[0], self.n_features_in_), dtype=np.float64)
        for j, c in enumerate(self.feature_names_in_):
            col = frame[c]
            cats = self.categories_.get(c)
            if cats is None:
                if not _is_numeric_dtype(col.dtype):
                    raise BadInputError(f"X: column {c} must be numeric as in fit, got {col.dtype}")
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                codes = cats.get_indexer(pd.Index(col.astype(object))).astype(np.float64)
                codes[codes < 0] = np.nan
                out[:, j] = codes
        return out

    def _matrix(self, X: Any) -> NDArray[np.float64]:
        if not hasattr(self, "heads_"):
            raise BadInputError("UpliftModel is not fitted yet; call fit(X, treatment, y) first")
        if not isinstance(X, pd.DataFrame):
            raise BadInputError(f"X: expected a DataFrame of features, got {type(X).__name__}")
        check_columns(X, self.feature_names_in_)
        return self._encode(X.set_axis([str(c) for c in X.columns], axis=1))

    # -- predict

    def effects(self, X: pd.DataFrame) -> pd.DataFrame:
        """Predicted ``E[y | t, x] - E[y | control, x]``: one column per non-control treatment."""
        M = self._matrix(X)
        threads = self._threads(M)
        columns: dict[str, NDArray[np.float64]] = {}
        for arm in self.treatments_[1:]:
            columns[arm] = self._effect(arm, M, threads)
        return pd.DataFrame(columns, index=X.index)

    def _effect(self, arm: str, M: NDArray[np.float64], threads: int) -> NDArray[np.float64]:
        if self.learner == "t":
            if arm in self.fallback_ or self.control in self.fallback_:
                difference = self.heads_[arm].constant - self.heads_[self.control].constant
                return np.full(M.shape[0], difference)
            return self.heads_[arm].predict(M, threads) - self.heads_[self.control].predict(M, threads)
        model = self.effect_models_[arm]
        if self.learner == "x":
            tau_t, tau_c, g = model
            from_control, from_treated = tau_c.predict(M, threads), tau_t.predict(M, threads)
            blended: NDArray[np.float64] = g * from_control + (1.0 - g) * from_treated
            return blended
        out: NDArray[np.float64] = model.predict(M, threads)
        return out

    def outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        """Predicted ``E[y | t, x]`` for every treatment, the control first.

        The T-learner's heads; the X- and DR-learners (and the T-learner for a small arm) add the effect
        to the control head, so for a binary outcome a value may fall slightly outside [0, 1]: the effects
        are what the learners estimate. ``outcomes - outcomes[control]`` is always :meth:`effects`.
        """
        M = self._matrix(X)
        threads = self._threads(M)
        base = self.heads_[self.control].predict(M, threads)
        columns = {self.control: base}
        for arm in self.treatments_[1:]:
            columns[arm] = base + self._effect(arm, M, threads)
        return pd.DataFrame(columns, index=X.index)

    def best_treatment(self, X: pd.DataFrame, costs: Mapping[str, float] | None = None) -> pd.Series:
        """The treatment with the highest predicted effect net of its cost per row; the control where no
        treatment's net effect is positive.

        ``costs`` maps treatments to a cost in the outcome's unit (e.g. a coupon's expected cost in
        revenue); missing treatments cost 0.
        """
        net = self.effects(X)
        for arm, cost in (costs or {}).items():
            if arm not in net.columns:
                raise BadInputError(f"costs: {arm!r} is not a non-control treatment ({list(net.columns)})")
            net[arm] = net[arm] - float(cost)
        best = net.to_numpy().argmax(axis=1)
        names = np.asarray(net.columns, dtype=object)[best]
        chosen = np.where(net.to_numpy().max(axis=1) > 0.0, names, self.control)
        return pd.Series(chosen, index=X.index, name="treatment")


# --------------------------------------------------------------------------- input checks


def _is_numeric_dtype(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _treatment_array(treatment: Any, n: int, name: str = "treatment") -> NDArray[np.str_]:
    values = np.asarray(treatment, dtype=object)
    if values.ndim != 1 or values.size != n:
        raise BadInputError(f"{name}: expected {n} treatment names (one per row), got shape {values.shape}")
    missing = pd.isna(values)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise BadInputError(f"{name}: {int(missing.sum())} missing treatment(s), the first at row {row}")
    return values.astype(str)


def _outcome_array(y: Any, n: int, outcome: str, name: str = "y") -> NDArray[np.float64]:
    raw = np.asarray(y)
    if raw.ndim != 1 or raw.size != n:
        raise BadInputError(f"{name}: expected {n} outcomes (one per row), got shape {raw.shape}")
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise BadInputError(f"{name}: expected numbers, got values such as {raw[:3].tolist()!r}") from None
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise BadInputError(f"{name}: expected finite outcomes, got {values[row]} at row {row}")
    if outcome == "binary" and not np.isin(values, (0.0, 1.0)).all():
        row = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)))[0])
        raise BadInputError(
            f"{name}: a binary outcome must be 0/1 or boolean, got {values[row]} at row {row} "
            "(use outcome='continuous' for revenue)"
        )
    return values


def _propensity_array(propensity: Any, n: int) -> NDArray[np.float64]:
    values = np.asarray(propensity, dtype=np.float64)
    if values.ndim != 1 or values.size != n:
        raise BadInputError(f"propensity: expected {n} probabilities (one per row), got shape {values.shape}")
    bad = ~(np.isfinite(values) & (values > 0.0) & (values <= 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(
            f"propensity: expected probabilities in (0, 1] (the chance each row had of its treatment), "
            f"got {values[row]} at row {row} ({int(bad.sum())} such rows)"
        )
    return values


# --------------------------------------------------------------------------- metrics


def _pair(
    y: Any, treatment: Any, score: Any, treated: str, control: str
) -> tuple[NDArray[np.float64], NDArray[np.int8], NDArray[np.float64]]:
    """The rows of ``treated`` and ``control``: outcome, 1 for treated, score."""
    s = np.asarray(score, dtype=np.float64)
    n = s.size
    if s.ndim != 1:
        raise BadInputError(f"score: expected one score per row, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise BadInputError(f"score: expected finite scores, got {int((~np.isfinite(s)).sum())} NaN/inf")
    t = _treatment_array(treatment, n)
    yv = _outcome_array(y, n, "continuous")
    for name, arm in (("treated", treated), ("control", control)):
        if not (t == arm).any():
            raise BadInputError(
                f"{name}: no rows got {arm!r}; treatments present: {', '.join(map(repr, sorted(set(t))))}"
            )
    if treated == control:
        raise BadInputError(f"treated and control are both {treated!r}; expected two different treatments")
    keep = (t == treated) | (t == control)
    return yv[keep], (t[keep] == treated).astype(np.int8), s[keep]


def uplift_at_k(
    y: Sequence[float] | ArrayLike,
    treatment: Sequence[str] | ArrayLike,
    score: Sequence[float] | ArrayLike,
    *,
    treated: str,
    control: str,
    k: float = 0.3,
    strategy: Literal["overall", "by_group"] = "overall",
) -> float:
    """Mean outcome of the treated minus that of the control among the top ``k`` share by ``score``.

    Only rows of ``treated`` and ``control`` count. ``"overall"`` takes the top ``int(k * n)`` of those
    rows together; ``"by_group"`` the top ``k`` of each group separately. As ``sklift.metrics.uplift_at_k``
    (including its order of tied scores: later rows first), for binary or continuous outcomes.
    """
    yv, t, s = _pair(y, treatment, score, treated, control)
    if not 0.0 < k < 1.0:
        raise BadInputError(f"k: expected a share in (0, 1), got {k!r}")
    if strategy not in ("overall", "by_group"):
        raise BadInputError(f"strategy: expected 'overall' or 'by_group', got {strategy!r}")
    order = np.argsort(s, kind="mergesort")[::-1]
    yv, t = yv[order], t[order]
    if strategy == "overall":
        top = int(yv.size * k)
        y_top, t_top = yv[:top], t[:top]
        treated_top, control_top = y_top[t_top == 1], y_top[t_top == 0]
    else:
        y_t, y_c = yv[t == 1], yv[t == 0]
        treated_top, control_top = y_t[: int(y_t.size * k)], y_c[: int(y_c.size * k)]
    for name, group in (("treated", treated_top), ("control", control_top)):
        if group.size == 0:
            raise BadInputError(f"k={k}: no {name} rows among the top share; use a larger k")
    return float(treated_top.mean() - control_top.mean())


def qini_curve(
    y: Sequence[float] | ArrayLike,
    treatment: Sequence[str] | ArrayLike,
    score: Sequence[float] | ArrayLike,
    *,
    treated: str,
    control: str,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The Qini curve: for the top ``n`` rows by score, ``Y_t(n) - Y_c(n) N_t(n) / N_c(n)`` (the
    treated's total outcome minus the control's scaled to as many rows), at each distinct score.

    Returns ``(n, qini)`` starting at ``(0, 0)``, as ``sklift.metrics.qini_curve``.
    """
    yv, t, s = _pair(y, treatment, score, treated, control)
    return _qini_points(yv, t, s)


def _qini_points(
    y: NDArray[np.float64], t: NDArray[np.int8], s: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    order = np.argsort(s, kind="mergesort")[::-1]
    y, t, s = y[order], t[order].astype(np.float64), s[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    n_treated = np.cumsum(t)[ends]
    y_treated = np.cumsum(y * t)[ends]
    y_control = np.cumsum(y * (1.0 - t))[ends]
    n_all = (ends + 1).astype(np.float64)
    n_control = n_all - n_treated
    ratio = np.divide(n_treated, n_control, out=np.zeros_like(n_treated), where=n_control != 0)
    qini = y_treated - y_control * ratio
    return np.r_[0.0, n_all], np.r_[0.0, qini]


def qini_auc(
    y: Sequence[float] | ArrayLike,
    treatment: Sequence[str] | ArrayLike,
    score: Sequence[float] | ArrayLike,
    *,
    treated: str,
    control: str,
) -> float:
    """Normalised area between the Qini curve and the random line, as ``sklift.metrics.qini_auc_score``.

    ``(A_score - A_random) / (A_perfect - A_random)``: ``A_random`` is the area under the straight line
    from (0, 0) to the curve's end, ``A_perfect`` that of the ideal ranking (score ``y`` for treated rows,
    ``-y`` for control rows, sklift's ``negative_effect=True``). 1 is perfect, 0 random, negative worse
    than random. Defined for continuous outcomes too (sklift accepts binary only); the denominator is then
    the same ideal ranking of the observed outcomes.
    """
    yv, t, s = _pair(y, treatment, score, treated, control)
    x_score, q_score = _qini_points(yv, t, s)
    x_best, q_best = _qini_points(yv, t, np.where(t == 1, yv, -yv))
    random_area = 0.5 * x_best[-1] * q_best[-1]
    best = _area(x_best, q_best) - random_area
    if best == 0.0 or math.isnan(best):
        raise BadInputError("y: the ideal Qini curve is the random line (no outcome varies); Qini undefined")
    return float((_area(x_score, q_score) - random_area) / best)


def _area(x: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    return float(np.trapezoid(q, x))

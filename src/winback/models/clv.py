"""Customer value: RFM summaries, BG/NBD purchase counts, Gamma-Gamma spend and CLV.

The shapes follow lifetimes and PyMC-Marketing: :func:`rfm_summary` turns a transaction log into one
row per customer (``frequency``, ``recency``, ``T``, ``monetary_value``); :class:`BetaGeoModel`
(BG/NBD, Fader, Hardie & Lee 2005) models how many purchases a customer makes and whether they are still
"alive"; :class:`GammaGammaModel` (Fader & Hardie 2013) models how much they spend per purchase; and
:func:`customer_lifetime_value` combines both into a discounted value over a horizon.

Both models are fitted by maximum likelihood on log-parameters with :func:`scipy.optimize.minimize`;
the log-likelihoods are written with ``gammaln`` and ``logaddexp`` so they stay finite for customers
with many purchases. A fit that does not converge, or whose parameters run off to a boundary, raises
:class:`ConvergenceError` instead of returning numbers nobody should use.

Examples
--------
>>> import pandas as pd
>>> tx = pd.DataFrame({
...     "user_id": ["a", "a", "a", "b", "c", "c"],
...     "timestamp": pd.to_datetime(["2024-01-01", "2024-01-15", "2024-02-20",
...                                  "2024-01-03", "2024-01-10", "2024-03-01"]),
...     "value": [10.0, 20.0, 30.0, 5.0, 8.0, 12.0],
... })
>>> rfm_summary(tx, observation_end="2024-03-31").round(2)  # doctest: +NORMALIZE_WHITESPACE
         frequency  recency      T  monetary_value
user_id
a              2.0     7.14  12.86            25.0
b              0.0     0.00  12.57             0.0
c              1.0     7.29  11.57            12.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from winback.errors import BadInputError

__all__ = [
    "BetaGeoModel",
    "ConvergenceError",
    "GammaGammaModel",
    "ModelNotFittedError",
    "customer_lifetime_value",
    "rfm_summary",
]

TimeUnit = Literal["week", "day"]
_DAYS_PER_UNIT: dict[str, float] = {"day": 1.0, "week": 7.0}
_DAYS_PER_STEP: dict[str, float] = {"day": 1.0, "week": 7.0, "month": 365.25 / 12}
_DAYS_PER_YEAR = 365.25
# A log-parameter this far from 0 means the parameter ran off to 0 or infinity (e^23 is about 1e10).
_LOG_BOUND = 23.0
_MIN_REL, _MAX_REL = 1e-4, 1e5


class ConvergenceError(BadInputError):
    """A maximum-likelihood fit that did not converge or whose estimates are degenerate."""


class ModelNotFittedError(BadInputError, NotFittedError):
    """A model used before ``fit``; also scikit-learn's ``NotFittedError``."""


# ---------------------------------------------------------------------------------------------------
# RFM summary
# ---------------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise BadInputError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadInputError(
            f"{what} is missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"it has {', '.join(repr(str(c)) for c in frame.columns) or 'no columns'}"
        )


def _to_wall_time(values: pd.Series, column: str) -> tuple[pd.Series, Any]:
    """Parse timestamps; tz-aware ones become their local wall-clock time. Returns (naive, tz)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
    else:
        try:
            ts = pd.to_datetime(values, format="ISO8601")
        except (ValueError, TypeError):
            try:  # ISO 8601 text with different UTC offsets
                ts = pd.to_datetime(values, format="ISO8601", utc=True)
            except (ValueError, TypeError) as exc:
                first = str(exc).split("\n")[0]
                raise BadInputError(
                    f"column {column!r} must hold timestamps (datetimes or ISO 8601 text): {first}"
                ) from None
    if ts.isna().any():
        raise BadInputError(f"column {column!r} has {int(ts.isna().sum())} missing timestamp(s)")
    tz = getattr(ts.dt, "tz", None)
    if tz is not None:
        ts = ts.dt.tz_localize(None)
    return ts, tz


def _bound_day(value: Any, name: str, tz: Any) -> pd.Timestamp:
    """A period bound as a calendar day in the data's time zone (naive bounds are read as local)."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"{name} must be a date or timestamp, got {value!r}: {exc}") from None
    if pd.isna(stamp):
        raise BadInputError(f"{name} must be a date or timestamp, got {value!r}")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(tz).tz_localize(None) if tz is not None else stamp.tz_localize(None)
    return stamp.normalize()


def rfm_summary(
    transactions: pd.DataFrame,
    *,
    observation_end: Any,
    calibration_end: Any = None,
    customer_col: str = "user_id",
    time_col: str = "timestamp",
    value_col: str | None = "value",
    time_unit: TimeUnit = "week",
) -> pd.DataFrame:
    """Summarise a transaction log into one row per customer, as BG/NBD and Gamma-Gamma need.

    Purchases are grouped by calendar day: several orders on one day count as one purchase whose
    value is their sum (the lifetimes convention that reproduces the published CDNOW estimates;
    counting per week instead gives a different model). Times are then measured in ``time_unit``.

    Parameters
    ----------
    transactions : DataFrame
        One row per order (or order line) with the customer, timestamp and value columns.
        Timestamps may be tz-aware; days are then the customer's calendar days in that zone.
    observation_end : date-like
        Last day observed (inclusive). Without ``calibration_end`` the summary covers everything up
        to it; with ``calibration_end`` it is the end of the holdout period.
    calibration_end : date-like, optional
        Last day (inclusive) of the calibration period. Adds holdout columns measured over the days
        after it up to ``observation_end``. Customers whose first purchase is after it are left out.
    customer_col, time_col, value_col : str
        Column names. ``value_col=None`` skips the monetary columns.
    time_unit : {"week", "day"}
        Unit of ``recency``, ``T`` and ``duration_holdout``.

    Returns
    -------
    DataFrame
        Indexed by customer, sorted, with ``frequency`` (purchase days minus one: repeat purchases),
        ``recency`` (age at the last purchase: last minus first purchase day), ``T`` (age at the end of
        the period: end minus first purchase day), ``monetary_value`` (mean value of the repeat
        purchase days, 0 if none) and, with ``calibration_end``, ``frequency_holdout`` (purchase days
        in the holdout), ``monetary_value_holdout`` (their mean value, 0 if none) and
        ``duration_holdout``. ``attrs`` records ``time_unit``, ``observation_end`` and
        ``calibration_end``.

    Raises
    ------
    BadInputError
        Missing columns, unparseable or missing timestamps, negative or missing values, no
        purchases in the period, or a calibration end that is not before the observation end.
    """
    if time_unit not in _DAYS_PER_UNIT:
        raise BadInputError(f"time_unit must be one of {sorted(_DAYS_PER_UNIT)}, got {time_unit!r}")
    columns = [customer_col, time_col] + ([value_col] if value_col is not None else [])
    _require_columns(transactions, columns, "transactions")
    if transactions[customer_col].isna().any():
        raise BadInputError(
            f"column {customer_col!r} has {int(transactions[customer_col].isna().sum())} missing "
            "customer id(s)"
        )
    days, tz = _to_wall_time(transactions[time_col], time_col)
    frame = pd.DataFrame({"customer": transactions[customer_col].to_numpy(), "day": days.dt.normalize()})
    if value_col is not None:
        try:
            value = pd.to_numeric(transactions[value_col]).astype(float)
        except (ValueError, TypeError) as exc:
            raise BadInputError(f"column {value_col!r} must be numeric: {exc}") from None
        bad = ~np.isfinite(value.to_numpy())
        if bad.any():
            raise BadInputError(f"column {value_col!r} has {int(bad.sum())} missing or infinite value(s)")
        if (value < 0).any():
            raise BadInputError(
                f"column {value_col!r} has {int((value < 0).sum())} negative value(s); "
                "remove refunds or net them into their orders first"
            )
        frame["value"] = value.to_numpy()
    else:
        frame["value"] = 0.0

    end = _bound_day(observation_end, "observation_end", tz)
    cal_end = None if calibration_end is None else _bound_day(calibration_end, "calibration_end", tz)
    if cal_end is not None and cal_end >= end:
        raise BadInputError(
            f"calibration_end ({cal_end.date()}) must be before observation_end ({end.date()})"
        )
    split = end if cal_end is None else cal_end

    per_day = frame[frame["day"] <= end].groupby(["customer", "day"], sort=True)["value"].sum().reset_index()
    calib = per_day[per_day["day"] <= split]
    if calib.empty:
        first_seen = frame["day"].min().date() if len(frame) else None
        raise BadInputError(
            f"no purchases on or before {split.date()}"
            + (f"; the first purchase is on {first_seen}" if first_seen is not None else "; no rows")
        )
    unit_days = _DAYS_PER_UNIT[time_unit]
    grouped = calib.groupby("customer", sort=True)
    first = grouped["day"].min()
    last = grouped["day"].max()
    n_days = grouped["day"].size()
    total = grouped["value"].sum()
    first_value = calib.loc[grouped["day"].idxmin(), ["customer", "value"]].set_index("customer")["value"]
    frequency = (n_days - 1).astype(float)
    repeat_total = total - first_value
    monetary = (repeat_total / frequency.where(frequency > 0)).fillna(0.0)

    out = pd.DataFrame(
        {
            "frequency": frequency,
            "recency": (last - first).dt.days / unit_days,
            "T": (split - first).dt.days / unit_days,
        }
    )
    if value_col is not None:
        out["monetary_value"] = monetary
    if cal_end is not None:
        hold = per_day[(per_day["day"] > cal_end) & per_day["customer"].isin(out.index)]
        hold_grouped = hold.groupby("customer")
        out["frequency_holdout"] = hold_grouped["day"].size().reindex(out.index, fill_value=0).astype(float)
        if value_col is not None:
            out["monetary_value_holdout"] = hold_grouped["value"].mean().reindex(out.index).fillna(0.0)
        out["duration_holdout"] = (end - cal_end).days / unit_days
    out.index.name = customer_col
    out.attrs.update(
        time_unit=time_unit,
        observation_end=end,
        calibration_end=cal_end,
    )
    return out


# ---------------------------------------------------------------------------------------------------
# Shared fitting helpers
# ---------------------------------------------------------------------------------------------------


def _as_float_array(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=float)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"{name} must be numeric: {exc}") from None
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"{name} has {int((~np.isfinite(arr)).sum())} missing or infinite value(s)")
    if np.any(arr < 0):
        raise BadInputError(f"{name} has {int((arr < 0).sum())} negative value(s); expected >= 0")
    return arr


def _check_rft(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,  # noqa: N803
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    x = _as_float_array(frequency, "frequency")
    t_x = _as_float_array(recency, "recency")
    big_t = _as_float_array(T, "T")
    try:
        x, t_x, big_t = np.broadcast_arrays(x, t_x, big_t)
    except ValueError:
        raise BadInputError("frequency, recency and T must have the same length") from None
    if np.any(np.abs(x - np.round(x)) > 1e-9):
        raise BadInputError("frequency must hold whole numbers of repeat purchases")
    if np.any(t_x > big_t + 1e-9):
        raise BadInputError(
            f"recency is greater than T for {int((t_x > big_t + 1e-9).sum())} customer(s); recency is "
            "the age at the last purchase and cannot exceed the age at the end of the period"
        )
    if np.any((x == 0) & (t_x > 0)):
        raise BadInputError("recency must be 0 for customers with frequency 0 (no repeat purchase)")
    return x, t_x, big_t


def _numeric_hessian(fun: Callable[[NDArray[np.float64]], float], at: NDArray[np.float64]) -> NDArray:
    """Central-difference Hessian of ``fun`` at ``at``."""
    k = len(at)
    h = 1e-4 * np.maximum(1.0, np.abs(at))
    hess = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):

            def shifted(si: float, sj: float, i: int = i, j: int = j) -> float:
                p = at.copy()
                p[i] += si * h[i]
                p[j] += sj * h[j]
                return fun(p)

            value = (shifted(1, 1) - shifted(1, -1) - shifted(-1, 1) + shifted(-1, -1)) / (4 * h[i] * h[j])
            hess[i, j] = hess[j, i] = value
    return hess


def _fit_ml(
    model_name: str,
    names: list[str],
    neg_mean_ll: Callable[[NDArray[np.float64]], float],
    start: NDArray[np.float64],
    scales: NDArray[np.float64],
    penalizer_coef: float,
    n_weight: float,
    max_iter: int,
) -> tuple[NDArray[Any], NDArray[Any], optimize.OptimizeResult]:
    """Minimise the penalised mean negative log-likelihood over log-parameters.

    ``scales`` are the data's natural size of each parameter (1 for dimensionless ones); an estimate
    outside ``[1e-4, 1e5]`` times its scale means the likelihood has no interior maximum and the
    estimate is running off towards 0 or infinity. Returns the parameters, their covariance on the
    log scale (NaN if the Hessian is not positive definite) and the optimiser's result.
    """

    def objective(log_params: NDArray[np.float64]) -> float:
        if np.any(np.abs(log_params) > 2 * _LOG_BOUND):
            return np.inf
        value = neg_mean_ll(log_params) + penalizer_coef * float(np.sum(np.exp(log_params) ** 2))
        return value if np.isfinite(value) else np.inf

    res = optimize.minimize(
        objective,
        start,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * len(start),
        options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-9},
    )
    if not (res.success and np.isfinite(res.fun)):
        reason = str(res.message).rstrip(": ") or "no reason given"
        raise ConvergenceError(
            f"{model_name}: maximum likelihood did not converge ({reason}); "
            "try more data, a penalizer_coef such as 0.001, or a larger max_iter"
        )
    relative = np.exp(res.x) / scales
    degenerate = [
        f"{n} = {v:.3g}"
        for n, v, rel in zip(names, np.exp(res.x), relative, strict=True)
        if not _MIN_REL <= rel <= _MAX_REL
    ]
    if degenerate:
        raise ConvergenceError(
            f"{model_name}: the estimate(s) {', '.join(degenerate)} ran off towards 0 or infinity; the "
            "data do not identify the model (too few customers or repeat purchases?). A penalizer_coef "
            "such as 0.001 keeps the estimates finite"
        )
    hess = _numeric_hessian(objective, res.x) * n_weight
    try:
        cov = np.linalg.inv(hess)
        if np.any(np.diag(cov) <= 0) or not np.all(np.isfinite(cov)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        cov = np.full_like(hess, np.nan)
    return np.asarray(np.exp(res.x), dtype=float), cov, res


def _summary_table(params: dict[str, float], cov_log: NDArray[np.float64]) -> pd.DataFrame:
    est = np.array(list(params.values()))
    se_log = np.sqrt(np.diag(cov_log))
    return pd.DataFrame(
        {
            "estimate": est,
            "std_error": est * se_log,  # delta method
            "lower_95": est * np.exp(-1.96 * se_log),
            "upper_95": est * np.exp(1.96 * se_log),
        },
        index=pd.Index(list(params), name="parameter"),
    )


def _unique_rows(*columns: NDArray[np.float64], weights: NDArray[np.float64]) -> tuple[NDArray, ...]:
    """Collapse identical customers into one row with a summed weight (big logs repeat a lot)."""
    stacked = np.column_stack(columns)
    unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=weights, minlength=len(unique))
    return (*unique.T, summed)


def _weights(sample_weight: ArrayLike | None, n: int) -> NDArray[np.float64]:
    if sample_weight is None:
        return np.ones(n)
    w = _as_float_array(sample_weight, "sample_weight")
    if w.shape != (n,):
        raise BadInputError(f"sample_weight must have one value per customer ({n}), got shape {w.shape}")
    return w


# ---------------------------------------------------------------------------------------------------
# BG/NBD
# ---------------------------------------------------------------------------------------------------


class BetaGeoModel(BaseEstimator):
    """BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005), fitted by maximum likelihood.

    While alive, a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``; after
    each purchase they drop out with probability ``p ~ Beta(a, b)``. Rates are per time unit of the
    summary (``alpha`` scales with it; ``r``, ``a``, ``b`` do not).

    Parameters
    ----------
    penalizer_coef : float, default 0.0
        L2 penalty on the parameters added to the mean negative log-likelihood (as in lifetimes);
        a small value such as 0.001 keeps estimates finite on small or odd data.
    min_customers : int, default 10
        Fewer customers than this is refused as too little history.
    max_iter : int, default 1000
        Iteration limit of the optimiser.

    Attributes
    ----------
    params_ : dict
        ``{"r", "alpha", "a", "b"}``.
    log_likelihood_ : float
        Total (unpenalised) log-likelihood at the estimates.
    n_customers_, n_repeat_buyers_ : int
        Customers used in the fit, and those with at least one repeat purchase.
    time_unit_ : str or None
        The summary's ``attrs["time_unit"]`` if it had one.
    covariance_log_ : ndarray
        Covariance of the log-parameters (inverse Hessian), for :meth:`summary`.

    Examples
    --------
    >>> model = BetaGeoModel().fit(summary)  # doctest: +SKIP
    >>> model.expected_purchases(39, summary["frequency"], summary["recency"], summary["T"])  # doctest: +SKIP
    """

    _param_names = ("r", "alpha", "a", "b")

    def __init__(self, *, penalizer_coef: float = 0.0, min_customers: int = 10, max_iter: int = 1000) -> None:
        self.penalizer_coef = penalizer_coef
        self.min_customers = min_customers
        self.max_iter = max_iter

    # -- fitting ------------------------------------------------------------------------------------

    @staticmethod
    def _log_likelihood(
        log_params: NDArray[np.float64], x: NDArray, t_x: NDArray, big_t: NDArray
    ) -> NDArray[np.float64]:
        r, alpha, a, b = np.exp(log_params)
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.betaln(a, b + x) - special.betaln(a, b)
        a3 = -(r + x) * np.log(alpha + big_t)
        with np.errstate(divide="ignore", invalid="ignore"):
            a4 = np.where(
                x > 0,
                np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
                -np.inf,
            )
        return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=float)

    def fit(
        self,
        X: pd.DataFrame,  # noqa: N803
        y: None = None,
        *,
        sample_weight: ArrayLike | None = None,
    ) -> BetaGeoModel:
        """Fit on an RFM summary.

        Parameters
        ----------
        X : DataFrame
            With columns ``frequency``, ``recency`` and ``T`` (as from :func:`rfm_summary`).
        y : None
            Ignored.
        sample_weight : array-like, optional
            Number of customers each row stands for.

        Returns
        -------
        BetaGeoModel
            ``self``.
        """
        _require_columns(X, ["frequency", "recency", "T"], "the RFM summary")
        x, t_x, big_t = _check_rft(X["frequency"], X["recency"], X["T"])
        w = _weights(sample_weight, len(x))
        n = float(w.sum())
        if n < self.min_customers:
            raise BadInputError(
                f"BG/NBD needs at least {self.min_customers} customers, got {n:g}; "
                "collect more purchase history (or lower min_customers)"
            )
        n_repeat = float(w[x > 0].sum())
        if n_repeat == 0:
            raise BadInputError(
                f"BG/NBD needs repeat buyers (frequency > 0) to learn purchase and drop-out rates; "
                f"none of the {n:g} customers bought on more than one day"
            )
        if np.all(big_t == 0):
            raise BadInputError(
                "every customer has T = 0: the observation period ends on their first purchase"
            )
        ux, ut_x, ut, uw = _unique_rows(x, t_x, big_t, weights=w)

        def neg_mean_ll(log_params: NDArray[np.float64]) -> float:
            return -float(np.dot(uw, self._log_likelihood(log_params, ux, ut_x, ut))) / n

        # alpha scales with the time unit: start it (and judge it) against the mean age.
        mean_t = max(float(np.average(big_t, weights=w)), 1e-3)
        params, cov, res = _fit_ml(
            "BG/NBD",
            list(self._param_names),
            neg_mean_ll,
            start=np.log([1.0, mean_t, 1.0, 1.0]),
            scales=np.array([1.0, mean_t, 1.0, 1.0]),
            penalizer_coef=self.penalizer_coef,
            n_weight=n,
            max_iter=self.max_iter,
        )
        self.params_ = dict(zip(self._param_names, (float(p) for p in params), strict=True))
        self.log_likelihood_ = float(np.dot(uw, self._log_likelihood(np.log(params), ux, ut_x, ut)))
        self.covariance_log_ = cov
        self.n_customers_ = round(n)
        self.n_repeat_buyers_ = round(n_repeat)
        self.n_iter_ = int(res.nit)
        self.time_unit_ = X.attrs.get("time_unit")
        self.max_T_ = float(big_t.max())
        return self

    def _check_fitted(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "params_"):
            raise ModelNotFittedError(f"{type(self).__name__} is not fitted yet; call fit(summary) first")
        p = self.params_
        return p["r"], p["alpha"], p["a"], p["b"]

    # -- predictions --------------------------------------------------------------------------------

    def summary(self) -> pd.DataFrame:
        """Estimates with standard errors and 95% intervals (from the Hessian, on the log scale)."""
        self._check_fitted()
        return _summary_table(self.params_, self.covariance_log_)

    def p_alive(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,  # noqa: N803
    ) -> NDArray[np.float64]:
        """Probability that each customer is still active at the end of their observation period."""
        r, alpha, a, b = self._check_fitted()
        x, t_x, big_t = _check_rft(frequency, recency, T)
        return self._p_alive(x, t_x, big_t, r, alpha, a, b)

    @staticmethod
    def _p_alive(
        x: NDArray, t_x: NDArray, big_t: NDArray, r: float, alpha: float, a: float, b: float
    ) -> NDArray[np.float64]:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_odds_dead = (
                np.log(a)
                - np.log(np.maximum(b + x - 1, 1e-300))
                + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
            )
        return np.where(x > 0, special.expit(-log_odds_dead), 1.0)

    def expected_purchases(
        self,
        t: ArrayLike,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,  # noqa: N803
    ) -> NDArray[np.float64]:
        """Expected number of purchases in the next ``t`` time units, given each customer's history.

        Equation (10) of Fader, Hardie & Lee (2005), with the hypergeometric term rewritten by Euler's
        transformation, ``(1-z)^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z)``,
        so it stays finite for customers with many purchases.
        """
        r, alpha, a, b = self._check_fitted()
        x, t_x, big_t = _check_rft(frequency, recency, T)
        horizon = _as_float_array(t, "t")
        return self._conditional(horizon, x, t_x, big_t, r, alpha, a, b)

    def _conditional(
        self, t: NDArray, x: NDArray, t_x: NDArray, big_t: NDArray, r: float, alpha: float, a: float, b: float
    ) -> NDArray[np.float64]:
        am1 = a - 1 if abs(a - 1) > 1e-9 else 1e-9
        c = a + b + x - 1
        z = t / (alpha + big_t + t)
        with np.errstate(invalid="ignore", over="ignore"):  # (1 - z)^(a-1) x 2F1 at extreme parameters
            tail = (1 - z) ** am1 * special.hyp2f1(a + b - 1 - r, am1, c, z)
        out = c / am1 * (1 - tail) * self._p_alive(x, t_x, big_t, r, alpha, a, b)
        return np.asarray(out, dtype=float)

    def predict(self, X: pd.DataFrame, *, t: float = 1.0) -> NDArray[np.float64]:  # noqa: N803
        """Expected purchases in the next ``t`` time units for each row of an RFM summary."""
        self._check_fitted()
        _require_columns(X, ["frequency", "recency", "T"], "the RFM summary")
        return self.expected_purchases(t, X["frequency"], X["recency"], X["T"])

    def expected_purchases_new(self, t: ArrayLike) -> NDArray[np.float64]:
        """Expected number of repeat purchases in ``t`` time units by a customer just acquired (eq. 9)."""
        r, alpha, a, b = self._check_fitted()
        horizon = _as_float_array(t, "t")
        am1 = a - 1 if abs(a - 1) > 1e-9 else 1e-9
        z = horizon / (alpha + horizon)
        tail = (1 - z) ** am1 * special.hyp2f1(a + b - 1 - r, am1, a + b - 1, z)
        return np.asarray((a + b - 1) / am1 * (1 - tail), dtype=float)

    def expected_time_to_next_purchase(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,  # noqa: N803
        *,
        max_time: float | None = None,
    ) -> NDArray[np.float64]:
        """Time (in the summary's units) until a customer's expected number of purchases reaches 1.

        This is the ``t`` that solves ``expected_purchases(t, ...) = 1``, so it folds in the chance
        that the customer has left: a customer who is probably gone gets a long time or ``inf``.
        It is not the median gap between purchases of a customer known to be alive.

        Parameters
        ----------
        frequency, recency, T : array-like
            Each customer's RFM summary.
        max_time : float, optional
            Times beyond this are returned as ``inf`` ("not expected to buy again within it").
            Defaults to 10 years when the model knows its time unit, else 10 times the longest ``T``
            seen in ``fit``.

        Returns
        -------
        ndarray
            Add it to the end of the observation period to get an expected date of the next order
            (:meth:`expected_next_purchase_date` does that).
        """
        r, alpha, a, b = self._check_fitted()
        x, t_x, big_t = (np.atleast_1d(v) for v in _check_rft(frequency, recency, T))
        if max_time is None:
            unit = getattr(self, "time_unit_", None)
            max_time = (
                10 * _DAYS_PER_YEAR / _DAYS_PER_UNIT[unit] if unit in _DAYS_PER_UNIT else 10 * self.max_T_
            )
        if not max_time > 0:
            raise BadInputError(f"max_time must be > 0, got {max_time!r}")
        reachable = self._conditional(np.full(x.shape, float(max_time)), x, t_x, big_t, r, alpha, a, b) >= 1
        lo = np.full(x.shape, 1e-9 * max_time)
        hi = np.full(x.shape, float(max_time))
        for _ in range(80):  # bisection in log-time: relative precision far below 1e-6
            mid = np.sqrt(lo * hi)
            above = self._conditional(mid, x, t_x, big_t, r, alpha, a, b) >= 1
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        return np.where(reachable, hi, np.inf)

    def expected_next_purchase_date(self, summary: pd.DataFrame) -> pd.Series:
        """Expected date of each customer's next order: the period end plus
        :meth:`expected_time_to_next_purchase` (``NaT`` where that is infinite).

        ``summary`` must come from :func:`rfm_summary` (its ``attrs`` give the end and time unit).
        """
        _require_columns(summary, ["frequency", "recency", "T"], "the RFM summary")
        unit = summary.attrs.get("time_unit")
        end = summary.attrs.get("calibration_end") or summary.attrs.get("observation_end")
        if unit not in _DAYS_PER_UNIT or end is None:
            raise BadInputError(
                "the summary has no time_unit/observation_end attrs; build it with rfm_summary"
            )
        wait = self.expected_time_to_next_purchase(summary["frequency"], summary["recency"], summary["T"])
        days = np.where(np.isfinite(wait), wait * _DAYS_PER_UNIT[unit], np.nan)
        return pd.Series(
            (pd.Timestamp(end) + pd.to_timedelta(days, unit="D")).round("s"),
            index=summary.index,
            name="next_purchase",
        )


# ---------------------------------------------------------------------------------------------------
# Gamma-Gamma
# ---------------------------------------------------------------------------------------------------


class GammaGammaModel(BaseEstimator):
    """Gamma-Gamma model of the mean spend per purchase (Fader & Hardie 2013), fitted on repeat buyers.

    Each customer's purchase values are Gamma(p, nu) with ``nu ~ Gamma(q, gamma)`` across customers,
    so a customer's mean spend is shrunk from their observed mean towards the population mean
    ``p * gamma / (q - 1)`` the fewer purchases they made. It assumes spend is independent of
    purchase frequency; ``frequency_monetary_corr_`` lets you check.

    Parameters
    ----------
    penalizer_coef : float, default 0.0
        L2 penalty on the parameters added to the mean negative log-likelihood.
    min_customers : int, default 10
        Fewer repeat buyers than this is refused.
    max_iter : int, default 1000
        Iteration limit of the optimiser.

    Attributes
    ----------
    params_ : dict
        ``{"p", "q", "gamma"}`` (``gamma`` is lifetimes' ``v``).
    log_likelihood_ : float
        Total (unpenalised) log-likelihood over the repeat buyers.
    n_customers_ : int
        Repeat buyers used.
    population_mean_ : float
        Expected spend per purchase of a new customer, ``p * gamma / (q - 1)``.
    frequency_monetary_corr_ : float
        Pearson correlation between frequency and mean spend of the repeat buyers.
    """

    _param_names = ("p", "q", "gamma")

    def __init__(self, *, penalizer_coef: float = 0.0, min_customers: int = 10, max_iter: int = 1000) -> None:
        self.penalizer_coef = penalizer_coef
        self.min_customers = min_customers
        self.max_iter = max_iter

    @staticmethod
    def _log_likelihood(log_params: NDArray[np.float64], x: NDArray, m: NDArray) -> NDArray[np.float64]:
        p, q, gamma = np.exp(log_params)
        px = p * x
        return np.asarray(
            special.gammaln(px + q)
            - special.gammaln(px)
            - special.gammaln(q)
            + q * np.log(gamma)
            + (px - 1) * np.log(m)
            + px * np.log(x)
            - (px + q) * np.log(gamma + m * x),
            dtype=float,
        )

    def fit(
        self,
        X: pd.DataFrame,  # noqa: N803
        y: None = None,
        *,
        sample_weight: ArrayLike | None = None,
    ) -> GammaGammaModel:
        """Fit on an RFM summary; only customers with ``frequency > 0`` are used.

        Parameters
        ----------
        X : DataFrame
            With columns ``frequency`` and ``monetary_value`` (mean value of the repeat purchases).
        y : None
            Ignored.
        sample_weight : array-like, optional
            Number of customers each row stands for.

        Returns
        -------
        GammaGammaModel
            ``self``.
        """
        _require_columns(X, ["frequency", "monetary_value"], "the RFM summary")
        x = _as_float_array(X["frequency"], "frequency")
        m = _as_float_array(X["monetary_value"], "monetary_value")
        w = _weights(sample_weight, len(x))
        repeat = x > 0
        n = float(w[repeat].sum())
        if n < self.min_customers:
            raise BadInputError(
                f"Gamma-Gamma is fitted on repeat buyers (frequency > 0) and needs at least "
                f"{self.min_customers}; got {n:g} of {float(w.sum()):g} customers"
            )
        zero = repeat & (m <= 0)
        if zero.any():
            raise BadInputError(
                f"monetary_value must be > 0 for repeat buyers; {int(zero.sum())} have 0 "
                "(free orders only?); drop them or give their orders a value"
            )
        x, m, w = x[repeat], m[repeat], w[repeat]
        ux, um, uw = _unique_rows(x, m, weights=w)

        def neg_mean_ll(log_params: NDArray[np.float64]) -> float:
            return -float(np.dot(uw, self._log_likelihood(log_params, ux, um))) / n

        # gamma scales with the currency: start it (and judge it) against the mean spend.
        mean_m = max(float(np.average(m, weights=w)), 1e-6)
        params, cov, res = _fit_ml(
            "Gamma-Gamma",
            list(self._param_names),
            neg_mean_ll,
            start=np.log([1.0, 2.0, mean_m]),
            scales=np.array([1.0, 1.0, mean_m]),
            penalizer_coef=self.penalizer_coef,
            n_weight=n,
            max_iter=self.max_iter,
        )
        p, q, gamma = (float(v) for v in params)
        if q <= 1:
            raise ConvergenceError(
                f"Gamma-Gamma: fitted q = {q:.3g} <= 1, so the mean spend has no finite expectation; "
                "the spend data are too heavy-tailed or too few for this model"
            )
        self.params_ = {"p": p, "q": q, "gamma": gamma}
        self.log_likelihood_ = float(np.dot(uw, self._log_likelihood(np.log(params), ux, um)))
        self.covariance_log_ = cov
        self.n_customers_ = round(n)
        self.n_iter_ = int(res.nit)
        self.population_mean_ = p * gamma / (q - 1)
        self.frequency_monetary_corr_ = float(np.corrcoef(x, m)[0, 1]) if len(x) > 1 else float("nan")
        return self

    def _check_fitted(self) -> tuple[float, float, float]:
        if not hasattr(self, "params_"):
            raise ModelNotFittedError(f"{type(self).__name__} is not fitted yet; call fit(summary) first")
        return self.params_["p"], self.params_["q"], self.params_["gamma"]

    def summary(self) -> pd.DataFrame:
        """Estimates with standard errors and 95% intervals (from the Hessian, on the log scale)."""
        self._check_fitted()
        return _summary_table(self.params_, self.covariance_log_)

    def predict(self, X: pd.DataFrame) -> NDArray[np.float64]:  # noqa: N803
        """:meth:`conditional_expected_average_profit` for each row of an RFM summary."""
        self._check_fitted()
        _require_columns(X, ["frequency", "monetary_value"], "the RFM summary")
        return self.conditional_expected_average_profit(X["frequency"], X["monetary_value"])

    def conditional_expected_average_profit(
        self, frequency: ArrayLike, monetary_value: ArrayLike
    ) -> NDArray[np.float64]:
        """Expected mean spend per future purchase of each customer (eq. 5 of Fader & Hardie 2013).

        A weighted average of the population mean and the customer's observed mean, with weight
        ``p x / (p x + q - 1)`` on the latter; customers with ``frequency == 0`` get the population mean.
        """
        p, q, _ = self._check_fitted()
        x = _as_float_array(frequency, "frequency")
        m = _as_float_array(monetary_value, "monetary_value")
        weight = p * x / (p * x + q - 1)
        return np.asarray((1 - weight) * self.population_mean_ + weight * m, dtype=float)


# ---------------------------------------------------------------------------------------------------
# CLV
# ---------------------------------------------------------------------------------------------------


def customer_lifetime_value(
    bgnbd: BetaGeoModel,
    gg: GammaGammaModel,
    summary: pd.DataFrame,
    *,
    horizon: int = 12,
    freq: Literal["month", "week", "day"] = "month",
    time_unit: TimeUnit | None = None,
    discount_rate: float = 0.0,
) -> pd.Series:
    """Discounted expected value of each customer's purchases over the next ``horizon`` steps.

    As in lifetimes and PyMC-Marketing: for each step ``k = 1..horizon`` of length ``freq``, the
    expected purchases in that step (the difference of :meth:`BetaGeoModel.expected_purchases` at the
    step's end and start) times the Gamma-Gamma expected spend per purchase, discounted to the
    present at the step's end.

    Parameters
    ----------
    bgnbd, gg : fitted BetaGeoModel and GammaGammaModel
    summary : DataFrame
        ``frequency``, ``recency``, ``T`` and ``monetary_value`` per customer.
    horizon : int, default 12
        Number of steps.
    freq : {"month", "week", "day"}, default "month"
        Step length; a month is 365.25 / 12 days (lifetimes uses 30).
    time_unit : {"week", "day"}, optional
        Unit of the summary's times; defaults to ``summary.attrs["time_unit"]``, then to the unit the
        model was fitted in.
    discount_rate : float, default 0.0
        Annual discount rate (0.1 for 10% a year), compounded per step.

    Returns
    -------
    Series
        ``clv`` per customer, indexed like ``summary``.
    """
    _require_columns(summary, ["frequency", "recency", "T", "monetary_value"], "the RFM summary")
    unit = time_unit or summary.attrs.get("time_unit") or getattr(bgnbd, "time_unit_", None)
    if unit not in _DAYS_PER_UNIT:
        raise BadInputError(
            f"time_unit must be one of {sorted(_DAYS_PER_UNIT)} (the unit of the summary), got {unit!r}"
        )
    if freq not in _DAYS_PER_STEP:
        raise BadInputError(f"freq must be one of {sorted(_DAYS_PER_STEP)}, got {freq!r}")
    if isinstance(horizon, bool) or not float(horizon).is_integer() or horizon < 1:
        raise BadInputError(f"horizon must be a whole number of {freq}s >= 1, got {horizon!r}")
    if not np.isfinite(discount_rate) or discount_rate <= -1:
        raise BadInputError(
            f"discount_rate must be an annual rate above -1 (0.1 = 10%), got {discount_rate!r}"
        )
    fitted_unit = getattr(bgnbd, "time_unit_", None)
    if fitted_unit is not None and fitted_unit != unit:
        raise BadInputError(f"the BG/NBD model was fitted in {fitted_unit}s but the summary is in {unit}s")

    freq_ = summary["frequency"]
    value = gg.conditional_expected_average_profit(freq_, summary["monetary_value"])
    step = _DAYS_PER_STEP[freq] / _DAYS_PER_UNIT[unit]
    step_years = _DAYS_PER_STEP[freq] / _DAYS_PER_YEAR
    clv = np.zeros(len(summary))
    previous = np.zeros(len(summary))
    for k in range(1, int(horizon) + 1):
        current = bgnbd.expected_purchases(k * step, freq_, summary["recency"], summary["T"])
        clv += value * (current - previous) / (1 + discount_rate) ** (k * step_years)
        previous = current
    return pd.Series(clv, index=summary.index, name="clv")

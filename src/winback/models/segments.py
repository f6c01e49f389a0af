"""Customer segments: RFM scores with named segments, and k-means clusters with readable profiles.

RFM scores
----------
:func:`rfm_scores` gives every customer three quintile scores from 1 (worst) to 5 (best): ``R`` for
how recently they bought (more recent is better), ``F`` for how often and ``M`` for how much per
purchase. ``FM`` is the mean of ``F`` and ``M`` rounded half up, and the segment is read off this map
of ``R`` (rows) against ``FM`` (columns); every one of the 25 cells has exactly one segment:

====  =================  ==================  ==================  =================  =================
R     FM = 1             FM = 2              FM = 3              FM = 4             FM = 5
====  =================  ==================  ==================  =================  =================
5     new customers      potential loyalist  potential loyalist  champions          champions
4     promising          potential loyalist  potential loyalist  loyal              loyal
3     about to sleep     about to sleep      need attention      loyal              loyal
2     hibernating        hibernating         at risk             at risk            cannot lose them
1     lost               lost                at risk             at risk            cannot lose them
====  =================  ==================  ==================  =================  =================

It is the widely used R-by-F segment map (champions: bought recently, buy often, spend the most;
cannot lose them: used to buy often and much, but not for a long time; lost: lowest on all three),
with F and M averaged so that spend counts, and the low corner split into hibernating (R = 2) and
lost (R = 1).

Clusters
--------
:class:`CustomerClusters` runs k-means on standardised features (log-transformed first where they are
skewed, as spend and frequency are), picks the number of clusters by the silhouette score, and
describes each cluster in the features' own units with a short label such as
"frequent, high spend, recent".

Examples
--------
>>> import pandas as pd
>>> tx = pd.DataFrame({
...     "user_id": [1, 1, 1, 2, 3, 3, 4, 5, 5, 5, 5],
...     "timestamp": pd.to_datetime(["2024-01-02", "2024-02-01", "2024-03-30", "2024-01-05",
...                                  "2024-03-01", "2024-03-20", "2024-02-10", "2024-01-01",
...                                  "2024-02-01", "2024-03-01", "2024-03-31"]),
...     "value": [20, 30, 25, 5, 60, 40, 10, 80, 90, 70, 100],
... })
>>> rfm_scores(tx, observation_end="2024-03-31")[["R", "F", "M", "segment"]]  # doctest: +NORMALIZE_WHITESPACE
         R  F  M      segment
user_id
1        4  4  3        loyal
2        1  1  1         lost
3        3  3  4        loyal
4        2  1  2  hibernating
5        5  5  5    champions
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from winback.errors import BadInputError
from winback.models.clv import ModelNotFittedError, _bound_day, _require_columns, _to_wall_time

__all__ = ["DEFAULT_FEATURE_WORDS", "SEGMENTS", "SEGMENT_MAP", "CustomerClusters", "rfm_scores"]

SEGMENTS = (
    "champions",
    "loyal",
    "potential loyalist",
    "new customers",
    "promising",
    "need attention",
    "about to sleep",
    "at risk",
    "cannot lose them",
    "hibernating",
    "lost",
)

_ROWS: dict[int, tuple[str, str, str, str, str]] = {
    5: ("new customers", "potential loyalist", "potential loyalist", "champions", "champions"),
    4: ("promising", "potential loyalist", "potential loyalist", "loyal", "loyal"),
    3: ("about to sleep", "about to sleep", "need attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at risk", "at risk", "cannot lose them"),
    1: ("lost", "lost", "at risk", "at risk", "cannot lose them"),
}
#: ``(R, FM) -> segment`` for R and FM in 1..5 (the table in the module docstring).
SEGMENT_MAP: dict[tuple[int, int], str] = {
    (r, fm): name for r, row in _ROWS.items() for fm, name in enumerate(row, start=1)
}


def _quintile(values: pd.Series, *, higher_is_better: bool, ties: str) -> NDArray[np.int64]:
    """Scores 1..5 by rank: ``first`` gives equal-sized quintiles (ties broken by customer order),
    ``min`` gives tied customers the same (lowest) score."""
    n = len(values)
    keyed = values if higher_is_better else -values
    ranks = keyed.rank(method="first" if ties == "first" else "min").to_numpy()
    scores = np.ceil(5 * ranks / n) if ties == "first" else np.floor(5 * (ranks - 1) / n) + 1
    return np.clip(scores, 1, 5).astype(np.int64)


def _from_transactions(
    tx: pd.DataFrame, observation_end: Any, customer_col: str, time_col: str, value_col: str
) -> pd.DataFrame:
    _require_columns(tx, [customer_col, time_col, value_col], "transactions")
    if tx[customer_col].isna().any():
        raise BadInputError(f"column {customer_col!r} has missing customer id(s)")
    wall, tz = _to_wall_time(tx[time_col], time_col)
    try:
        value = pd.to_numeric(tx[value_col]).astype(float).to_numpy()
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"column {value_col!r} must be numeric: {exc}") from None
    if not np.all(np.isfinite(value)):
        raise BadInputError(f"column {value_col!r} has missing or infinite values")
    if np.any(value < 0):
        raise BadInputError(f"column {value_col!r} has {int((value < 0).sum())} negative value(s)")
    frame = pd.DataFrame(
        {"customer": tx[customer_col].to_numpy(), "day": wall.dt.normalize(), "value": value}
    )
    end = (
        frame["day"].max() if observation_end is None else _bound_day(observation_end, "observation_end", tz)
    )
    frame = frame[frame["day"] <= end]
    if frame.empty:
        raise BadInputError(f"no purchases on or before {pd.Timestamp(end).date()}")
    per_day = frame.groupby(["customer", "day"])["value"].sum().reset_index()
    grouped = per_day.groupby("customer", sort=True)
    n_days = grouped["day"].size()
    out = pd.DataFrame(
        {
            "since_last_purchase": (end - grouped["day"].max()).dt.days.astype(float),
            "frequency": n_days.astype(float),
            "monetary": grouped["value"].sum() / n_days,
        }
    )
    out.index.name = customer_col
    out.attrs["time_unit"] = "day"
    return out


def rfm_scores(
    data: pd.DataFrame,
    *,
    observation_end: Any = None,
    customer_col: str = "user_id",
    time_col: str = "timestamp",
    value_col: str = "value",
    ties: Literal["first", "min"] = "min",
) -> pd.DataFrame:
    """Quintile R, F, M scores and the named segment of every customer.

    Parameters
    ----------
    data : DataFrame
        Either a transaction log (``customer_col``, ``time_col``, ``value_col``; orders on one day count
        as one purchase) or an RFM summary from :func:`winback.models.clv.rfm_summary` (columns
        ``frequency``, ``recency``, ``T``, ``monetary_value``). From a summary, recency is ``T -
        recency`` in the summary's unit, frequency counts all purchases (``frequency + 1``) and
        monetary is the summary's mean repeat purchase value, so one-time buyers score M = 1; from
        transactions monetary is the mean value of all purchase days.
    observation_end : date-like, optional
        For transactions: the day recency is measured to (default: the last purchase day in the data).
    customer_col, time_col, value_col : str
        Column names for transactions.
    ties : {"min", "first"}, default "min"
        ``min``: tied customers share the lowest score of their tie, so identical customers always get
        the same scores and segment; quintiles can then be uneven or skip a score (in CDNOW half the
        customers bought once: they all get F = 1 and the next frequency gets F = 3).
        ``first``: exactly equal-sized quintiles, ties split by customer order (deterministic, but two
        identical customers can land in different segments).

    Returns
    -------
    DataFrame
        Indexed by customer: ``since_last_purchase``, ``frequency``, ``monetary``, ``R``, ``F``, ``M``
        (ints 1..5), ``FM``, ``RFM`` (like ``"545"``) and ``segment`` (one of :data:`SEGMENTS`, an
        ordered categorical).
    """
    if ties not in ("first", "min"):
        raise BadInputError(f"ties must be 'first' or 'min', got {ties!r}")
    if not isinstance(data, pd.DataFrame):
        raise BadInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    summary_cols = {"frequency", "recency", "T"}
    if summary_cols <= set(data.columns):
        _require_columns(data, ["frequency", "recency", "T", "monetary_value"], "the RFM summary")
        numeric = data[["frequency", "recency", "T", "monetary_value"]].apply(pd.to_numeric, errors="coerce")
        if not np.all(np.isfinite(numeric.to_numpy(dtype=float))):
            raise BadInputError("the RFM summary has missing or non-numeric values")
        if (numeric < 0).to_numpy().any():
            raise BadInputError("the RFM summary has negative values")
        base = pd.DataFrame(
            {
                "since_last_purchase": numeric["T"] - numeric["recency"],
                "frequency": numeric["frequency"] + 1,
                "monetary": numeric["monetary_value"],
            },
            index=data.index,
        ).sort_index()
        base.attrs["time_unit"] = data.attrs.get("time_unit")
    else:
        base = _from_transactions(data, observation_end, customer_col, time_col, value_col)
    if len(base) < 5:
        raise BadInputError(f"RFM quintiles need at least 5 customers, got {len(base)}")

    out = base.copy()
    out["R"] = _quintile(base["since_last_purchase"], higher_is_better=False, ties=ties)
    out["F"] = _quintile(base["frequency"], higher_is_better=True, ties=ties)
    out["M"] = _quintile(base["monetary"], higher_is_better=True, ties=ties)
    out["FM"] = np.floor((out["F"] + out["M"]) / 2 + 0.5).astype(np.int64)
    out["RFM"] = out["R"].astype(str) + out["F"].astype(str) + out["M"].astype(str)
    segment = [SEGMENT_MAP[(r, fm)] for r, fm in zip(out["R"], out["FM"], strict=True)]
    out["segment"] = pd.Categorical(segment, categories=list(SEGMENTS), ordered=True)
    return out


# ---------------------------------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------------------------------

#: Words for the low and high end of features that commonly describe customers.
DEFAULT_FEATURE_WORDS: dict[str, tuple[str, str]] = {
    "frequency": ("infrequent", "frequent"),
    "monetary": ("low spend", "high spend"),
    "monetary_value": ("low spend", "high spend"),
    "since_last_purchase": ("recent", "lapsed"),
    "days_since_last_purchase": ("recent", "lapsed"),
    "T": ("new", "long-standing"),
    "tenure": ("new", "long-standing"),
}


class CustomerClusters(ClusterMixin, BaseEstimator):
    """k-means on standardised customer features, k chosen by silhouette, with a readable profile.

    Parameters
    ----------
    n_clusters : int, optional
        Fix k instead of choosing it.
    k_min, k_max : int, default 2 and 8
        Range of k tried when ``n_clusters`` is None (capped below the number of distinct rows).
    log_transform : "auto", list of str or None, default "auto"
        Features to ``log1p`` before scaling. ``"auto"``: non-negative features with skewness > 1.
    silhouette_sample_size : int, default 3000
        Customers sampled (with ``random_state``) to compute each silhouette score.
    n_init : int, default 4
        k-means restarts per k.
    random_state : int, default 0
        Seed for k-means and the silhouette sample.
    feature_words : dict, optional
        ``{feature: (low word, high word)}`` for the labels, merged over
        :data:`DEFAULT_FEATURE_WORDS`; other features read "low X" / "high X".

    Attributes
    ----------
    n_clusters_ : int
        The k used.
    silhouette_scores_ : dict
        ``{k: silhouette}`` for every k tried.
    features_ : list of str
        Feature columns, in order.
    log_features_ : list of str
        Features that were log-transformed.
    labels_ : ndarray
        Cluster of each training row; clusters are numbered by size, 0 the largest.
    profile_ : DataFrame
        Per cluster: ``size``, ``share``, the mean of each feature in its own units, and ``label``.
    """

    def __init__(
        self,
        *,
        n_clusters: int | None = None,
        k_min: int = 2,
        k_max: int = 8,
        log_transform: Literal["auto"] | list[str] | None = "auto",
        silhouette_sample_size: int = 3000,
        n_init: int = 4,
        random_state: int = 0,
        feature_words: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.k_min = k_min
        self.k_max = k_max
        self.log_transform = log_transform
        self.silhouette_sample_size = silhouette_sample_size
        self.n_init = n_init
        self.random_state = random_state
        self.feature_words = feature_words

    def _matrix(self, X: pd.DataFrame, features: list[str]) -> NDArray[np.float64]:  # noqa: N803
        _require_columns(X, features, "the customer features")
        bad = [
            c for c in features if not pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c])
        ]
        if bad:
            raise BadInputError(f"feature column(s) {', '.join(map(repr, bad))} must be numeric")
        values = X[features].to_numpy(dtype=float)
        if not np.all(np.isfinite(values)):
            cols = [c for c, ok in zip(features, np.isfinite(values).all(axis=0), strict=True) if not ok]
            raise BadInputError(
                f"feature column(s) {', '.join(map(repr, cols))} have missing or infinite values"
            )
        return values

    def _transform(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        out = values.copy()
        for j, name in enumerate(self.features_):
            if name in self.log_features_:
                if np.any(out[:, j] < 0):
                    raise BadInputError(f"feature {name!r} was log-transformed in fit and cannot be negative")
                out[:, j] = np.log1p(out[:, j])
        return np.asarray(self.scaler_.transform(out), dtype=float)

    def fit(self, X: pd.DataFrame, y: None = None) -> CustomerClusters:  # noqa: N803
        """Choose k, fit k-means and build the profile.

        Parameters
        ----------
        X : DataFrame
            One row per customer, numeric feature columns only (e.g. ``since_last_purchase``,
            ``frequency``, ``monetary`` from :func:`rfm_scores`).
        y : None
            Ignored.

        Returns
        -------
        CustomerClusters
            ``self``.
        """
        if not isinstance(X, pd.DataFrame):
            raise BadInputError(f"the customer features must be a pandas DataFrame, got {type(X).__name__}")
        if X.shape[1] == 0:
            raise BadInputError("the customer features have no columns")
        features = [str(c) for c in X.columns]
        values = self._matrix(X, features)
        if self.log_transform == "auto":
            skew = stats.skew(values, axis=0) if len(values) > 2 else np.zeros(len(features))
            logged = [
                f for j, f in enumerate(features) if values[:, j].min() >= 0 and np.nan_to_num(skew[j]) > 1
            ]
        elif self.log_transform is None:
            logged = []
        else:
            unknown = [f for f in self.log_transform if f not in features]
            if unknown:
                raise BadInputError(f"log_transform names unknown feature(s) {', '.join(map(repr, unknown))}")
            logged = list(self.log_transform)
        self.features_ = features
        self.log_features_ = logged
        raw = values.copy()
        for j, f in enumerate(features):
            if f in logged:
                if np.any(values[:, j] < 0):
                    raise BadInputError(f"feature {f!r} has negative values and cannot be log-transformed")
                raw[:, j] = np.log1p(values[:, j])
        self.scaler_ = StandardScaler().fit(raw)
        z = np.asarray(self.scaler_.transform(raw), dtype=float)

        distinct = len(np.unique(np.round(z, 12), axis=0))
        if self.n_clusters is not None:
            ks = [int(self.n_clusters)]
            if ks[0] < 1 or ks[0] > distinct:
                raise BadInputError(
                    f"n_clusters must be between 1 and {distinct} (distinct customers), got {ks[0]}"
                )
        else:
            if not 2 <= self.k_min <= self.k_max:
                raise BadInputError(f"need 2 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
            top = min(self.k_max, distinct - 1)
            if top < self.k_min:
                raise BadInputError(
                    f"choosing k in {self.k_min}..{self.k_max} by silhouette needs more than {self.k_min} "
                    f"distinct customers; got {distinct} (of {len(z)} rows)"
                )
            ks = list(range(self.k_min, top + 1))

        scores: dict[int, float] = {}
        fits: dict[int, KMeans] = {}
        sample = min(self.silhouette_sample_size, len(z))
        for k in ks:
            km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state).fit(z)
            fits[k] = km
            if k > 1:
                scores[k] = float(
                    silhouette_score(z, km.labels_, sample_size=sample, random_state=self.random_state)
                )
        best = max(scores, key=lambda k: scores[k]) if scores else ks[0]
        km = fits[best]
        sizes = np.bincount(km.labels_, minlength=best)
        order = np.argsort(-sizes, kind="stable")  # new id i is old cluster order[i]
        self.relabel_ = np.empty(best, dtype=np.int64)
        self.relabel_[order] = np.arange(best)
        self.kmeans_ = km
        self.n_clusters_ = best
        self.silhouette_scores_ = scores
        self.labels_ = self.relabel_[km.labels_]
        self.profile_ = self._profile(values, z)
        return self

    def _profile(self, values: NDArray[np.float64], z: NDArray[np.float64]) -> pd.DataFrame:
        words = {**DEFAULT_FEATURE_WORDS, **(self.feature_words or {})}
        rows = []
        for c in range(self.n_clusters_):
            member = self.labels_ == c
            row: dict[str, Any] = {"size": int(member.sum()), "share": float(member.mean())}
            row.update({f: float(values[member, j].mean()) for j, f in enumerate(self.features_)})
            centre = z[member].mean(axis=0)
            notable = [j for j in np.argsort(-np.abs(centre), kind="stable") if abs(centre[j]) >= 0.5][:3]
            parts = []
            for j in notable:
                low, high = words.get(
                    self.features_[j], (f"low {self.features_[j]}", f"high {self.features_[j]}")
                )
                parts.append(high if centre[j] > 0 else low)
            row["label"] = ", ".join(parts) if parts else "typical"
            rows.append(row)
        profile = pd.DataFrame(rows)
        profile.index.name = "cluster"
        return profile

    def predict(self, X: pd.DataFrame) -> NDArray[np.int64]:  # noqa: N803
        """Cluster of each row of ``X`` (same feature columns as in ``fit``)."""
        if not hasattr(self, "kmeans_"):
            raise ModelNotFittedError("CustomerClusters is not fitted yet; call fit(features) first")
        if not isinstance(X, pd.DataFrame):
            raise BadInputError(f"the customer features must be a pandas DataFrame, got {type(X).__name__}")
        z = self._transform(self._matrix(X, self.features_))
        return np.asarray(self.relabel_[self.kmeans_.predict(z)], dtype=np.int64)

"""Repeat purchases: the products a customer is due to buy again, from their own rhythm.

Where customers buy the same items again (groceries, cosmetics, pet food), the best thing to show a
returning customer is often what they are about to run out of. :class:`RepeatPurchases` learns which
products are bought again (*replenishable*: enough of their buyers bought them on two or more distinct
days) and how often, then scores each replenishable product a customer bought by how close the time
since their last purchase is to their usual interval (the product's usual interval if they bought it
only once).

Purchases on the same day count once (one basket); days are UTC days of ``ts // 86400``, as in
:class:`~winback.recommend.sources.BasketRules`. Intervals are whole days between distinct purchase
days, so a basket split over midnight does not look like a one-minute rhythm.

>>> import pandas as pd
>>> from winback.recommend.interactions import with_weights
>>> DAY = 86_400.0
>>> frame = with_weights(pd.DataFrame({
...     "user_key": ["u1"] * 3 + ["u2"] * 2 + ["u3"], "product_id": ["food"] * 6,
...     "ts": [0.0, 10 * DAY, 20 * DAY, 0.0, 12 * DAY, 5 * DAY], "kind": ["purchase"] * 6}))
>>> model = RepeatPurchases(min_buyers=3).fit(frame)
>>> model.due("u1", now=30 * DAY, k=1)
[Candidate(product_id='food', score=0.75, reason='bought every ~10 days, last 10 days ago: due again')]
>>> model.due("zzz", now=30 * DAY).reason
'unknown customer zzz: no purchases yet (cold start)'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from winback.errors import BadInputError
from winback.recommend.interactions import check_interactions
from winback.recommend.sources import Candidate, Candidates, check_k

DAY_SECONDS = 86_400.0

#: Columns of :attr:`RepeatPurchases.purchases_` (one row per customer and product bought).
PURCHASE_COLUMNS = (
    "user_key",
    "product_id",
    "purchase_days",
    "last_ts",
    "own_interval_days",
    "interval_days",
)

#: Columns of :attr:`RepeatPurchases.products_` (one row per product bought, indexed by product_id).
PRODUCT_COLUMNS = ("buyers", "repeat_buyers", "repeat_share", "median_interval_days", "replenishable")


@dataclass(frozen=True)
class _UserArrays:
    """One customer's replenishable purchases as arrays, so a query touches no pandas."""

    products: np.ndarray  # product ids (object)
    last_ts: np.ndarray  # float seconds
    interval_days: np.ndarray  # float days: own median interval, else the product's
    own: np.ndarray  # bool: interval_days is the customer's own
    confidence: np.ndarray  # float in (0, 1): n / (n + 1) for n distinct purchase days


class RepeatPurchases:
    """Products a customer is due to buy again.

    A customer's score for a replenishable product they bought is
    ``exp(-0.5 * (ln(elapsed / interval) / spread) ** 2) * n / (n + 1)``: the log-normal-shaped kernel
    peaks at 1 when the time since their last purchase equals their interval and falls as fast for
    "far too early" as for "far too late" (half the interval scores as twice the interval); ``n / (n + 1)``
    (n distinct purchase days) trusts a rhythm seen many times more than one read off the product.

    Parameters
    ----------
    min_repeat_share
        Share of a product's buyers who must have bought it on two or more distinct days for it to be
        replenishable.
    min_buyers
        Minimum number of buyers of a product before its repeat share is trusted.
    spread
        Width of the kernel in log-time: at ``elapsed / interval = exp(spread)`` (about 1.65 for 0.5)
        the kernel is ``exp(-0.5)``, about 0.61.

    Attributes
    ----------
    products_ : DataFrame indexed by product_id (buyers, repeat_buyers, repeat_share,
        median_interval_days, replenishable); median_interval_days is the median over its repeat buyers
        of each one's median interval (NaN if nobody bought it twice)
    replenishable_ : DataFrame, the replenishable rows of ``products_``
    purchases_ : DataFrame (user_key, product_id, purchase_days, last_ts, own_interval_days,
        interval_days): per customer and product bought, the distinct purchase days, the last purchase
        (epoch seconds), the customer's own median interval (NaN if bought on one day only) and the
        interval used (their own, else the product's)
    """

    def __init__(self, min_repeat_share: float = 0.1, min_buyers: int = 3, spread: float = 0.5) -> None:
        self.min_repeat_share = min_repeat_share
        self.min_buyers = min_buyers
        self.spread = spread

    def fit(self, interactions: pd.DataFrame) -> RepeatPurchases:
        """Learn the replenishable products and every customer's rhythm from the purchases in
        ``interactions`` (see :mod:`.interactions`; views and carts are ignored)."""
        self._check_parameters()
        self._days = _purchase_days(check_interactions(interactions))
        pairs = _pair_stats(self._days)
        self.products_ = self._product_stats(pairs)
        self.replenishable_ = self.products_[self.products_["replenishable"]]
        self._replenishable = set(self.replenishable_.index.astype(str))
        self.purchases_ = _with_interval(pairs, self.products_)
        self._users: dict[str, _UserArrays] = {}
        self._buyers: set[str] = set()
        self._index_users(self.purchases_)
        return self

    def learn_new(self, interactions: pd.DataFrame) -> RepeatPurchases:
        """Fold in new purchases without refitting everything.

        Only the products bought in ``interactions`` change their statistics, and with them the rows of
        every customer who bought one of those products (the interval of a customer who bought once is
        the product's). Those are recomputed from all their purchase days; the rest is kept. The result
        equals a fit on all interactions.
        """
        frame = check_interactions(interactions)
        if not hasattr(self, "products_"):
            return self.fit(frame)
        self._check_parameters()
        new_days = _purchase_days(frame)
        if new_days.empty:
            return self
        touched = new_days["product_id"].unique()
        was_touched = self._days["product_id"].isin(touched)
        changed = _distinct_days(pd.concat([self._days[was_touched], new_days], ignore_index=True))
        self._days = pd.concat([self._days[~was_touched], changed], ignore_index=True)
        pairs = _pair_stats(changed)
        products = self._product_stats(pairs)
        kept = self.products_[~self.products_.index.isin(touched)]
        self.products_ = pd.concat([kept, products]).sort_index()
        self.replenishable_ = self.products_[self.products_["replenishable"]]
        self._replenishable = set(self.replenishable_.index.astype(str))
        rows = _with_interval(pairs, self.products_)
        others = self.purchases_[~self.purchases_["product_id"].isin(touched)]
        self.purchases_ = _sorted_purchases(pd.concat([others, rows], ignore_index=True))
        affected = rows["user_key"].unique()
        self._index_users(self.purchases_[self.purchases_["user_key"].isin(affected)])
        return self

    partial_fit = learn_new

    def is_replenishable(self, product_id: str) -> bool:
        """Whether ``product_id`` is bought again often enough to be worth reminding of."""
        return str(product_id) in self._replenishable

    def due(self, user_key: str, now: float, k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """The ``k`` replenishable products ``user_key`` bought, the most due at ``now`` (epoch
        seconds) first; ``exclude`` is left out."""
        k = check_k(k)
        if isinstance(now, bool) or not isinstance(now, int | float | np.integer | np.floating):
            raise BadInputError(f"now {now!r}: expected epoch seconds (a number)")
        moment = float(now)
        if not math.isfinite(moment):
            raise BadInputError(f"now {now!r}: expected finite epoch seconds")
        u = str(user_key)
        if u not in self._buyers:
            return Candidates(reason=f"unknown customer {u}: no purchases yet (cold start)")
        arrays = self._users.get(u)
        if arrays is None:
            return Candidates(reason=f"customer {u} bought nothing that customers buy again regularly")
        eligible = np.ones(arrays.products.size, dtype=bool)
        skip = {str(p) for p in exclude}
        if skip:
            eligible = np.fromiter((p not in skip for p in arrays.products), bool, arrays.products.size)
            if not eligible.any():
                return Candidates(reason=f"every product customer {u} buys again is excluded")
        elapsed = (moment - arrays.last_ts) / DAY_SECONDS
        scores = _kernel(elapsed / arrays.interval_days, self.spread) * arrays.confidence
        scores = np.round(scores, 6)
        candidates = np.flatnonzero(eligible & (scores > 0))
        if not candidates.size:
            late = elapsed[eligible] > arrays.interval_days[eligible]
            when = "long overdue or not due yet"
            if late.all():
                when = "long overdue"
            elif not late.any():
                when = "not due yet"
            return Candidates(reason=f"everything customer {u} buys again is {when}")
        order = candidates[np.lexsort((arrays.products[candidates], -scores[candidates]))][:k]
        return Candidates(
            Candidate(
                str(arrays.products[j]),
                float(scores[j]),
                _reason(float(elapsed[j]), float(arrays.interval_days[j]), bool(arrays.own[j])),
            )
            for j in order
        )

    def _check_parameters(self) -> None:
        if not 0 <= self.min_repeat_share <= 1:
            raise BadInputError(f"min_repeat_share {self.min_repeat_share!r}: expected a share from 0 to 1")
        if isinstance(self.min_buyers, bool) or not isinstance(self.min_buyers, int) or self.min_buyers < 1:
            raise BadInputError(f"min_buyers {self.min_buyers!r}: expected an integer >= 1")
        if not self.spread > 0:
            raise BadInputError(f"spread {self.spread!r}: expected a number > 0")

    def _product_stats(self, pairs: pd.DataFrame) -> pd.DataFrame:
        grouped = pairs.groupby("product_id", sort=True)
        products = pd.DataFrame(
            {
                "buyers": grouped.size(),
                "repeat_buyers": (pairs["purchase_days"] >= 2).groupby(pairs["product_id"], sort=True).sum(),
                "median_interval_days": grouped["own_interval_days"].median(),
            }
        )
        products.index.name = "product_id"
        products["buyers"] = products["buyers"].astype("int64")
        products["repeat_buyers"] = products["repeat_buyers"].astype("int64")
        products["repeat_share"] = products["repeat_buyers"] / products["buyers"]
        products["median_interval_days"] = products["median_interval_days"].astype("float64")
        products["replenishable"] = (
            (products["buyers"] >= self.min_buyers)
            & (products["repeat_share"] >= self.min_repeat_share)
            & (products["repeat_buyers"] >= 1)
        )
        return products[list(PRODUCT_COLUMNS)]

    def _index_users(self, purchases: pd.DataFrame) -> None:
        """(Re)build the query arrays of the customers in ``purchases`` (all their rows, sorted by user)."""
        users = purchases["user_key"].unique().tolist()
        self._buyers.update(users)
        for u in users:
            self._users.pop(u, None)
        rows = purchases[purchases["product_id"].isin(self.replenishable_.index)]
        keys = rows["user_key"].to_numpy(dtype=object)
        if not keys.size:
            return
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], keys.size]
        products = rows["product_id"].to_numpy(dtype=object)
        last_ts = rows["last_ts"].to_numpy(float)
        interval = rows["interval_days"].to_numpy(float)
        own = rows["own_interval_days"].notna().to_numpy()
        n = rows["purchase_days"].to_numpy(float)
        confidence = n / (n + 1)
        for a, b in zip(starts, ends, strict=True):
            self._users[str(keys[a])] = _UserArrays(
                products[a:b], last_ts[a:b], interval[a:b], own[a:b], confidence[a:b]
            )


def _purchase_days(frame: pd.DataFrame) -> pd.DataFrame:
    """Distinct (user, product, day) purchases with the last moment of that day, sorted."""
    bought = frame[frame["kind"] == "purchase"]
    ts = pd.to_numeric(bought["ts"], errors="coerce").astype("float64")
    if ts.isna().any():
        row = ts.index[ts.isna()][0]
        raise BadInputError(f"interactions column 'ts', row {row}: expected epoch seconds (a number)")
    days = pd.DataFrame(
        {
            "user_key": bought["user_key"].astype(str).to_numpy(),
            "product_id": bought["product_id"].astype(str).to_numpy(),
            "day": np.floor(ts.to_numpy() / DAY_SECONDS).astype("int64"),
            "last_ts": ts.to_numpy(),
        }
    )
    return _distinct_days(days)


def _distinct_days(days: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, product, day), sorted by them, with the day's last purchase moment."""
    return days.groupby(["user_key", "product_id", "day"], sort=True)["last_ts"].max().reset_index()


def _pair_stats(days: pd.DataFrame) -> pd.DataFrame:
    """Per (user, product): distinct purchase days, last purchase, median interval between them.

    ``days`` must be sorted by user, product and day (as :func:`_distinct_days` returns it)."""
    same_pair = (days["user_key"] == days["user_key"].shift()) & (
        days["product_id"] == days["product_id"].shift()
    )
    gaps = days["day"].diff().where(same_pair).astype("float64")
    grouped = days.assign(gap=gaps).groupby(["user_key", "product_id"], sort=True)
    pairs = grouped.agg(
        purchase_days=("day", "size"), last_ts=("last_ts", "max"), own_interval_days=("gap", "median")
    ).reset_index()
    pairs["purchase_days"] = pairs["purchase_days"].astype("int64")
    pairs["own_interval_days"] = pairs["own_interval_days"].astype("float64")
    return pairs


def _with_interval(pairs: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` plus the interval to expect: the customer's own, else the product's median."""
    fallback = pairs["product_id"].map(products["median_interval_days"]).astype("float64")
    out = pairs.assign(interval_days=pairs["own_interval_days"].fillna(fallback))
    return _sorted_purchases(out)


def _sorted_purchases(purchases: pd.DataFrame) -> pd.DataFrame:
    ordered = purchases.sort_values(["user_key", "product_id"], kind="stable")
    ordered = ordered.astype({"user_key": "str", "product_id": "str"})  # also when empty
    return ordered[list(PURCHASE_COLUMNS)].reset_index(drop=True)


def _kernel(ratio: np.ndarray, spread: float) -> np.ndarray:
    """``exp(-0.5 * (ln(ratio) / spread) ** 2)``, 0 where ``ratio <= 0`` (not yet bought, or just now)."""
    out = np.zeros_like(ratio, dtype=float)
    positive = ratio > 0
    out[positive] = np.exp(-0.5 * (np.log(ratio[positive]) / spread) ** 2)
    return out


def _days(n: float) -> str:
    whole = round(n)
    return "1 day" if whole == 1 else f"{whole} days"


def _reason(elapsed: float, interval: float, own: bool) -> str:
    ago = "today" if round(elapsed) == 0 else f"{_days(elapsed)} ago"
    every = "every day" if round(interval) <= 1 else f"every ~{_days(interval)}"
    left = round(interval - elapsed)
    when = "due again" if left <= 0 else f"due in {_days(left)}"
    if own:
        return f"bought {every}, last {ago}: {when}"
    return f"bought once, {ago}; its buyers buy it again {every}: {when}"

"""Category affinity: the popular products of the categories a customer browses, in proportion.

A customer's interest in a category is the number of their visits spent on it (each visit counts 1,
shared out by its interactions' categories: a visit's views cluster on one category, so counting views
would count one choice many times), smoothed towards the shop's own mix (``prior`` pseudo-visits), so a
customer seen twice is not locked into two categories.
A product's score is that share times the product's share of its category's interactions. This is the
"popular in what you browse" list shops show.

Within a category, customers buy at their own price level (the price-sensitive cheaper), so where
prices are known the product's share is re-weighted for the customer: a product's *price level* is
``ln(price / median price of its category)``; the customer's is the mean level of the products they
interacted with, shrunk towards the shop's mean by ``price_prior`` pseudo-interactions; the weight is
``g(product level - customer level) / mean g over the category's interactions``, ``g`` a Gaussian whose
width is the spread of customers' own levels around their means (learnt from the data). Dividing by the
category's mean weight keeps a product's share what it is for the average customer, so a customer with
no history, or a shop without prices, gets the plain popular list.

>>> import pandas as pd
>>> from winback.recommend.interactions import with_weights
>>> frame = with_weights(pd.DataFrame({
...     "user_key": ["u1", "u2", "u2", "u3"], "product_id": ["a", "a", "b", "c"],
...     "ts": [0.0, 1.0, 2.0, 3.0], "kind": ["view"] * 4, "category": ["x", "x", "x", "y"]}))
>>> CategoryAffinity(prior=0.0).fit(frame).for_user("u3", k=2)[0].reason
'popular in y, which you browse'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from winback.errors import BadInputError
from winback.recommend.interactions import check_interactions
from winback.recommend.sources import MAX_K, Candidate, Candidates, _factorised, check_k

#: Category of products whose category is unknown.
UNKNOWN_CATEGORY = "(no category)"


class CategoryAffinity:
    """Per-customer category shares times within-category popularity.

    Parameters
    ----------
    prior
        Pseudo-visits, spread as the shop's category mix, added to each customer's own.
    depth
        Products kept per category (the most popular ones): a list never needs more.
    price_prior
        Pseudo-interactions at the shop's mean price level added to a customer's own (0: no
        shrinkage); ``None`` turns the price-level weighting off.

    Attributes
    ----------
    categories_ : ndarray of category names
    shop_share_ : ndarray, each category's share of all interactions
    top_products_ : ndarray (categories x depth) of product ids, padded with ""
    top_share_ : ndarray (categories x depth), each product's share of its category, padded with 0
    price_width_ : float or None, the width of the price-level weight (None: no prices known)
    """

    def __init__(self, prior: float = 4.0, depth: int = 50, price_prior: float | None = 5.0) -> None:
        self.prior = prior
        self.depth = depth
        self.price_prior = price_prior

    def fit(self, interactions: pd.DataFrame) -> CategoryAffinity:
        """Learn the categories' popularity and each customer's category interactions."""
        frame = check_interactions(interactions)
        if not self.prior >= 0:
            raise BadInputError(f"prior {self.prior!r}: expected a number >= 0")
        if not 1 <= self.depth <= MAX_K:
            raise BadInputError(f"depth {self.depth!r}: expected an integer from 1 to {MAX_K}")
        # Integer codes throughout: per-row strings and string group-bys cost most of the time on
        # large logs. Products are coded in sorted order, so ties still go to the smaller id.
        product_codes, products = _factorised(frame["product_id"])
        labels = np.full(len(products), UNKNOWN_CATEGORY, dtype=object)  # last known category
        if "category" in frame.columns:
            category_codes, names = pd.factorize(frame["category"].astype("object"))
            known = category_codes >= 0
            last = np.full(len(products), -1, dtype=np.intp)
            np.maximum.at(last, product_codes[known], np.flatnonzero(known))
            has = last >= 0
            labels[has] = np.asarray(names, dtype=object).astype(str)[category_codes[last[has]]]
            self.category_of_ = dict(zip(products[has].tolist(), labels[has].tolist(), strict=True))
        else:
            self.category_of_ = {}
        self.categories_ = np.unique(labels.astype(str))
        self._category_index = {c: i for i, c in enumerate(self.categories_)}
        product_category = np.searchsorted(self.categories_, labels.astype(str))
        codes = product_category[product_codes]
        counts = np.bincount(codes, minlength=len(self.categories_)).astype(float)
        self.shop_share_ = counts / max(counts.sum(), 1.0)
        per_product = np.bincount(product_codes, minlength=len(products)).astype(float)
        share = per_product / counts[product_category]
        # By category, then share (highest first), then id: ``products`` are sorted, so by code.
        order = np.lexsort((np.arange(len(products)), -share, product_category))
        c_sorted = product_category[order]
        group_start = np.r_[0, np.flatnonzero(c_sorted[1:] != c_sorted[:-1]) + 1] if order.size else order
        rank = np.arange(order.size) - np.repeat(group_start, np.diff(np.r_[group_start, order.size]))
        keep = rank < self.depth
        shape = (len(self.categories_), self.depth)
        self.top_products_ = np.full(shape, "", dtype=object)
        self.top_share_ = np.zeros(shape)
        c, r = c_sorted[keep], rank[keep]
        self.top_products_[c, r] = products[order[keep]]
        self.top_share_[c, r] = share[order][keep]
        per_user = _visits_per_category(frame, codes)
        user_keys = per_user.index.get_level_values(0).to_numpy()
        starts = np.flatnonzero(np.r_[True, user_keys[1:] != user_keys[:-1]])
        self._user_index = {u: i for i, u in enumerate(user_keys[starts])}
        self._user_ptr = np.r_[starts, len(user_keys)]
        self._user_categories = per_user.index.get_level_values(1).to_numpy()
        self._user_counts = per_user.to_numpy(float)
        self._fit_price_levels(frame, product_codes, product_category, (c, r, order[keep]))
        return self

    def _fit_price_levels(
        self,
        frame: pd.DataFrame,
        product_codes: np.ndarray,
        product_category: np.ndarray,
        top: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Price levels of products and customers, the weight's width, and each kept product's mean
        weight over its category's interactions (see the module docstring)."""
        self.price_width_: float | None = None
        self._user_level: np.ndarray | None = None
        if self.price_prior is None or "price" not in frame.columns:
            return
        if not self.price_prior >= 0:
            raise BadInputError(f"price_prior {self.price_prior!r}: expected a number >= 0 or None")
        price = np.full(product_category.size, np.nan)
        valid = frame["price"].notna().to_numpy() & (frame["price"].to_numpy(float) > 0)
        price[product_codes[valid]] = frame["price"].to_numpy(float)[valid]  # a last known price
        median = pd.Series(price).groupby(product_category).transform("median").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log(price / median)
        row_level = level[product_codes]
        known = np.isfinite(row_level)
        if np.count_nonzero(known) < 2:
            return
        # Customers are numbered as _factorised codes them: every one of them has visits, in code order.
        user_codes, users = _factorised(frame["user_key"])
        n_users = len(users)
        n = np.bincount(user_codes[known], minlength=n_users).astype(float)
        total = np.bincount(user_codes[known], weights=row_level[known], minlength=n_users)
        mean = float(row_level[known].mean())
        own = np.divide(total, n, out=np.full(n_users, mean), where=n > 0)
        spread = row_level[known] - own[user_codes[known]]
        several = n[user_codes[known]] >= 2
        width = float(np.sqrt(np.mean(spread[several] ** 2))) if several.any() else 0.0
        if not width > 0.01:
            return
        self.price_width_ = width
        self._user_level = (total + self.price_prior * mean) / (n + self.price_prior)
        # Mean weight of each kept product over its category's interactions, from a histogram of the
        # interacting customers' levels per category (one pass, whatever the size of the log).
        edges = np.linspace(-3.0, 3.0, 121)
        centres = (edges[:-1] + edges[1:]) / 2
        bins = np.clip(np.searchsorted(edges, self._user_level[user_codes]) - 1, 0, centres.size - 1)
        counts = np.zeros((len(self.categories_), centres.size))
        np.add.at(counts, (product_category[product_codes], bins), 1.0)
        c, r, products = top
        self._top_level = np.full(self.top_share_.shape, np.nan)
        self._top_level[c, r] = level[products]
        weight = self._weight(self._top_level[:, :, None] - centres)  # categories x depth x bins
        mean_weight = np.einsum("cdb,cb->cd", weight, counts) / np.maximum(counts.sum(axis=1), 1.0)[:, None]
        self._top_mean_weight = np.where(mean_weight > 0, mean_weight, 1.0)

    def _weight(self, difference: np.ndarray) -> np.ndarray:
        """The price-level weight of a difference of levels (1 where a level is unknown)."""
        assert self.price_width_ is not None
        return np.where(np.isnan(difference), 1.0, np.exp(-0.5 * (difference / self.price_width_) ** 2))

    def price_level(self, user_key: str) -> float | None:
        """The customer's price level, ``ln`` of their prices over their categories' medians, shrunk
        (None without prices, or for an unknown customer)."""
        i = self._user_index.get(str(user_key))
        if i is None or self._user_level is None:
            return None
        return float(self._user_level[i])

    def profile(self, user_key: str) -> dict[str, float] | None:
        """The customer's visits per category (None for an unknown customer)."""
        i = self._user_index.get(str(user_key))
        if i is None:
            return None
        lo, hi = self._user_ptr[i], self._user_ptr[i + 1]
        return {
            str(self.categories_[c]): float(n)
            for c, n in zip(self._user_categories[lo:hi], self._user_counts[lo:hi], strict=True)
        }

    def shares(self, user_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The customer's smoothed share of each category (:attr:`categories_` order), as the ranking
        uses it, and their own visits per category (None for an unknown customer)."""
        i = self._user_index.get(str(user_key))
        if i is None:
            return None
        lo, hi = self._user_ptr[i], self._user_ptr[i + 1]
        counts = np.zeros(len(self.categories_))
        counts[self._user_categories[lo:hi]] = self._user_counts[lo:hi]
        return (counts + self.prior * self.shop_share_) / (counts.sum() + self.prior), counts

    def category_index(self, product_id: str) -> int:
        """The position of the product's category in :attr:`categories_` (-1 if the product is unknown)."""
        name = self.category_of_.get(str(product_id), UNKNOWN_CATEGORY)
        return self._category_index.get(name, -1)

    def for_user(self, user_key: str, k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Popular products in the categories ``user_key`` browses."""
        k = check_k(k)
        i = self._user_index.get(str(user_key))
        if i is None:
            return Candidates(reason=f"unknown customer {user_key}: no interactions yet (cold start)")
        lo, hi = self._user_ptr[i], self._user_ptr[i + 1]
        counts = np.zeros(len(self.categories_))
        counts[self._user_categories[lo:hi]] = self._user_counts[lo:hi]
        level = self._user_level[i] if self._user_level is not None else None
        return self._rank(counts, k, set(exclude), level)

    def for_items(self, product_ids: Sequence[str], k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Popular products in the categories of ``product_ids`` (e.g. a new visitor's views)."""
        k = check_k(k)
        counts = np.zeros(len(self.categories_))
        for p in product_ids:
            c = self._category_index.get(self.category_of_.get(str(p), UNKNOWN_CATEGORY))
            if c is not None and self.category_of_.get(str(p)) is not None:
                counts[c] += 1.0
        if not counts.any():
            return Candidates(reason="none of the products has a known category (cold start)")
        return self._rank(counts, k, set(product_ids) | set(exclude))

    def for_profile(
        self, categories: Mapping[str, float], k: int = 10, exclude: Iterable[str] = ()
    ) -> Candidates:
        """Popular products for a given interest per category."""
        k = check_k(k)
        counts = np.zeros(len(self.categories_))
        for name, weight in categories.items():
            if str(name) in self._category_index:
                counts[self._category_index[str(name)]] += float(weight)
        if not counts.any():
            return Candidates(reason="none of the categories is known")
        return self._rank(counts, k, set(exclude))

    def _rank(self, counts: np.ndarray, k: int, skip: set[str], level: float | None = None) -> Candidates:
        share = (counts + self.prior * self.shop_share_) / (counts.sum() + self.prior)
        scores = share[:, None] * self.top_share_
        if level is not None:  # at the customer's price level
            scores = scores * self._weight(self._top_level - level) / self._top_mean_weight
        want = min(scores.size, k + len(skip))
        flat = (
            np.argpartition(-scores.ravel(), want - 1)[:want]
            if want < scores.size
            else np.arange(scores.size)
        )
        flat = flat[np.lexsort((flat, -scores.ravel()[flat]))]
        out: list[Candidate] = []
        for f in flat:
            c, r = divmod(int(f), self.depth)
            p, score = self.top_products_[c, r], float(scores[c, r])
            if score <= 0 or not p or p in skip:
                continue
            out.append(Candidate(str(p), round(score, 6), self._reason(c, counts)))
            if len(out) == k:
                break
        return Candidates(out, reason="" if out else "no products to propose")

    def _reason(self, category: int, counts: np.ndarray) -> str:
        name = self.categories_[category]
        if counts[category] > 0:
            return f"popular in {name}, which you browse"
        return f"popular in {name}"


def _visits_per_category(frame: pd.DataFrame, codes: np.ndarray) -> pd.Series:
    """Per (customer, category code): the customer's visits, each shared out by its categories.

    A visit is a session (``session_key``), else the customer's day."""
    user_codes, users = _factorised(frame["user_key"])
    session = frame["session_key"] if "session_key" in frame.columns else None
    if session is not None and not session.isna().any():
        visit_codes = pd.factorize(session.astype(str))[0]
    else:  # the day's key only where there is no session (as a string, like a session id)
        day = frame["user_key"].astype(str) + "@" + (frame["ts"] // 86_400).astype(int).astype(str)
        visit = day if session is None else session.astype("object").where(session.notna(), day)
        visit_codes = pd.factorize(visit.astype(str))[0]
    n_visits, n_categories = int(visit_codes.max(initial=-1)) + 1, int(codes.max(initial=-1)) + 1
    if len(users) * n_visits * n_categories >= 2**62:  # no room for one integer key: group by three
        rows = pd.DataFrame({"u": user_codes, "v": visit_codes, "c": codes})
        per_visit = rows.groupby(["u", "v", "c"], sort=False).size()
        share = per_visit / per_visit.groupby(level=[0, 1], sort=False).transform("sum")
        u, c = share.index.get_level_values(0).to_numpy(), share.index.get_level_values(2).to_numpy()
        shares = share.to_numpy(float)
    else:  # one integer key per (customer, visit, category), groups in the order of the log
        key = (user_codes.astype(np.int64) * n_visits + visit_codes) * n_categories + codes
        group, keys = pd.factorize(key)
        size = np.bincount(group)
        visit, _ = pd.factorize(keys // n_categories)
        shares = size / np.bincount(visit, weights=size)[visit]
        u, c = keys // (n_visits * n_categories), keys % n_categories
    width = max(n_categories, 1)
    summed = pd.Series(shares).groupby(u.astype(np.int64) * width + c, sort=True).sum()
    keys = summed.index.to_numpy()
    index = pd.MultiIndex.from_arrays([users[keys // width], keys % width], names=["u", "c"])
    return pd.Series(summed.to_numpy(), index=index)

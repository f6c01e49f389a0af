"""Category affinity: the popular products of the categories a customer browses, in proportion.

A customer's interest in a category is the number of their visits spent on it (each visit counts 1,
shared out by its interactions' categories: a visit's views cluster on one category, so counting views
would count one choice many times), smoothed towards the shop's own mix (``prior`` pseudo-visits), so a
customer seen twice is not locked into two categories.
A product's score is that share times the product's share of its category's interactions. This is the
"popular in what you browse" list shops show, and on the simulator, where customers draw products from
their category affinities by popularity, it is close to the best a recommender can do without knowing
the customer's latent affinities.

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

    Attributes
    ----------
    categories_ : ndarray of category names
    shop_share_ : ndarray, each category's share of all interactions
    top_products_ : ndarray (categories x depth) of product ids, padded with ""
    top_share_ : ndarray (categories x depth), each product's share of its category, padded with 0
    """

    def __init__(self, prior: float = 4.0, depth: int = 50) -> None:
        self.prior = prior
        self.depth = depth

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
        return self

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

    def for_user(self, user_key: str, k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Popular products in the categories ``user_key`` browses."""
        k = check_k(k)
        i = self._user_index.get(str(user_key))
        if i is None:
            return Candidates(reason=f"unknown customer {user_key}: no interactions yet (cold start)")
        lo, hi = self._user_ptr[i], self._user_ptr[i + 1]
        counts = np.zeros(len(self.categories_))
        counts[self._user_categories[lo:hi]] = self._user_counts[lo:hi]
        return self._rank(counts, k, set(exclude))

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

    def _rank(self, counts: np.ndarray, k: int, skip: set[str]) -> Candidates:
        share = (counts + self.prior * self.shop_share_) / (counts.sum() + self.prior)
        scores = share[:, None] * self.top_share_
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

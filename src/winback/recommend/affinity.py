"""Category affinity: the popular products of the categories a customer browses, in proportion.

A customer's interest in a category is what :mod:`winback.recommend.interest`'s session-focus model
makes of their visits: each visit's main category and the stray views into other favourites count,
views that merely go with the main category (cases after a phone) do not; smoothed towards the shop's
mix by as many pseudo-visits (``prior``) as the customers' own spread calls for, so a customer seen
twice is not locked into two categories.
A product's score is that share times the product's share of its category for this customer. This is
the "popular in what you browse" list shops show.

Within a category, customers buy at their own price level (the price-sensitive cheaper): a product's
*price level* is ``ln(price / median price of its category)``; the customer's is the mean level of the
products they interacted with, shrunk towards the shop's mean by ``price_prior`` pseudo-interactions.
The shop's choice for the customer is a product's popularity times ``g(product level - customer
level)``, ``g`` a Gaussian whose width is the spread of customers' own levels around their means
(learnt), summing to 1 over the category; popularity here is the product's share of the category's
interactions divided by its mean ``g`` over the customers who made them, which undoes the price
weighting those customers' choices already carry. Without prices it is the plain share.

Where customers keep to their own products (coffee, pet food) the one a customer viewed again and again
beats the shop's favourite: the product's share for the customer is ``(their views of it + m x the
shop's choice) / (their views in the category + m)``, with ``m`` learnt per category from how
customers' views spread over its products (a Dirichlet-multinomial, Minka's fixed point): small where
they keep to their own, large where they choose as everyone does.

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
import scipy.sparse as sp

from winback.errors import BadInputError
from winback.recommend.interactions import check_interactions
from winback.recommend.interest import dirichlet_precision, fit_interest
from winback.recommend.sources import MAX_K, Candidate, Candidates, _factorised, check_k

#: Category of products whose category is unknown.
UNKNOWN_CATEGORY = "(no category)"
#: Customers' price levels are binned at these centres to sum the weights of a category once per bin.
LEVEL_CENTRES = np.linspace(-2.975, 2.975, 120)
#: Customers with two or more views in a category that a category needs for a prior of its own, and
#: the most of them its prior is learnt from.
MIN_REPEATERS, WITHIN_SAMPLE = 30, 5_000
#: Bounds of a category's pseudo-views of the shop's choice.
MIN_WITHIN_PRIOR, MAX_WITHIN_PRIOR = 0.5, 1e4


class CategoryAffinity:
    """Per-customer category shares times within-category popularity.

    Parameters
    ----------
    prior
        Pseudo-visits, spread as the customers' mix of interest (:attr:`interest_mix_`), added to each
        customer's own; ``None`` learns them from the customers (the Dirichlet concentration of their
        interests).
    depth
        Products kept per category (the most popular ones): a list never needs more.
    price_prior
        Pseudo-interactions at the shop's mean price level added to a customer's own (0: no
        shrinkage); ``None`` turns the price-level weighting off.

    Attributes
    ----------
    categories_ : ndarray of category names
    shop_share_ : ndarray, each category's share of all interactions
    interest_mix_ : ndarray, each category's share of the customers' interest (the prior's mean)
    prior_ : float, the pseudo-visits used (``prior``, or learnt)
    visit_shares_ : tuple of the session-focus model's shares of interactions (focus, goes with the
        focus, stray), or None when the shop has one category
    top_products_ : ndarray (categories x depth) of the product ids a list is drawn from (beside the
        customer's own), padded with ""
    price_width_ : float or None, the width of the price-level weight (None: no prices known)
    within_prior_ : ndarray, per category the pseudo-views of the shop's choice against a customer's own
    """

    def __init__(self, prior: float | None = None, depth: int = 50, price_prior: float | None = 5.0) -> None:
        self.prior = prior
        self.depth = depth
        self.price_prior = price_prior

    def fit(self, interactions: pd.DataFrame) -> CategoryAffinity:
        """Learn the categories' popularity and each customer's category interactions."""
        frame = check_interactions(interactions)
        if self.prior is not None and not self.prior >= 0:
            raise BadInputError(f"prior {self.prior!r}: expected a number >= 0 or None")
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
        c, r = c_sorted[keep], rank[keep]
        self.top_products_[c, r] = products[order[keep]]
        user_codes, users = _factorised(frame["user_key"])  # customers are these codes throughout
        self._fit_interest(frame, user_codes, users, codes)
        self._products = products
        self._product_index = {p: i for i, p in enumerate(products.tolist())}
        self._product_category = product_category
        self._share = share
        self._top_code = np.full(shape, -1, dtype=np.intp)
        self._top_code[c, r] = order[keep]
        self._fit_price_levels(frame, user_codes, product_codes, product_category)
        self._fit_own_products(frame, user_codes, product_codes, product_category)
        self._fit_kept()
        return self

    def _fit_interest(
        self, frame: pd.DataFrame, user_codes: np.ndarray, users: np.ndarray, codes: np.ndarray
    ) -> None:
        """Each customer's interest draws per category (:func:`fit_interest`), :attr:`prior_`,
        :attr:`interest_mix_` and :attr:`visit_shares_`."""
        # A visit is a customer's own, even where two customers' session ids are the same.
        visit = _visit_codes(frame).astype(np.int64)
        visit = pd.factorize(user_codes.astype(np.int64) * (int(visit.max(initial=0)) + 1) + visit)[0]
        interest = fit_interest(user_codes, visit, codes, self.prior)
        self.prior_ = interest.concentration
        self.interest_mix_ = np.zeros(len(self.categories_))
        self.interest_mix_[: interest.mean.size] = interest.mean
        self.visit_shares_ = interest.shares if len(self.categories_) > 1 else None
        # Pairs come by customer code: a customer's row is their code.
        self._user_index = {str(u): i for i, u in enumerate(users.tolist())}
        self._user_ptr = np.searchsorted(interest.user, np.arange(len(users) + 1))
        self._user_categories = interest.category
        self._user_counts = interest.draws

    def _fit_price_levels(
        self,
        frame: pd.DataFrame,
        user_codes: np.ndarray,
        product_codes: np.ndarray,
        product_category: np.ndarray,
    ) -> None:
        """Price levels of products and customers, the weight's width, each product's popularity
        before the price weighting (its share over its mean weight among its category's interactions)
        and the weights' sum per category and customer level bin (see the module docstring)."""
        n_products, n_categories = product_category.size, len(self.categories_)
        self.price_width_: float | None = None
        self._user_level: np.ndarray | None = None
        self._level = np.full(n_products, np.nan)
        self._intrinsic = self._share.copy()
        self._norm: np.ndarray = np.bincount(product_category, weights=self._share, minlength=n_categories)[
            :, None
        ]
        if self.price_prior is None or "price" not in frame.columns:
            return
        if not self.price_prior >= 0:
            raise BadInputError(f"price_prior {self.price_prior!r}: expected a number >= 0 or None")
        price = np.full(n_products, np.nan)
        valid = frame["price"].notna().to_numpy() & (frame["price"].to_numpy(float) > 0)
        price[product_codes[valid]] = frame["price"].to_numpy(float)[valid]  # a last known price
        median = pd.Series(price).groupby(product_category).transform("median").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log(price / median)
        row_level = level[product_codes]
        known = np.isfinite(row_level)
        if np.count_nonzero(known) < 2:
            return
        n_users = len(self._user_index)
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
        self._level = np.where(np.isfinite(level), level, np.nan)
        self._user_level = (total + self.price_prior * mean) / (n + self.price_prior)
        # Histogram of the interacting customers' levels per category: one pass, whatever the log.
        counts = np.zeros((n_categories, LEVEL_CENTRES.size))
        np.add.at(counts, (product_category[product_codes], _level_bin(self._user_level[user_codes])), 1.0)
        counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        self._norm = np.zeros((n_categories, LEVEL_CENTRES.size))
        for lo in range(0, n_products, 20_000):  # products x bins at a time
            chunk = slice(lo, min(lo + 20_000, n_products))
            weight = self._weight(self._level[chunk, None] - LEVEL_CENTRES)
            mean_weight = np.einsum("pb,pb->p", weight, counts[product_category[chunk]])
            self._intrinsic[chunk] = self._share[chunk] / np.where(mean_weight > 0, mean_weight, 1.0)
            np.add.at(self._norm, product_category[chunk], self._intrinsic[chunk, None] * weight)

    def _fit_own_products(
        self,
        frame: pd.DataFrame,
        user_codes: np.ndarray,
        product_codes: np.ndarray,
        product_category: np.ndarray,
    ) -> None:
        """Each customer's views per product, and per category how many pseudo-views of the shop's
        choice (at their price level) weigh against them (:attr:`within_prior_`, :func:`_within_priors`).
        A log without views leaves every customer without any, and the shop's choice alone."""
        views = (frame["kind"] == "view").to_numpy()
        own = sp.csr_matrix(
            (np.ones(int(views.sum())), (user_codes[views], product_codes[views])),
            shape=(len(self._user_index), product_category.size),
        )
        own.sum_duplicates()
        self._own = own
        rows = np.repeat(np.arange(own.shape[0]), np.diff(own.indptr))
        w = self._within_base(rows, own.indices)
        self.within_prior_ = _within_priors(
            rows, product_category[own.indices], own.data, w, len(self.categories_)
        )

    def _within_base(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        """The shop's choice of ``products`` within their categories for customers ``users`` (codes):
        popularity times the price-level weight, summing to 1 over a category."""
        bins = None if self._user_level is None else _level_bin(self._user_level[users])
        return self._base_at(bins, products)

    def _base_at(self, bins: np.ndarray | None, products: np.ndarray) -> np.ndarray:
        """:meth:`_within_base` for customers in the price-level ``bins`` (None: no prices)."""
        category = self._product_category[products]
        if bins is None:
            norm = self._norm[category, 0]
            top = self._intrinsic[products]
        else:  # at the level of the bin, as the sums were made
            norm = self._norm[category, bins]
            top = self._intrinsic[products] * self._weight(self._level[products] - LEVEL_CENTRES[bins])
        return np.divide(top, norm, out=np.zeros(products.size), where=norm > 0)

    def _fit_kept(self) -> None:
        """The kept products with their categories, priors, and the shop's choice of each for every
        price-level bin, so that a query gathers it instead of weighing every kept product again."""
        self._kept = self._top_code[self._top_code >= 0]
        self._kept_category = self._product_category[self._kept]
        self._kept_prior = self.within_prior_[self._kept_category]
        if self._user_level is None:
            self._kept_base = self._base_at(None, self._kept)[None, :]
        else:
            bins = np.arange(LEVEL_CENTRES.size)
            self._kept_base = np.stack([self._base_at(np.full(self._kept.size, b), self._kept) for b in bins])

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
        """The customer's interest draws per category, about their visits there (None for an unknown
        customer)."""
        i = self._user_index.get(str(user_key))
        if i is None:
            return None
        counts = self._draws(i)
        return {str(self.categories_[c]): float(counts[c]) for c in np.flatnonzero(counts)}

    def shares(self, user_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The customer's smoothed share of each category (:attr:`categories_` order), as the ranking
        uses it, and their own interest draws per category (None for an unknown customer)."""
        i = self._user_index.get(str(user_key))
        if i is None:
            return None
        counts = self._draws(i)
        return (counts + self.prior_ * self.interest_mix_) / (counts.sum() + self.prior_), counts

    def _draws(self, user: int) -> np.ndarray:
        """A customer's interest draws per category, every category."""
        lo, hi = self._user_ptr[user], self._user_ptr[user + 1]
        counts = np.zeros(len(self.categories_))
        counts[self._user_categories[lo:hi]] = self._user_counts[lo:hi]
        return counts

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
        return self._rank(self._draws(i), k, set(exclude), i)

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

    def _rank(self, counts: np.ndarray, k: int, skip: set[str], user: int | None = None) -> Candidates:
        """The best of the categories' kept products and, for a customer, the products they viewed."""
        share = (counts + self.prior_ * self.interest_mix_) / (counts.sum() + self.prior_)
        category = self._kept_category
        if user is None:
            codes, scores = self._kept, share[category] * self._share[self._kept]
        else:  # the kept products the customer did not view, then the ones they viewed
            viewed, views = self._own_row(user)
            in_category = np.bincount(self._product_category[viewed], weights=views, minlength=share.size)
            level = 0 if self._user_level is None else _level_bin(self._user_level[user])
            prior = self._kept_prior
            kept = share[category] * prior * self._kept_base[level] / (in_category[category] + prior)
            unviewed = self._views(user, self._kept) == 0
            codes = np.concatenate([self._kept[unviewed], viewed])
            scores = np.concatenate([kept[unviewed], self._scores(share, viewed, user)])
        want = min(codes.size, k + len(skip))
        best = np.argpartition(-scores, want - 1)[:want] if want < codes.size else np.arange(codes.size)
        best = best[np.lexsort((codes[best], -scores[best]))]
        views = self._views(user, codes[best])
        out: list[Candidate] = []
        for i, seen in zip(best, views, strict=True):
            code, score = int(codes[i]), float(scores[i])
            p = str(self._products[code])
            if score <= 0 or p in skip:
                continue
            out.append(
                Candidate(
                    p,
                    round(score, 6),
                    self._reason(self._product_category[code], counts, seen),
                )
            )
            if len(out) == k:
                break
        return Candidates(out, reason="" if out else "no products to propose")

    def _views(self, user: int | None, codes: np.ndarray) -> np.ndarray:
        """The customer's views of each of ``codes`` (0 for none, or no customer)."""
        out = np.zeros(codes.size)
        if user is None:
            return out
        viewed, views = self._own_row(user)
        at = np.searchsorted(viewed, codes)  # CSR column indices are sorted
        hit = at < viewed.size
        hit[hit] = viewed[at[hit]] == codes[hit]
        out[hit] = views[at[hit]]
        return out

    def _own_row(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The customer's viewed products (codes) and their views."""
        lo, hi = self._own.indptr[user], self._own.indptr[user + 1]
        return self._own.indices[lo:hi], self._own.data[lo:hi]

    def _scores(self, share: np.ndarray, codes: np.ndarray, user: int | None) -> np.ndarray:
        """Scores of products ``codes``: the category's share times the product's share of the
        category, for a customer their own views mixed with the shop's choice at their price level."""
        category = self._product_category[codes]
        if user is None:
            return share[category] * self._share[codes]
        base = self._within_base(np.full(codes.size, user), codes)
        viewed, views = self._own_row(user)
        in_category = np.bincount(self._product_category[viewed], weights=views, minlength=share.size)
        mine = self._views(user, codes)
        prior = self.within_prior_[category]
        return share[category] * (mine + prior * base) / (in_category[category] + prior)

    def score_products(self, user_key: str, product_ids: Sequence[str]) -> np.ndarray:
        """The customer's score of each of ``product_ids`` as :meth:`for_user` ranks them (0 for an
        unknown customer or product)."""
        out = np.zeros(len(product_ids))
        shares = self.shares(user_key)
        if shares is None:
            return out
        codes = np.array([self._product_index.get(str(p), -1) for p in product_ids], dtype=np.intp)
        known = codes >= 0
        out[known] = self._scores(shares[0], codes[known], self._user_index[str(user_key)])
        return out

    def _reason(self, category: int, counts: np.ndarray, views: float = 0) -> str:
        name = self.categories_[category]
        if views >= 2:
            return f"you viewed it {int(views)} times; popular in {name}"
        if counts[category] > 0:
            return f"popular in {name}, which you browse"
        return f"popular in {name}"


def _visit_codes(frame: pd.DataFrame) -> np.ndarray:
    """A code per interaction for its visit: the session (``session_key``), else the customer's day."""
    session = frame["session_key"] if "session_key" in frame.columns else None
    if session is not None and not session.isna().any():
        return pd.factorize(session.astype(str))[0]
    day = frame["user_key"].astype(str) + "@" + (frame["ts"] // 86_400).astype(int).astype(str)
    visit = day if session is None else session.astype("object").where(session.notna(), day)
    return pd.factorize(visit.astype(str))[0]


def _level_bin(level: np.ndarray | float) -> np.ndarray:
    """The :data:`LEVEL_CENTRES` bin of each price level."""
    step = LEVEL_CENTRES[1] - LEVEL_CENTRES[0]
    return np.clip(np.round((np.asarray(level) - LEVEL_CENTRES[0]) / step), 0, LEVEL_CENTRES.size - 1).astype(
        np.intp
    )


def _within_priors(
    user: np.ndarray, category: np.ndarray, views: np.ndarray, base: np.ndarray, n_categories: int
) -> np.ndarray:
    """Per category, the pseudo-views of the shop's choice that best explain how customers' own views
    spread over its products (a Dirichlet-multinomial around ``base``, Minka's fixed point): few where
    customers keep to their own products (coffee, pet food), many where they pick as everyone does.
    Only customers with two or more views in a category tell (for one view the two sides of the fixed
    point are equal), at most :data:`WITHIN_SAMPLE` of them per category; a category with fewer than
    :data:`MIN_REPEATERS` takes the estimate over every category."""
    key = user.astype(np.int64) * n_categories + category
    group = np.unique(key, return_inverse=True)[1].ravel()
    total = np.bincount(group, weights=views)
    group_category = np.zeros(total.size, dtype=np.intp)
    group_category[group] = category
    group_user = np.zeros(total.size, dtype=np.int64)
    group_user[group] = user
    repeaters = total >= 2
    n_repeaters = np.bincount(group_category[repeaters], minlength=n_categories)
    step = np.maximum(-(-n_repeaters // WITHIN_SAMPLE), 1)  # every n-th customer of a big category
    chosen = repeaters & (group_user % step[group_category] == 0)
    keep = chosen[group]
    if not keep.any():
        return np.full(n_categories, MAX_WITHIN_PRIOR)
    v, w, c = views[keep], np.maximum(base[keep], 1e-12), category[keep]
    t, tc = total[chosen], group_category[chosen]

    def fit(pair_group: np.ndarray | None, total_group: np.ndarray | None, size: int) -> np.ndarray:
        return dirichlet_precision(
            v, w, t, start=10.0, steps=30, pair_group=pair_group, total_group=total_group, size=size,
            bounds=(MIN_WITHIN_PRIOR, MAX_WITHIN_PRIOR),
        )  # fmt: skip

    own = fit(c, tc, n_categories)
    if (n_repeaters >= MIN_REPEATERS).all():
        return own
    pooled = fit(None, None, 1)[0]
    return np.where(n_repeaters >= MIN_REPEATERS, own, pooled)

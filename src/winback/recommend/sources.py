"""Candidate sources: small estimators that each propose products with a score and a plain reason.

- :class:`ItemNeighbours`: item-to-item cosine on the user x item weight matrix (co-views, co-carts,
  co-purchases), with :meth:`ItemNeighbours.learn_new` to add interactions without a full retrain;
- :class:`BasketRules`: association rules on purchase baskets (support, confidence, lift): complements;
- :class:`ContentNeighbours`: same category, nearest price: substitutes, and neighbours of cold items;
- :class:`Popularity`: by category and recency (exponential decay): the fallback.

Each follows scikit-learn's contract (``__init__`` stores hyperparameters, ``fit(interactions)``
returns the estimator, learned attributes end in ``_``) and answers a query with :class:`Candidates`:
a list of ``(product_id, score, reason)``, best first. A query it cannot answer (an unknown product,
a cold item) gets an empty list whose ``reason`` says why; it never raises. A ``k`` out of range is a
usage error (:class:`winback.errors.BadInputError`).

Why ItemNeighbours builds its co-occurrence counts with SciPy rather than calling
``implicit.nearest_neighbours.CosineRecommender``: implicit keeps only the pruned top-K similarities,
from which new interactions cannot be folded in; the full counts ``X.T @ X`` (one sparse product) can
be updated exactly for the users who changed. The cosine is the same as implicit's (tested).

>>> import pandas as pd
>>> from winback.recommend.interactions import with_weights
>>> frame = with_weights(pd.DataFrame({
...     "user_key": ["u1", "u1", "u2", "u2", "u3"], "product_id": ["a", "b", "a", "b", "c"],
...     "ts": [0.0, 1.0, 2.0, 3.0, 4.0], "kind": ["purchase"] * 5}))
>>> ItemNeighbours().fit(frame).similar("a", k=1)
[Candidate(product_id='b', score=1.0, reason='chosen by the customers who chose a')]
>>> ItemNeighbours().fit(frame).similar("zzz").reason
'unknown product zzz: no interactions yet (cold start)'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from winback.errors import BadInputError
from winback.recommend.interactions import check_interactions

MAX_K = 1000


class Candidate(NamedTuple):
    """One proposed product."""

    product_id: str
    score: float
    reason: str


class Candidates(list[Candidate]):
    """Candidates best first; ``reason`` says why the list is empty (or short), else ``""``."""

    def __init__(self, items: Iterable[Candidate] = (), reason: str = "") -> None:
        super().__init__(items)
        self.reason = reason


def check_k(k: object) -> int:
    """``k`` if it is an integer from 1 to :data:`MAX_K`, else a usage error."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= MAX_K:
        raise BadInputError(f"--k {k!r}: expected an integer from 1 to {MAX_K}")
    return int(k)


def _ids(values: Iterable[object]) -> list[str]:
    return [str(v) for v in values]


def _top(scores: np.ndarray, k: int, eligible: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` highest positive eligible scores, best first (ties: lower index first)."""
    candidates = np.flatnonzero(eligible & (scores > 0))
    if candidates.size > k:
        part = np.argpartition(-scores[candidates], k - 1)[:k]
        candidates = candidates[part]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order]


def _fraction(x: float) -> str:
    return f"{x:.0%}"


class ItemNeighbours:
    """Item-to-item cosine similarity of the products' columns in the user x item weight matrix.

    A user's weight for a product is the strongest of their interactions with it (view 1, cart 3,
    purchase 5 by default), so a product bought together with another by the same customers is closer
    to it than one merely viewed beside it.

    Parameters
    ----------
    shrink
        Added to the cosine's denominator: pulls similarities resting on few shared customers
        towards zero (0: plain cosine).

    Attributes
    ----------
    items_ : ndarray of product ids (column order)
    users_ : ndarray of user keys (row order)
    user_items_ : csr_matrix (users x items), the weights
    cooccurrence_ : csr_matrix (items x items), ``user_items_.T @ user_items_``
    """

    def __init__(self, shrink: float = 0.0) -> None:
        self.shrink = shrink

    def fit(self, interactions: pd.DataFrame) -> ItemNeighbours:
        """Learn the co-occurrence counts from ``interactions`` (see :mod:`.interactions`)."""
        frame = check_interactions(interactions)
        if not self.shrink >= 0:
            raise BadInputError(f"shrink {self.shrink!r}: expected a number >= 0")
        self.users_ = np.array(sorted(set(_ids(frame["user_key"]))), dtype=object)
        self.items_ = np.array(sorted(set(_ids(frame["product_id"]))), dtype=object)
        self._index()
        self.user_items_ = self._matrix(frame)
        self.cooccurrence_ = (self.user_items_.T @ self.user_items_).tocsr()
        self._norms = np.sqrt(np.maximum(self.cooccurrence_.diagonal(), 0.0))
        return self

    def learn_new(self, interactions: pd.DataFrame) -> ItemNeighbours:
        """Add new interactions without a full retrain.

        Only the users who interacted change: their rows of the weight matrix are updated (new users
        and products appended) and the co-occurrence counts adjusted by their old and new rows, so
        only the items those users touched get new counts. The result equals a fit on all interactions.
        """
        frame = check_interactions(interactions)
        if not hasattr(self, "cooccurrence_"):
            return self.fit(frame)
        if frame.empty:
            return self
        new_users = sorted(set(_ids(frame["user_key"])) - set(self.user_index_))
        new_items = sorted(set(_ids(frame["product_id"])) - set(self.item_index_))
        self.users_ = np.concatenate([self.users_, np.array(new_users, dtype=object)])
        self.items_ = np.concatenate([self.items_, np.array(new_items, dtype=object)])
        self._index()
        shape = (len(self.users_), len(self.items_))
        old = self.user_items_.copy()
        old.resize(shape)
        new = old.maximum(self._matrix(frame)).tocsr()
        changed = np.unique([self.user_index_[u] for u in _ids(frame["user_key"])])
        before, after = old[changed], new[changed]
        counts = self.cooccurrence_.copy()
        counts.resize((shape[1], shape[1]))
        counts = counts + (after.T @ after) - (before.T @ before)
        counts.eliminate_zeros()
        self.user_items_, self.cooccurrence_ = new, counts.tocsr()
        self._norms = np.sqrt(np.maximum(self.cooccurrence_.diagonal(), 0.0))
        return self

    partial_fit = learn_new

    def _index(self) -> None:
        self.user_index_ = {u: i for i, u in enumerate(self.users_)}
        self.item_index_ = {p: i for i, p in enumerate(self.items_)}

    def _matrix(self, frame: pd.DataFrame) -> sp.csr_matrix:
        strongest = frame.groupby(["user_key", "product_id"], sort=False)["weight"].max().reset_index()
        rows = strongest["user_key"].astype(str).map(self.user_index_).to_numpy()
        cols = strongest["product_id"].astype(str).map(self.item_index_).to_numpy()
        shape = (len(self.users_), len(self.items_))
        return sp.csr_matrix((strongest["weight"].to_numpy(float), (rows, cols)), shape=shape)

    def _similarity_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        norms = self._norms
        block = self.cooccurrence_[rows].tocoo()
        denominator = norms[rows][block.row] * norms[block.col] + self.shrink
        data = np.divide(block.data, denominator, out=np.zeros_like(block.data), where=denominator > 0)
        return sp.csr_matrix((data, (block.row, block.col)), shape=block.shape)

    def similar(self, product_id: str, k: int = 10) -> Candidates:
        """The ``k`` products closest to ``product_id``."""
        return self.for_items([product_id], k)

    def for_items(
        self,
        product_ids: Sequence[str],
        k: int = 10,
        exclude: Iterable[str] = (),
        *,
        weights: Sequence[float] | None = None,
        include_query: bool = False,
    ) -> Candidates:
        """Products closest to the ``product_ids`` together (e.g. a customer's history or a cart).

        A product's score is the sum of its similarities to the query items, each times its weight in
        ``weights`` (1 if None; e.g. the customer's summed interaction weights). The query items are
        left out unless ``include_query`` (then each counts its similarity 1 to itself: a product the
        customer chose before may come back, as an abandoned cart's items do); ``exclude`` always is.
        """
        k = check_k(k)
        if weights is not None and len(weights) != len(product_ids):
            raise BadInputError(f"weights: expected one per product ({len(product_ids)}), got {len(weights)}")
        given: dict[str, float] = {}
        for p, w in zip(
            _ids(product_ids), weights if weights is not None else [1.0] * len(product_ids), strict=True
        ):
            given[p] = given.get(p, 0.0) + float(w)
        query = list(given)
        known = [p for p in query if p in self.item_index_]
        if not known:
            return Candidates(reason=_unknown(query))
        rows = np.array([self.item_index_[p] for p in known])
        factor = sp.diags(np.array([given[p] for p in known], dtype=float))
        sims = sp.csr_matrix(factor @ self._similarity_rows(rows))
        scores = np.asarray(sims.sum(axis=0)).ravel()
        eligible = np.ones(len(self.items_), dtype=bool)
        if not include_query:
            eligible[rows] = False
        for p in exclude:
            if str(p) in self.item_index_:
                eligible[self.item_index_[str(p)]] = False
        top = _top(scores, k, eligible)
        if not top.size:
            return Candidates(reason=f"no other product shares customers with {', '.join(query[:3])}")
        strongest = np.asarray(sims[:, top].toarray().argmax(axis=0)).ravel()
        return Candidates(
            Candidate(str(self.items_[j]), round(float(scores[j]), 6), self._reason(j, rows[s]))
            for j, s in zip(top, strongest, strict=True)
        )

    def _reason(self, item: int, because: int) -> str:
        if item == because:
            return "chosen before, and by customers with the same taste"
        return f"chosen by the customers who chose {self.items_[because]}"


def _unknown(query: list[str]) -> str:
    if len(query) == 1:
        return f"unknown product {query[0]}: no interactions yet (cold start)"
    if not query:
        return "no products given: nothing to start from"
    return f"unknown products {', '.join(query[:3])}: no interactions yet (cold start)"


class BasketRules:
    """Association rules ``A -> B`` between single products bought in the same basket.

    A basket is an order (``order_id``), else a session (``session_key``), else a user's purchases of
    one day. For a rule, ``support`` is the share of baskets with both, ``confidence`` the share of
    baskets with A that also hold B, ``lift`` the confidence over B's own share of baskets (above 1:
    bought together more often than by chance).

    Parameters
    ----------
    min_support
        Minimum share of baskets holding both products.
    min_count
        Minimum number of baskets holding both products (guards tiny logs against one-off pairs).
    min_confidence
        Minimum confidence of a rule.
    kinds
        Interaction kinds that fill a basket (``("purchase",)``; add ``"cart"`` for carts too).

    Attributes
    ----------
    rules_ : DataFrame (antecedent, consequent, count, support, confidence, lift)
    n_baskets_ : int
    """

    def __init__(
        self,
        min_support: float = 0.0,
        min_count: int = 2,
        min_confidence: float = 0.0,
        kinds: tuple[str, ...] = ("purchase",),
    ) -> None:
        self.min_support = min_support
        self.min_count = min_count
        self.min_confidence = min_confidence
        self.kinds = kinds

    def fit(self, interactions: pd.DataFrame) -> BasketRules:
        frame = check_interactions(interactions)
        if not 0 <= self.min_support <= 1 or not 0 <= self.min_confidence <= 1:
            raise BadInputError("min_support and min_confidence: expected shares from 0 to 1")
        if self.min_count < 1:
            raise BadInputError(f"min_count {self.min_count!r}: expected an integer >= 1")
        rows = frame[frame["kind"].isin(self.kinds)]
        basket = pd.Series(rows["user_key"].astype(str) + "@" + (rows["ts"] // 86_400).astype(str))
        for column in ("session_key", "order_id"):  # an order beats a session beats a day
            if column in rows.columns:
                basket = rows[column].astype("object").where(rows[column].notna(), basket)
        pairs = pd.DataFrame({"basket": basket.astype(str), "item": rows["product_id"].astype(str)})
        pairs = pairs.drop_duplicates()
        baskets, basket_index = np.unique(pairs["basket"], return_inverse=True)
        items, item_index = np.unique(pairs["item"], return_inverse=True)
        self.n_baskets_ = len(baskets)
        self.items_ = items.astype(object)
        matrix = sp.csr_matrix(
            (np.ones(len(pairs)), (basket_index, item_index)), shape=(len(baskets), len(items))
        )
        counts = (matrix.T @ matrix).tocoo()
        item_counts = np.asarray(matrix.sum(axis=0)).ravel()
        off = counts.row != counts.col
        a, b, n = counts.row[off], counts.col[off], counts.data[off]
        support = n / max(self.n_baskets_, 1)
        confidence = n / item_counts[a]
        lift = confidence / (item_counts[b] / max(self.n_baskets_, 1))
        keep = (n >= self.min_count) & (support >= self.min_support) & (confidence >= self.min_confidence)
        rules = pd.DataFrame(
            {
                "antecedent": items[a[keep]],
                "consequent": items[b[keep]],
                "count": n[keep].astype(int),
                "support": support[keep],
                "confidence": confidence[keep],
                "lift": lift[keep],
            }
        )
        self.rules_ = rules.sort_values(
            ["antecedent", "confidence", "lift", "consequent"], ascending=[True, False, False, True]
        ).reset_index(drop=True)
        self._by_antecedent = {
            str(a): (
                g["consequent"].to_numpy(str),
                g["confidence"].to_numpy(float),
                g["lift"].to_numpy(float),
            )
            for a, g in self.rules_.groupby("antecedent", sort=False)
        }
        return self

    def for_items(self, product_ids: Sequence[str], k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Complements of the ``product_ids`` (a cart, a customer's purchases): the consequents of
        their rules, by the best confidence (then lift) any of them gives."""
        k = check_k(k)
        query = list(dict.fromkeys(_ids(product_ids)))
        found = [(p, *self._by_antecedent[p]) for p in query if p in self._by_antecedent]
        if not found:
            named = ", ".join(query[:3]) or "nothing"
            return Candidates(reason=f"no rules yet: {named} not often bought with another product")
        skip = set(query) | set(_ids(exclude))
        best: dict[str, tuple[float, float, str]] = {}
        for antecedent, consequents, confidence, lift in found:
            for c, conf, lf in zip(consequents[: k + len(skip)], confidence, lift, strict=False):
                if c not in skip and (c not in best or (conf, lf) > best[c][:2]):
                    best[c] = (float(conf), float(lf), antecedent)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))[:k]
        return Candidates(
            Candidate(
                c,
                round(conf, 6),
                f"often bought with {antecedent} ({_fraction(conf)} of its baskets, lift {lf:.1f})",
            )
            for c, (conf, lf, antecedent) in ranked
        )

    def similar(self, product_id: str, k: int = 10) -> Candidates:
        return self.for_items([product_id], k)


def _catalogue(frame: pd.DataFrame) -> pd.DataFrame:
    """The last known category and price of each product (from interactions or a product table)."""
    if "product_id" not in frame.columns or "category" not in frame.columns:
        raise BadInputError("products: missing columns; expected 'product_id', 'category' and 'price'")
    ordered = frame.sort_values("ts", kind="stable") if "ts" in frame.columns else frame
    columns = ["product_id", "category", "price"] if "price" in frame.columns else ["product_id", "category"]
    last = ordered[columns].copy()
    last["product_id"] = last["product_id"].astype(str)
    last = last.groupby("product_id", sort=True).last()  # last non-null per column
    if "price" not in last.columns:
        last["price"] = np.nan
    return last


class ContentNeighbours:
    """Products of the same category, nearest in price: substitutes, and the neighbours of cold items.

    The score of a product ``j`` for ``i`` is ``exp(-|ln(price_j / price_i)| / ln(1 + price_tolerance))``:
    1 at the same price, 1/e at ``price_tolerance`` dearer (or as much cheaper); 0.5 when a price is
    unknown.

    Parameters
    ----------
    price_tolerance
        Relative price difference at which the score falls to 1/e.

    Attributes
    ----------
    products_ : DataFrame indexed by product_id (category, price)
    """

    def __init__(self, price_tolerance: float = 0.5) -> None:
        self.price_tolerance = price_tolerance

    def fit(self, products: pd.DataFrame) -> ContentNeighbours:
        """Learn categories and prices from a product table or interactions (last value seen)."""
        if not isinstance(products, pd.DataFrame):
            raise BadInputError(f"products: expected a pandas DataFrame, got {type(products).__name__}")
        if not self.price_tolerance > 0:
            raise BadInputError(f"price_tolerance {self.price_tolerance!r}: expected a number > 0")
        self.products_ = _catalogue(products)
        known = self.products_[self.products_["category"].notna()]
        self._by_category = {str(c): g for c, g in known.groupby("category", sort=False)}
        return self

    def similar(self, product_id: str, k: int = 10, *, cheaper: bool = False) -> Candidates:
        """The ``k`` products most like ``product_id``; only cheaper ones if ``cheaper``."""
        k = check_k(k)
        p = str(product_id)
        if p not in self.products_.index:
            return Candidates(reason=f"unknown product {p}: not in the catalogue")
        row = self.products_.loc[p].to_dict()
        category, price = row["category"], float(row["price"])
        if category is None or (isinstance(category, float) and np.isnan(category)):
            return Candidates(reason=f"product {p} has no category: no content to compare")
        peers = self._by_category[str(category)].drop(index=p)
        prices = peers["price"].to_numpy(float)
        if cheaper:
            if np.isnan(price):
                return Candidates(reason=f"product {p} has no price: cannot find cheaper ones")
            peers, prices = peers[prices < price], prices[prices < price]
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = np.abs(np.log(prices / price)) / np.log1p(self.price_tolerance)
        scores = np.where(np.isnan(distance), 0.5, np.exp(-distance))
        order = np.lexsort((peers.index.to_numpy(str), -scores))[:k]
        if not order.size:
            return Candidates(reason=f"no other product in {category!s}" + (" is cheaper" if cheaper else ""))
        return Candidates(
            Candidate(
                str(peers.index[j]), round(float(scores[j]), 6), _price_reason(p, price, prices[j], category)
            )
            for j in order
        )

    def for_items(self, product_ids: Sequence[str], k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Content neighbours of several products, interleaved by score (each product once)."""
        k = check_k(k)
        query = list(dict.fromkeys(_ids(product_ids)))
        skip = set(query) | set(_ids(exclude))
        lists = [self.similar(p, k + len(skip)) for p in query]
        merged = sorted((c for lst in lists for c in lst if c.product_id not in skip), key=lambda c: -c.score)
        out: dict[str, Candidate] = {}
        for c in merged:
            out.setdefault(c.product_id, c)
        if not out:
            return Candidates(reason="; ".join(lst.reason for lst in lists if lst.reason) or "no neighbours")
        return Candidates(list(out.values())[:k])


def _price_reason(p: str, price: float, other: float, category: object) -> str:
    if np.isnan(price) or np.isnan(other):
        return f"also in {category}, like {p}"
    change = other / price - 1
    if abs(change) < 0.005:
        return f"similar to {p}, same price"
    return f"similar to {p}, {_fraction(abs(change))} {'cheaper' if change < 0 else 'dearer'}"


class Popularity:
    """Products by their recent interactions, weighted by kind and decayed exponentially with age.

    Parameters
    ----------
    half_life_days
        An interaction this many days before the end of the training data counts half.

    Attributes
    ----------
    scores_ : Series (product_id -> decayed weight), highest first
    categories_ : Series (product_id -> category)
    now_ : float, the moment scores are measured at (the last interaction, or ``now`` given to fit)
    """

    def __init__(self, half_life_days: float = 7.0) -> None:
        self.half_life_days = half_life_days

    def fit(self, interactions: pd.DataFrame, now: float | None = None) -> Popularity:
        frame = check_interactions(interactions)
        if not self.half_life_days > 0:
            raise BadInputError(f"half_life_days {self.half_life_days!r}: expected a number > 0")
        self.now_ = float(frame["ts"].max()) if now is None else float(now)
        if frame.empty:
            self.now_ = 0.0 if now is None else float(now)
        age_days = (self.now_ - frame["ts"].to_numpy(float)) / 86_400
        decayed = frame["weight"].to_numpy(float) * np.power(
            0.5, np.maximum(age_days, 0) / self.half_life_days
        )
        scores = pd.Series(decayed, index=frame["product_id"].astype(str)).groupby(level=0).sum()
        self.scores_ = scores.iloc[np.lexsort((scores.index.to_numpy(str), -scores.to_numpy()))]
        if "category" in frame.columns:
            self.categories_ = _catalogue(frame)["category"]
        else:
            self.categories_ = pd.Series(np.nan, index=self.scores_.index, dtype="object")
        return self

    @property
    def period_(self) -> str:
        if self.half_life_days <= 7:
            return "this week"
        if self.half_life_days <= 31:
            return "this month"
        return "lately"

    def top(self, k: int = 10, category: str | None = None, exclude: Iterable[str] = ()) -> Candidates:
        """The ``k`` most popular products, in ``category`` if given."""
        k = check_k(k)
        scores = self.scores_
        if category is not None:
            members = self.categories_.index[self.categories_.astype(str) == str(category)]
            scores = scores[scores.index.isin(members)]
            if scores.empty:
                return Candidates(reason=f"unknown category {category}: no interactions in it")
        skip = set(_ids(exclude))
        if skip:
            scores = scores[~scores.index.isin(skip)]
        where = f"in {category}" if category is not None else "in the shop"
        return Candidates(
            Candidate(str(p), round(float(s), 6), f"popular {where} {self.period_}")
            for p, s in scores.head(k).items()
            if s > 0
        )

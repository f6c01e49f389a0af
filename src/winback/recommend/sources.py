"""Candidate sources: small estimators that each propose products with a score and a plain reason.

- :class:`ItemNeighbours`: item-to-item cosine on the user x item weight matrix (co-views, co-carts,
  co-purchases), with :meth:`ItemNeighbours.learn_new` to add interactions without a full retrain;
- :class:`BasketRules`: association rules on purchase baskets (support, confidence, lift): complements;
- :class:`ContentNeighbours`: same category, nearest price, same brand: substitutes, and neighbours of
  cold items;
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

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import pairwise
from typing import NamedTuple, TypeVar

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


#: What :func:`shared_codes` keeps: (kind, ids of the arrays) -> (the arrays, the result).
_SHARED: ContextVar[dict[tuple[object, ...], tuple[tuple[object, ...], object]] | None] = ContextVar(
    "_SHARED", default=None
)

T = TypeVar("T")


@contextmanager
def shared_codes() -> Iterator[None]:
    """Within this block, :func:`_factorised` and :func:`_pairs` code each column of a frame once.

    ``Recommender.fit`` fits every source on the same frame, which nothing changes meanwhile; each source
    codes its user and product columns, and on 10M rows each coding takes about a second."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _once(kind: str, arrays: tuple[object, ...], compute: Callable[[], T]) -> T:
    """``compute()``, or within :func:`shared_codes` what it gave for these very arrays."""
    shared = _SHARED.get()
    if shared is None:
        return compute()
    key = (kind, *map(id, arrays))
    if key in shared and all(a is b for a, b in zip(shared[key][0], arrays, strict=True)):
        return shared[key][1]  # type: ignore[return-value]
    out = compute()
    shared[key] = (arrays, out)  # the arrays are kept, so their ids are not reused meanwhile
    return out


def _factorised(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``values`` (as strings) into their sorted distinct values, and those values.

    The same as ``sorted(set(_ids(values)))`` and a lookup per row, without a Python loop over the rows
    (on 10M rows that loop alone takes tens of seconds)."""

    def compute() -> tuple[np.ndarray, np.ndarray]:
        codes, uniques = pd.factorize(values.astype(str), sort=True)
        return codes.astype(np.intp, copy=False), np.asarray(uniques, dtype=object)

    return _once("codes", (values.array,), compute)


def _pairs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Each row's (customer, product) pair as a code, in the order pairs first appear; each pair's key
    ``user code * width + product code`` (codes of :func:`_factorised`); and the width."""

    def compute() -> tuple[np.ndarray, np.ndarray, int]:
        user_codes, _ = _factorised(frame["user_key"])
        item_codes, items = _factorised(frame["product_id"])
        width = max(len(items), 1)
        codes, keys = pd.factorize(user_codes.astype(np.int64) * width + item_codes)
        return codes, keys, width

    return _once("pairs", (frame["user_key"].array, frame["product_id"].array), compute)


def _strongest(frame: pd.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    """The users x items csr matrix of each pair's largest weight (NaN weights ignored)."""
    codes, keys, width = _pairs(frame)
    largest = np.full(len(keys), np.nan)
    np.fmax.at(largest, codes, frame["weight"].to_numpy(float))
    order = np.argsort(keys)
    keys = keys[order]
    indptr = np.r_[0, np.cumsum(np.bincount(keys // width, minlength=shape[0]))].astype(np.int64)
    matrix = sp.csr_matrix((largest[order], keys % width, indptr), shape=shape)
    matrix.has_canonical_format = True  # sorted by (row, column), one entry each
    return matrix


def top_indices(scores: np.ndarray, k: int, eligible: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` highest positive eligible scores, best first (ties: lower index first;
    which of equal scores at the ``k``-th place make it is as one ``np.argpartition`` picks)."""
    candidates = np.flatnonzero(scores > 0)
    candidates = candidates[eligible[candidates]]
    if candidates.size > k:
        values = scores[candidates]
        chosen = values >= _kth_highest(values, k)
        if np.count_nonzero(chosen) == k:
            candidates = candidates[chosen]
        else:  # equal scores straddle the k-th place: pick among them as one argpartition does
            candidates = candidates[np.argpartition(-values, k - 1)[:k]]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order]


def _kth_highest(values: np.ndarray, k: int) -> float:
    """The ``k``-th highest of ``values`` (``k < values.size``), exactly.

    The ``k``-th highest of an evenly strided sample is at most the ``k``-th highest of all, so the
    partition needs only the few values at or above it: on 100k+ scores several times quicker than
    one partition of all of them."""
    sample = values[:: max(1, int(np.sqrt(values.size / k)))]
    if sample.size > k:
        floor = np.partition(sample, sample.size - k)[sample.size - k]
        values = values[values >= floor]
    return float(np.partition(values, values.size - k)[values.size - k])


def _strongest_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``matrix`` (sorted rows) with each row's ``n`` largest entries only (0: unchanged); of equal
    values at the ``n``-th place the lowest columns stay."""
    lengths = np.diff(matrix.indptr)
    long_rows = np.flatnonzero(lengths > n) if n else np.zeros(0, dtype=np.intp)
    if not long_rows.size:
        return matrix
    keep = np.ones(matrix.nnz, dtype=bool)
    for row in long_rows.tolist():
        lo, hi = int(matrix.indptr[row]), int(matrix.indptr[row + 1])
        values = matrix.data[lo:hi]
        cut = np.partition(values, values.size - n)[values.size - n]
        kept = values > cut
        ties = np.flatnonzero(values == cut)[: n - int(np.count_nonzero(kept))]
        kept[ties] = True
        keep[lo:hi] = kept
    indptr = np.r_[0, np.cumsum(np.minimum(lengths, n))]  # a long row keeps exactly n
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


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
    neighbours
        The closest products each product keeps (0: all): item-kNN's usual pruning (Deshpande &
        Karypis 2004). On 10M interactions a popular product co-occurs with up to 134,000 others, and a
        customer's history has a median of 121,000 entries to sum (p99 590,000); kept to 500 each, a
        query sums at most 25,000 (p99 of the learned ``for_user`` 5.2-5.7 -> 2.4-3.4 ms). Catalogues of up
        to 500 products are not pruned. A product's list (:meth:`similar`) holds at most this many.

    Attributes
    ----------
    items_ : ndarray of product ids (column order)
    users_ : ndarray of user keys (row order)
    user_items_ : csr_matrix (users x items), the weights
    cooccurrence_ : csr_matrix (items x items), ``user_items_.T @ user_items_``
    """

    def __init__(self, shrink: float = 0.0, neighbours: int = 500) -> None:
        self.shrink = shrink
        self.neighbours = neighbours

    def fit(self, interactions: pd.DataFrame) -> ItemNeighbours:
        """Learn the co-occurrence counts from ``interactions`` (see :mod:`.interactions`)."""
        frame = check_interactions(interactions)
        if not self.shrink >= 0:
            raise BadInputError(f"shrink {self.shrink!r}: expected a number >= 0")
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 0:
            raise BadInputError(f"neighbours {self.neighbours!r}: expected an integer >= 0 (0: keep all)")
        _, self.users_ = _factorised(frame["user_key"])
        _, self.items_ = _factorised(frame["product_id"])
        self._index()
        self.user_items_ = _strongest(frame, (len(self.users_), len(self.items_)))
        self.cooccurrence_ = (self.user_items_.T @ self.user_items_).tocsr()
        self._similarity()
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
        self._similarity()
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

    def _similarity(self, block: int = 1 << 22) -> None:
        """The cosines of every co-occurring pair, computed once per fit so that a query only sums rows:
        ``count / (norm_i * norm_j + shrink)``, with the co-occurrence counts' sparsity (sorted rows)."""
        counts = self.cooccurrence_
        if not counts.has_sorted_indices:
            counts.sort_indices()
        norms = np.sqrt(np.maximum(counts.diagonal(), 0.0))
        data = np.zeros(counts.nnz)
        # By blocks of rows of about ``block`` entries: small temporaries on large catalogues.
        starts = np.arange(0, counts.nnz, block)
        cuts = np.unique(np.searchsorted(counts.indptr, starts, side="right") - 1).tolist()
        for first, last in pairwise([*cuts, counts.shape[0]] if cuts else []):
            lo, hi = counts.indptr[first], counts.indptr[last]
            rows = np.repeat(np.arange(first, last), np.diff(counts.indptr[first : last + 1]))
            denominator = norms[rows] * norms[counts.indices[lo:hi]] + self.shrink
            np.divide(counts.data[lo:hi], denominator, out=data[lo:hi], where=denominator > 0)
        self._norms = norms
        self._cosines = _strongest_per_row(
            sp.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape),
            getattr(self, "neighbours", 0),  # 0 for a model pickled before there was a limit
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.pop("_cosines", None)  # as large as the counts, and quick to recompute
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "cooccurrence_" in state:
            self._similarity()

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
        return self.query(product_ids, k, exclude, weights=weights, include_query=include_query)[0]

    def query(
        self,
        product_ids: Sequence[str],
        k: int = 10,
        exclude: Iterable[str] = (),
        *,
        weights: Sequence[float] | None = None,
        include_query: bool = False,
    ) -> tuple[Candidates, np.ndarray]:
        """:meth:`for_items`, and the score of every product (``items_`` order; zeros if none of the
        query is known): the learned ranker reads it for candidates other sources proposed."""
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
            return Candidates(reason=_unknown(query)), np.zeros(len(self.items_))
        rows = np.array([self.item_index_[p] for p in known], dtype=np.intp)
        factors = np.array([given[p] for p in known], dtype=float)
        # The query rows' entries, gathered by slicing and summed per column (on the pruned 10M-log
        # matrix 0.53 ms a query, against 0.65 ms with SciPy's row indexing and matrix-vector product).
        cosines = self._cosines
        spans = [(int(cosines.indptr[r]), int(cosines.indptr[r + 1])) for r in rows.tolist()]
        columns = np.concatenate([cosines.indices[lo:hi] for lo, hi in spans])
        lengths = np.array([hi - lo for lo, hi in spans])
        contributions = np.concatenate([cosines.data[lo:hi] for lo, hi in spans])
        contributions *= np.repeat(factors, lengths)
        scores = np.bincount(columns, weights=contributions, minlength=len(self.items_))
        eligible = np.ones(len(self.items_), dtype=bool)
        if not include_query:
            eligible[rows] = False
        for p in exclude:
            if str(p) in self.item_index_:
                eligible[self.item_index_[str(p)]] = False
        top = top_indices(scores, k, eligible)
        if not top.size:
            reason = f"no other product shares customers with {', '.join(query[:3])}"
            return Candidates(reason=reason), scores
        # The query item that gave each most: the largest contribution among the entries in its column
        # (the first query item of equal ones).
        place = np.full(len(self.items_), -1, dtype=np.intp)
        place[top] = np.arange(top.size)
        at = place[columns]
        hit = np.flatnonzero(at >= 0)
        source = np.repeat(np.arange(len(rows)), lengths)[hit]
        order = np.lexsort((source, -contributions[hit], at[hit]))  # per top item: largest, then first
        first = np.r_[True, np.diff(at[hit][order]) != 0]
        strongest = np.zeros(top.size, dtype=np.intp)
        strongest[at[hit][order][first]] = source[order][first]
        found = Candidates(
            Candidate(str(self.items_[j]), round(float(scores[j]), 6), self._reason(j, rows[s]))
            for j, s in zip(top, strongest, strict=True)
        )
        return found, scores

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
    one day (``baskets`` says which columns count, in that order). For a rule, ``support`` is the share of
    baskets with both, ``confidence`` the share of baskets with A that also hold B, ``lift`` the
    confidence over B's own share of baskets (above 1: bought together more often than by chance).

    With ``across_categories`` only rules between products of different (known) categories are kept:
    complements (a phone, then its case) rather than the alternatives a customer compares within one
    category. On visits (``kinds`` with views, ``baskets=("session_key",)``) that finds the products a
    shop links from a product's page, which orders alone are too few to show (on the simulator,
    ``bench/recommend_eval.py``: the cart use without them held 0.7% of a product's true complements in
    its top 3, these rules alone 49%).

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
    baskets
        The columns that make a basket, first given first (``order_id``, ``session_key``); a row with
        none of them is in its user's basket of the day.
    across_categories
        Keep only rules between products of different known categories.

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
        baskets: tuple[str, ...] = ("order_id", "session_key"),
        across_categories: bool = False,
    ) -> None:
        self.min_support = min_support
        self.min_count = min_count
        self.min_confidence = min_confidence
        self.kinds = kinds
        self.baskets = baskets
        self.across_categories = across_categories

    def fit(self, interactions: pd.DataFrame) -> BasketRules:
        frame = check_interactions(interactions)
        if not 0 <= self.min_support <= 1 or not 0 <= self.min_confidence <= 1:
            raise BadInputError("min_support and min_confidence: expected shares from 0 to 1")
        if self.min_count < 1:
            raise BadInputError(f"min_count {self.min_count!r}: expected an integer >= 1")
        unknown = set(self.baskets) - {"order_id", "session_key"}
        if unknown:
            raise BadInputError(f"baskets {sorted(unknown)}: expected 'order_id' and/or 'session_key'")
        chosen = frame["kind"].isin(self.kinds).to_numpy()
        basket_index, self.n_baskets_ = self._baskets_of(frame, chosen)
        all_items, every_item = _factorised(frame["product_id"])
        present = np.bincount(all_items[chosen], minlength=len(every_item)) > 0
        item_index = (np.cumsum(present) - 1)[all_items[chosen]]
        items = every_item[present]
        self.items_ = items
        # One entry per (basket, item): the conversion sums repeats, which are then counted once.
        matrix = sp.csr_matrix(
            (np.ones(basket_index.size), (basket_index, item_index)), shape=(self.n_baskets_, len(items))
        )
        matrix.data[:] = 1.0
        item_counts = np.asarray(matrix.sum(axis=0)).ravel()
        if self.across_categories:
            codes = pd.factorize(_catalogue(frame)["category"].reindex(items))[0]  # -1: unknown
            # Only baskets with products of two known categories or more can hold a rule: the others
            # (most visits of a one-category shopper) are left out of the product below.
            matrix = matrix[_baskets_across(matrix, codes)]
        counts = (matrix.T @ matrix).tocoo()
        # The cheap tests first, on every pair; the measures only on the pairs that pass them.
        first = (counts.row != counts.col) & (counts.data >= self.min_count)
        a, b, n = counts.row[first], counts.col[first], counts.data[first]
        if self.across_categories:
            across = (codes[a] >= 0) & (codes[b] >= 0) & (codes[a] != codes[b])
            a, b, n = a[across], b[across], n[across]
        support = n / max(self.n_baskets_, 1)
        confidence = n / item_counts[a]
        lift = confidence / (item_counts[b] / max(self.n_baskets_, 1))
        keep = (support >= self.min_support) & (confidence >= self.min_confidence)
        a, b, n, support, confidence, lift = (x[keep] for x in (a, b, n, support, confidence, lift))
        # By antecedent, best confidence, then lift, then consequent (codes sort as the ids do).
        order = np.lexsort((b, -lift, -confidence, a))
        a, b = a[order], b[order]
        self.rules_ = pd.DataFrame(
            {
                "antecedent": items[a],
                "consequent": items[b],
                "count": n[order].astype(int),
                "support": support[order],
                "confidence": confidence[order],
                "lift": lift[order],
            }
        )
        starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if a.size else np.array([], np.intp)
        ends = np.r_[starts[1:], a.size] if a.size else starts
        consequents = self.rules_["consequent"].to_numpy(str)
        confidence, lift = confidence[order], lift[order]
        self._by_antecedent = {
            str(items[a[i]]): (consequents[i:j], confidence[i:j], lift[i:j])
            for i, j in zip(starts.tolist(), ends.tolist(), strict=True)
        }
        return self

    def _baskets_of(self, frame: pd.DataFrame, chosen: np.ndarray) -> tuple[np.ndarray, int]:
        """The basket of each chosen row as a code, and the number of baskets: the first of
        :attr:`baskets` a row has (each column's values apart), else its user's day."""
        code = np.full(int(np.count_nonzero(chosen)), -1, dtype=np.int64)
        n = 0
        for column in self.baskets:  # an order beats a session beats a day
            if column not in frame.columns:
                continue
            values, names = pd.factorize(frame[column])
            values = values[chosen]
            given = (code < 0) & (values >= 0)
            code[given] = n + values[given]
            n += len(names)
        missing = code < 0
        if missing.any():
            users, _ = _factorised(frame["user_key"])
            day = (frame["ts"].to_numpy(float)[chosen][missing] // 86_400).astype(np.int64)
            code[missing] = n + pd.factorize(users[chosen][missing].astype(np.int64) * (1 << 24) + day)[0]
        # Renumber: only the baskets some row is in count.
        code, kept = pd.factorize(code)
        return code.astype(np.int64), len(kept)

    def for_items(self, product_ids: Sequence[str], k: int = 10, exclude: Iterable[str] = ()) -> Candidates:
        """Complements of the ``product_ids`` (a cart, a customer's purchases): the consequents of
        their rules, by the best confidence (then lift) any of them gives."""
        k = check_k(k)
        query = list(dict.fromkeys(_ids(product_ids)))
        found = [(p, *self._by_antecedent[p]) for p in query if p in self._by_antecedent]
        if not found:
            named = ", ".join(query[:3]) or "nothing"
            return Candidates(reason=f"no rules yet: {named} not often {self._verb} with another product")
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
                f"often {self._verb} with {antecedent} "
                f"({_fraction(conf)} of its {self._baskets}, lift {lf:.1f})",
            )
            for c, (conf, lf, antecedent) in ranked
        )

    def similar(self, product_id: str, k: int = 10) -> Candidates:
        return self.for_items([product_id], k)

    @property
    def _verb(self) -> str:
        """What the rules' baskets record: "bought", "carted" or "viewed" (with the widest kind)."""
        return "viewed" if "view" in self.kinds else "carted" if "cart" in self.kinds else "bought"

    @property
    def _baskets(self) -> str:
        return "visits" if tuple(self.baskets) == ("session_key",) else "baskets"


#: What the content neighbours know of a product (``brand`` optional), and when (``ts``, optional).
CATALOGUE_COLUMNS = ("product_id", "category", "brand", "price", "ts")


def _baskets_across(matrix: sp.csr_matrix, codes: np.ndarray) -> np.ndarray:
    """Rows of the baskets x items ``matrix`` holding items of two or more known categories (``codes``
    per item, -1 unknown)."""
    category = codes[matrix.indices]
    known = category >= 0
    basket = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))[known]
    per_basket = sp.csr_matrix(
        (np.ones(basket.size), (basket, category[known])),
        shape=(matrix.shape[0], int(codes.max(initial=-1)) + 1),
    )  # repeats are summed: one entry per (basket, category)
    return np.flatnonzero(np.diff(per_basket.indptr) >= 2)


def catalogue_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``frame`` (interactions or a product table) that describe products."""
    return frame[[c for c in CATALOGUE_COLUMNS if c in frame.columns]]


def _catalogue(frame: pd.DataFrame) -> pd.DataFrame:
    """The last known category, brand and price of each product (from interactions or a product table;
    within :func:`shared_codes` computed once per frame)."""
    if "product_id" not in frame.columns or "category" not in frame.columns:
        raise BadInputError(
            "products: missing columns; expected 'product_id', 'category' and 'price' (and 'brand' if known)"
        )
    # Keyed on the id and category columns (their arrays keep their identity; a float column's do not):
    # within shared_codes nothing changes the frame.
    return _once(
        "catalogue", (frame["product_id"].array, frame["category"].array), lambda: _last_known(frame)
    )


def _last_known(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`_catalogue`, computed."""
    codes, ids = _factorised(frame["product_id"])
    # The last non-null value of each column per product, in time order (the table's order without ts).
    order = (
        np.argsort(frame["ts"].to_numpy(float), kind="stable")
        if "ts" in frame.columns
        else np.arange(len(frame))
    )
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(len(frame))
    columns = {}
    for column in ("category", "brand", "price"):
        if column not in frame.columns:
            continue
        values = frame[column].reset_index(drop=True)
        valid = values.notna().to_numpy()
        last = np.full(len(ids), -1, dtype=np.int64)
        if valid.any():  # a group-by: many times quicker than np.maximum.at on large logs
            latest = pd.Series(rank[valid]).groupby(codes[valid], sort=False).max()
            last[latest.index.to_numpy()] = latest.to_numpy()
        rows = np.where(last >= 0, order[np.maximum(last, 0)], -1)
        columns[column] = values.reindex(rows).set_axis(ids)  # row -1: no value (NaN)
    out = pd.DataFrame(columns)
    out.index.name = "product_id"
    if "price" not in out.columns:
        out["price"] = np.nan
    if "brand" not in out.columns:
        out["brand"] = pd.Series(None, index=out.index, dtype="object")
    return out


def _first_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first (equal scores: lower position first)."""
    if scores.size > k:
        kth = np.partition(-scores, k - 1)[k - 1]
        candidates = np.flatnonzero(-scores <= kth)  # the top k and every tie of the k-th
    else:
        candidates = np.arange(scores.size)
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


class ContentNeighbours:
    """Products of the same category, nearest in price, of the same brand: substitutes, and the
    neighbours of cold items.

    The score of a product ``j`` for ``i`` is ``exp(-|ln(price_j / price_i)| / ln(1 + price_tolerance))``:
    1 at the same price, 1/e at ``price_tolerance`` dearer (or as much cheaper); 0.5 when a price is
    unknown; times ``1 / (1 + brand_weight)`` when ``j`` is not known to be of ``i``'s brand. So at the
    same price a product of the same brand comes first, and "same brand as X" is its reason.

    Parameters
    ----------
    price_tolerance
        Relative price difference at which the score falls to 1/e.
    brand_weight
        How much more a product of the same brand counts (0: brand ignored).

    Attributes
    ----------
    products_ : DataFrame indexed by product_id (category, brand, price)
    """

    def __init__(self, price_tolerance: float = 0.5, brand_weight: float = 0.5) -> None:
        self.price_tolerance = price_tolerance
        self.brand_weight = brand_weight

    def fit(self, products: pd.DataFrame) -> ContentNeighbours:
        """Learn categories and prices from a product table or interactions (last value seen)."""
        if not isinstance(products, pd.DataFrame):
            raise BadInputError(f"products: expected a pandas DataFrame, got {type(products).__name__}")
        if not self.price_tolerance > 0:
            raise BadInputError(f"price_tolerance {self.price_tolerance!r}: expected a number > 0")
        if not self.brand_weight >= 0:
            raise BadInputError(f"brand_weight {self.brand_weight!r}: expected a number >= 0")
        self.products_ = _catalogue(products)
        # Plain arrays, per product and per category (products sorted by id): a query touches no pandas.
        self._ids = self.products_.index.to_numpy(object)
        self._prices = self.products_["price"].to_numpy(float)
        self._categories = self.products_["category"].to_numpy(object)
        brands = self.products_["brand"].astype("object").where(self.products_["brand"].notna(), None)
        self._brands = brands.to_numpy(object)
        self._row = {p: i for i, p in enumerate(self._ids.tolist())}
        known = np.flatnonzero(self.products_["category"].notna().to_numpy())
        codes, names = pd.factorize(self.products_["category"].iloc[known])
        grouped = known[np.argsort(codes, kind="stable")]
        bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(names)))]
        self._by_category: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for g, name in enumerate(names):
            rows = grouped[bounds[g] : bounds[g + 1]]
            self._by_category[str(name)] = (self._ids[rows], self._prices[rows], self._brands[rows])
        return self

    def similar(self, product_id: str, k: int = 10, *, cheaper: bool = False) -> Candidates:
        """The ``k`` products most like ``product_id``; only cheaper ones if ``cheaper``."""
        k = check_k(k)
        p = str(product_id)
        row = self._row.get(p)
        if row is None:
            return Candidates(reason=f"unknown product {p}: not in the catalogue")
        category, price = self._categories[row], float(self._prices[row])
        if category is None or (isinstance(category, float) and np.isnan(category)):
            return Candidates(reason=f"product {p} has no category: no content to compare")
        ids, all_prices, all_brands = self._by_category[str(category)]
        if cheaper:
            if np.isnan(price):
                return Candidates(reason=f"product {p} has no price: cannot find cheaper ones")
            keep = all_prices < price
        else:
            keep = np.ones(ids.size, dtype=bool)
        itself = np.searchsorted(ids, p)
        if itself < ids.size and ids[itself] == p:
            keep[itself] = False
        peers = np.flatnonzero(keep)
        prices = all_prices[peers]
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = np.abs(np.log(prices / price)) / np.log1p(self.price_tolerance)
        brand = self._brands[row]
        same = all_brands[peers] == brand if brand is not None else np.zeros(peers.size, dtype=bool)
        scores = np.where(np.isnan(distance), 0.5, np.exp(-distance)) / np.where(
            same, 1.0, 1 + self.brand_weight
        )
        order = _first_k(scores, k)  # peers are sorted by id: equal scores go to the smaller id
        if not order.size:
            return Candidates(reason=f"no other product in {category!s}" + (" is cheaper" if cheaper else ""))
        return Candidates(
            Candidate(
                str(ids[peers[j]]),
                round(float(scores[j]), 6),
                _price_reason(
                    p, price, prices[j], category, brand if same[j] and self.brand_weight else None
                ),
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


def _price_reason(p: str, price: float, other: float, category: object, brand: object = None) -> str:
    """Why a content neighbour: "similar to p1, 12% cheaper", "same brand as p1 (Acme), same price"..."""
    like = f"same brand as {p} ({brand})" if brand is not None else f"similar to {p}"
    if np.isnan(price) or np.isnan(other):
        return f"{like}, also in {category}" if brand is not None else f"also in {category}, like {p}"
    change = other / price - 1
    if abs(change) < 0.005:
        return f"{like}, same price"
    return f"{like}, {_fraction(abs(change))} {'cheaper' if change < 0 else 'dearer'}"


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
        codes, ids = _factorised(frame["product_id"])
        summed = pd.Series(decayed).groupby(codes, sort=True).sum().to_numpy()
        order = np.lexsort((np.arange(ids.size), -summed))  # ids are sorted: equal scores by id
        self.scores_ = pd.Series(summed[order], index=pd.Index(ids[order], name="product_id"))
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

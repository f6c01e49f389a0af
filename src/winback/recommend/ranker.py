"""The recommender: candidate sources blended per use, with the exclusions a message needs.

Uses (:data:`USES`):

- ``winback``: next likely purchases of a lapsing customer: popular products of the categories they
  browse (:class:`~winback.recommend.affinity.CategoryAffinity`), items due to be bought again from their
  own rhythm (:class:`~winback.recommend.repeat.RepeatPurchases`), the item-to-item neighbours of their
  history (products they chose may come back), their matrix-factorisation taste
  (:class:`~winback.recommend.factors.ALSFactors`) and complements of what they bought.
- ``cart``: for an abandoned cart: complements (basket rules on orders, products of other categories
  viewed in the same visits, co-chosen products) and substitutes (same category, near in price, the
  same brand first; only cheaper ones for a price-sensitive customer); never its own items.
- ``similar``: for one product: co-chosen products, then content neighbours (the only source for a new
  product without interactions).
- ``session``: a new visitor known only by what they viewed: neighbours and categories of those views.

Each source's list is scaled by its best score and weighted (:data:`DEFAULT_WEIGHTS`); a product's score
is the sum over sources, its reason that of the source that gave it most. The ``winback`` use is
ordered instead by a ranker learnt from the shop's own purchases where there are enough of them
(:meth:`Recommender._learn_ranker`, :mod:`.slate`, :mod:`.learned`): LightGBM corrects the blend's score
from every source's score and rank and what is known of the product and the customer; a product's
reason is then that of the proposing source whose absence would lower its score most.

Every use leaves out what the customer bought in the last ``recent_days`` unless it is replenishable,
and products known to be out of stock. A question that cannot be answered (an unknown customer, cart or
product) gets an empty list with the reason; a ``k`` out of range is a usage error.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from winback.errors import BadInputError
from winback.recommend.affinity import CategoryAffinity
from winback.recommend.factors import ALSFactors
from winback.recommend.interactions import check_interactions
from winback.recommend.learned import LearnedRanker
from winback.recommend.repeat import RepeatPurchases
from winback.recommend.slate import (
    ALS_LIST_PRODUCTS,
    FEATURES,
    HISTORY_ITEMS,
    SOURCE_COLUMNS,
    SOURCES,
    ItemStats,
    Slate,
    ago,
    build_slate,
)
from winback.recommend.sources import (
    MAX_K,
    BasketRules,
    Candidate,
    Candidates,
    ContentNeighbours,
    ItemNeighbours,
    Popularity,
    _factorised,
    _pairs,
    catalogue_rows,
    check_k,
    shared_codes,
)

USES = ("winback", "cart", "similar", "session")

log = logging.getLogger(__name__)

DAY = 86_400.0

#: Weight of each source's (best-scaled) list, per use.
DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    "winback": {"left": 3.0, "affinity": 1.0, "repeat": 1.0, "neighbours": 0.1, "als": 0.0, "rules": 0.1},
    "cart": {"rules": 1.0, "neighbours": 0.8, "substitutes": 0.6, "affinity": 0.3, "complements": 1.0},
    "similar": {"neighbours": 1.0, "als": 0.5, "content": 0.4},
    "session": {"neighbours": 1.0, "affinity": 0.3, "als": 0.3, "complements": 0.5},
}

#: The ``winback`` weights where most products have no category: category affinity is then little more
#: than popularity, and the customer's own history and its neighbours carry the signal.
WITHOUT_CATEGORIES: dict[str, float] = {
    "left": 3.0,
    "affinity": 0.3,
    "repeat": 1.0,
    "neighbours": 1.0,
    "als": 0.5,
    "rules": 0.1,
}

#: The complements source: products of other categories viewed in the same visits (see BasketRules).
COMPLEMENT_RULES: dict[str, Any] = {
    "kinds": ("view", "cart", "purchase"),
    "baskets": ("session_key",),
    "across_categories": True,
    "min_count": 3,
}

#: A source's list, or the call that makes it (see :func:`_blend`).
Asked = Candidates | Callable[[], Candidates]

#: Popular products kept for filling short lists.
FALLBACK_DEPTH = 200

#: How the ``winback`` use is ranked: ``auto`` learns a ranker when the data allow, ``blend`` never does.
RANKERS = ("auto", "learned", "blend")


@dataclass(frozen=True)
class History:
    """A customer's distinct products, most recent first."""

    products: np.ndarray
    weights: np.ndarray  # summed interaction weights
    last_ts: np.ndarray
    last_bought: np.ndarray  # NaN if never bought
    last_carted: np.ndarray  # NaN if never added to a cart


class Histories:
    """Every customer's products (weights summed, last interaction, cart and purchase), stored as arrays
    per customer so a query slices rather than filters; :meth:`add` folds in new interactions.

    A customer's products are ordered by last interaction, most recent first; products last seen at the
    same moment by when the customer first interacted with them (the order of the log)."""

    def __init__(self, interactions: pd.DataFrame) -> None:
        _, users = _factorised(interactions["user_key"])
        _, items = _factorised(interactions["product_id"])
        pair_codes, pairs, width = _pairs(interactions)
        ts = interactions["ts"].to_numpy(float)
        weight = pd.Series(interactions["weight"].to_numpy(float)).groupby(pair_codes, sort=True).sum()
        last_ts = np.full(len(pairs), np.nan)  # maxima ignoring NaN, as a group-by's
        np.fmax.at(last_ts, pair_codes, ts)
        last_bought = np.full(len(pairs), np.nan)
        bought = (interactions["kind"] == "purchase").to_numpy()
        np.fmax.at(last_bought, pair_codes[bought], ts[bought])
        last_carted = np.full(len(pairs), np.nan)
        carted = (interactions["kind"] == "cart").to_numpy()
        np.fmax.at(last_carted, pair_codes[carted], ts[carted])
        owner = pairs // width
        order = np.lexsort((-last_ts, owner))  # stable: equal moments in the order of the log
        self._users = users
        self.index_ = {u: i for i, u in enumerate(users.tolist())}
        self._ptr = np.r_[0, np.cumsum(np.bincount(owner, minlength=len(users)))]
        self._products = items[pairs[order] % width]
        self._weights = weight.to_numpy(float)[order]
        self._last_ts = last_ts[order]
        self._last_bought = last_bought[order]
        self._last_carted = last_carted[order]
        self._seen = order.astype(np.int64)  # first interaction with the product: ties in last_ts
        self._next = len(pairs)

    @staticmethod
    def _stats(frame: pd.DataFrame) -> pd.DataFrame:
        bought = frame["ts"].where(frame["kind"] == "purchase")
        carted = frame["ts"].where(frame["kind"] == "cart")
        return pd.DataFrame(
            {"weight": frame["weight"], "last_ts": frame["ts"], "last_bought": bought, "last_carted": carted}
        ).reset_index(drop=True)

    def add(self, interactions: pd.DataFrame) -> None:
        """Fold in new interactions: the customers in them get their products merged and re-ordered."""
        if interactions.empty:
            return
        keys = [
            interactions["user_key"].astype(str).rename("user_key").reset_index(drop=True),
            interactions["product_id"].astype(str).rename("product_id").reset_index(drop=True),
        ]
        new = self._stats(interactions).groupby(keys, sort=False).agg(**_PAIR_STATS).reset_index()
        new["seen"] = self._next + np.arange(len(new), dtype=np.int64)
        self._next += len(new)
        touched = sorted(set(new["user_key"]))
        both = pd.concat([self._rows_of(touched), new], ignore_index=True)
        # Old and new rows of a pair: sums and maxima, as one group-by over both would give.
        merged = (
            both.groupby(["user_key", "product_id"], sort=False)
            .agg(**_PAIR_STATS, seen=("seen", "min"))
            .reset_index()
        )
        merged = merged.iloc[
            np.lexsort(
                (
                    merged["seen"].to_numpy(),
                    -merged["last_ts"].to_numpy(float),
                    np.searchsorted(np.array(touched, dtype=object), merged["user_key"].to_numpy(object)),
                )
            )
        ]
        self._splice(touched, merged)

    def _rows_of(self, users: list[str]) -> pd.DataFrame:
        """The stored rows of ``users`` (none for a new customer), customer by customer."""
        known = [u for u in users if u in self.index_]
        at = np.array([self.index_[u] for u in known], dtype=np.intp)
        lo, hi = self._ptr[at], self._ptr[at + 1]
        rows = np.concatenate([np.arange(0)] + [np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        return pd.DataFrame(
            {
                "user_key": np.repeat(np.array(known, dtype=object), hi - lo),
                "product_id": self._products[rows],
                "weight": self._weights[rows],
                "last_ts": self._last_ts[rows],
                "last_bought": self._last_bought[rows],
                "last_carted": self._last_carted[rows],
                "seen": self._seen[rows],
            }
        )

    def _splice(self, touched: list[str], merged: pd.DataFrame) -> None:
        """Replace the rows of the ``touched`` customers (sorted) by ``merged`` (grouped by customer in
        that order), inserting new customers where their key sorts."""
        columns = {
            "_products": merged["product_id"].to_numpy(object),
            "_weights": merged["weight"].to_numpy(float),
            "_last_ts": merged["last_ts"].to_numpy(float),
            "_last_bought": merged["last_bought"].to_numpy(float),
            "_last_carted": merged["last_carted"].to_numpy(float),
            "_seen": merged["seen"].to_numpy(np.int64),
        }
        lengths = np.bincount(
            np.searchsorted(np.array(touched, dtype=object), merged["user_key"].to_numpy(object)),
            minlength=len(touched),
        )
        bounds = np.r_[0, np.cumsum(lengths)]
        position = np.searchsorted(self._users, np.array(touched, dtype=object))  # where each sorts
        known = np.array([u in self.index_ for u in touched], dtype=bool)
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        cursor = 0
        for j in range(len(touched)):
            start = self._ptr[position[j]]
            for name, values in columns.items():
                pieces[name].append(getattr(self, name)[cursor:start])
                pieces[name].append(values[bounds[j] : bounds[j + 1]])
            cursor = self._ptr[position[j] + 1] if known[j] else start
        for name in columns:
            pieces[name].append(getattr(self, name)[cursor:])
            setattr(self, name, np.concatenate(pieces[name]))
        sizes = np.diff(self._ptr)
        sizes[position[known]] = lengths[known]
        fresh = ~known
        self._users = np.insert(self._users, position[fresh], np.array(touched, dtype=object)[fresh])
        sizes = np.insert(sizes, position[fresh], lengths[fresh])
        self._ptr = np.r_[0, np.cumsum(sizes)]
        if fresh.any():
            self.index_ = {u: i for i, u in enumerate(self._users.tolist())}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_last_carted" not in state:  # saved before carts were kept: none known
            self._last_carted = np.full(len(self._products), np.nan)

    def __contains__(self, user_key: object) -> bool:
        return str(user_key) in self.index_

    def __len__(self) -> int:
        return len(self.index_)

    def of(self, user_key: str) -> History | None:
        i = self.index_.get(str(user_key))
        if i is None:
            return None
        lo, hi = self._ptr[i], self._ptr[i + 1]
        return History(
            self._products[lo:hi],
            self._weights[lo:hi],
            self._last_ts[lo:hi],
            self._last_bought[lo:hi],
            self._last_carted[lo:hi],
        )


#: How the interactions of one customer and product sum up.
_PAIR_STATS = {
    "weight": ("weight", "sum"),
    "last_ts": ("last_ts", "max"),
    "last_bought": ("last_bought", "max"),
    "last_carted": ("last_carted", "max"),
}


def _open_carts(
    frame: pd.DataFrame, since: float
) -> tuple[dict[str, tuple[str, list[str]]], dict[str, float]]:
    """Sessions with an add to cart and no purchase, active since ``since``: cart id -> (user, items),
    and cart id -> time of its last add."""
    session = frame["session_key"]
    if session.isna().all():
        return {}, {}
    recent = (frame["ts"] >= since).to_numpy()
    kind = frame["kind"]
    bought = session[recent & (kind == "purchase").to_numpy()].dropna().unique()
    open_adds = recent & (kind == "cart").to_numpy() & session.notna().to_numpy()
    open_adds[open_adds] = ~session[open_adds].isin(bought).to_numpy()
    if not open_adds.any():
        return {}, {}
    adds = frame.loc[open_adds, ["session_key", "user_key", "product_id", "ts"]]
    # One group per (session, user), in the order of the log; each cart's products once, in the order
    # they were added.
    session_codes, session_keys = pd.factorize(adds["session_key"])
    user_codes, user_keys = pd.factorize(adds["user_key"])
    sessions, users = np.asarray(session_keys, dtype=object), np.asarray(user_keys, dtype=object)
    group, pairs = pd.factorize(session_codes.astype(np.int64) * len(users) + user_codes)
    product_codes, products = pd.factorize(adds["product_id"].astype(str))
    first = ~pd.Series(group.astype(np.int64) * len(products) + product_codes).duplicated().to_numpy()
    rows = np.flatnonzero(first)
    rows = rows[np.argsort(group[rows], kind="stable")]
    bounds = np.r_[0, np.cumsum(np.bincount(group[rows], minlength=len(pairs)))]
    items = np.asarray(products, dtype=object)[product_codes[rows]].tolist()
    last_add = adds["ts"].groupby(group).max().to_numpy(float)
    carts: dict[str, tuple[str, list[str]]] = {}
    seen: dict[str, float] = {}
    for g, pair in enumerate(pairs.tolist()):
        cart_id, user = str(sessions[pair // len(users)]), str(users[pair % len(users)])
        carts[cart_id] = (user, items[bounds[g] : bounds[g + 1]])
        seen[cart_id] = float(last_add[g])
    return carts, seen


P = ParamSpec("P")
R = TypeVar("R")

_controller: ThreadpoolController | None = None


def _one_blas_thread(
    query: Callable[Concatenate[Recommender, P], R],
) -> Callable[Concatenate[Recommender, P], R]:
    """Run ``query`` with BLAS on one thread: a query's matrix-vector products are small, and a
    threaded BLAS spends more on waking and waiting for its threads than it saves, many times more
    on busy cores (ALS scores of 200k products: ~1.4 ms on one thread, ~24 ms on two busy ones)."""

    @functools.wraps(query)
    def limited(self: Recommender, *args: P.args, **kwargs: P.kwargs) -> R:
        global _controller
        if _controller is None:
            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            return query(self, *args, **kwargs)

    return limited


def _cores() -> int:
    """The CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _stock_set(stock: Mapping[str, object] | pd.Series | None) -> set[str]:
    """Products out of stock: a mapping product -> units (or in-stock flag); 0 / False is out."""
    if stock is None:
        return set()
    items = stock.items() if isinstance(stock, Mapping) else pd.Series(stock).items()
    out = set()
    for product, value in items:
        if isinstance(value, bool | np.bool_):
            available = bool(value)
        else:
            try:
                available = float(value) > 0  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise BadInputError(
                    f"stock of product {product}: expected a number of units or true/false, got {value!r}"
                ) from None
        if not available:
            out.add(str(product))
    return out


class Recommender:
    """All candidate sources, fitted once, blended per use (:data:`USES`).

    Parameters
    ----------
    weights
        Source weights per use; :data:`DEFAULT_WEIGHTS` for any use not given (for ``winback``,
        :data:`WITHOUT_CATEGORIES` when fewer than half the products have a category).
    recent_days
        A product the customer bought this recently is not proposed again, unless replenishable.
    cart_days
        Carts (sessions with an add and no purchase) active this recently can be asked about by id, and
        their items not bought since come back in the customer's ``winback`` list.
    left_half_life_days
        Recency half-life of those left items' scores: a cart left yesterday counts more than one of
        last month.
    half_life_days
        Recency half-life of the popularity fallback.
    factors, als_iterations
        Latent factors of the ALS source (0 leaves it out) and its alternating steps (8, about half of
        implicit's 15, so that 10M interactions train in under a minute; the recall measured by
        bench/recommend_eval.py did not drop).
    price_sensitive_below
        A customer whose carted products cost, in the median, less than this share of their category's
        median price is treated as price-sensitive: substitutes for their cart are cheaper ones.
    threads
        Cores the fit may use (0: all): ALS learns on all but two of them (at least one) in a thread of
        its own, and category affinity in another, while the other sources fit beside them; with one
        core, one after another.
    ranker
        How the ``winback`` use orders its candidates: ``auto`` learns a ranker (:mod:`.learned`) from
        the purchases of the last ``window_days`` before the end of the data, with the sources fitted on
        what came before, and falls back to the fixed blend when there are too few of them to learn
        from (or when the learned order does worse than the blend on customers held out);
        ``learned`` keeps the learned ranker whenever there are enough of them, however it compares;
        ``blend`` always uses the fixed weights.
    window_days, windows
        The label windows of the learned ranker: ``windows`` of ``window_days`` each, the last ending
        at the end of the data and each earlier one ``window_days / 2`` before the next.
    min_customers
        Customers of the label window, with a purchase among their candidates, needed to learn.
    max_customers
        At most this many customers' lists are learnt from, in all windows (a random sample of each
        window's customers, the last window first).
    sample_interactions
        Above this many interactions before a label window, the sources the ranker learns from are
        fitted on a random sample of customers (the window's sampled customers, and others) of about
        this size, so that learning the ranker adds a fraction of the fit's time on large logs. Their
        statistics are then noisier than those of the sources it serves with (measured below).
    depth
        Candidates asked of each source for the learned ranker (plus the products left out).

    Attributes
    ----------
    ranker_ : LearnedRanker or None, the learned ranker of the ``winback`` use (None: the fixed blend)
    ranker_reason_ : str, why it was learned or not, with its validation figures
    ranker_report_ : dict, the learning's figures (customers, candidates, recall of the candidates,
        recall@10 of the learned order and of the blend on the customers held out)
    """

    def __init__(
        self,
        weights: Mapping[str, Mapping[str, float]] | None = None,
        recent_days: float = 30.0,
        cart_days: float = 30.0,
        left_half_life_days: float = 3.0,
        half_life_days: float = 14.0,
        factors: int = 32,
        als_iterations: int = 8,
        price_sensitive_below: float = 0.85,
        threads: int = 0,
        ranker: str = "auto",
        window_days: float = 30.0,
        min_customers: int = 50,
        max_customers: int = 2000,
        sample_interactions: int = 300_000,
        depth: int = 30,
        windows: int = 3,
    ) -> None:
        self.weights = weights
        self.recent_days = recent_days
        self.cart_days = cart_days
        self.left_half_life_days = left_half_life_days
        self.half_life_days = half_life_days
        self.factors = factors
        self.als_iterations = als_iterations
        self.price_sensitive_below = price_sensitive_below
        self.threads = threads
        self.ranker = ranker
        self.window_days = window_days
        self.min_customers = min_customers
        self.max_customers = max_customers
        self.sample_interactions = sample_interactions
        self.depth = depth
        self.windows = windows

    # ----------------------------------------------------------------- fitting
    def fit(
        self,
        interactions: pd.DataFrame,
        products: pd.DataFrame | None = None,
        stock: Mapping[str, object] | pd.Series | None = None,
    ) -> Recommender:
        """Fit every source on ``interactions`` (:mod:`.interactions`).

        ``products`` (``product_id``, ``category``, ``price``) adds products without interactions to the
        content neighbours; ``stock`` (product -> units or in-stock flag) marks products out of stock.
        """
        frame = check_interactions(interactions)
        if frame.empty:
            raise BadInputError(
                "interactions: none to learn from (no views, carts or purchases before as-of)"
            )
        if self.ranker not in RANKERS:
            raise BadInputError(f"ranker {self.ranker!r}: expected one of {', '.join(RANKERS)}")
        with shared_codes():  # every source codes the same user and product columns
            return self._fit(frame, products, stock)

    def _fit(
        self,
        frame: pd.DataFrame,
        products: pd.DataFrame | None,
        stock: Mapping[str, object] | pd.Series | None,
    ) -> Recommender:
        weights = {use: dict(DEFAULT_WEIGHTS[use]) for use in USES}
        item_codes, items = _factorised(frame["product_id"])
        with_category = np.bincount(item_codes[frame["category"].notna().to_numpy()], minlength=len(items))
        categorised = np.count_nonzero(with_category) / len(items)
        if categorised < 0.5:
            weights["winback"] = dict(WITHOUT_CATEGORIES)
        for use, given in (self.weights or {}).items():
            if use not in weights:
                raise BadInputError(f"weights: unknown use {use!r}; expected one of {', '.join(USES)}")
            weights[use].update(given)
        self.weights_ = weights
        self.now_ = float(frame["ts"].max())
        _, users = _factorised(frame["user_key"])  # coded before ALS's thread reads the shared codes
        wants_als = self.factors > 0 and len(users) >= 2 and len(items) > self.factors
        self.als_list_ = wants_als and len(items) <= ALS_LIST_PRODUCTS
        # ALS and category affinity, the longest parts, learn in threads of their own beside the others
        # (which are mostly single-threaded NumPy, pandas and SciPy, releasing the GIL as they do).
        threads = self.threads or _cores()
        als = (
            ALSFactors(factors=self.factors, iterations=self.als_iterations, threads=max(threads - 2, 1))
            if wants_als
            else None
        )
        with ThreadPoolExecutor(2, thread_name_prefix="winback-fit") as pool:
            learning = affinity = None
            if threads > 1:  # category affinity too, the longest of the others
                affinity = pool.submit(contextvars.copy_context().run, CategoryAffinity().fit, frame)
                if als is not None:
                    learning = pool.submit(contextvars.copy_context().run, als.fit, frame)
            self._fit_rest(frame, products, stock, affinity)
            self.als_ = learning.result() if learning else als.fit(frame) if als else None
        return self

    def _fit_rest(
        self,
        frame: pd.DataFrame,
        products: pd.DataFrame | None,
        stock: Mapping[str, object] | pd.Series | None,
        affinity: Future[CategoryAffinity] | None = None,
    ) -> None:
        """Every source but ALS (and category affinity when ``affinity`` learns it in a thread), the
        tables of the learned ranker's features, and the ranker."""
        self.neighbours_ = ItemNeighbours().fit(frame)
        self.rules_ = BasketRules().fit(frame)
        self.complements_ = BasketRules(**COMPLEMENT_RULES).fit(frame)
        catalogue = frame if products is None else pd.concat([catalogue_rows(frame), products])
        self.content_ = ContentNeighbours().fit(catalogue)
        self.popularity_ = Popularity(self.half_life_days).fit(frame)
        self.repeat_ = RepeatPurchases().fit(frame)
        self.histories_ = Histories(frame)
        self.carts_, self.cart_seen_ = _open_carts(frame, self.now_ - self.cart_days * 86_400)
        self.carts_of_: dict[str, list[str]] = {}
        for session, (user, _) in self.carts_.items():
            self.carts_of_.setdefault(user, []).append(session)
        self.out_of_stock_ = _stock_set(stock)
        if products is not None and "in_stock" in products.columns:
            self.out_of_stock_ |= _stock_set(
                dict(zip(products["product_id"].astype(str), products["in_stock"], strict=True))
            )
        self.price_ratio_ = self._price_ratios(frame)
        self.affinity_ = affinity.result() if affinity else CategoryAffinity().fit(frame)
        self.item_stats_ = ItemStats().fit(
            frame,
            self.now_,
            self.popularity_.scores_,
            set(self.repeat_.replenishable_.index),
            self.affinity_,
            self.histories_.index_,
        )
        self.ranker_: LearnedRanker | None = None
        self.ranker_report_: dict[str, Any] = {}
        if self.ranker == "blend":
            self.ranker_reason_ = "fixed blend (ranker='blend')"
        else:
            self._learn_ranker(frame)

    def _learn_ranker(self, frame: pd.DataFrame) -> None:
        """Learn the ``winback`` use's ranker from :attr:`windows` label windows of ``window_days``
        before the end of ``frame``, ``window_days / 2`` apart: for each, the sources fitted on the
        interactions before it, each customer's candidates at its start, labelled by what they bought
        in it. A fifth of the customers are held out to stop adding trees and to check that the learned
        order beats the blend's; the ranker is then refitted on all of them."""
        days = f"{self.window_days:g}"
        rng = np.random.default_rng(0)
        examples: list[tuple[str, np.ndarray, np.ndarray]] = []  # (customer, features, labels)
        wanted = found = asked = sampled = 0
        seconds = {"sources": 0.0, "candidates": 0.0, "lightgbm": 0.0}
        log_ = _CodedLog(frame)
        for window in range(self.windows):
            cut = self.now_ - self.window_days * DAY * (1 + window / 2)
            buyers = log_.buyers(cut, cut + self.window_days * DAY)
            if window == 0 and buyers.size < self.min_customers:
                self._fall_back(
                    f"too little data to learn a ranker: {buyers.size} known customers bought in the "
                    f"last {days} days (need {self.min_customers})"
                )
                return
            room = self.max_customers - asked
            if buyers.size < self.min_customers // 2 or room <= 0:  # earlier windows: what they add
                break
            if buyers.size > room:
                buyers = np.sort(rng.choice(buyers, room, replace=False))
            bought = log_.bought(buyers, cut, cut + self.window_days * DAY)
            rows = log_.sample_before(cut, buyers, self.sample_interactions, rng)
            sampled += int(rows.sum())
            started = time.perf_counter()
            inner = self._inner().fit(frame[rows].reset_index(drop=True))
            seconds["sources"] += time.perf_counter() - started
            started = time.perf_counter()
            for user, products in bought.items():
                history = inner.histories_.of(user)
                if history is None:
                    continue
                asked += 1
                skip = inner._unavailable(history, cut)
                slate = build_slate(
                    inner, user, history, cut, skip, self.depth + len(skip), als_list=self._als_list()
                )
                labels = np.array([p in products for p in slate.products], dtype=float)
                wanted += len(products)
                found += int(labels.sum())
                if labels.any():
                    examples.append((user, slate.x, labels))
            seconds["candidates"] += time.perf_counter() - started
        report: dict[str, Any] = {
            "seconds": seconds,
            "window_days": self.window_days,
            "windows": self.windows,
            "customers": asked,
            "learnt_from": len(examples),
            "pairs": int(sum(len(y) for _, _, y in examples)),
            "candidate_recall": round(found / max(wanted, 1), 4),
            "sampled_interactions": sampled,
        }
        self.ranker_report_ = report
        if len(examples) < self.min_customers:
            self._fall_back(
                f"too little data to learn a ranker: {len(examples)} customers bought one of their "
                f"candidates in the label windows (need {self.min_customers})"
            )
            return
        # Held out by customer: the same customer's windows are alike.
        customers = sorted({u for u, _, _ in examples})
        held = set(rng.permutation(np.array(customers, dtype=object))[: max(len(customers) // 5, 1)].tolist())
        train = [e for e in examples if e[0] not in held]
        valid = [e for e in examples if e[0] in held]
        started = time.perf_counter()
        trial = LearnedRanker(base="blend").fit(*_stacked(train), FEATURES, validation=_stacked(valid))
        learned = _recall_at(trial, valid)
        blend = _recall_at(None, valid)
        report.update(
            held_out=len(valid),
            trees=trial.best_iteration_,
            held_out_recall_learned=round(learned, 4),
            held_out_recall_blend=round(blend, 4),
        )
        figures = (
            f"recall@10 of the candidates' purchases on {len(valid)} lists held out: "
            f"learned {learned:.3f}, blend {blend:.3f}"
        )
        if learned < blend and self.ranker == "auto":
            self._fall_back(f"the learned ranker did not beat the fixed blend ({figures})")
            return
        self.ranker_ = LearnedRanker(base="blend", n_estimators=trial.best_iteration_).fit(
            *_stacked(examples), FEATURES
        )
        seconds["lightgbm"] = time.perf_counter() - started
        report["seconds"] = {part: round(took, 2) for part, took in seconds.items()}
        report["importance"] = {
            name: round(gain, 1)
            for name, gain in sorted(self.ranker_.importance_.items(), key=lambda item: -item[1])[:10]
        }
        self.ranker_reason_ = (
            f"learned ranker from {len(examples)} lists of customers who bought in the {days} days after "
            f"them ({figures})"
        )
        log.info("recommender: %s", self.ranker_reason_)

    def _inner(self) -> Recommender:
        """A recommender with the same settings that blends (for the label windows)."""
        return Recommender(
            weights=self.weights,
            recent_days=self.recent_days,
            cart_days=self.cart_days,
            left_half_life_days=self.left_half_life_days,
            half_life_days=self.half_life_days,
            factors=self.factors,
            als_iterations=self.als_iterations,
            price_sensitive_below=self.price_sensitive_below,
            threads=self.threads,
            ranker="blend",
        )

    def _als_list(self) -> bool:
        """Whether ALS proposes candidates of its own to the learned ranker (small catalogues only;
        known before ALS has finished learning)."""
        if hasattr(self, "als_list_"):
            return bool(self.als_list_)
        return self.als_ is not None and len(self.als_.items_) <= ALS_LIST_PRODUCTS  # saved before

    def _fall_back(self, reason: str) -> None:
        self.ranker_ = None
        self.ranker_reason_ = f"fixed blend: {reason}"
        log.info("recommender: %s", self.ranker_reason_)

    def _price_ratios(self, frame: pd.DataFrame) -> dict[str, float]:
        """Each customer's median carted price relative to the median price of its category."""
        prices = self.content_.products_
        median = prices.groupby("category")["price"].transform("median")
        relative = (prices["price"] / median).replace([np.inf, -np.inf], np.nan)
        chosen = frame["kind"].isin(("cart", "purchase")).to_numpy()
        item_codes, items = _factorised(frame["product_id"])
        user_codes, users = _factorised(frame["user_key"])
        ratio = relative.reindex(pd.Index(items)).to_numpy(float)[item_codes[chosen]]
        per_user = pd.Series(ratio).groupby(user_codes[chosen], sort=True).median().dropna()
        keys = users[per_user.index.to_numpy()].tolist()
        return dict(zip(keys, per_user.to_numpy(float).tolist(), strict=True))

    def learn_new(self, interactions: pd.DataFrame) -> Recommender:
        """Fold in new interactions without a full retrain: item-to-item counts (exactly), the
        catalogue of the content neighbours (new products, last prices), repeat purchases, customer
        histories and open carts. Popularity, basket rules and ALS are refreshed
        by the next :meth:`fit` (``winback train recommend``)."""
        frame = check_interactions(interactions)
        if frame.empty:
            return self
        self.neighbours_.learn_new(frame)
        catalogue = self.content_.products_.reset_index().assign(ts=-np.inf)
        self.content_.fit(pd.concat([catalogue, catalogue_rows(frame)]))
        self.repeat_.learn_new(frame)
        self.histories_.add(frame)
        self.now_ = max(self.now_, float(frame["ts"].max()))
        carts, seen = _open_carts(frame, self.now_ - self.cart_days * 86_400)
        bought = set(frame.loc[frame["kind"] == "purchase", "session_key"].dropna().astype(str))
        for session in bought & self.carts_.keys():
            user, _ = self.carts_.pop(session)
            self.cart_seen_.pop(session, None)
            self.carts_of_[user].remove(session)
        for session, (user, items) in carts.items():
            if session not in self.carts_:
                self.carts_of_.setdefault(user, []).append(session)
            known = self.carts_.get(session, (user, []))[1]
            self.carts_[session] = (user, list(dict.fromkeys([*known, *items])))
            self.cart_seen_[session] = max(self.cart_seen_.get(session, -np.inf), seen[session])
        return self

    partial_fit = learn_new

    # ----------------------------------------------------------------- queries
    def recommend(self, use: str, key: str | Sequence[str], k: int = 10, **options: object) -> Candidates:
        """One entry point for every use: ``key`` is a customer (``winback``), a cart id or list of
        products (``cart``), a product (``similar``) or a list of viewed products (``session``)."""
        if use == "winback":
            return self.for_user(str(key), k, **options)  # type: ignore[arg-type]
        if use == "cart":
            return self.for_cart(key, k, **options)  # type: ignore[arg-type]
        if use == "similar":
            return self.similar(str(key), k, **options)  # type: ignore[arg-type]
        if use == "session":
            return self.for_session(list(key), k)
        raise BadInputError(f"use {use!r}: expected one of {', '.join(USES)}")

    @_one_blas_thread
    def for_user(
        self, user_key: str, k: int = 10, now: float | None = None, *, learned: bool = True
    ) -> Candidates:
        """What a lapsing customer is likely to buy next (the ``winback`` use): ordered by the learned
        ranker if there is one (:attr:`ranker_`) and ``learned``, else by the fixed blend."""
        k = check_k(k)
        history = self.histories_.of(user_key)
        if history is None:
            return Candidates(reason=f"unknown customer {user_key}: no interactions yet (cold start)")
        moment = self.now_ if now is None else float(now)
        skip = self._unavailable(history, moment)
        if learned and getattr(self, "ranker_", None) is not None:
            return self._ranked(user_key, history, moment, skip, k)
        wide = _depth(k, skip)
        recent = history.products[:HISTORY_ITEMS]
        bought = history.products[~np.isnan(history.last_bought)][:HISTORY_ITEMS]
        w = self.weights_["winback"]
        left = self.left_in_carts(user_key, moment, history)
        # Left items keep their recency across customers: the list is scaled by its best score in the
        # blend, so its weight carries that score back (a cart left yesterday outweighs one of last month).
        left_weight = w["left"] * (left[0].score if left else 0.0)
        lists: list[tuple[float, Asked]] = [
            (left_weight, left),
            (w["affinity"], lambda: self.affinity_.for_user(user_key, wide)),
            (w["repeat"], lambda: self.repeat_.due(user_key, moment, wide)),
            (
                w["neighbours"],
                lambda: self.neighbours_.for_items(
                    list(recent), wide, weights=list(history.weights[:HISTORY_ITEMS]), include_query=True
                ),
            ),
            (w["rules"], lambda: self.rules_.for_items(list(bought), wide) if bought.size else Candidates()),
        ]
        als = self.als_
        if als is not None:
            lists.append((w["als"], lambda: als.for_user(user_key, wide, include_seen=True)))
        # An item left in a cart or due again says so: the customer's own choices are the most telling
        # reasons.
        return _blend(lists, k, skip, fallback=self._fallback(wide), prefer=(0, 2))

    def _ranked(self, user_key: str, history: History, now: float, skip: set[str], k: int) -> Candidates:
        """The ``winback`` list in the learned ranker's order; each product's reason from the source
        that contributed most to its score (an item left in a cart or due again says so first)."""
        assert self.ranker_ is not None
        slate = build_slate(
            self, user_key, history, now, skip, max(self.depth, k) + len(skip), als_list=self._als_list()
        )
        if not slate.products:
            return Candidates(
                reason=f"nothing to propose to customer {user_key}: every candidate is left out"
            )
        scores = self.ranker_.predict(slate.x)
        # Equal scores (trees' scores are steps) keep the order the candidates were gathered in:
        # left items, items due, then the sources' own orders.
        top = np.argsort(-scores, kind="stable")[:k]
        reasons = self._contributors(slate, top, scores)
        return Candidates(
            Candidate(slate.products[i], round(float(1 / (1 + np.exp(-scores[i]))), 6), reason)
            for i, reason in zip(top, reasons, strict=True)
        )

    def _contributors(self, slate: Slate, rows: np.ndarray, scores: np.ndarray) -> list[str]:
        """Per row, the reason of the source whose removal would lower its score most (what it proposed
        left out: its score, rank and share of the blend), among the sources that proposed it."""
        assert self.ranker_ is not None
        reasons: list[str] = [""] * len(rows)
        asked: list[tuple[int, str]] = []
        trials: list[np.ndarray] = []
        blend = FEATURES.index("blend")
        for n, row in enumerate(rows.tolist()):
            product = slate.products[row]
            proposers = [s for s in SOURCES if product in slate.reasons[s]]
            preferred = [s for s in ("left", "repeat") if s in proposers]
            if preferred or len(proposers) == 1:
                reasons[n] = slate.reasons[(preferred or proposers)[0]][product]
                continue
            for source in proposers:
                x = slate.x[row].copy()
                x[blend] -= slate.blend_weights[source] * x[SOURCE_COLUMNS[source][0]]
                x[SOURCE_COLUMNS[source]] = np.nan
                asked.append((n, source))
                trials.append(x)
        if trials:
            without = self.ranker_.predict(np.vstack(trials))
            best: dict[int, tuple[float, str]] = {}
            for (n, source), score in zip(asked, without.tolist(), strict=True):
                drop = float(scores[rows[n]]) - score
                if n not in best or drop > best[n][0]:
                    best[n] = (drop, source)
            for n, (_, source) in best.items():
                reasons[n] = slate.reasons[source][slate.products[rows[n]]]
        return reasons

    def left_in_carts(self, user_key: str, now: float, history: History | None = None) -> Candidates:
        """Products of the customer's open carts not bought since, most recent first; scored by
        recency (halving every ``left_half_life_days``), for carts active within ``cart_days``."""
        history = history if history is not None else self.histories_.of(user_key)
        last_bought = (
            dict(zip(history.products.tolist(), history.last_bought.tolist(), strict=True))
            if history is not None
            else {}
        )
        age: dict[str, float] = {}
        for session in self.carts_of_.get(user_key, ()):
            at = self.cart_seen_[session]
            days = (now - at) / 86_400
            if not 0 <= days <= self.cart_days:
                continue
            for product in self.carts_[session][1]:
                if last_bought.get(product, -np.inf) >= at:  # bought since (NaN compares False)
                    continue
                age[product] = min(days, age.get(product, np.inf))
        ranked = sorted(age.items(), key=lambda item: (item[1], item[0]))
        return Candidates(
            Candidate(p, round(0.5 ** (days / self.left_half_life_days), 6), f"left in your cart {ago(days)}")
            for p, days in ranked
        )

    @_one_blas_thread
    def for_cart(
        self,
        cart: str | Sequence[str],
        k: int = 10,
        *,
        user_key: str | None = None,
        cheaper: bool | None = None,
    ) -> Candidates:
        """Complements and substitutes for a cart (the ``cart`` use): a cart id of :attr:`carts_` or the
        products in it. ``cheaper`` (default: whether the customer is price-sensitive) keeps only cheaper
        substitutes."""
        k = check_k(k)
        if isinstance(cart, str):
            if cart not in self.carts_:
                days = f"{self.cart_days:g}"
                return Candidates(
                    reason=f"unknown cart {cart}: no open cart with that id in the last {days} days"
                )
            user_key, items = self.carts_[cart]
        else:
            items = [str(p) for p in cart]
        if not items:
            return Candidates(reason="empty cart: nothing to complement")
        history = self.histories_.of(user_key) if user_key is not None else None
        skip = set(items) | (
            self._unavailable(history, self.now_) if history is not None else self.out_of_stock_
        )
        if cheaper is None:
            cheaper = self.price_sensitive(user_key) if user_key is not None else False
        wide = _depth(k, skip)
        w = self.weights_["cart"]
        lists: list[tuple[float, Asked]] = [
            (w["rules"], lambda: self.rules_.for_items(items, wide)),
            (w["neighbours"], lambda: self.neighbours_.for_items(items, wide)),
            (w["substitutes"], lambda: self._substitutes(items, wide, cheaper=bool(cheaper))),
            (w["affinity"], lambda: self.affinity_.for_items(items, wide)),
            (w["complements"], lambda: self.complements_.for_items(items, wide)),
        ]
        # For a price-sensitive customer the price is the point: say so whatever else proposed it.
        return _blend(lists, k, skip, fallback=self._fallback(wide), prefer=(2,) if cheaper else ())

    @_one_blas_thread
    def similar(self, product_id: str, k: int = 10, *, cheaper: bool = False) -> Candidates:
        """Products like ``product_id`` (the ``similar`` use); only cheaper ones if ``cheaper``."""
        k = check_k(k)
        p = str(product_id)
        known = p in self.neighbours_.item_index_ or p in self.content_.products_.index
        if not known:
            return Candidates(
                reason=f"unknown product {p}: no interactions and not in the catalogue (cold start)"
            )
        wide = _depth(k, self.out_of_stock_)
        w = self.weights_["similar"]
        content = self.content_.similar(p, wide, cheaper=cheaper)
        lists: list[tuple[float, Asked]] = [(w["content"], content)]
        als = self.als_
        if not cheaper:  # co-chosen products are not sorted by price
            lists.append((w["neighbours"], lambda: self.neighbours_.similar(p, wide)))
            if als is not None:
                lists.append((w["als"], lambda: als.similar(p, wide)))
        out = _blend(lists, k, self.out_of_stock_ | {p})
        if not out and not out.reason:
            out.reason = content.reason or f"no product like {p} yet"
        return out

    @_one_blas_thread
    def for_session(self, viewed: Sequence[str], k: int = 10) -> Candidates:
        """Session-based recommendations for a visitor known only by the products they viewed."""
        k = check_k(k)
        items = [str(p) for p in viewed]
        if not items:
            return Candidates(reason="no products viewed: nothing to start from (cold start)")
        skip = set(items) | self.out_of_stock_
        wide = _depth(k, skip)
        w = self.weights_["session"]
        lists: list[tuple[float, Asked]] = [
            (w["neighbours"], lambda: self.neighbours_.for_items(items, wide)),
            (w["affinity"], lambda: self.affinity_.for_items(items, wide)),
            (w["complements"], lambda: self.complements_.for_items(items, wide)),
        ]
        als = self.als_
        if als is not None:
            lists.append((w["als"], lambda: als.for_items(items, wide)))
        return _blend(lists, k, skip, fallback=self._fallback(wide))

    def _substitutes(self, items: list[str], k: int, *, cheaper: bool) -> Candidates:
        """Content neighbours of each cart item, best first."""
        substitutes = Candidates()
        for p in items:
            substitutes.extend(self.content_.similar(p, k, cheaper=cheaper))
        substitutes.sort(key=lambda c: -c.score)
        return substitutes

    def _fallback(self, k: int) -> Candidates:
        """The shop's most popular products (computed once per fit)."""
        if not hasattr(self, "_popular"):
            self._popular = self.popularity_.top(FALLBACK_DEPTH)
        return Candidates(self._popular[:k])

    def price_sensitive(self, user_key: str) -> bool:
        """Whether the customer's carts lean to the cheap end of their categories."""
        ratio = self.price_ratio_.get(str(user_key))
        return ratio is not None and ratio < self.price_sensitive_below

    def _unavailable(self, history: History, now: float) -> set[str]:
        """Out of stock, or bought within ``recent_days`` of ``now`` and not replenishable."""
        recent = (now - history.last_bought) < self.recent_days * 86_400  # NaN compares False
        skip = {str(p) for p in history.products[recent] if not self.repeat_.is_replenishable(str(p))}
        return skip | self.out_of_stock_

    def recommend_all(self, k: int = 10, now: float | None = None) -> pd.DataFrame:
        """The ``winback`` list of every known customer: one row per customer and rank."""
        k = check_k(k)
        rows: list[tuple[str, int, str, float, str]] = []
        for user in self.histories_.index_:
            for rank, c in enumerate(self.for_user(user, k, now), start=1):
                rows.append((user, rank, c.product_id, c.score, c.reason))
        return pd.DataFrame(rows, columns=["user_key", "rank", "product_id", "score", "reason"])


def _blend(
    asked: list[tuple[float, Asked]],
    k: int,
    skip: set[str],
    fallback: Candidates | None = None,
    prefer: Sequence[int] = (),
) -> Candidates:
    """Sum of the lists' best-scaled scores times their weights; each product's reason from the source
    that gave it most (or from list ``prefer`` wherever it proposed the product). ``fallback`` fills the
    list (at a tenth of the lowest weight) when it is short.

    A list may be given as the call that makes it: it is made only if its weight counts, or if nothing
    is left to propose and its reason may say why (an unweighted source costs nothing)."""
    lists = [(weight, _answer(c) if weight > 0 else c) for weight, c in asked]
    score: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    for position, (weight, given) in enumerate(lists):
        if weight <= 0:
            continue
        candidates = _answer(given)
        if not candidates:
            continue
        top = max(c.score for c in candidates) or 1.0
        for c in candidates:
            if c.product_id in skip:
                continue
            s = weight * c.score / top
            score[c.product_id] = score.get(c.product_id, 0.0) + s
            rank = float("inf") if position in prefer else s
            if rank > best.get(c.product_id, (-1.0, ""))[0]:
                best[c.product_id] = (rank, c.reason)
    if len(score) < k and fallback:
        floor = 0.1 * min((w for w, c in lists if w > 0), default=1.0)
        top = max(c.score for c in fallback) or 1.0
        for c in fallback:
            if c.product_id not in skip and c.product_id not in score:
                score[c.product_id] = floor * c.score / top
                best[c.product_id] = (score[c.product_id], c.reason)
    ranked = sorted(score.items(), key=lambda item: (-item[1], item[0]))[:k]
    if not ranked:
        reasons = [c.reason for c in (_answer(c) for _, c in lists) if not c and c.reason]
        return Candidates(reason="; ".join(dict.fromkeys(reasons)) or "nothing to propose")
    return Candidates(Candidate(p, round(s, 6), best[p][1]) for p, s in ranked)


class _CodedLog:
    """The interactions as integer codes (those :func:`shared_codes` shares with the sources), to pick
    the label windows' customers and samples without string operations on a large log."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.users, self.user_ids = _factorised(frame["user_key"])
        self.items, self.item_ids = _factorised(frame["product_id"])
        self.ts = frame["ts"].to_numpy(float)
        self.purchase = (frame["kind"] == "purchase").to_numpy()
        first = np.full(len(self.user_ids), np.inf)
        seen = pd.Series(self.ts).groupby(self.users, sort=True).min()
        first[seen.index.to_numpy()] = seen.to_numpy(float)
        self.first_seen = first

    def _in_window(self, start: float, end: float) -> np.ndarray:
        return self.purchase & (self.ts >= start) & (self.ts < end) & (self.first_seen[self.users] < start)

    def buyers(self, start: float, end: float) -> np.ndarray:
        """Codes of the customers known before ``start`` who bought in ``[start, end)``."""
        return np.unique(self.users[self._in_window(start, end)])

    def bought(self, buyers: np.ndarray, start: float, end: float) -> dict[str, set[str]]:
        """What each of ``buyers`` (codes) bought in ``[start, end)``, by customer id."""
        chosen = np.zeros(len(self.user_ids), dtype=bool)
        chosen[buyers] = True
        rows = np.flatnonzero(self._in_window(start, end) & chosen[self.users])
        out: dict[str, set[str]] = {}
        for user, item in zip(self.users[rows].tolist(), self.items[rows].tolist(), strict=True):
            out.setdefault(str(self.user_ids[user]), set()).add(str(self.item_ids[item]))
        return out

    def sample_before(self, cut: float, keep: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """The rows before ``cut`` of the customers ``keep`` (codes) and of others drawn at random,
        about ``size`` rows in all (whole customers: their histories stay whole)."""
        before = self.ts < cut
        counts = np.bincount(self.users[before], minlength=len(self.user_ids))
        chosen = np.zeros(len(self.user_ids), dtype=bool)
        if int(counts.sum()) <= size:
            chosen[:] = True
        else:
            chosen[keep] = True
            others = rng.permutation(np.flatnonzero(~chosen & (counts > 0)))
            room = size - int(counts[chosen].sum())
            if room > 0 and others.size:
                chosen[others[np.cumsum(counts[others]) <= room]] = True
        return before & chosen[self.users]


def _stacked(examples: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and group sizes of ``examples`` (customer, features, labels) for LightGBM."""
    return (
        np.vstack([x for _, x, _ in examples]),
        np.concatenate([y for _, _, y in examples]),
        np.array([len(y) for _, _, y in examples]),
    )


def _recall_at(
    ranker: LearnedRanker | None, examples: list[tuple[str, np.ndarray, np.ndarray]], k: int = 10
) -> float:
    """Mean share of each list's labelled candidates in the top ``k`` of ``ranker``'s order (the
    blend's if None)."""
    recalls = []
    for _, x, y in examples:
        scores = ranker.predict(x) if ranker is not None else x[:, FEATURES.index("blend")]
        top = np.argsort(-scores, kind="stable")[:k]
        recalls.append(y[top].sum() / max(y.sum(), 1.0))
    return float(np.mean(recalls)) if recalls else 0.0


def _answer(asked: Asked) -> Candidates:
    return asked if isinstance(asked, Candidates) else asked()


def _depth(k: int, skip: set[str]) -> int:
    """How many candidates to ask each source for: enough to blend, and to survive the exclusions."""
    return min(MAX_K, 2 * k + len(skip))

"""The ``winback`` use's candidates and what the learned ranker knows of each.

A *slate* is one customer's candidates at one moment: the products every source proposes (:data:`SOURCES`),
less what may not be shown, with one row of features per candidate (:data:`FEATURES`):

- per source, its score scaled by its list's best (``<source>_score``) and the candidate's position in
  its list (``<source>_rank``), missing (NaN) where the source did not propose it;
- scores every candidate has, whoever proposed it: the ALS taste fit (``als_dot``), the summed item
  neighbour similarity to the customer's history (``neighbours_sum``), the customer's smoothed share of
  interest in the candidate's category, and their own share of interest draws, carts and purchases
  there, the category affinity's score (``affinity_dense``);
- the product: its recency-weighted popularity, interactions and buyers (against the average product),
  purchases per interaction, trend (last week against last month), days since first seen (capped at
  :data:`NEW_DAYS`), share of its category, whether it is replenishable;
- its price level (``ln(price / category median)``) against the customer's own level;
- the customer's past with it: summed interaction weight, days since they last saw, carted or bought it;
  days since the customer's last interaction;
- the fixed blend's score (:data:`winback.recommend.ranker.DEFAULT_WEIGHTS`), which the learned ranker
  starts from and corrects.

Features are scale-free where they can be (shares, ratios to the average, scores over their list's
best): the ranker learns them in label windows with a shorter past than the fit it serves with.

:class:`ItemStats` holds the product columns, computed once per fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from winback.recommend.sources import Candidate, Candidates, _catalogue, _factorised, _pairs

if TYPE_CHECKING:
    from winback.recommend.affinity import CategoryAffinity
    from winback.recommend.ranker import History, Recommender

DAY = 86_400.0

#: ALS proposes candidates of its own only in catalogues up to this size: its list scores every product
#: (1.9 ms of a query's 4.2 ms with 200,000 products), and on the simulator's dev seeds 4-7 the learned
#: ranker without it did as well (recall@10 1.41 x popularity on average, against 1.42 with it). Above,
#: ALS still scores the other sources' candidates (``als_dot``).
ALS_LIST_PRODUCTS = 50_000

#: Products of a customer's history the item-to-item query starts from (the most recent ones).
HISTORY_ITEMS = 50

#: The candidate sources of the ``winback`` use, in the order their lists are read.
SOURCES = (
    "left",  # left in open carts
    "repeat",  # due to be bought again
    "affinity",  # popular in the categories the customer browses, at their price level
    "neighbours",  # item neighbours of the history (seen items may come back)
    "rules",  # basket rules of past purchases
    "complements",  # other categories viewed in the same visits as recent products
    "als",  # matrix factorisation
    "recent",  # the customer's own recent products
    "popular",  # the shop's popular products
)

#: A product first seen this many days ago or more counts as old (``item_age_days`` is capped there: the
#: label windows have a shorter past than the fit, and an uncapped age would tell them apart).
NEW_DAYS = 30.0

#: Features that describe the product alone (columns of :class:`ItemStats`).
ITEM_FEATURES = (
    "item_popularity",
    "item_interactions",
    "item_buyers",
    "item_buy_rate",
    "item_trend",
    "item_age_days",
    "item_category_share",
    "item_replenishable",
    "item_price_level",
)

#: Every feature, in column order.
FEATURES: tuple[str, ...] = (
    *(f"{s}_{what}" for s in SOURCES for what in ("score", "rank")),
    "als_dot",
    "neighbours_sum",
    "category_share",
    "category_visits",
    "category_carts",
    "category_purchases",
    "affinity_dense",
    *ITEM_FEATURES,
    "price_gap",
    "abs_price_gap",
    "user_price_level",
    "seen_weight",
    "days_since_seen",
    "days_since_carted",
    "days_since_bought",
    "user_days_idle",
    "blend",
)
COLUMN = {name: i for i, name in enumerate(FEATURES)}

#: The columns that say what one source proposed: left out to ask what it contributed.
SOURCE_COLUMNS = {s: np.array([COLUMN[f"{s}_score"], COLUMN[f"{s}_rank"]]) for s in SOURCES}


class ItemStats:
    """Per product (coded as the sources code them): the :data:`ITEM_FEATURES`, and the position of its
    category in the category affinity's list (``category_``); per customer, their carts and purchases
    per category (``user_carts_``, ``user_purchases_``: customers x categories)."""

    def fit(
        self,
        frame: pd.DataFrame,
        now: float,
        popularity: pd.Series,
        replenishable: set[str],
        affinity: CategoryAffinity,
        user_index: dict[str, int] | None = None,
    ) -> ItemStats:
        """The product columns of ``frame`` at ``now``; ``popularity`` is the popularity source's
        scores, ``replenishable`` the repeat source's products; ``user_index`` the customers' codes
        if already made (the :class:`~winback.recommend.ranker.Histories` index of the same frame: a
        copy is kept, as the histories change with new interactions)."""
        codes, items = _factorised(frame["product_id"])
        n = len(items)
        ids = items.tolist()
        self.index_ = {p: i for i, p in enumerate(ids)}
        ts = frame["ts"].to_numpy(float)
        bought = (frame["kind"] == "purchase").to_numpy()
        interactions = np.bincount(codes, minlength=n).astype(float)
        purchases = np.bincount(codes[bought], minlength=n).astype(float)
        user_codes, users = _factorised(frame["user_key"])
        pair_codes, pair_keys, pair_width = _pairs(frame)  # each (customer, product) pair once
        bought_pair = np.zeros(len(pair_keys), dtype=bool)
        bought_pair[pair_codes[bought]] = True
        buyers = np.bincount(pair_keys[bought_pair] % pair_width, minlength=n).astype(float)
        age = np.maximum(now - ts, 0.0) / DAY
        week = np.bincount(codes, weights=0.5 ** (age / 7), minlength=n)
        month = np.bincount(codes, weights=0.5 ** (age / 30), minlength=n)
        first = pd.Series(ts).groupby(codes, sort=True).min().reindex(range(n)).to_numpy(float)
        self.category_ = np.array([affinity.category_index(p) for p in ids], dtype=np.intp)
        category = np.maximum(self.category_, 0)
        level = np.full(n, np.nan)
        if "price" in frame.columns:
            price = _catalogue(frame)["price"].reindex(items).to_numpy(float)
            price = np.where(price > 0, price, np.nan)
            median = pd.Series(price).groupby(category).transform("median").to_numpy(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                level = np.log(price / median)
        in_category = np.bincount(category, weights=interactions, minlength=n)
        width = max(len(affinity.categories_), 1)
        self.user_index_ = (
            dict(user_index) if user_index is not None else {u: i for i, u in enumerate(users.tolist())}
        )
        row_category = category[codes]

        def per_category(kind: str) -> sp.csr_matrix:
            chosen = (frame["kind"] == kind).to_numpy()
            matrix = sp.csr_matrix(
                (np.ones(int(chosen.sum())), (user_codes[chosen], row_category[chosen])),
                shape=(len(users), width),
            )
            matrix.sum_duplicates()
            return matrix

        self.user_carts_ = per_category("cart")
        self.user_purchases_ = per_category("purchase")
        decayed = popularity.reindex(items).to_numpy(float)
        top = float(np.nanmax(decayed)) if np.isfinite(decayed).any() else 1.0
        self.values_ = np.column_stack(
            [
                decayed / (top or 1.0),
                np.log((interactions + 1.0) / max(interactions.mean(), 1.0)),
                np.log((buyers + 1.0) / max(buyers.mean(), 1.0)),
                (purchases + 0.1) / (interactions + 1.0),
                np.log((week + 0.1) / (month + 0.1)),
                np.minimum((now - first) / DAY, NEW_DAYS),
                interactions / np.maximum(in_category[category], 1.0),
                np.fromiter((p in replenishable for p in ids), dtype=float, count=n),
                level,
            ]
        ).reshape(n, len(ITEM_FEATURES))
        return self

    def rows(self, products: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The feature rows of ``products`` (NaN for a product the fit did not see), and their codes."""
        codes = np.array([self.index_.get(p, -1) for p in products], dtype=np.intp)
        if not self.values_.size:
            return np.full((len(codes), len(ITEM_FEATURES)), np.nan), codes
        out = np.where((codes >= 0)[:, None], self.values_[np.maximum(codes, 0)], np.nan)
        return out, codes


@dataclass
class Slate:
    """One customer's candidates (best of none yet), their features and each source's reasons."""

    products: list[str]
    x: np.ndarray  # candidates x FEATURES
    reasons: dict[str, dict[str, str]]  # source -> product -> reason
    blend_weights: dict[str, float]  # per source, as in the blend feature


def ago(days: float) -> str:
    """``today``, ``yesterday`` or ``N days ago``, to the nearest day."""
    whole = round(days)
    return "today" if whole == 0 else "yesterday" if whole == 1 else f"{whole} days ago"


def recent_products(history: History, now: float, k: int) -> Candidates:
    """The customer's own most recent products, scored by recency (halving every week), with what
    they last did with each."""
    out = Candidates()
    for p, seen, carted, bought in zip(
        history.products[:k].tolist(),
        history.last_ts[:k].tolist(),
        history.last_carted[:k].tolist(),
        history.last_bought[:k].tolist(),
        strict=True,
    ):
        days = max(now - seen, 0.0) / DAY
        if bought >= seen:  # NaN compares False
            what = "you bought it"
        elif carted >= seen:
            what = "you put it in your cart"
        else:
            what = "you looked at it"
        out.append(Candidate(str(p), round(0.5 ** (days / 7), 6), f"{what} {ago(days)}"))
    return out


def build_slate(
    model: Recommender,
    user_key: str,
    history: History,
    now: float,
    skip: set[str],
    depth: int,
    *,
    als_list: bool = True,
) -> Slate:
    """The candidates of ``user_key`` at ``now`` (every source's top ``depth``, less ``skip``) and their
    features (:data:`FEATURES`); ALS proposes candidates of its own only if ``als_list`` (see
    :data:`ALS_LIST_PRODUCTS`: the served model decides, and the label windows follow it)."""
    recent = history.products[:HISTORY_ITEMS]
    recent_weights = history.weights[:HISTORY_ITEMS]
    bought = history.products[~np.isnan(history.last_bought)][:HISTORY_ITEMS]
    neighbours, similarity = model.neighbours_.query(
        list(recent), depth, weights=list(recent_weights), include_query=True
    )
    lists: dict[str, Candidates] = {
        "left": model.left_in_carts(user_key, now, history),
        "repeat": model.repeat_.due(user_key, now, depth),
        "affinity": model.affinity_.for_user(user_key, depth),
        "neighbours": neighbours,
        "rules": model.rules_.for_items(list(bought), depth) if bought.size else Candidates(),
        "complements": model.complements_.for_items(list(recent[:10]), depth),
        "als": (
            model.als_.for_user(user_key, depth, include_seen=True)
            if model.als_ is not None and als_list
            else Candidates()
        ),
        "recent": recent_products(history, now, depth),
        "popular": model._fallback(depth),
    }
    products: dict[str, int] = {}
    for candidates in lists.values():
        for c in candidates:
            if c.product_id not in skip and c.product_id not in products:
                products[c.product_id] = len(products)
    names = list(products)
    x = np.full((len(names), len(FEATURES)), np.nan)
    weights = model.weights_["winback"]
    blend_weights = {s: float(weights.get(s, 0.0)) for s in SOURCES}
    if lists["left"]:  # as the blend weighs them: a cart of last month counts little
        blend_weights["left"] *= lists["left"][0].score
    blend = np.zeros(len(names))
    reasons: dict[str, dict[str, str]] = {}
    for source, candidates in lists.items():
        top = max((c.score for c in candidates), default=0.0) or 1.0
        said: dict[str, str] = {}
        score_column, rank_column = COLUMN[f"{source}_score"], COLUMN[f"{source}_rank"]
        for rank, c in enumerate(candidates):
            row = products.get(c.product_id)
            if row is None:
                continue
            x[row, score_column] = c.score / top
            x[row, rank_column] = rank
            said[c.product_id] = c.reason
        reasons[source] = said
        if blend_weights[source]:
            blend += blend_weights[source] * np.nan_to_num(x[:, score_column])
    x[:, COLUMN["blend"]] = blend
    if not names:
        return Slate(names, x, reasons, blend_weights)
    item_rows, codes = model.item_stats_.rows(names)
    first = COLUMN[ITEM_FEATURES[0]]
    x[:, first : first + len(ITEM_FEATURES)] = item_rows
    als = model.als_
    if als is not None and (row := als.user_index_.get(user_key)) is not None:
        columns = np.array([als.item_index_.get(p, -1) for p in names], dtype=np.intp)
        known = columns >= 0
        x[known, COLUMN["als_dot"]] = als.item_factors_[columns[known]] @ als.user_factors_[row]
    index = model.neighbours_.item_index_  # learn_new may have added products since the fit
    columns = np.array([index.get(p, -1) for p in names], dtype=np.intp)
    x[:, COLUMN["neighbours_sum"]] = np.where(columns >= 0, similarity[np.maximum(columns, 0)], 0.0)
    shares = model.affinity_.shares(user_key)
    category = model.item_stats_.category_[np.maximum(codes, 0)]
    known = (codes >= 0) & (category >= 0)
    if shares is not None:
        x[known, COLUMN["category_share"]] = shares[0][category[known]]
        x[known, COLUMN["category_visits"]] = shares[1][category[known]] / max(shares[1].sum(), 1.0)
    stats = model.item_stats_
    if (u := stats.user_index_.get(user_key)) is not None:
        for column, matrix in (
            ("category_carts", stats.user_carts_),
            ("category_purchases", stats.user_purchases_),
        ):
            counts = _dense_row(matrix, u)
            x[known, COLUMN[column]] = counts[category[known]] / max(counts.sum(), 1.0)
    level = model.affinity_.price_level(user_key)
    if level is not None:
        gap = x[:, COLUMN["item_price_level"]] - level
        x[:, COLUMN["price_gap"]] = gap
        x[:, COLUMN["abs_price_gap"]] = np.abs(gap)
        x[:, COLUMN["user_price_level"]] = level
    x[:, COLUMN["affinity_dense"]] = model.affinity_.score_products(user_key, names)  # for every candidate
    at = np.full(len(names), -1, dtype=np.intp)
    for i, p in enumerate(history.products.tolist()):  # a customer's products: a few, or thousands
        row = products.get(p)
        if row is not None:
            at[row] = i
    mine = at >= 0
    x[mine, COLUMN["seen_weight"]] = history.weights[at[mine]]
    for column, moments in (
        ("days_since_seen", history.last_ts),
        ("days_since_carted", history.last_carted),
        ("days_since_bought", history.last_bought),
    ):
        x[mine, COLUMN[column]] = (now - moments[at[mine]]) / DAY
    x[:, COLUMN["user_days_idle"]] = (now - float(np.nanmax(history.last_ts))) / DAY
    return Slate(names, x, reasons, blend_weights)


def _dense_row(matrix: sp.csr_matrix, row: int) -> np.ndarray:
    """Row ``row`` of ``matrix`` as a dense vector (without scipy's slicing, which costs more here)."""
    out = np.zeros(matrix.shape[1])
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    out[matrix.indices[lo:hi]] = matrix.data[lo:hi]
    return out

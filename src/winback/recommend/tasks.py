"""Train, evaluate and query the recommender on an event source: what ``winback train recommend`` and
``winback recommend`` run.

Training fits :class:`~winback.recommend.ranker.Recommender` on every interaction before ``as_of`` and
saves it with the other models (``HOME/models/recommend/<version>/``). Its card carries a time-split
evaluation inside the training window: fitted on the interactions before the last
:data:`EVAL_TEST_DAYS` days, asked for each customer who bought in them, against the shop's
popularity and random products.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from winback.config import Settings
from winback.decide.ope import bootstrap_sums
from winback.errors import BadInputError
from winback.features.tables import FeatureTables
from winback.models.registry import ModelCard, load_model, save_model
from winback.recommend.interactions import COLUMNS, TimeSplit, interactions, time_split
from winback.recommend.ranker import Recommender
from winback.recommend.sources import Popularity

NAME = "recommend"
K = 10
EVAL_TEST_DAYS = 30
#: A time split needs at least this many customers who bought after the cut to say anything.
MIN_TEST_CUSTOMERS = 20


def ranking_metrics(recommended: list[str], truth: set[str], k: int = K) -> tuple[float, float]:
    """Recall@k and NDCG@k of one list against the products actually bought."""
    hits = [1.0 if p in truth else 0.0 for p in recommended[:k]]
    dcg = sum(h / np.log2(i + 2) for i, h in enumerate(hits))
    ideal = sum(1 / np.log2(i + 2) for i in range(min(len(truth), k)))
    return sum(hits) / len(truth), dcg / ideal


def evaluate_lists(
    split: TimeSplit, lists: dict[str, dict[str, list[str]]], k: int = K, baseline: str = "popularity"
) -> pd.DataFrame:
    """Recall@k, NDCG@k, catalogue coverage and long-tail share of each recommender's lists (one list
    per test customer), with the ratio of recall to the ``baseline`` row if there is one and its 95%
    interval (``x_low``, ``x_high``: :func:`ratio_intervals`)."""
    truth = split.truth()
    counts = split.train["product_id"].value_counts()
    head = set(counts.index[: max(1, int(np.ceil(0.2 * len(counts))))])  # top 20% by interactions
    rows = []
    recalls: dict[str, np.ndarray] = {}
    for name, per_user in lists.items():
        scores = np.array(
            [ranking_metrics(per_user.get(u, []), bought, k) for u, bought in truth.items()]
        ).reshape(-1, 2)
        recalls[name] = scores[:, 0]
        shown = [p for u in truth for p in per_user.get(u, [])]
        rows.append(
            {
                "recommender": name,
                "customers": len(truth),
                f"recall@{k}": float(scores[:, 0].mean()) if len(scores) else 0.0,
                f"ndcg@{k}": float(scores[:, 1].mean()) if len(scores) else 0.0,
                "coverage": len(set(shown)) / max(len(counts), 1),
                "long_tail": float(np.mean([p not in head for p in shown])) if shown else 0.0,
            }
        )
    table = pd.DataFrame(rows).set_index("recommender")
    base = float(table[f"recall@{k}"].get(baseline, 0.0))
    if base > 0:
        table["x_popularity"] = table[f"recall@{k}"] / base
        names = list(recalls)
        intervals = ratio_intervals(np.column_stack(list(recalls.values())), names.index(baseline))
        table["x_low"], table["x_high"] = intervals[:, 0], intervals[:, 1]
    return table


def ratio_intervals(recalls: np.ndarray, baseline: int, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """(lists x 2) 95% intervals of each column's mean over the ``baseline`` column's, ``recalls`` being
    customers x lists: a percentile bootstrap that resamples customers (every list of a customer
    together). With 650 test customers a ratio near 1.4 is known to about +/-0.18, with 6,300 to about
    +/-0.05, so a goal such as 1.5x popularity is judged against the interval, not the point alone."""
    out = np.full((recalls.shape[1], 2), np.nan)
    if not len(recalls):
        return out
    sums = bootstrap_sums(recalls, draws, np.random.default_rng(seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sums / sums[:, [baseline]]
    for j in range(recalls.shape[1]):
        finite = ratios[:, j][np.isfinite(ratios[:, j])]
        if finite.size:
            out[j] = np.percentile(finite, [2.5, 97.5])
    return out


def evaluate_split(split: TimeSplit, k: int = K, seed: int = 0) -> pd.DataFrame:
    """The recommender (``winback`` use) beside popularity and random products on one time split."""
    truth = split.truth()
    if len(truth) < MIN_TEST_CUSTOMERS:
        raise BadInputError(
            f"only {len(truth)} known customers bought after the split: too few to evaluate "
            f"(need {MIN_TEST_CUSTOMERS})"
        )
    model = Recommender().fit(split.train)
    popular = [c.product_id for c in Popularity().fit(split.train, now=split.at).top(k)]
    catalogue = np.array(sorted(set(split.train["product_id"].astype(str))), dtype=object)
    rng = np.random.default_rng(seed)
    size = min(k, len(catalogue))
    lists = {
        "winback": {u: [c.product_id for c in model.for_user(u, k, now=split.at)] for u in truth},
        "popularity": {u: popular for u in truth},
        "random": {u: list(rng.choice(catalogue, size=size, replace=False)) for u in truth},
    }
    return evaluate_lists(split, lists, k)


def evaluate_recommend(
    tables: FeatureTables, as_of: pd.Timestamp | None = None, k: int = K
) -> dict[str, Any]:
    """Fit before ``as_of`` (default: :data:`EVAL_TEST_DAYS` before the end), test on the purchases
    after it: the recommender beside popularity and random products."""
    frame = interactions(tables)
    if frame.empty:
        raise BadInputError("no views, carts or purchases of products: nothing to evaluate")
    if as_of is None:
        as_of = pd.Timestamp(frame["ts"].max() - EVAL_TEST_DAYS * 86_400, unit="s", tz="UTC").floor("D")
    tables.check_as_of(as_of)
    split = time_split(frame, as_of)
    table = evaluate_split(split, k)
    return {
        "as_of": as_of.isoformat(),
        "train_interactions": len(split.train),
        "test_purchases": len(split.test),
        "metrics": {str(n): {str(c): float(v) for c, v in row.items()} for n, row in table.iterrows()},
    }


def train_recommend(tables: FeatureTables, as_of: pd.Timestamp | None = None) -> ModelCard:
    """Fit the recommender on the interactions before ``as_of`` (default: all) and save it."""
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    frame = interactions(tables, as_of)
    if frame.empty:
        raise BadInputError(f"no views, carts or purchases of products before {as_of}: nothing to learn from")
    start = time.perf_counter()
    model = Recommender(threads=tables.settings.threads or 0).fit(frame)
    took = time.perf_counter() - start
    notes: list[str] = []
    metrics: dict[str, Any] = {
        "fit_seconds": round(took, 2),
        "interactions": len(frame),
        "ranker": model.ranker_report_,
    }
    cut = frame["ts"].max() - EVAL_TEST_DAYS * 86_400
    try:
        table = evaluate_split(time_split(frame, float(cut)))
        metrics["time_split"] = {
            "test_days": EVAL_TEST_DAYS,
            **{str(n): {str(c): round(float(v), 4) for c, v in row.items()} for n, row in table.iterrows()},
        }
    except BadInputError as exc:
        notes.append(f"not evaluated: {exc}")
    card = ModelCard(
        name=NAME,
        features=list(COLUMNS),
        as_of=as_of.isoformat(),
        train_window=(tables.span().first.isoformat(), as_of.isoformat()),
        engine=tables.source.engine,
        params={
            "weights": model.weights_,
            "recent_days": model.recent_days,
            "factors": model.factors,
            "customers": len(model.histories_),
            "products": len(model.neighbours_.items_),
            "open_carts": len(model.carts_),
            "ranker": model.ranker_reason_,
        },
        metrics=metrics,
        notes=notes,
    )
    return save_model(tables.settings, model, card)


def load_recommender(settings: Settings) -> tuple[Recommender, ModelCard]:
    """The current saved recommender and its card (a clear error if none was trained, if it was trained
    on other interaction columns, as recommenders saved before ``brand`` was one were, or if its category
    affinity predates the customers' own views)."""
    model, card = load_model(settings, NAME, features=list(COLUMNS))
    if not isinstance(model, Recommender):
        raise BadInputError(f"{settings.models_dir / NAME}: the saved model is not a recommender; retrain it")
    if not hasattr(model.affinity_, "within_prior_"):
        raise BadInputError(
            f"the recommender {card.version} was saved by an earlier winback, before category affinity "
            "weighed each customer's own views: retrain it with `winback train recommend`"
        )
    return model, card


def recommendations_table(candidates: list[Any], key: str, value: str) -> list[dict[str, Any]]:
    """Rows for JSON or a table: the key, rank, product, score and reason of each candidate."""
    return [
        {key: value, "rank": rank, "product_id": c.product_id, "score": c.score, "reason": c.reason}
        for rank, c in enumerate(candidates, start=1)
    ]


def render_recommend_evaluation(result: dict[str, Any]) -> None:
    """The evaluation as a small table on the terminal."""
    print(
        f"time split at {result['as_of'][:19]}: trained on {result['train_interactions']:,} interactions, "
        f"tested on {result['test_purchases']:,} later purchases of known customers"
    )
    print(
        f"{'':12}{'recall@10':>10}{'ndcg@10':>10}{'coverage':>10}{'long tail':>10}{'x popularity':>14}"
        f"{'95% interval':>16}"
    )
    for name, row in result["metrics"].items():
        ratio = row.get("x_popularity", float("nan"))
        low, high = row.get("x_low", float("nan")), row.get("x_high", float("nan"))
        interval = f"{low:.2f} - {high:.2f}" if np.isfinite(low) and np.isfinite(high) else ""
        print(
            f"{name:12}{row['recall@10']:>10.3f}{row['ndcg@10']:>10.3f}{row['coverage']:>10.3f}"
            f"{row['long_tail']:>10.3f}{ratio:>14.2f}{interval:>16}"
        )

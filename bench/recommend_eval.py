"""Candidate sources on a time split: recall@10, NDCG@10, coverage and long tail, beside popularity.

Train on the interactions before T, test against the distinct products each known customer purchased
at or after T. Each source is asked with the customer's most recent distinct items before T (or, for
popularity, nothing): item neighbours (their neighbours, the items themselves left out), basket rules
(their complements), popularity in their categories, the shop's popularity (the baseline of the ratio
column) and random products. "item neighbours (history, seen too)" asks with the customer's whole
history weighted by interaction (view 1, cart 3, purchase 5, summed) and lets products they chose before
come back; the customer's own recent items alone are shown for reference: in the simulator about half
the purchases after T are of products the customer viewed or carted before (abandoned carts recovered).

Run::

    .venv/bin/python bench/recommend_eval.py                      # simulator 30,000 x 120 days + RetailRocket
    .venv/bin/python bench/recommend_eval.py --customers 3000 --seed 4 --skip-retailrocket  # quicker

Each ratio to popularity comes with its 95% interval (``x_low``, ``x_high``: a bootstrap over the tested
customers). The default shop has 30,000 customers and 300 products, so that about 6,300 customers are
tested and a ratio is known to about +/-0.05; with 3,000 customers it is +/-0.18, too wide to judge a goal
such as 1.5 x popularity.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from winback.config import load_settings
from winback.events.ingest import ingest_files
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.recommend.affinity import CategoryAffinity
from winback.recommend.factors import ALSFactors
from winback.recommend.interactions import TimeSplit, interactions, time_split
from winback.recommend.ranker import Recommender
from winback.recommend.sources import BasketRules, ItemNeighbours, Popularity
from winback.recommend.tasks import evaluate_lists
from winback.sim import simulate
from winback.sim.catalogue import LINKS
from winback.sim.config import ShopConfig
from winback.sim.sessions import view_shares
from winback.sim.shop import _Run

RETAILROCKET = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "retailrocket_events_sample_1500visitors.csv"
)
K = 10
RECENT = 20

Recommend = Callable[[str, list[str]], list[str]]


def evaluate(
    split: TimeSplit, seed: int = 0, k: int = K, oracle: dict[str, list[str]] | None = None
) -> pd.DataFrame:
    """One row per recommender: users, recall@k, NDCG@k, coverage, long-tail share, ms per user."""
    train = split.train
    truth = split.truth()
    recent = (
        train.sort_values("ts", kind="stable")
        .drop_duplicates(["user_key", "product_id"], keep="last")
        .groupby("user_key")["product_id"]
        .agg(lambda s: list(s)[::-1][:RECENT])
    )
    history = {u: (list(g["product_id"]), list(g["weight"])) for u, g in _history(train).groupby("user_key")}
    catalogue = np.array(sorted(set(train["product_id"])), dtype=object)

    fitted: dict[str, float] = {}
    start = time.perf_counter()
    neighbours = ItemNeighbours().fit(train)
    fitted["item neighbours (recent, new items)"] = time.perf_counter() - start
    start = time.perf_counter()
    rules = BasketRules().fit(train)
    fitted["basket rules"] = time.perf_counter() - start
    start = time.perf_counter()
    popularity = Popularity(half_life_days=7).fit(train, now=split.at)
    fitted["popularity (shop)"] = time.perf_counter() - start
    start = time.perf_counter()
    affinity = CategoryAffinity().fit(train)
    fitted["category affinity"] = time.perf_counter() - start
    start = time.perf_counter()
    als = ALSFactors(factors=32).fit(train)
    fitted["ALS factors (implicit)"] = time.perf_counter() - start
    start = time.perf_counter()
    ranker = Recommender().fit(train)
    fitted["winback recommender"] = time.perf_counter() - start
    shop_top = [c.product_id for c in popularity.top(k)]
    print(f"  winback recommender: {ranker.ranker_reason_}")
    if ranker.ranker_report_:
        print(f"  learning: {ranker.ranker_report_}")
    rng = np.random.default_rng(seed)

    recommenders: dict[str, Recommend] = {
        "winback recommender": lambda u, items: [c.product_id for c in ranker.for_user(u, k, now=split.at)],
        "winback, fixed blend": lambda u, items: [
            c.product_id for c in ranker.for_user(u, k, now=split.at, learned=False)
        ],
        "category affinity": lambda u, items: [c.product_id for c in affinity.for_user(u, k)],
        "ALS factors (implicit)": lambda u, items: [
            c.product_id for c in als.for_user(u, k, include_seen=True)
        ],
        "item neighbours (recent, new items)": lambda u, items: [
            c.product_id for c in neighbours.for_items(items, k)
        ],
        "item neighbours (history, seen too)": lambda u, items: [
            c.product_id
            for c in neighbours.for_items(history[u][0], k, weights=history[u][1], include_query=True)
        ],
        "basket rules": lambda u, items: [c.product_id for c in rules.for_items(items, k)],
        "popularity (shop)": lambda u, items: shop_top,
        "random": lambda u, items: list(rng.choice(catalogue, size=min(k, len(catalogue)), replace=False)),
        "(their own recent items)": lambda u, items: items[:k],
    }
    if oracle is not None:
        recommenders["(oracle: the simulator's true tastes)"] = lambda u, items: oracle[u]
    lists: dict[str, dict[str, list[str]]] = {}
    ms_per_user: dict[str, float] = {}
    for name, recommend in recommenders.items():
        start = time.perf_counter()
        lists[name] = {user: recommend(user, recent.get(user, [])) for user in truth}
        ms_per_user[name] = 1000 * (time.perf_counter() - start) / max(len(truth), 1)
    table = evaluate_lists(split, lists, k, baseline="popularity (shop)")
    table["fit s"] = [fitted.get(name, 0.0) for name in table.index]
    table["ms/user"] = [ms_per_user[name] for name in table.index]
    return table


def oracle_lists(config: ShopConfig, seed: int, users: list[str], k: int = K) -> dict[str, list[str]]:
    """The simulator's own choice model, which no recommender can see: each customer's true probability
    of viewing each product (:func:`winback.sim.sessions.view_shares`: their category affinities, price
    tier, staples and the products' complement links). Its recall is the ceiling of taste-based
    recommendations."""
    run = _Run(config, seed, None)  # the same customers and catalogue, before any day is simulated
    ids = np.asarray(run.catalogue.product_ids().to_numpy(zero_copy_only=False)).astype(str)
    index = {str(u): i for i, u in enumerate(run.user_ids)}
    rows = np.array([index[user] for user in users], dtype=np.int64)
    lists = {}
    for lo in range(0, rows.size, 1000):
        shares = view_shares(run.people, run.catalogue, rows[lo : lo + 1000], config.views_per_session)
        top = np.argsort(-shares, axis=1, kind="stable")[:, :k]
        for user, best in zip(users[lo : lo + 1000], top, strict=True):
            lists[user] = list(ids[best])
    return lists


def complement_links(split: TimeSplit, config: ShopConfig, seed: int) -> pd.DataFrame:
    """The cart use against the simulator's truth: for a cart of one product, how many of the product's
    true complement links (:attr:`winback.sim.catalogue.Catalogue.links`) each list holds in its top 3
    and top 10, averaged over the products seen in training."""
    run = _Run(config, seed, None)
    ids = np.asarray(run.catalogue.product_ids().to_numpy(zero_copy_only=False)).astype(str)
    links = {ids[i]: set(ids[run.catalogue.links[i]]) for i in range(ids.size)}
    train = split.train
    ranker = Recommender().fit(train)
    popular = [c.product_id for c in Popularity(half_life_days=7).fit(train, now=split.at).top(10)]
    lists: dict[str, Callable[[str], list[str]]] = {
        "winback (`cart` use)": lambda p: [c.product_id for c in ranker.for_cart([p], 10)],
        "complements (other categories viewed in the same visits)": lambda p: [
            c.product_id for c in ranker.complements_.for_items([p], 10)
        ],
        "basket rules (orders)": lambda p: [c.product_id for c in ranker.rules_.for_items([p], 10)],
        "item neighbours": lambda p: [c.product_id for c in ranker.neighbours_.similar(p, 10)],
        "popularity (shop)": lambda p: popular,
    }
    products = sorted(set(train["product_id"]) & set(links))
    rows = []
    for name, recommend in lists.items():
        shown = [recommend(p) for p in products]
        rows.append(
            {
                "list": name,
                "links in top 3": np.mean(
                    [len(set(s[:3]) & links[p]) / len(links[p]) for p, s in zip(products, shown, strict=True)]
                ),
                "links in top 10": np.mean(
                    [len(set(s) & links[p]) / len(links[p]) for p, s in zip(products, shown, strict=True)]
                ),
            }
        )
    return pd.DataFrame(rows).set_index("list")


def _history(train: pd.DataFrame) -> pd.DataFrame:
    """Each customer's products with their summed interaction weights."""
    return train.groupby(["user_key", "product_id"], sort=False)["weight"].sum().reset_index()


def split_by_days(frame: pd.DataFrame, test_days: float) -> TimeSplit:
    return time_split(frame, float(frame["ts"].max()) - test_days * 86_400)


def simulated(config: ShopConfig, seed: int, test_days: float, home: Path) -> tuple[TimeSplit, str]:
    settings = load_settings(home=home / "sim")
    start = time.perf_counter()
    result = simulate(seed=seed, config=config)
    with EventStore(settings) as store:
        store.append(result.events, source="simulated")
    with open_source(settings) as source:
        frame = interactions(FeatureTables(source, settings))
    took = time.perf_counter() - start
    info = (
        f"simulator: {config.customers:,} customers x {config.days} days (seed {seed}), "
        f"{len(frame):,} interactions, "
        f"{frame['product_id'].nunique():,} products, last {test_days:g} days tested; built in {took:.0f} s"
    )
    return split_by_days(frame, test_days), info


def retailrocket(home: Path, test_share: float) -> tuple[TimeSplit, str]:
    settings = load_settings(home=home / "rr")
    with EventStore(settings) as store:
        ingest_files(store, [RETAILROCKET])
    with open_source(settings) as source:
        frame = interactions(FeatureTables(source, settings))
    at = float(frame["ts"].quantile(1 - test_share))
    info = (
        f"RetailRocket sample: {len(frame):,} interactions, {frame['user_key'].nunique():,} visitors, "
        f"{frame['product_id'].nunique():,} products, {int((frame['kind'] == 'purchase').sum())} purchases; "
        f"the last {test_share:.0%} of interactions tested"
    )
    return time_split(frame, at), info


def retailrocket_views(home: Path, test_share: float) -> tuple[TimeSplit, str]:
    """The same split, tested against any later interaction (the sample has too few purchases)."""
    settings = load_settings(home=home / "rr")
    with open_source(settings) as source:
        frame = interactions(FeatureTables(source, settings))
    at = float(frame["ts"].quantile(1 - test_share))
    info = "RetailRocket sample, tested against every later interaction (view, cart or purchase)"
    return time_split(frame, at, test_kinds=("view", "cart", "purchase")), info


def show(title: str, split: TimeSplit, seed: int, oracle: dict[str, list[str]] | None = None) -> None:
    print(f"\n{title}")
    buyers = split.test["user_key"].nunique()
    pairs = len(split.test)
    print(f"  train {len(split.train):,} interactions; test {pairs:,} pairs of {buyers:,} customers")
    if split.test.empty:
        print("  nothing to test: no known customer purchased after the split")
        return
    table = evaluate(split, seed, oracle=oracle)
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--products", type=int, default=300, help="catalogue size")
    parser.add_argument("--test-days", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rr-test-share", type=float, default=0.3)
    parser.add_argument("--skip-retailrocket", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = ShopConfig(customers=args.customers, days=args.days, n_products=args.products)
        split, info = simulated(config, args.seed, args.test_days, Path(tmp))
        oracle = oracle_lists(config, args.seed, sorted(split.truth()))
        show(info, split, args.seed, oracle)
        print(
            f"\ncart use: a one-product cart's {LINKS} true complement products (the simulator's links) "
            "in its list"
        )
        with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
            print(complement_links(split, config, args.seed).to_string())
        if not args.skip_retailrocket:
            split, info = retailrocket(Path(tmp), args.rr_test_share)
            show(info, split, args.seed)
            split, info = retailrocket_views(Path(tmp), args.rr_test_share)
            show(info, split, args.seed)
    print(
        "\nrecall@10 / NDCG@10 averaged over test customers; coverage = distinct recommended / products in "
        "train; long tail = share of recommendations outside the top 20% of products by interactions."
    )


if __name__ == "__main__":
    main()

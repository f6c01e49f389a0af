"""Recommender benchmark: training on 10M interactions, and one customer's, cart's or product's latency.

Usage: ``.venv/bin/python bench/bench_recommend.py [--interactions 10000000] [--queries 2000]
[--new 10000] [--threads 0] [--no-breakdown]``

Data: a synthetic interaction log (:func:`synthetic_log`), cached as Parquet under ``bench/out/`` so reruns
skip the generation: about ``--interactions / 10`` customers and ``/ 50`` products (1M and 200k for the
default 10M), power-law product popularity within ~50 categories of Zipf-distributed size, lognormal
prices per category, Pareto-distributed customer activity (the heaviest customers have thousands of
interactions), sessions of a few events (``session_key``), 70% views / 20% carts / 10% purchases (a
purchase carries its session's ``order_id``), 120 days of timestamps. Customers keep to a favourite
category 70% of the time, and a cart or purchase is mostly of the product viewed just before, so item
neighbours, basket rules, repeat purchases (of popular products) and category affinity all have something
to find.

Figures, each with a baseline measured in the same command (the machine is shared and noisy):

- the interactions frame: reading the cached log and ``with_weights``, against a plain
  ``pd.read_parquet``;
- training: ``Recommender.fit`` in total, against ``Popularity.fit`` on the same frame (the cheapest
  source: one weighted group-by) and a plain pandas ``groupby("product_id").size()``; then each part of
  the fit timed on its own (unless ``--no-breakdown``), sharing the id codes as ``fit`` does (their
  coding is the first line), so the table shows where the time goes (in ``fit`` ALS learns in a thread
  beside the other parts, on one core fewer, so the fit takes less than the parts' sum; ALS on both
  cores here is the most sensitive to other work); peak RSS right after the fit; target (issue 4): 10M
  interactions in under 60 s on 2 cores;
- the learned ranker of the ``winback`` use: why it was learned or not, and its learning's time (within
  the fit);
- queries: p50 / p99 over ``--queries`` calls of ``for_user`` (random known customers, a tenth of them
  from the heaviest 1%; also in the fixed blend's order, ``learned=False``, the baseline of the learned
  ranker), ``for_cart`` (random open carts by id), ``similar`` (random products by
  popularity) and ``for_session`` (the viewed products of random sessions), against
  ``Popularity.top(10)`` (a slice of a sorted Series); target: p99 under 5 ms;
- ``learn_new`` of ``--new`` new interactions (the day after the log, a tenth of them from new customers),
  against a ``fit`` of Popularity on the whole log.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_features import OUT, peak_rss_mib
from winback.recommend.affinity import CategoryAffinity
from winback.recommend.factors import ALSFactors
from winback.recommend.interactions import COLUMNS, with_weights
from winback.recommend.ranker import COMPLEMENT_RULES, Histories, Recommender, _open_carts
from winback.recommend.repeat import RepeatPurchases
from winback.recommend.sources import (
    BasketRules,
    ContentNeighbours,
    ItemNeighbours,
    Popularity,
    _factorised,
    shared_codes,
)

SEED = 7
DAY = 86_400.0
START = 1_704_067_200.0  # 2024-01-01 UTC
TARGET_FIT_S = 60.0
TARGET_P99_MS = 5.0


# ----------------------------------------------------------------------------- data
def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights ``rank ** -exponent`` in a random order."""
    return rng.permutation(np.arange(1, n + 1, dtype=float) ** -exponent)


def synthetic_log(
    n: int,
    seed: int = SEED,
    *,
    users: int | None = None,
    products: int | None = None,
    categories: int = 50,
    days: float = 120.0,
    start: float = START,
    session_prefix: str = "s",
) -> pd.DataFrame:
    """About ``n`` interactions (``interactions``' columns but ``weight``), ordered by ``ts``.

    The catalogue (categories, popularity, prices) depends on ``products`` and ``categories`` only, not on
    ``seed``, so a second log with another seed (new interactions) is of the same shop.
    """
    users = users or max(10, n // 10)
    products = products or max(categories * 4, n // 50)
    shop = np.random.default_rng(12345)
    sizes = _normalised(_zipf_weights(categories, 1.0, shop))
    category_of = np.sort(shop.choice(categories, size=products, p=sizes))
    popularity = _zipf_weights(products, 1.0, shop)
    mu = shop.uniform(np.log(5.0), np.log(300.0), size=categories)
    price = np.round(np.exp(shop.normal(mu[category_of], 0.5)), 2)
    bounds = np.searchsorted(category_of, np.arange(categories + 1))  # products of c: bounds[c]:bounds[c+1]
    cumulative = np.cumsum(popularity)
    before = np.r_[0.0, cumulative][bounds[:-1]]
    within = np.r_[0.0, cumulative][bounds[1:]] - before

    rng = np.random.default_rng(seed)
    # Sessions: Pareto-distributed activity per customer, a favourite category, a few events each.
    mean_length = 4.0
    sessions = int(n / mean_length * 1.05) + 10
    activity = rng.pareto(2.0, size=users) + 1.0
    more = rng.choice(users, size=max(0, sessions - users), p=_normalised(activity))
    session_user = rng.permutation(np.r_[np.arange(users), more])  # everyone visits once at least
    sessions = len(session_user)
    category_share = _normalised(np.bincount(category_of, weights=popularity, minlength=categories))
    favourite = rng.choice(categories, size=users, p=category_share)
    session_category = np.where(
        rng.random(sessions) < 0.7,
        favourite[session_user],
        rng.choice(categories, size=sessions, p=category_share),
    )
    length = rng.geometric(1.0 / mean_length, size=sessions)
    total = int(length.sum())
    if total < n:
        length[-1] += n - total
    session = np.repeat(np.arange(sessions), length)[:n]
    first = np.r_[True, session[1:] != session[:-1]]
    # Products: by popularity within the session's category; a cart or purchase is mostly of the product
    # viewed just before.
    category = session_category[session]
    drawn = np.searchsorted(cumulative, before[category] + rng.random(n) * within[category], side="right")
    product = np.minimum(drawn, bounds[category + 1] - 1)
    kind = rng.choice(np.array(["view", "cart", "purchase"]), size=n, p=[0.7, 0.2, 0.1])
    follow = (kind != "view") & ~first & (rng.random(n) < 0.7)
    for _ in range(3):  # a chain of carts/purchases keeps following the last viewed product
        product = np.where(follow, np.r_[product[:1], product[:-1]], product)
    user = session_user[session]
    start_ts = start + rng.random(sessions) * days * DAY
    gaps = rng.exponential(90.0, size=n)
    gaps[first] = 0.0
    offset = np.cumsum(gaps)
    ts = start_ts[session] + offset - np.maximum.accumulate(np.where(first, offset, 0.0))
    order = np.argsort(ts, kind="stable")
    session_names = _names(session_prefix, sessions)
    frame = pd.DataFrame(
        {
            "user_key": _names("u", users)[user],
            "product_id": _names("p", products)[product],
            "ts": ts,
            "kind": kind,
            "session_key": session_names[session],
            "order_id": _order_ids(kind == "purchase", _names("o", sessions)[session]),
            "category": _names("c", categories)[category_of[product]],
            "price": price[product],
        }
    )
    return frame.iloc[order].reset_index(drop=True)


def _order_ids(purchase: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """The order of each purchase, None for views and carts."""
    out = np.full(purchase.size, None, dtype=object)
    out[purchase] = orders[purchase]
    return out


def _names(prefix: str, n: int) -> np.ndarray:
    """``prefix0`` ... as Python strings (taking from them is quicker than formatting per row)."""
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def cached_log(n: int) -> tuple[Path, float]:
    """Path of the cached log of ``n`` interactions (generated if missing) and the generation seconds."""
    path = OUT / f"recommend-log-n{n}-s{SEED}.parquet"
    if path.exists():
        return path, 0.0
    OUT.mkdir(exist_ok=True)
    began = time.perf_counter()
    frame = synthetic_log(n)
    seconds = time.perf_counter() - began
    frame.to_parquet(path, index=False)
    print(f"generated {len(frame):,} interactions in {seconds:.1f} s -> {path}")
    return path, seconds


def new_interactions(n: int, log: pd.DataFrame, users: int, products: int) -> pd.DataFrame:
    """``n`` interactions of the same shop on the day after ``log``; a tenth from new customers."""
    after = float(log["ts"].max()) + 60.0
    frame = synthetic_log(
        n, SEED + 1, users=users, products=products, days=1.0, start=after, session_prefix="new-s"
    )
    fresh = np.random.default_rng(SEED + 2).random(len(frame)) < 0.1
    frame.loc[fresh, "user_key"] = "new-" + frame.loc[fresh, "user_key"]
    return with_weights(frame)[list(COLUMNS)]


# ----------------------------------------------------------------------------- timing
def timed(run: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    out = run()
    return time.perf_counter() - began, out


def latencies(call: Callable[[object], object], keys: Sequence[object]) -> np.ndarray:
    """Milliseconds of ``call(key)`` for each key (after a few warm-up calls)."""
    for key in keys[:20]:
        call(key)
    out = np.empty(len(keys))
    clock = time.perf_counter_ns
    for i, key in enumerate(keys):
        began = clock()
        call(key)
        out[i] = clock() - began
    return out / 1e6


def quantiles(ms: np.ndarray) -> dict[str, float]:
    p50, p99, worst = np.percentile(ms, [50, 99, 100])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "max_ms": round(float(worst), 3)}


def breakdown(model: Recommender, frame: pd.DataFrame) -> dict[str, float]:
    """Seconds of each part of ``Recommender.fit``, each fitted on its own as ``fit`` does (with the
    user and product codes shared between the parts, timed first)."""
    parts: dict[str, Callable[[], object]] = {
        "coding user and product ids": lambda: (
            _factorised(frame["user_key"]),
            _factorised(frame["product_id"]),
        ),
        "ItemNeighbours": lambda: ItemNeighbours().fit(frame),
        "BasketRules": lambda: BasketRules().fit(frame),
        "BasketRules (complements from visits)": lambda: BasketRules(**COMPLEMENT_RULES).fit(frame),
        "ContentNeighbours": lambda: ContentNeighbours().fit(frame),
        "Popularity": lambda: Popularity(model.half_life_days).fit(frame),
        "CategoryAffinity": lambda: CategoryAffinity().fit(frame),
        "RepeatPurchases": lambda: RepeatPurchases().fit(frame),
        "ALSFactors": lambda: ALSFactors(
            factors=model.factors, iterations=model.als_iterations, threads=model.threads
        ).fit(frame),
        "Histories": lambda: Histories(frame),
        "open carts": lambda: _open_carts(frame, model.now_ - model.cart_days * DAY),
        "price ratios": lambda: model._price_ratios(frame),
        "learned ranker (label windows)": lambda: model._learn_ranker(frame),
    }
    seconds = {}
    with shared_codes():
        for name, run in parts.items():
            seconds[name], _ = timed(run)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000, help="interactions in the log")
    parser.add_argument("--queries", type=int, default=2000, help="calls to time per query kind")
    parser.add_argument("--new", type=int, default=10_000, help="new interactions for learn_new")
    parser.add_argument("--threads", type=int, default=0, help="Recommender threads (ALS; 0: all cores)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing each part of the fit")
    args = parser.parse_args()

    path, _ = cached_log(args.interactions)
    read_s, raw = timed(lambda: pd.read_parquet(path))
    build_s, frame = timed(lambda: with_weights(pd.read_parquet(path))[list(COLUMNS)])
    assert isinstance(frame, pd.DataFrame)
    del raw
    n = len(frame)
    n_users, n_products = frame["user_key"].nunique(), frame["product_id"].nunique()
    per_user = frame["user_key"].value_counts()
    print(
        f"data: {n:,} interactions, {n_users:,} customers (heaviest {per_user.iloc[0]:,} interactions, "
        f"99th percentile {per_user.quantile(0.99):.0f}), {n_products:,} products, "
        f"{frame['category'].nunique()} categories, {frame['session_key'].nunique():,} sessions"
    )
    print(
        f"frame: read + with_weights {build_s:.2f} s; plain read_parquet {read_s:.2f} s; "
        f"ratio {build_s / read_s:.2f}"
    )

    # -- training
    fit_s, fitted = timed(lambda: Recommender(threads=args.threads).fit(frame))
    assert isinstance(fitted, Recommender)
    model = fitted
    peak_fit = peak_rss_mib()
    pop_s, _ = timed(lambda: Popularity(model.half_life_days).fit(frame))
    count_s, _ = timed(lambda: frame.groupby("product_id").size())
    print(
        f"training: Recommender.fit {fit_s:.1f} s ({n / fit_s:,.0f} interactions/s); Popularity.fit "
        f"{pop_s:.2f} s; groupby count {count_s:.2f} s; ratio fit/Popularity {fit_s / pop_s:.1f}, "
        f"fit/groupby {fit_s / count_s:.1f} (target: under {TARGET_FIT_S:.0f} s); "
        f"peak RSS {peak_fit:,.0f} MiB"
    )
    learning = model.ranker_report_.get("seconds", {})
    print(f"ranker: {model.ranker_reason_}; learning took {learning} (within the fit)")

    # -- queries
    rng = np.random.default_rng(SEED)
    q = args.queries
    heavy = per_user.index[: max(1, len(per_user) // 100)].to_numpy()
    known = per_user.index.to_numpy()
    users = np.where(rng.random(q) < 0.1, rng.choice(heavy, size=q), rng.choice(known, size=q)).tolist()
    cart_ids = list(model.carts_)
    carts = [cart_ids[i] for i in rng.integers(0, len(cart_ids), size=q)] if cart_ids else []
    products = frame["product_id"].iloc[rng.integers(0, n, size=q)].tolist()  # by popularity
    views = frame.loc[frame["kind"] == "view", ["session_key", "product_id"]]
    picked = views["session_key"].iloc[rng.integers(0, len(views), size=q)].tolist()
    viewed = views[views["session_key"].isin(set(picked))].groupby("session_key")["product_id"].agg(list)
    sessions = [viewed[key] for key in picked]  # sessions with more views are picked more often
    query_ms = {
        "for_user": latencies(lambda u: model.for_user(str(u)), users),
        "for_user, fixed blend": latencies(lambda u: model.for_user(str(u), learned=False), users),
        "for_cart": latencies(lambda c: model.for_cart(str(c)), carts),
        "similar": latencies(lambda p: model.similar(str(p)), products),
        "for_session": latencies(lambda s: model.for_session(s), sessions),  # type: ignore[arg-type]
        "Popularity.top": latencies(lambda _: model.popularity_.top(10), users),
    }
    figures = {name: quantiles(ms) for name, ms in query_ms.items()}
    base_p99 = figures["Popularity.top"]["p99_ms"]
    heavy_ms = query_ms["for_user"][np.isin(np.array(users, dtype=object), heavy)]
    figures["for_user (heaviest 1%)"] = quantiles(heavy_ms)
    blend_heavy = query_ms["for_user, fixed blend"][np.isin(np.array(users, dtype=object), heavy)]
    figures["for_user, fixed blend (heaviest 1%)"] = quantiles(blend_heavy)

    # -- learn_new
    batch = new_interactions(args.new, frame, users=n_users, products=n_products)
    learn_s, _ = timed(lambda: model.learn_new(batch))
    after = model.for_user(str(batch["user_key"].iloc[-1]))

    parts = {} if args.no_breakdown else breakdown(model, frame)
    peak = peak_rss_mib()

    # -- report
    print()
    print(f"{'figure':<34}{'value':>14}   ratio to baseline")
    print(f"{'fit total (s)':<34}{fit_s:>14.1f}   {fit_s / pop_s:.1f}x Popularity.fit ({pop_s:.2f} s)")
    for name, seconds in parts.items():
        print(f"{'  ' + name + ' (s)':<34}{seconds:>14.2f}   {seconds / fit_s:.0%} of the fit")
    if parts:
        beside = "each timed on its own; in fit ALS runs beside the rest"
        print(f"{'  sum of the parts (s)':<34}{sum(parts.values()):>14.2f}   ({beside})")
    print(f"{'peak RSS after fit (MiB)':<34}{peak_fit:>14,.0f}")
    for name, f in figures.items():
        ratio = f["p99_ms"] / base_p99 if name != "Popularity.top" else 1.0
        print(
            f"{name + ' p50/p99 (ms)':<34}{f['p50_ms']:>6.2f} /{f['p99_ms']:>6.2f}   "
            f"{ratio:.0f}x Popularity.top p99"
        )
    learned = f"learn_new {len(batch):,} (s)"
    print(f"{learned:<34}{learn_s:>14.2f}   {learn_s / pop_s:.1f}x Popularity.fit")
    verdict_fit = "met" if fit_s < TARGET_FIT_S else "MISSED"
    worst = max(figures[k]["p99_ms"] for k in ("for_user", "for_cart", "similar", "for_session"))
    verdict_q = "met" if worst < TARGET_P99_MS else "MISSED"
    print(
        f"targets: fit under {TARGET_FIT_S:.0f} s {verdict_fit}; every query p99 under "
        f"{TARGET_P99_MS:.0f} ms {verdict_q} (worst {worst:.2f} ms); a new customer after learn_new "
        f"gets {len(after)} products"
    )
    print(
        json.dumps(
            {
                "interactions": n,
                "customers": int(n_users),
                "products": int(n_products),
                "frame_seconds": round(build_s, 2),
                "fit_seconds": round(fit_s, 2),
                "popularity_fit_seconds": round(pop_s, 3),
                "groupby_count_seconds": round(count_s, 3),
                "fit_parts_seconds": {k: round(v, 2) for k, v in parts.items()},
                "queries": figures,
                "learn_new_seconds": round(learn_s, 2),
                "ranker": model.ranker_reason_,
                "ranker_learning_seconds": learning,
                "peak_rss_after_fit_mib": round(peak_fit),
                "peak_rss_mib": round(peak),
            }
        )
    )


if __name__ == "__main__":
    main()

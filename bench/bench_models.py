"""Abandonment model benchmark: training on 1M carts, batch scoring, and one cart's latency.

Usage: ``.venv/bin/python bench/bench_models.py [--events 26500000] [--calls 5000] [--memory-limit 8GB]``

Data: a simulated shop of about ``--events`` events (365 days; 26.5M events give about 1.3M carts, of which
the carts that ended before the evaluation cut, 80% of the way through the data, train), cached under
``bench/out/`` with its train/test cart states, so reruns skip the simulation and the features. The
split is ``winback evaluate``'s: train on the states of carts that ended before the cut, each cart
weighted once, test on every state of the carts that started after it.

Each figure has a baseline measured in the same command:

- training: ``tasks.fit_abandonment`` (LightGBM, 300 trees, calibrated) against ``LogisticBaseline`` on
  the same rows; target (issue 3): 1M carts in under a minute;
- batch scoring: ``AbandonmentModel.predict_proba`` on a DataFrame of all test states against LightGBM's
  own ``Booster.predict`` on the encoded matrix (the floor: no checks, no calibration); target 200K rows/s;
  and ``tasks.score_abandonment`` end to end (cart snapshots as of the last event, then scores and
  reasons), whose time is mostly the feature query over the whole store;
- one cart: ``predict_proba`` on a 1-row numpy array (the encoded row, the fast path) and on a 1-row
  DataFrame, against ``Booster.predict`` on the same row; p50 and p99 over ``--calls`` calls on
  different rows; target: p99 under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_features import ensure_store, peak_rss_mib
from winback.config import Settings
from winback.features.carts import CART_FEATURES
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models.abandonment import AbandonmentModel, LogisticBaseline
from winback.models.registry import ModelCard, save_model
from winback.models.tasks import (
    _cart_split,
    default_eval_as_of,
    fit_abandonment,
    score_abandonment,
)

FEATURES = list(CART_FEATURES)


def cached_split(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """Train and test cart states of the store (``winback evaluate``'s split), cached as Parquet."""
    directory = settings.home / "bench-split"
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return pd.read_parquet(directory / "train.parquet"), pd.read_parquet(directory / "test.parquet"), meta
    start = time.perf_counter()
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        as_of = default_eval_as_of(tables)
        split = _cart_split(tables, as_of, with_test=True)
    seconds = time.perf_counter() - start
    directory.mkdir(exist_ok=True)
    split.train.to_parquet(directory / "train.parquet")
    split.test.to_parquet(directory / "test.parquet")
    meta = {"as_of": as_of.isoformat(), "feature_seconds": round(seconds, 1)}
    meta_path.write_text(json.dumps(meta))
    print(f"computed and cached the cart states in {seconds:.1f} s -> {directory}")
    return split.train, split.test, meta


def timed(run: object) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()  # type: ignore[operator]
    return time.perf_counter() - start, out


def latencies(call: object, rows: list[object]) -> np.ndarray:
    """Microseconds of ``call(row)`` for each row (after a few warm-up calls)."""
    for row in rows[:20]:
        call(row)  # type: ignore[operator]
    out = np.empty(len(rows))
    clock = time.perf_counter_ns
    for i, row in enumerate(rows):
        start = clock()
        call(row)  # type: ignore[operator]
        out[i] = clock() - start
    return out / 1000.0


def quantiles(us: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(us, [50, 99])
    return {"p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=26_500_000, help="events to simulate (about)")
    parser.add_argument("--calls", type=int, default=5000, help="single-cart calls to time")
    parser.add_argument("--memory-limit", help="DuckDB memory_limit for the features (default: settings)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="no score_abandonment run")
    args = parser.parse_args()
    settings = ensure_store(args.events)
    if args.memory_limit:
        settings = settings.model_copy(update={"feature_memory_limit": args.memory_limit})
    train, test, meta = cached_split(settings)
    n_carts, n_states = train.cart_id.nunique(), len(train)
    print(
        f"data: {n_carts:,} training carts ({n_states:,} states, ended before {meta['as_of']}), "
        f"{test.cart_id.nunique():,} test carts ({len(test):,} states)"
    )

    # -- training
    fit_s, model = timed(lambda: fit_abandonment(train))
    assert isinstance(model, AbandonmentModel)
    assert model.fallback_ is None
    base_s, _ = timed(lambda: LogisticBaseline().fit(train[FEATURES], train.abandoned))
    print(
        f"training: AbandonmentModel {fit_s:.1f} s ({n_carts / fit_s:,.0f} carts/s, "
        f"{n_states / fit_s:,.0f} states/s); LogisticBaseline on the same rows {base_s:.1f} s; "
        f"ratio {fit_s / base_s:.2f} (target: 1M carts in under 60 s)"
    )

    # -- batch scoring
    X = test[FEATURES]  # noqa: N806
    batch_s, proba = timed(lambda: model.predict_proba(X))
    booster = model.estimator_.booster_
    M = model._matrix(X)  # noqa: N806  (the encoded matrix the trees see)
    raw_s, _ = timed(lambda: booster.predict(M, raw_score=True, num_threads=model.n_jobs))
    rows = len(X)
    print(
        f"batch: predict_proba on a {rows:,}-row DataFrame {batch_s:.2f} s = {rows / batch_s:,.0f} rows/s; "
        f"Booster.predict raw on the encoded matrix {raw_s:.2f} s = {rows / raw_s:,.0f} rows/s; "
        f"ratio {batch_s / raw_s:.2f} (target: 200,000 rows/s)"
    )

    # -- one cart
    rng = np.random.default_rng(0)
    picks = rng.integers(0, rows, size=args.calls)
    arrays = [M[i : i + 1] for i in picks]
    frames = [X.iloc[[i]] for i in picks]
    numpy_us = latencies(model.predict_proba, arrays)
    frame_us = latencies(model.predict_proba, frames)
    raw_us = latencies(lambda r: booster.predict(r, raw_score=True, num_threads=1), arrays)
    assert np.allclose(model.predict_proba(arrays[0]), proba[picks[0] : picks[0] + 1])
    one = {"numpy": quantiles(numpy_us), "dataframe": quantiles(frame_us), "booster_raw": quantiles(raw_us)}
    words = {"numpy": "numpy row", "dataframe": "DataFrame row", "booster_raw": "Booster.predict raw"}
    print(
        f"one cart ({args.calls:,} calls): "
        + "; ".join(f"{words[k]} p50 {v['p50_us']:.0f} us, p99 {v['p99_us']:.0f} us" for k, v in one.items())
        + f"; ratio numpy/raw p99 {one['numpy']['p99_us'] / one['booster_raw']['p99_us']:.2f}"
        " (target: p99 under 1,000 us)"
    )

    # -- end to end: features as of the last event, then scores and reasons of the open carts
    result: dict[str, object] = {}
    if not args.skip_end_to_end:
        as_of = str(meta["as_of"])
        card = ModelCard(name="abandonment", features=FEATURES, as_of=as_of, train_window=("", as_of))
        save_model(settings, model, card)
        with open_source(settings) as source:
            tables = FeatureTables(source, settings)
            tables.span()
            e2e_s, scored = timed(lambda: score_abandonment(tables))
        n = len(scored)  # type: ignore[arg-type]
        print(
            f"score_abandonment end to end: {n:,} carts scored in {e2e_s:.1f} s (features over the whole "
            f"store as of its last event, then predict_proba and reasons) = {n / e2e_s:,.0f} carts/s"
        )
        result = {"end_to_end_seconds": round(e2e_s, 2), "end_to_end_carts": n}
    peak = peak_rss_mib()
    print(f"peak RSS {peak:,.0f} MiB")
    print(
        json.dumps(
            {
                "train_carts": int(n_carts),
                "train_states": int(n_states),
                "test_states": rows,
                "fit_seconds": round(fit_s, 2),
                "logistic_fit_seconds": round(base_s, 2),
                "batch_rows_per_second": round(rows / batch_s),
                "booster_rows_per_second": round(rows / raw_s),
                "one_cart": one,
                **result,
                "peak_rss_mib": round(peak),
            }
        )
    )


if __name__ == "__main__":
    main()

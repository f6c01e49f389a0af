"""Report benchmark: ``winback report`` on 10M events and 1M decisions (messages and their holdout).

Usage: ``.venv/bin/python bench/bench_report.py [--events 10000000] [--decisions 1000000]``

The data: one simulated shop that ran winback's randomising policy with a 10% holdout
(:func:`winback.measure.simulated.simulate_with_holdout`, 365 days, about a tenth of ``--events``),
its outcomes recorded from its events; then tiled: its events copied under renamed customers,
sessions and orders until ``--events``, its decisions (with their outcomes) copied until
``--decisions``. The abandonment, churn and CLV models are trained on the one shop and copied in, so
model health and the at-risk customers are part of the measured report. Cached under ``bench/out/``.

Baseline, in the same command on the same stores: a bare DuckDB scan and group-by of every event
(per type and week: count and revenue) and of every decision (per arm and action: count and mean
margin): the floor of "read all the rows once". Target (issue 7): the report in under 30 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from winback.config import Settings, load_settings
from winback.decide.log import DecisionLog
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.measure.data import Filters
from winback.measure.report import write_report
from winback.measure.simulated import simulate_with_holdout, store_simulated
from winback.models import tasks
from winback.sim import ShopConfig

OUT = Path(__file__).resolve().parent / "out"
EVENTS_PER_CUSTOMER_DAY_365 = 0.41
SEED = 42


def _suffixed(column: pa.ChunkedArray, suffix: str) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(column, pa.scalar(suffix), "")


def build(events: int, decisions: int) -> Settings:
    """The tiled home (cached)."""
    home = OUT / f"report-{events}-{decisions}"
    settings = load_settings(home=home)
    if (home / "ready").exists():
        return settings
    shutil.rmtree(home, ignore_errors=True)
    base = load_settings(home=OUT / f"report-base-{events}")
    shutil.rmtree(base.home, ignore_errors=True)
    customers = round(events / 10 / (EVENTS_PER_CUSTOMER_DAY_365 * 365))
    started = time.perf_counter()
    log = simulate_with_holdout(SEED, ShopConfig(customers=customers, days=365))
    store_simulated(base, log)
    with open_source(base) as source:
        tables = FeatureTables(source, base)
        for name in ("abandonment", "churn", "clv"):
            tasks.train(name, tables, None, 30)
    print(f"base shop: {log.shop.events.num_rows:,} events, {len(log.decisions):,} decisions, models trained "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    shutil.copytree(base.models_dir, settings.models_dir)
    tiles = max(1, round(events / log.shop.events.num_rows))
    with EventStore(settings) as store:
        for k in range(tiles):
            table = log.shop.events
            for name in ("event_id", "user_id", "session_id", "order_id"):
                table = table.set_column(
                    table.schema.get_field_index(name), name, _suffixed(table[name], f"-{k}")
                )
            store.append(table, source=f"tile-{k}")
    with DecisionLog(base, read_only=True) as logged:
        frame = logged.read()
    copies = max(1, round(decisions / len(frame)))
    with DecisionLog(settings) as out:
        for j in range(copies):
            tile = frame.drop(columns=["decision_id"]).copy()
            tile["user_id"] = tile["user_id"] + f"-{j % tiles}"
            tile["cart_id"] = tile["cart_id"] + f"-{j % tiles}"
            tile["version"] = tile["version"] + f"-copy{j}"
            tile["reasons"] = tile["reasons"].map(json.loads)
            out.append(tile)
    (home / "ready").write_text("ok\n")
    shutil.rmtree(base.home, ignore_errors=True)
    return settings


def baseline(settings: Settings) -> float:
    started = time.perf_counter()
    with duckdb.connect(str(settings.store_path), read_only=True) as con:
        con.execute(
            "SELECT event_type, date_trunc('week', timestamp), count(*), sum(price * quantity) "
            "FROM event_log GROUP BY ALL"
        ).fetchall()
    with duckdb.connect(str(settings.home / "decisions.duckdb"), read_only=True) as con:
        con.execute("SELECT holdout, action, count(*), avg(margin) FROM decisions GROUP BY ALL").fetchall()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    args = parser.parse_args()
    settings = build(args.events, args.decisions)
    with duckdb.connect(str(settings.store_path), read_only=True) as con:
        row = con.execute(
            "SELECT count(*), count(*) FILTER (event_type LIKE 'message_%' OR event_type = 'unsubscribed'), "
            "count(*) FILTER (event_type = 'message_sent') FROM event_log"
        ).fetchone()
    with duckdb.connect(str(settings.home / "decisions.duckdb"), read_only=True) as con:
        counted = con.execute(
            "SELECT count(*), count(*) FILTER (action <> 'nothing') FROM decisions"
        ).fetchone()
    assert row is not None
    assert counted is not None
    print(f"store: {row[0]:,} events ({row[1]:,} message events, {row[2]:,} sent); decision log: "
          f"{counted[0]:,} decisions ({counted[1]:,} messages)")  # fmt: skip
    base = baseline(settings)
    report = write_report(settings, Filters(), OUT / "bench_report.html")
    print(f"baseline (bare DuckDB scan + group-by of every event and decision): {base:.2f} s")
    print(
        f"winback report: {report.seconds:.1f} s -> {report.path} ({report.path.stat().st_size / 1e6:.1f} MB)"
    )
    print(f"ratio report / baseline: {report.seconds / base:.1f}; target: under 30 s")


if __name__ == "__main__":
    main()

"""Report benchmark: ``winback report`` on 10M events and 1M decisions (messages and their holdout).

Usage: ``.venv/bin/python bench/bench_report.py [--events 10000000] [--decisions 1000000] [--sections]``

The data: one simulated shop that ran winback's randomising policy with a 10% holdout
(:func:`winback.measure.simulated.simulate_with_holdout`, 365 days, about a tenth of ``--events``),
its outcomes recorded from its events; then tiled: its events copied under renamed customers,
sessions and orders until ``--events``, its decisions (with their outcomes) copied until
``--decisions``. The abandonment, churn and CLV models are trained on the one shop and copied in, so
model health and the at-risk customers are part of the measured report. Cached under ``bench/out/``.

Baseline, in the same command on the same stores: a bare DuckDB scan and group-by of every event
(per type and week: count and revenue) and of every decision (per arm and action: count and mean
margin): the floor of "read all the rows once". Target (issue 7): the report in under 30 s.

``--sections`` also times the report's parts one after another on one :class:`MeasureData` (as the
report shares its caches): first what several sections share (the sessionised events, the carts, the
decision log with segments), then each section in the page's order (its own work only), then the
page's rendering; it tells where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from winback.config import Settings, load_settings
from winback.decide.log import DecisionLog
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.measure.data import Filters, MeasureData
from winback.measure.report import SECTIONS, build_sections, inline_plotly, render_page, write_report
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


def _cpu() -> float:
    """CPU seconds of this process so far (all its threads: DuckDB's too)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def timed_parts(settings: Settings) -> list[tuple[str, float, float]]:
    """Wall and CPU seconds of each part of the report, run in turn on one MeasureData (see the module
    docstring). On a busy machine the CPU seconds move less than the wall ones."""
    filters = Filters()
    times: list[tuple[str, float, float]] = []

    def timed(label: str, work: Callable[[], object]) -> object:
        started, cpu = time.perf_counter(), _cpu()
        out = work()
        times.append((label, time.perf_counter() - started, _cpu() - cpu))
        return out

    with MeasureData(settings) as data:
        timed("open + span", lambda: data.period(filters))
        timed("shared: sessionised events", lambda: data.tables.sessioned)
        timed("shared: carts", lambda: data.carts(filters))
        timed("shared: decision log with segments", lambda: data.decisions(filters))
        sections: list[Any] = []
        for name, _ in SECTIONS:
            built = timed(f"section {name}", lambda n=name: build_sections(data, filters, [n]))
            sections += cast(list[Any], built)
        timed("render page", lambda: render_page(sections, title="winback report", head=inline_plotly()))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--sections", action="store_true", help="also time each part of the report")
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
    cpu = _cpu()
    report = write_report(settings, Filters(), OUT / "bench_report.html")
    cpu = _cpu() - cpu
    print(f"baseline (bare DuckDB scan + group-by of every event and decision): {base:.2f} s")
    print(
        f"winback report: {report.seconds:.1f} s ({cpu:.1f} s of CPU) -> {report.path} "
        f"({report.path.stat().st_size / 1e6:.1f} MB)"
    )
    print(f"ratio report / baseline: {report.seconds / base:.1f}; target: under 30 s")
    if args.sections:
        parts = timed_parts(settings)
        total, total_cpu = sum(p[1] for p in parts), sum(p[2] for p in parts)
        print(f"the report's parts, in turn (total {total:.1f} s, {total_cpu:.1f} s of CPU):")
        print(f"  {'part':<40} {'wall':>8} {'share':>6} {'CPU':>8} {'share':>6}")
        for label, seconds, used in parts:
            shares = f"{seconds / total:6.0%} {used:6.1f} s {used / total_cpu:6.0%}"
            print(f"  {label:<40} {seconds:6.1f} s {shares}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

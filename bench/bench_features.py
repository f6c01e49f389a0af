"""Feature benchmark: cart snapshots, carts and customer features of a 10M-event store on DuckDB.

Usage: ``.venv/bin/python bench/bench_features.py [--events 10000000] [--memory-limit 4GB]``

The store is a simulated shop (``winback.sim.simulate``, 365 days) loaded with ``EventStore.append``
and cached under ``bench/out/`` (git-ignored), so reruns skip the ~35 s of generation and loading.

Baseline, in the same command and on the same store connection: one hand-written DuckDB SQL query that
does the part of the work every feature table needs and nothing more (the same behaviour filter,
identity merge, 30-minute sessionisation with two window passes, then a per-session group-by), i.e. a
floor for "one scan + sessionise + aggregate". The ratio winback total / baseline says how many such
passes the three feature tables cost together. Target (issue 3): all three tables in under 30 s.

``--memory-limit`` overrides DuckDB's memory limit for features (``feature_memory_limit``, default 4GB); a
table that runs out of memory is reported as such, not as a time. The simulated events all carry a
session id, as Segment, GA4 and REES46 events do; ``--no-session-ids`` drops them (RetailRocket-like
logs), so the 30-minute gap sessionisation runs on every event.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import duckdb
import pandas as pd
import psutil

from winback.config import Settings, load_settings
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.sim import simulate

OUT = Path(__file__).resolve().parent / "out"
#: Events per customer-day of the simulator's defaults over 365 days (bench_simulate.py).
EVENTS_PER_CUSTOMER_DAY_365 = 0.41
SEED = 42

BASELINE_SQL = """
WITH behaviour AS (
    SELECT * FROM events
    WHERE event_type IN ('view', 'add_to_cart', 'remove_from_cart', 'checkout_start', 'purchase')
),
identity AS (
    SELECT anonymous_id, arg_min(user_id, timestamp) AS merged
    FROM behaviour WHERE anonymous_id IS NOT NULL AND user_id IS NOT NULL GROUP BY anonymous_id
),
keyed AS (
    SELECT b.*, coalesce(b.user_id, i.merged, 'anonymous:' || b.anonymous_id) AS user_key,
           epoch(b.timestamp) AS ts
    FROM behaviour b LEFT JOIN identity i USING (anonymous_id)
),
marked AS (
    SELECT *, CASE WHEN ts - lag(ts) OVER w > {gap} OR lag(ts) OVER w IS NULL THEN 1 ELSE 0 END AS starts
    FROM keyed WINDOW w AS (PARTITION BY user_key, session_id IS NULL ORDER BY ts, event_id)
),
sessioned AS (
    SELECT *, coalesce(session_id, user_key || '#' || sum(starts) OVER (
        PARTITION BY user_key, session_id IS NULL ORDER BY ts, event_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS session_key
    FROM marked
)
SELECT count(*) AS sessions, sum(carted::INT) AS carts, sum(bought::INT) AS bought FROM (
    SELECT session_key, min(ts) AS started, max(ts) AS ended,
           bool_or(event_type = 'add_to_cart') AS carted, bool_or(event_type = 'purchase') AS bought,
           sum(price * coalesce(quantity, 1)) FILTER (WHERE event_type = 'purchase') AS revenue
    FROM sessioned GROUP BY user_key, session_key
)
"""


def customers_for(events: int, days: int = 365) -> int:
    return max(10, round(events / EVENTS_PER_CUSTOMER_DAY_365 / days))


def ensure_store(events: int, days: int = 365, *, session_ids: bool = True, quiet: bool = False) -> Settings:
    """Settings of a cached winback home holding a simulated shop of about ``events`` events."""
    customers = customers_for(events, days)
    home = OUT / f"shop-c{customers}-d{days}-s{SEED}{'' if session_ids else '-nosession'}"
    settings = load_settings(home=home)
    done = home / "complete"
    if done.exists():
        return settings
    if settings.store_path.exists():
        settings.store_path.unlink()
    start = time.perf_counter()
    table = simulate(customers=customers, days=days, seed=SEED).events
    if not session_ids:
        table = table.drop_columns(["session_id"])
    simulated = time.perf_counter() - start
    with EventStore(settings) as store:
        report = store.append(table, source="simulated").as_dict()
        store.con.execute("CHECKPOINT")
    if not quiet:
        print(
            f"generated {report['ingested']:,} events ({customers:,} customers x {days} days) in "
            f"{simulated:.1f} s, stored in {time.perf_counter() - start - simulated:.1f} s -> {home}"
        )
    done.write_text(json.dumps({"events": report["ingested"], "customers": customers, "days": days}))
    return settings


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (psutil; Linux's ``ru_maxrss`` fallback)."""
    info = psutil.Process().memory_full_info()
    peak = getattr(info, "peak_wset", None)  # Windows
    if peak is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float(peak) / 2**20


def as_of_for(tables: FeatureTables, horizon_days: int) -> pd.Timestamp:
    """A moment with ``horizon_days`` of outcomes after it: the data's last day minus the horizon."""
    return (tables.span().last - pd.Timedelta(days=horizon_days)).floor("D")


def time_features(settings: Settings, horizon_days: int = 30) -> dict[str, float | int | None]:
    """Seconds (and rows) of each feature table, computed the way the commands do; None: out of memory."""
    out: dict[str, float | int | None] = {}
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        start = time.perf_counter()
        span = tables.span()
        as_of = as_of_for(tables, horizon_days)
        out["span_s"] = time.perf_counter() - start
        out["events"] = span.events
        for name, run in (
            ("cart_snapshots", tables.cart_snapshots),
            ("carts", tables.carts),
            ("customers", lambda: tables.customers(as_of, horizon_days)),
        ):
            start = time.perf_counter()
            try:
                out[f"{name}_rows"] = len(run())
                out[f"{name}_s"] = time.perf_counter() - start
            except duckdb.OutOfMemoryException:
                out[f"{name}_rows"] = out[f"{name}_s"] = None
                out[f"{name}_failed_after_s"] = time.perf_counter() - start
    parts = [out[k] for k in ("span_s", "cart_snapshots_s", "carts_s", "customers_s")]
    out["total_s"] = None if None in parts else sum(float(p or 0) for p in parts)
    return out


def time_baseline(settings: Settings) -> tuple[float, tuple[int, int, int]]:
    """Seconds of the hand-written sessionise + group-by SQL on the same store."""
    with EventStore(settings, read_only=True) as store:
        sql = BASELINE_SQL.format(gap=settings.session_gap_minutes * 60)
        start = time.perf_counter()
        row = store.con.execute(sql).fetchone()
        assert row is not None
        return time.perf_counter() - start, (int(row[0]), int(row[1]), int(row[2]))


def _seconds(f: dict[str, float | int | None], name: str) -> str:
    if f[f"{name}_s"] is None:
        return f"{name} OUT OF MEMORY after {f[f'{name}_failed_after_s']:.1f} s"
    return f"{name} {f[f'{name}_s']:.1f} s ({f[f'{name}_rows']:,} rows)"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events to simulate (about)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--horizon", type=int, default=30, help="customer label horizon, days")
    parser.add_argument("--memory-limit", help="DuckDB memory_limit, e.g. 4GB (default: settings)")
    parser.add_argument("--no-session-ids", action="store_true", help="events without session ids")
    args = parser.parse_args()
    settings = ensure_store(args.events, args.days, session_ids=not args.no_session_ids)
    if args.memory_limit:
        settings = settings.model_copy(update={"feature_memory_limit": args.memory_limit})
    base_seconds, (sessions, carts, bought) = time_baseline(settings)
    f = time_features(settings, args.horizon)
    peak = peak_rss_mib()
    events = int(f["events"] or 0)
    total = f["total_s"]
    print(
        f"store: {events:,} events, DuckDB memory_limit {settings.feature_memory_limit}, {settings.home.name}"
    )
    print(
        "winback features: "
        + ", ".join(_seconds(f, name) for name in ("cart_snapshots", "carts", "customers"))
        + f", span {f['span_s']:.1f} s"
    )
    print(
        f"baseline (one SQL: sessionise + per-session group-by): {base_seconds:.1f} s "
        f"= {events / base_seconds:,.0f} events/s ({sessions:,} sessions, {carts:,} carts, {bought:,} bought)"
    )
    if total is None:
        print(f"winback total: incomplete (out of memory), peak RSS {peak:,.0f} MiB (target: under 30 s)")
    else:
        print(
            f"winback total: {total:.1f} s = {events / total:,.0f} events/s, peak RSS {peak:,.0f} MiB "
            "(target: under 30 s)"
        )
        print(f"ratio (winback total / baseline): {total / base_seconds:.2f}")
    print(
        json.dumps(
            {
                "events": events,
                "memory_limit": settings.feature_memory_limit,
                "session_ids": not args.no_session_ids,
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in f.items()},
                "events_per_second": None if total is None else round(events / total),
                "peak_rss_mib": round(peak),
                "baseline_seconds": round(base_seconds, 2),
                "ratio_vs_baseline": None if total is None else round(total / base_seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

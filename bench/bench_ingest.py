"""Ingest benchmark: N events from CSV into the store, against a plain pandas read-and-insert.

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 10000000] [--shape retailrocket|rees46]``

Each run happens in its own process so that its peak memory (max RSS) is its own. The baseline is what a
data scientist would write by hand: ``pandas.read_csv`` then ``INSERT INTO ... SELECT * FROM df`` into a
DuckDB file, with no validation, identity or de-duplication. The ratio is baseline time / winback time
(above 1: winback is faster). Targets (issue 2): at least 1M events/s, peak memory under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

SHAPES = {
    # RetailRocket's columns: unix ms, visitor, event, item, transaction.
    "retailrocket": """SELECT (1433221332000 + i * 260) AS timestamp, (i // 7) % 800000 AS visitorid,
        (['view', 'view', 'view', 'view', 'view', 'addtocart', 'transaction'])[1 + (hash(i) % 7)::INT]
            AS event,
        (hash(i * 3) % 235000) AS itemid, CASE WHEN hash(i) % 7 = 6 THEN i // 7 END AS transactionid""",
    # REES46's columns, with its long category codes and session UUID-like ids.
    "rees46": """SELECT TIMESTAMPTZ '2019-10-01 00:00:00+00' + to_seconds(i * 0.26) AS event_time,
        (['view', 'view', 'view', 'view', 'cart', 'remove_from_cart', 'purchase'])[1 + (hash(i) % 7)::INT]
            AS event_type,
        1000000 + hash(i * 3) % 50000 AS product_id, 2053013552326770905 AS category_id,
        'electronics.smartphone' AS category_code, 'samsung' AS brand,
        round((hash(i * 7) % 100000) / 100.0, 2) AS price, 500000000 + (i // 7) % 800000 AS user_id,
        md5(CAST(i // 7 AS VARCHAR)) AS user_session""",
}

WINBACK_RUN = """
import resource, sys, time
from pathlib import Path
from winback.config import load_settings
from winback.events.ingest import ingest_files
from winback.events.store import EventStore
with EventStore(load_settings(home=sys.argv[2])) as store:
    start, cpu = time.perf_counter(), time.process_time()
    report = ingest_files(store, [Path(sys.argv[1])]).as_dict()
    print(time.perf_counter() - start, report["ingested"], time.process_time() - cpu)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

PANDAS_RUN = """
import resource, sys, time
import duckdb, pandas as pd
con = duckdb.connect(sys.argv[2] + "/pandas.duckdb")
con.execute("SET enable_progress_bar = false")
start, cpu = time.perf_counter(), time.process_time()
df = pd.read_csv(sys.argv[1])
con.execute("CREATE TABLE events AS SELECT * FROM df")
print(time.perf_counter() - start, len(df), time.process_time() - cpu)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(code: str, path: Path, home: Path) -> tuple[float, int, float, float]:
    """(seconds, rows, CPU seconds of all threads, peak RSS in MiB) of ``code`` in a fresh process.

    CPU time is what other processes on a shared machine change least: the wall time of a two-thread
    load can double when another job takes a core, its CPU time barely moves.
    """
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(home)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1]), float(out[2]), int(out[3]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="retailrocket")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="winback-bench-") as tmp:
        work = Path(tmp)
        path = work / f"{args.shape}.csv"
        start = time.perf_counter()
        duckdb.execute(f"COPY ({SHAPES[args.shape]} FROM range({args.events}) t(i)) TO '{path}' (HEADER)")
        print(
            f"generated {args.events:,} {args.shape}-shaped events, {path.stat().st_size / 2**20:,.0f} MiB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        (work / "winback").mkdir()
        (work / "pandas").mkdir()
        w_seconds, w_rows, w_cpu, w_peak = run(WINBACK_RUN, path, work / "winback")
        p_seconds, p_rows, p_cpu, p_peak = run(PANDAS_RUN, path, work / "pandas")
    result = {
        "events": args.events,
        "shape": args.shape,
        "winback_seconds": round(w_seconds, 2),
        "winback_events_per_second": round(w_rows / w_seconds),
        "winback_cpu_seconds": round(w_cpu, 2),
        "winback_peak_rss_mib": round(w_peak),
        "pandas_seconds": round(p_seconds, 2),
        "pandas_events_per_second": round(p_rows / p_seconds),
        "pandas_cpu_seconds": round(p_cpu, 2),
        "pandas_peak_rss_mib": round(p_peak),
        "speedup_vs_pandas": round(p_seconds / w_seconds, 2),
    }
    print(
        f"winback: {w_rows:,} events in {w_seconds:.1f} s = {w_rows / w_seconds:,.0f} events/s, "
        f"{w_cpu:.1f} CPU s, peak RSS {w_peak:,.0f} MiB (validated, de-duplicated, one transaction)"
    )
    print(
        f"pandas : {p_rows:,} rows in {p_seconds:.1f} s = {p_rows / p_seconds:,.0f} rows/s, "
        f"{p_cpu:.1f} CPU s, peak RSS {p_peak:,.0f} MiB (read_csv + CREATE TABLE, no checks)"
    )
    print(f"ratio (pandas time / winback time): {p_seconds / w_seconds:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

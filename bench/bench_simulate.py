"""Simulator benchmark: how long 10M events take, against the same simulator at a tenth of the size.

Usage: ``.venv/bin/python bench/bench_simulate.py [--events 10000000]``

The baseline is the same code on a tenth of the customers, run in the same command: the ratio
``(time / events) / (baseline time / baseline events)`` near 1 says the simulator scales linearly, so
the figure is not a lucky small run. Target (issue 2): 10M events in under a minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from winback.sim import simulate

#: Events per customer-day at the default knobs, measured (about 0.43): sizes the run for a target.
EVENTS_PER_CUSTOMER_DAY = 0.43


def timed(customers: int, days: int) -> tuple[float, int]:
    start = time.perf_counter()
    result = simulate(customers=customers, days=days, seed=42)
    return time.perf_counter() - start, result.events.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=180)
    args = parser.parse_args()
    customers = int(args.events / EVENTS_PER_CUSTOMER_DAY / args.days)
    small_seconds, small_events = timed(customers // 10, args.days)
    seconds, events = timed(customers, args.days)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = (seconds / events) / (small_seconds / small_events)
    print(
        f"simulator: {events:,} events ({customers:,} customers x {args.days} days) in {seconds:.1f} s "
        f"= {events / seconds:,.0f} events/s, peak RSS {peak:,.0f} MiB"
    )
    print(
        f"baseline (1/10 of the customers): {small_events:,} events in {small_seconds:.1f} s "
        f"= {small_events / small_seconds:,.0f} events/s"
    )
    print(f"ratio of time per event, full / tenth: {ratio:.2f} (1.0 = linear scaling)")
    print(
        json.dumps(
            {
                "events": events,
                "customers": customers,
                "days": args.days,
                "seconds": round(seconds, 2),
                "events_per_second": round(events / seconds),
                "peak_rss_mib": round(peak),
                "baseline_events": small_events,
                "baseline_seconds": round(small_seconds, 2),
                "time_per_event_ratio": round(ratio, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

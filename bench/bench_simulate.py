"""Simulator benchmark: 10M events, against the same simulator on a tenth of the customers.

Usage: ``.venv/bin/python bench/bench_simulate.py [--events 10000000] [--days 365]``

The baseline is the same code on a tenth of the customers, run first in the same command. The ratio of
time per event, full run over baseline, at or below 1 says the simulator scales at most linearly (no
hidden quadratic step, no Python loop over customers or events): below 1, the small run spends
relatively more on the fixed cost of stepping through every day. Absolute times on a shared machine
drift, the ratio much less. Target: 10M events in under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from winback.sim import simulate

#: Events per customer-day with the default knobs, by run length in days (see ``ShopConfig``).
EVENTS_PER_CUSTOMER_DAY = {30: 0.56, 90: 0.51, 180: 0.46, 365: 0.41}


def timed(customers: int, days: int) -> tuple[float, int]:
    """Seconds and events of one simulation."""
    start = time.perf_counter()
    result = simulate(customers=customers, days=days, seed=42)
    return time.perf_counter() - start, result.events.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events to simulate (about)")
    parser.add_argument("--days", type=int, default=365, choices=sorted(EVENTS_PER_CUSTOMER_DAY))
    args = parser.parse_args()
    customers = max(10, round(args.events / EVENTS_PER_CUSTOMER_DAY[args.days] / args.days))
    small_seconds, small_events = timed(max(1, customers // 10), args.days)
    seconds, events = timed(customers, args.days)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    ratio = (seconds / events) / (small_seconds / small_events)
    print(
        f"simulator: {events:,} events ({customers:,} customers x {args.days} days) in {seconds:.1f} s "
        f"= {events / seconds:,.0f} events/s, peak RSS {peak:,.0f} MiB"
    )
    print(
        f"baseline, a tenth of the customers: {small_events:,} events in {small_seconds:.1f} s "
        f"= {small_events / small_seconds:,.0f} events/s"
    )
    print(f"time per event, full run / baseline: {ratio:.2f} (1.0 = linear; below: per-day overhead)")
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

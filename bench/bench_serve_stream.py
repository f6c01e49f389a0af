"""Redis Stream ingest benchmark: ``winback consume --once`` over a stream of N events.

Usage: ``.venv/bin/python bench/bench_serve_stream.py [--events 200000] [--batch 10000]
[--per-entry 1] [--database sqlite|postgresql|both]``

For each database: N simulated-shop-like events (those of bench_serve_ingest.py) are XADDed through a
pipeline into a fresh stream (``--per-entry`` events per entry: 1 is one ``event`` field per entry,
more is an ``events`` list), then one consumer (a ``StreamConsumer`` in this process, what ``winback
consume --once`` runs) reads, validates, stores and acknowledges all of them, ``--batch`` entries per
XREADGROUP. The rate is events stored per second of consumption (the XADDs are not counted). The
baseline, run in the same command on a fresh database of the same kind, is the storage alone:
:func:`winback.serve.ingest.store_rows` on the rows of already validated events, in-process, in batches
of the same number of events. The consumer's CPU time per event (its process: with SQLite the database's work
too, with PostgreSQL not the server's) is printed too, steadier than rates on a shared machine. Target
(issue 6): 50,000 events/s or more, with SQLite and with PostgreSQL.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_ingest import fresh_database, make_events, storage_baseline
from winback.config import load_settings
from winback.serve.consume import StreamConsumer
from winback.serve.db import make_engine, upgrade
from winback.serve.ingest import count_events

REDIS_URL = "redis://127.0.0.1:6379/0"


def fill(client: redis.Redis, stream: str, events: list[dict[str, object]], per_entry: int) -> float:
    """XADD the events in pipelines of 1,000 entries; the time it took."""
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n, i in enumerate(range(0, len(events), per_entry), start=1):
        if per_entry == 1:
            pipe.xadd(stream, {"event": orjson.dumps(events[i])})
        else:
            pipe.xadd(stream, {"events": orjson.dumps(events[i : i + per_entry])})
        if n % 1_000 == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - start


def stream_rate(
    url: str, home: Path, events: list[dict[str, object]], batch: int, per_entry: int
) -> tuple[float, float, float]:
    """(events/s consumed and stored, events/s XADDed, consumer CPU µs per event)."""
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"winback:bench:{secrets.token_hex(4)}"
    settings = load_settings(home=home, database_url=url, redis_url=REDIS_URL)
    engine = make_engine(url)
    upgrade(engine)
    try:
        added = fill(client, stream, events, per_entry)
        consumer = StreamConsumer(settings, engine, client, stream=stream, group="bench", consumer="bench-1")
        start, cpu = time.perf_counter(), time.process_time()
        stats = consumer.run(max(1, batch // per_entry), once=True)
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        stored = count_events(engine)
        if stored != len(events) or stats.dead:
            raise SystemExit(f"stored {stored:,} of {len(events):,} events ({stats.dead} dead-lettered)")
        return len(events) / took, len(events) / added, cpu / len(events) * 1e6
    finally:
        client.delete(stream)
        client.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per read (and per storage batch)")
    parser.add_argument("--per-entry", type=int, default=1, help="events per stream entry")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    print(
        f"{args.events:,} events, {args.per_entry} per stream entry, {args.batch:,} per read and "
        "transaction, one consumer, Redis on loopback"
    )
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            with fresh_database(kind, home / "a") as url:
                events = make_events(args.events, "r")
                stream, xadd, cpu = stream_rate(url, home / "a", events, args.batch, args.per_entry)
            storage = storage_baseline(kind, home / "b", args.events, args.batch)
        print(
            f"{kind:<11} winback consume {stream:>9,.0f} events/s   storage alone {storage:>9,.0f} events/s"
            f"   ratio {stream / storage:.2f}   (XADD {xadd:,.0f}/s, consumer CPU {cpu:.1f} µs/event)"
            f"   target 50,000: {'met' if stream >= 50_000 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()

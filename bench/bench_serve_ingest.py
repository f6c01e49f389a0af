"""Service ingest benchmark: batched ``POST /v1/events`` through a real ``winback serve`` on loopback.

Usage: ``.venv/bin/python bench/bench_serve_ingest.py [--events 200000] [--batch 1000] [--clients 2]
[--workers 1] [--database sqlite|postgresql|both] [--floor]``

For each database the service is started as its own process (uvicorn, ``--workers`` processes) on a
fresh database; ``--clients`` threads post pre-encoded JSON batches of simulated-shop-like events
(``--batch`` per request) as fast as the service answers. The baseline, run in the same command on the
same kind of database, is the storage alone: :func:`winback.serve.ingest.store_rows` on the rows of
already validated events, in-process, no HTTP. The ratio is service rate / storage rate (how much of
the database's own speed the HTTP path keeps); the server processes' CPU time per event is printed too,
steadier than rates on a shared machine. With ``--floor``, also the bare driver on the same rows, a
reference point: a plain ``executemany`` (SQLite) or binary ``COPY`` (PostgreSQL) into the table, without
idempotency. Target (issue 6): 30,000 events/s or more, with SQLite and with PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import psutil
import sqlalchemy as sa

from winback.events.model import Event, EventRow
from winback.serve.db import make_engine, upgrade
from winback.serve.ingest import COLUMNS, POSTGRESQL_COPY_TYPES, count_events, store_rows

ADMIN_URL = os.environ.get(
    "WINBACK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TYPES = ("view", "view", "view", "view", "add_to_cart", "checkout_start", "purchase")


def make_events(n: int, prefix: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        kind = TYPES[i % len(TYPES)]
        event: dict[str, object] = {
            "event_id": f"{prefix}{i}", "event_type": kind,
            "timestamp": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "user_id": f"u{i % 50_000}", "session_id": f"s{i // 5}", "product_id": f"p{i % 3_000}",
            "category": "apparel.shoes", "price": round(5 + (i % 997) * 0.37, 2), "quantity": 1,
        }  # fmt: skip
        if kind == "purchase":
            event["order_id"] = f"o{i}"
        out.append(event)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fresh_database(kind: str, home: Path) -> Iterator[str]:
    """The URL of a new empty database (SQLite in ``home``, or a new PostgreSQL database, dropped on exit)."""
    home.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        yield f"sqlite:///{home / 'state.db'}"
        return
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"winback_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def rows_of(events: list[dict[str, object]]) -> list[EventRow]:
    return [Event.model_validate(e).as_row() for e in events]


def storage_baseline(kind: str, home: Path, n: int, batch: int) -> float:
    """Events/s of :func:`store_rows` alone on a fresh database of ``kind``: the benchmarks' baseline."""
    rows = rows_of(make_events(n, "s"))
    with fresh_database(kind, home) as url:
        engine = make_engine(url)
        upgrade(engine)
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            store_rows(engine, rows[i : i + batch])
        took = time.perf_counter() - start
        engine.dispose()
    return n / took


def bare_driver(kind: str, home: Path, n: int, batch: int) -> float:
    """Events/s of the bare driver on the same rows, one transaction per batch: ``executemany`` of
    finished tuples (SQLite, times as text) or binary ``COPY`` straight into ``events`` (PostgreSQL)."""
    now = datetime.now(UTC)
    rows = [(*row, "http", now) for row in rows_of(make_events(n, "f"))]
    with fresh_database(kind, home) as url:
        engine = make_engine(url)
        upgrade(engine)
        raw: Any = engine.raw_connection().driver_connection
        if kind == "sqlite":
            rows = [(*r[:2], r[2].isoformat(" "), *r[3:-1], now.isoformat(" ")) for r in rows]
            sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        start = time.perf_counter()
        for i in range(0, n, batch):
            if kind == "sqlite":
                with raw:
                    raw.executemany(sql, rows[i : i + batch])
            else:
                with (
                    raw.transaction(),
                    raw.cursor().copy(
                        f"COPY events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                    ) as copy,
                ):
                    copy.set_types(POSTGRESQL_COPY_TYPES)
                    for row in rows[i : i + batch]:
                        copy.write_row(row)
        took = time.perf_counter() - start
        raw.close()
        engine.dispose()
    return n / took


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its children (the uvicorn workers)."""
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def service_rate(
    url: str, home: Path, events: list[dict[str, object]], batch: int, clients: int, workers: int = 1
) -> tuple[float, float]:
    """(events/s stored through the service, server CPU µs per event)."""
    env = {**os.environ, "WINBACK_HOME": str(home), "WINBACK_DATABASE_URL": url}
    made = subprocess.run(
        [sys.executable, "-m", "winback.cli", "keys", "create", "--scope", "write", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = json.loads(made.stdout)["key"]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "winback.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        bodies = [orjson.dumps(events[i : i + batch]) for i in range(0, len(events), batch)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        failures: list[str] = []

        def post(mine: list[bytes]) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
                for body in mine:
                    reply = client.post("/v1/events", content=body)
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code} {reply.text[:200]}")

        threads = [threading.Thread(target=post, args=(bodies[c::clients],)) for c in range(clients)]
        watched = psutil.Process(server.pid)
        cpu = _cpu_seconds(watched)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - start
        cpu = _cpu_seconds(watched) - cpu
        if failures:
            raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
        engine = make_engine(url)
        stored = count_events(engine)
        engine.dispose()
        if stored != len(events):
            raise SystemExit(f"stored {stored:,} of {len(events):,} events")
        return len(events) / took, cpu / len(events) * 1e6
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="winback serve --workers")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--floor", action="store_true", help="also the bare driver's insert of the same rows")
    args = parser.parse_args()
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    print(
        f"{args.events:,} events in batches of {args.batch:,}, {args.clients} client threads, "
        f"{args.workers} server worker(s), loopback"
    )
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            with fresh_database(kind, home / "a") as url:
                events = make_events(args.events, "h")
                service, cpu = service_rate(url, home / "a", events, args.batch, args.clients, args.workers)
            storage = storage_baseline(kind, home / "b", args.events, args.batch)
            floor = (
                f"   bare driver {bare_driver(kind, home / 'c', args.events, args.batch):>9,.0f}/s"
                if args.floor
                else ""
            )
        print(
            f"{kind:<11} POST /v1/events {service:>9,.0f} events/s   storage alone {storage:>9,.0f} events/s"
            f"   ratio {service / storage:.2f}   target 30,000: {'met' if service >= 30_000 else 'NOT met'}"
            f"   (server CPU {cpu:.1f} µs/event)" + floor
        )


if __name__ == "__main__":
    main()

"""Outbox worker benchmark: messages per second one worker sends to a local SMTP server.

Usage: ``.venv/bin/python bench/bench_worker_smtp.py [--messages 5000] [--concurrency 1]
[--database sqlite|postgresql|both] [--record-every 20]``

An aiosmtpd server runs as its own process on loopback (it counts distinct Message-IDs and repeats and
answers 250). For each database, ``--messages`` coupon e-mails with a cart and recommendations are
scheduled into a fresh outbox (timed apart), then one :class:`winback.act.worker.Worker` (in this
process; ``--concurrency`` threads) claims, re-checks, renders, sends and records them all
(``run(once=True)``). The baseline, in the same command against the same server, is raw smtplib: the
same e-mails, rendered and built beforehand, sent over one kept-open connection with no outbox at all.
The ratio is worker rate / raw rate (how much of SMTP's own speed the outbox keeps).
Target (issue 6): 500 messages/s or more.
"""

from __future__ import annotations

import argparse
import os
import secrets
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from winback.act.channels.smtp import build_email
from winback.act.outbox import Contact, claim, schedule
from winback.act.render import Renderer
from winback.act.worker import Worker
from winback.config import load_settings
from winback.decide.catalogue import Limits, load_catalogue
from winback.serve.db import make_engine, upgrade

ADMIN_URL = os.environ.get(
    "WINBACK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SINK = r"""
import re, signal, sys, threading
from collections import Counter
from aiosmtpd.controller import Controller
ID = re.compile(rb"^Message-ID: *(\S+)", re.M | re.I)
counts = Counter()
class Sink:
    async def handle_DATA(self, server, session, envelope):
        found = ID.search(envelope.content)
        counts[found.group(1) if found else b"?"] += 1
        return "250 2.0.0 Ok: queued"
controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
controller.stop()
print(len(counts), sum(n - 1 for n in counts.values()), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decisions(n: int, prefix: str, send_at: datetime) -> tuple[list[dict[str, object]], dict[str, Contact]]:
    rows = [
        {"user_id": f"{prefix}{i}", "cart_id": f"c{prefix}{i}", "action": "coupon10+recs/email/24h",
         "channel": "email", "send_at": send_at, "coupon": 10.0, "recommended": "p1 p2 p3"}
        for i in range(n)
    ]  # fmt: skip
    now = datetime.now(UTC)  # a time zone where it is about noon: quiet hours hold nothing back
    offset = (12 * 60 - (now.hour * 60 + now.minute)) // 60 * 60
    offset = offset + 1440 if offset < -720 else offset
    contacts = {str(r["user_id"]): Contact(email=f"{r['user_id']}@example.com", name="Ann",
                                           utc_offset_minutes=offset) for r in rows}  # fmt: skip
    return rows, contacts


CART = [{"product_id": "p9", "name": "Kettle", "price": 39.5, "quantity": 1, "url": "https://shop/p9"},
        {"product_id": "p8", "name": "Tea <organic>", "price": 6.0, "quantity": 3}]  # fmt: skip
PRODUCTS = {
    f"p{i}": {"name": f"Product {i}", "price": 9.0 + i, "url": f"https://shop/p{i}"} for i in range(4)
}


def fresh_url(database: str, home: Path) -> tuple[str, sa.Engine | None, str | None]:
    if database == "sqlite":
        return f"sqlite:///{home / 'state.db'}", None, None
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"winback_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False), admin, name


def raw_smtplib(port: int, n: int) -> float:
    """Messages/s of smtplib alone: the same e-mails, built beforehand, one kept-open connection."""
    settings = load_settings(home=Path(tempfile.mkdtemp()) / "h")
    engine = make_engine(settings.state_url)
    upgrade(engine)
    rows, contacts = decisions(n, "raw", datetime.now(UTC) - timedelta(minutes=1))
    schedule(engine, rows, contacts, carts={f"craw{i}": CART for i in range(n)}, products=PRODUCTS)
    renderer = Renderer()
    messages = claim(engine, "raw", limit=n, lease_seconds=600)
    engine.dispose()
    built = [(m.recipient, build_email(m, renderer.render(m), "shop@example.com"))
             for m in messages]  # fmt: skip
    smtp = smtplib.SMTP("127.0.0.1", port)
    start = time.perf_counter()
    for recipient, data in built:
        smtp.sendmail("shop@example.com", [recipient], data)
    elapsed = time.perf_counter() - start
    smtp.quit()
    return n / elapsed


def run_worker(database: str, port: int, n: int, concurrency: int, record_every: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp()) / "home"
    home.mkdir(parents=True)
    url, admin, name = fresh_url(database, home)
    try:
        settings = load_settings(home=home, database_url=url, smtp_host="127.0.0.1", smtp_port=port,
                                 smtp_from="Shop <shop@example.com>")  # fmt: skip
        engine = make_engine(url)
        upgrade(engine)
        prefix = f"{database[:2]}-"
        rows, contacts = decisions(n, prefix, datetime.now(UTC) - timedelta(minutes=1))
        carts = {f"c{prefix}{i}": CART for i in range(n)}
        start = time.perf_counter()
        scheduled = schedule(engine, rows, contacts, carts=carts, products=PRODUCTS)
        schedule_rate = n / (time.perf_counter() - start)
        assert scheduled.scheduled == n
        catalogue = load_catalogue()
        catalogue = type(catalogue)(**{**catalogue.__dict__, "limits": Limits(quiet_hours=None)})
        workers = [Worker(engine, settings, index=i, catalogue=catalogue, batch_size=100,
                          record_every=record_every) for i in range(concurrency)]  # fmt: skip
        start = time.perf_counter()
        if concurrency == 1:
            workers[0].run(once=True)
        else:
            import threading

            threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - start
        sent = sum(w.stats.sent for w in workers)
        engine.dispose()
        assert sent == n, f"sent {sent} of {n}: {[w.stats for w in workers]}"
        return {"rate": n / elapsed, "schedule_rate": schedule_rate}
    finally:
        if admin is not None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--record-every", type=int, default=20)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    try:
        raw = raw_smtplib(port, args.messages)
        print(f"baseline raw smtplib (pre-built e-mails, one connection): {raw:,.0f} messages/s")
        databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
        for database in databases:
            found = run_worker(database, port, args.messages, args.concurrency, args.record_every)
            print(
                f"{database:10s} worker (concurrency {args.concurrency}, record every {args.record_every}): "
                f"{found['rate']:,.0f} messages/s = {found['rate'] / raw:.2f}x raw smtplib; "
                f"target 500/s {'met' if found['rate'] >= 500 else 'NOT met'} "
                f"(scheduling: {found['schedule_rate']:,.0f} messages/s)"
            )
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=10)
    distinct, repeats = (int(x) for x in out.split())
    expected = args.messages * (1 + (2 if args.database == "both" else 1))
    print(f"server: {distinct:,} distinct Message-IDs ({expected:,} expected), {repeats} repeats")


if __name__ == "__main__":
    main()

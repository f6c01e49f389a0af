"""Abandonment latency benchmark: from a cart crossing its idle threshold to its decision stored, under a
background load of ``--rate`` events/s through the real HTTP endpoint.

Usage: ``.venv/bin/python bench/bench_detect_latency.py [--seconds 90] [--rate 2000] [--idle-seconds 15]
[--database sqlite|postgresql|both] [--baseline-src DIR --rounds 3]``

For each database, on a fresh database: ``winback serve`` (one uvicorn process) and ``winback detect``
(``--idle-minutes`` = ``--idle-seconds`` / 60) run as their own processes on loopback (the load starts
once the detector says it is ready: a detector still importing its libraries under load would start
with a backlog of tens of thousands of events, a start-up measure, not a steady one), and every
customer has a profile with e-mail consent, so decisions schedule messages as in production. A load
generator posts batches of ``--batch`` events every ``--batch`` / ``--rate`` seconds to ``POST
/v1/events``: shoppers' sessions of views, adds to cart, checkouts and some purchases, each event
stamped with the time it is sent; a shopper's session ends after a few seconds and, if its cart holds
items and was not bought, the cart goes idle and falls due ``--idle-seconds`` later. After
``--seconds`` the detector is stopped (SIGTERM) while the load still runs; its ``--json`` statistics
hold the latency of every decision it stored (the wall-clock time its commit returned to the detector
minus the cart's due time: ``last event + idle threshold``, the event's time being when the load
generator made it), all of them under load.

The baseline, in the same run, under the same load: the commit latency of a bare one-row INSERT into
the same database (a thread of this process, every 20 ms). The ratio is detection p99 / bare insert
p99. Target (issue 6): detection p99 under 50 ms at 2,000 events/s.

Each run also says what the machine was doing: its load average, and the cores each part used while
the load ran -- ``winback serve``, ``winback detect``, this process (the load generator and the bare
inserts), PostgreSQL (every ``postgres`` process), and everything else on the machine.

A/B: ``--baseline-src DIR`` (a directory holding another version's ``winback`` package, e.g. ``git
archive COMMIT src | tar -x -C /tmp/base``) runs ``--rounds`` rounds, each this code then that one
(``winback serve`` and ``winback detect`` from it), and prints the medians of each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import numpy as np
import orjson
import psutil
import sqlalchemy as sa

from bench_serve_ingest import _free_port, fresh_database
from winback.act.outbox import write_transaction
from winback.serve.db import make_engine, upgrade
from winback.serve.profiles import ProfileUpdate, upsert_profiles

CUSTOMERS = 20_000
PRODUCTS = 2_000


class Shop:
    """Shoppers' sessions as a stream of events: about 12 events per session over a few seconds, an add to
    cart in 30% of sessions, a purchase in a third of those."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.sessions: list[dict[str, object]] = []
        self.n = 0
        self.carts = 0

    def _new(self) -> dict[str, object]:
        self.n += 1
        length = self.rng.randint(6, 18)
        carting = self.rng.random() < 0.30
        script = ["view"] * length
        if carting:
            adds = self.rng.randint(1, 3)
            for k in range(adds):
                script[self.rng.randint(1, length - 1 - k)] = "add_to_cart"
            if self.rng.random() < 0.33:
                script += ["checkout_start", "purchase"]
            else:
                self.carts += 1
        return {"user": f"c{self.rng.randrange(CUSTOMERS)}", "session": f"s{self.n}", "script": script,
                "step": 0, "products": []}  # fmt: skip

    def events(self, n: int, active: int = 400) -> list[dict[str, object]]:
        out = []
        now = datetime.now(UTC).isoformat()
        while len(out) < n:
            while len(self.sessions) < active:
                self.sessions.append(self._new())
            i = self.rng.randrange(len(self.sessions))
            session = self.sessions[i]
            kind = session["script"][session["step"]]  # type: ignore[index]
            product = f"p{self.rng.randrange(PRODUCTS)}"
            if kind in ("purchase", "checkout_start") and session["products"]:
                product = session["products"][0]  # type: ignore[index]
            event: dict[str, object] = {
                "event_id": f"{session['session']}-{session['step']}", "event_type": kind, "timestamp": now,
                "user_id": session["user"], "session_id": session["session"], "product_id": product,
                "price": round(5 + self.rng.random() * 120, 2), "quantity": 1,
            }  # fmt: skip
            if kind == "add_to_cart":
                session["products"].append(product)  # type: ignore[attr-defined]
            if kind == "purchase":
                event["order_id"] = f"o-{session['session']}"
            out.append(event)
            session["step"] = int(session["step"]) + 1  # type: ignore[call-overload]
            if session["step"] >= len(session["script"]):  # type: ignore[arg-type]
                self.sessions.pop(i)
        return out


def consent_everyone(url: str) -> None:
    """Every customer consents to e-mail, in a time zone where the message (static-10h: 10 h after the
    cart) goes out at about 1 pm, outside quiet hours, whenever the benchmark runs."""
    send = datetime.now(UTC) + timedelta(hours=10)
    offset = (13 * 60 - (send.hour * 60 + send.minute)) % 1440
    offset = offset - 1440 if offset > 840 else offset
    engine = make_engine(url)
    upgrade(engine)
    with write_transaction(engine) as connection:
        upsert_profiles(
            connection,
            [ProfileUpdate(f"c{i}", {"email": f"c{i}@example.com", "utc_offset_minutes": offset},
                           {"email": (True, datetime(2026, 1, 1, tzinfo=UTC))}) for i in range(CUSTOMERS)],
        )  # fmt: skip
    engine.dispose()


@contextmanager
def process(args: list[str], env: dict[str, str], **kw: object) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([sys.executable, "-m", "winback.cli", *args], env=env, text=True, **kw)  # type: ignore[call-overload]
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=30)


class BareInserts(threading.Thread):
    """The baseline: commit latency of a one-row INSERT into the same database, every 20 ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(url)
        with self.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE bench_bare (id INTEGER PRIMARY KEY, at FLOAT)")
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        i = 0
        while not self.stop.wait(0.02):
            i += 1
            start = time.perf_counter()
            with self.engine.begin() as connection:
                connection.execute(
                    sa.text("INSERT INTO bench_bare (id, at) VALUES (:i, :t)"), {"i": i, "t": time.time()}
                )
            self.latencies.append(time.perf_counter() - start)


class Cores:
    """CPU time (user + system) of the machine's processes by part, from one moment to another."""

    PARTS = ("serve", "detect", "bench", "postgres", "other")

    def __init__(self, serve: int, detect: int) -> None:
        self.pids = {serve: "serve", detect: "detect", os.getpid(): "bench"}
        self.started = time.perf_counter()
        self.before = self._times()

    def _part(self, process: psutil.Process) -> str:
        if process.pid in self.pids:
            return self.pids[process.pid]
        return "postgres" if process.name().startswith("postgres") else "other"

    def _times(self) -> dict[int, tuple[str, float]]:
        found = {}
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
                found[process.pid] = (self._part(process), times.user + times.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def used(self) -> dict[str, float]:
        """Cores used by each part since this was made."""
        after = self._times()
        took = time.perf_counter() - self.started
        parts = dict.fromkeys(self.PARTS, 0.0)
        for pid, (part, seconds) in after.items():
            parts[part] += seconds - (self.before[pid][1] if pid in self.before else 0.0)
        return {part: round(seconds / took, 2) for part, seconds in parts.items()}


@dataclass(frozen=True)
class Result:
    database: str
    events_per_s: float
    sent: int
    folded: int  # events the detector had folded in when it was stopped
    decided: int
    messages: int
    p50: float  # ms from threshold to decision stored
    p99: float
    max: float
    bare_p50: float  # ms of a bare one-row INSERT's commit
    bare_p99: float
    load_average: float  # the machine's, over the last minute, when the load stopped
    cores: dict[str, float]  # cores used by each part while the load ran (see Cores)


def run(
    kind: str,
    seconds: float,
    rate: float,
    batch: int,
    idle_seconds: float,
    home: Path,
    src: str | None = None,
) -> Result:
    """One run; ``src``: the directory of the ``winback`` package ``serve`` and ``detect`` run from."""
    with fresh_database(kind, home) as url:
        consent_everyone(url)
        env = {**os.environ, "WINBACK_HOME": str(home), "WINBACK_DATABASE_URL": url}
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        made = subprocess.run(
            [sys.executable, "-m", "winback.cli", "keys", "create", "--scope", "write", "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = json.loads(made.stdout)["key"]
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with process(
            ["serve", "--port", str(port)], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as server:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            detect_args = [
                "detect",
                "--idle-minutes",
                str(idle_seconds / 60),
                "--outcomes-every",
                "0",
                "--json",
            ]
            with (
                (home / "detect.log").open("w") as log,
                process(detect_args, env, stdout=subprocess.PIPE, stderr=log) as detector,
            ):
                ready_by = time.monotonic() + 300  # the load starts when the detector runs, not before
                while "ready" not in (home / "detect.log").read_text():
                    if detector.poll() is not None or time.monotonic() > ready_by:
                        raise SystemExit(f"winback detect did not start: {(home / 'detect.log').read_text()}")
                    time.sleep(0.1)
                shop, stop, sent, failures = Shop(), threading.Event(), [0], []
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

                def load() -> None:
                    interval = batch / rate
                    next_at = time.perf_counter()
                    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                        while not stop.is_set():
                            body = orjson.dumps(shop.events(batch))
                            reply = client.post("/v1/events", content=body)
                            if reply.status_code != 200:
                                failures.append(f"{reply.status_code} {reply.text[:200]}")
                            sent[0] += batch
                            next_at += interval
                            time.sleep(max(next_at - time.perf_counter(), 0))

                bare = BareInserts(url)
                loader = threading.Thread(target=load, daemon=True)
                started = time.perf_counter()
                loader.start()
                bare.start()
                cores = Cores(server.pid, detector.pid)
                time.sleep(seconds)
                used = cores.used()
                load_average = os.getloadavg()[0]
                detector.send_signal(signal.SIGTERM)  # stopped under load: every latency it holds was
                output, _ = detector.communicate(timeout=120)
                loaded = time.perf_counter() - started
                stop.set()
                bare.stop.set()
                loader.join()
                bare.join()
                bare.engine.dispose()
        if failures:
            raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
        stats = json.loads(output)
        if "latency_ms_p99" not in stats:
            raise SystemExit(f"{kind}: no cart was decided while the load ran (--seconds too short?)")
        bare_ms = np.asarray(bare.latencies) * 1000
        return Result(
            kind, sent[0] / loaded, sent[0], stats["events"], stats["decided"], stats["messages"],
            stats["latency_ms_p50"], stats["latency_ms_p99"], stats["latency_ms_max"],
            float(np.percentile(bare_ms, 50)), float(np.percentile(bare_ms, 99)), load_average, used,
        )  # fmt: skip


def line(r: Result, label: str = "") -> str:
    cores = ", ".join(f"{part} {n:.2f}" for part, n in r.cores.items())
    return (
        f"{r.database:<11}{label} load {r.events_per_s:,.0f} events/s ({r.folded:,} of {r.sent:,} folded "
        f"in by the detector when stopped); {r.decided:,} carts decided ({r.messages:,} messages); "
        f"threshold to decision stored p50 {r.p50} ms, p99 {r.p99} ms, max {r.max} ms | bare INSERT "
        f"commit p50 {r.bare_p50:.2f} ms, p99 {r.bare_p99:.2f} ms | ratio p99 {r.p99 / r.bare_p99:.1f}x | "
        f"target p99 < 50 ms: {'met' if r.p99 < 50 else 'NOT met'} | load average {r.load_average:.1f}; "
        f"cores used: {cores}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="Load time (the detector runs as long).")
    parser.add_argument("--rate", type=float, default=2_000.0, help="Background events per second.")
    parser.add_argument("--batch", type=int, default=100, help="Events per POST.")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="Idle threshold of the carts.")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--baseline-src", help="A/B: the directory of another version's winback package.")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (each: this code, then that).")
    args = parser.parse_args()
    kinds = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    print(
        f"{args.rate:,.0f} events/s in batches of {args.batch} to POST /v1/events for {args.seconds:g} s; "
        f"carts idle after {args.idle_seconds:g} s; winback serve and winback detect as processes on loopback"
    )
    variants: list[tuple[str, str | None]] = [("", None)]
    if args.baseline_src:
        variants = [(" this", None), (" base", str(Path(args.baseline_src).resolve()))]
    rounds = args.rounds if args.baseline_src else 1
    results: dict[tuple[str, str], list[Result]] = {}
    for kind in kinds:
        for _ in range(rounds):
            for label, src in variants:
                with tempfile.TemporaryDirectory() as tmp:
                    r = run(kind, args.seconds, args.rate, args.batch, args.idle_seconds, Path(tmp), src)
                results.setdefault((kind, label), []).append(r)
                print(line(r, label), flush=True)
    if args.baseline_src:
        for kind in kinds:
            this, base = results[(kind, " this")], results[(kind, " base")]
            medians = {
                name: (float(np.median([getattr(r, name) for r in this])),
                       float(np.median([getattr(r, name) for r in base])))
                for name in ("p50", "p99", "bare_p99", "load_average")
            }  # fmt: skip
            print(
                f"{kind}: medians of {rounds} rounds, this / base: p50 {medians['p50'][0]:.1f} / "
                f"{medians['p50'][1]:.1f} ms, p99 {medians['p99'][0]:.1f} / {medians['p99'][1]:.1f} ms "
                f"(ratio {medians['p99'][0] / medians['p99'][1]:.2f}), bare INSERT p99 "
                f"{medians['bare_p99'][0]:.1f} / {medians['bare_p99'][1]:.1f} ms, load average "
                f"{medians['load_average'][0]:.1f} / {medians['load_average'][1]:.1f}"
            )


if __name__ == "__main__":
    main()

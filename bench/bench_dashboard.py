"""Dashboard benchmark: the pages of ``/dashboard`` from a real ``winback serve`` on the demo's data.

Usage: ``.venv/bin/python bench/bench_dashboard.py [--home bench/out/dashboard-demo] [--rounds 30]``

The data is the demo's home (``winback demo --home DIR``: 20,000 customers over 180 days, 1.7M events,
its decision log with a 10% holdout and its trained models), built once when ``--home`` has no event
store (a few minutes). The service is started as its own process (uvicorn, one worker) on a free
loopback port; requests carry a read key as ``Authorization: Bearer`` (the login cookie costs the same
check).

- **Cold**: the service's first request of each page, and how long until its figures are there (the
  page answers at once, with a placeholder its script replaces; here the fragment is polled until
  200). The pages are asked one after the other, as a person clicking through would, while the service
  computes the rest of the filters' sections in the background.
- **Warm**: each page again, ``--rounds`` times (median and 95th percentile), and a refresh check (the
  fragment answering 204 "unchanged").
- **Baseline**, in the same run against the same process: ``GET /healthz`` and the dashboard's
  stylesheet (a small static file). The ratio is page / ``/healthz``.

Target (issue 7): dashboard pages in under 1 s on the demo's data.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from winback.config import load_settings
from winback.serve.dashboard import PAGES
from winback.serve.db import state_engine
from winback.serve.keys import create_key
from winback.serve.routes.dashboard import asset_url

OUT = Path(__file__).resolve().parent / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _page_path(page: str) -> str:
    return "/dashboard" if page == "summary" else f"/dashboard/{page}"


def _timed(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    reply = client.get(path)
    return time.perf_counter() - started, reply


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=OUT / "dashboard-demo")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    settings = load_settings(home=args.home)
    if not settings.store_path.exists():
        print(f"building the demo's home in {args.home} (winback demo; a few minutes)", flush=True)
        built = subprocess.run(
            [sys.executable, "-m", "winback.cli", "demo", "--home", str(args.home)],
            stdout=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            sys.exit(f"winback demo --home {args.home} failed (exit {built.returncode})")
    with state_engine(settings) as engine:
        key, _ = create_key(engine, "read", "bench_dashboard")
    port = _free_port()
    env = {**os.environ, "WINBACK_HOME": str(args.home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "winback.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "gzip"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("winback serve did not start")
                time.sleep(0.2)
            print(f"demo home {args.home}: {settings.store_path.stat().st_size / 1e6:,.0f} MB event store")
            print("cold (the service's first request of each page):")
            started = time.perf_counter()
            for page in PAGES:
                answered, reply = _timed(client, _page_path(page))
                asked = time.perf_counter()
                while client.get(f"/dashboard/fragments/{page}").status_code != 200:
                    time.sleep(0.05)
                ready = time.perf_counter() - asked + answered
                status = f"(HTTP {reply.status_code})"
                print(f"  {page:13} page {_ms(answered):>11} {status}, figures in {ready:6.2f} s")
            print(f"  every section computed {time.perf_counter() - started:.1f} s after the first request")

            def median(path: str) -> tuple[float, float]:
                times = sorted(_timed(client, path)[0] for _ in range(args.rounds))
                return statistics.median(times), times[int(0.95 * (len(times) - 1))]

            healthz, healthz_p95 = median("/healthz")
            css, css_p95 = median(asset_url("dashboard.css"))
            print(f"warm ({args.rounds} requests each; median, 95th percentile, ratio to /healthz):")

            def row(label: str, warm: float, p95: float) -> None:
                print(f"  {label:24} {_ms(warm):>10} {_ms(p95):>10}  {warm / healthz:5.1f}")

            row("/healthz (baseline)", healthz, healthz_p95)
            row("dashboard.css", css, css_p95)
            worst = 0.0
            for page in PAGES:
                path = _page_path(page)
                warm, p95 = median(path)
                worst = max(worst, p95)
                row(path, warm, p95)
            reply = client.get("/dashboard/fragments/kpis")
            version = re.search(r'data-version="([^"]+)"', reply.text)
            state = f"{version.group(1) if version else ''}.ready"
            check, check_p95 = median(f"/dashboard/fragments/kpis?known={state}")
            row("refresh check (204)", check, check_p95)
            verdict = "met" if worst < 1 else "NOT met"
            print(
                f"target: warm dashboard pages under 1 s (95th percentile): {verdict} (slowest {_ms(worst)})"
            )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()

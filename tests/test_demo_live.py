"""The live loop of the demo, end to end with real processes (winback serve, consume, detect, worker), the
real Redis of this machine and a real SMTP server: carts abandoned and decided, e-mails in the mailbox,
a click and a purchase attributed; and no process left behind, after success, Ctrl-C or an error."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from rich.console import Console

from winback.config import load_settings
from winback.demo_live import SHOP_URL, LiveOptions, Services, run_live
from winback.errors import WinbackError

REDIS_URL = os.environ.get("WINBACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: A tiny shop whose stream (seed 3) has carts messaged, held out and refused for want of consent.
TINY = LiveOptions(
    customers=200, days=2, seconds=6, send_delay_hours=0.001, window_seconds=10, drain_seconds=30
)


@pytest.fixture
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({error}); the live demo test needs a real server: run "
            "`make test` (it starts one) or set WINBACK_TEST_REDIS_URL"
        )
    return client


def _is_winback(process: psutil.Process) -> bool:
    """A live ``winback`` process (an exited one not reaped yet, left by another test, is not)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE and "winback.cli" in " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie, meanwhile
        return False


def _winback_children(since: float = 0.0) -> list[psutil.Process]:
    """This process's live ``winback`` descendants started at or after ``since`` (a wall-clock time), so
    that a process another test left behind is not counted against this one."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if _is_winback(process) and process.create_time() >= since - 1:  # create_time has coarse ticks
                found.append(process)
        except psutil.Error:
            continue
    return found


def _left_running(since: float, grace: float = 10.0) -> list[str]:
    """The command lines of the ``winback`` processes started since ``since`` still running after
    ``grace`` seconds (one that is stopping gets time to finish)."""
    _, alive = psutil.wait_procs(_winback_children(since), timeout=grace)
    left = []
    for process in alive:
        try:
            left.append(f"{process.pid}: {' '.join(process.cmdline())}")
        except psutil.Error:
            continue
    return left


def test_the_live_loop_end_to_end(tmp_path: Path, redis_client: redis.Redis) -> None:
    settings = load_settings(home=tmp_path / "home", redis_url=REDIS_URL)
    printed = io.StringIO()
    started, since = time.monotonic(), time.time()
    summary = run_live(settings, Console(file=printed, width=110), seed=3, options=TINY, number="9")
    took = time.monotonic() - started
    text = printed.getvalue()
    assert summary["settled"], text

    events = summary["events"]
    assert events["stored"] == events["replayed"] == events["redis"] + events["http"]
    assert events["redis"] > events["http"] > 0  # both paths: the Redis Stream and POST /v1/events

    # carts abandoned and decided: messaged, held out, refused by a guardrail
    actions = summary["actions"]
    assert actions["reminder/email/0.001h"] >= 2
    assert actions["nothing (holdout)"] == summary["holdout"] >= 1
    assert actions["nothing (no consent for e-mail)"] >= 1
    assert summary["decisions"] == sum(actions.values())

    # e-mails in the mailbox, one per message sent
    assert summary["mailbox"] == summary["state"]["outbox"]["sent"] >= 2
    assert summary["subjects"] == {"You left something in your cart": summary["mailbox"]}

    # the first e-mail opened, clicked (a real redirect), its cart bought, the order attributed to it
    click = summary["click"]
    assert (click["opened"], click["clicked"], click["location"]) == (200, 303, SHOP_URL)
    order = summary["attribution"]["order"]
    assert order["order_id"] == click["order_id"]
    assert order["message_id"] == click["message_id"]
    assert order["revenue"] == click["revenue"] > 0
    outcome = summary["attribution"]["outcome"]
    assert outcome == {"recovered": True, "revenue": click["revenue"], "attributed_revenue": click["revenue"]}

    # stopped cleanly; nothing left running; the run's stream removed from Redis
    codes = summary["exit_codes"]
    assert (codes["consume"], codes["detect"], codes["worker"]) == (0, 0, 0)
    assert codes["serve"] in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its clean shutdown
    assert not any(psutil.pid_exists(pid) for pid in summary["pids"].values())
    assert _left_running(since) == []
    assert redis_client.exists(summary["stream"]) == 0
    assert "decided (" in summary["said"]["detect"]

    for shown in (
        "the first e-mail arrives", "opened (GET /t/o/...: 200)", "attribution (last touch", "recovered True",
        "Subject: You left something in your cart", "nothing (holdout)",
    ):  # fmt: skip
        assert shown in text, text
    assert took < 60, f"the live stage took {took:.0f} s"


def test_without_redis_the_stage_is_skipped_with_a_message(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", redis_url="redis://127.0.0.1:1/0")
    printed = io.StringIO()
    summary = run_live(settings, Console(file=printed, width=110), seed=3, options=TINY)
    assert summary["skipped"].startswith("no Redis at redis://127.0.0.1:1/0")
    assert "skipped: no Redis at redis://127.0.0.1:1/0" in printed.getvalue()
    assert "winback demo --live-only" in printed.getvalue()
    assert not (tmp_path / "home" / "demo" / "live").exists()  # nothing started, nothing written


def test_ctrl_c_stops_every_service_before_the_demo_exits(tmp_path: Path, redis_client: redis.Redis) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINBACK_")}
    env.update({"WINBACK_HOME": str(home), "WINBACK_REDIS_URL": REDIS_URL})
    demo = subprocess.Popen(
        [sys.executable, "-m", "winback.cli", "demo", "--live-only"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    logs = home / "demo" / "live" / "logs"
    try:
        deadline = time.monotonic() + 60
        services: list[psutil.Process] = []
        while time.monotonic() < deadline:
            ready = all(
                (logs / f"{n}.log").exists() and "ready" in (logs / f"{n}.log").read_text()
                for n in ("detect", "worker")
            )
            services = [p for p in psutil.Process(demo.pid).children() if _is_winback(p)]
            if ready and len(services) == 4:
                break
            time.sleep(0.1)
        assert len(services) == 4
        demo.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends it
        demo.communicate(timeout=60)
        # stopped by the demo itself before it exited (the lifeline would take a half second or more)
        assert [p.pid for p in services if p.is_running()] == []
        assert demo.returncode != 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for process in _winback_children():
            process.kill()


def test_a_service_that_fails_is_reported_and_the_others_stopped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINBACK_")}
    env["WINBACK_HOME"] = str(tmp_path / "home")
    with Services(env, tmp_path / "logs", tmp_path) as services:
        services.start("worker", "worker", "--poll-interval", "0.1")
        services.wait_ready({"worker": lambda: "ready" in services.log("worker")}, timeout=60)
        worker = psutil.Process(services.pids["worker"])
        services.start("detect", "detect", "--idle-minutes", "0")  # refused by its options at once
        with pytest.raises(WinbackError) as failed:
            services.wait_ready({"detect": lambda: False}, timeout=60)
        assert worker.is_running()  # until the `with` ends
    assert "winback detect exited with code 2" in str(failed.value)
    assert "Invalid value for '--idle-minutes'" in str(failed.value)  # the end of its log
    assert not worker.is_running()
    assert services.exit_codes["worker"] == 0  # stopped by SIGTERM, cleanly

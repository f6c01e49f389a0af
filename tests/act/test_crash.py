"""Reliability of `winback worker` as a real process, on both databases: SIGKILLed at random points
while it sends and restarted, every scheduled message is delivered exactly once (the SMTP server
deduplicates on Message-ID and reports the repeats it saw); stopped with messages pending and started
again, they go out on time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from act_receivers import SMTPServer  # loaded by conftest.py

from winback.act.outbox import Contact, outbox_counts, schedule
from winback.serve.db import deliveries, make_engine, outbox, upgrade

WINBACK = str(Path(sys.executable).with_name("winback"))


def daytime_offset() -> int:
    """A time zone where it is about noon now, so that quiet hours never hold a message back."""
    now = datetime.now(UTC)
    offset = (12 * 60 - (now.hour * 60 + now.minute)) // 60 * 60
    return offset + 1440 if offset < -720 else offset


def worker_env(url: str, home: Path, smtp: SMTPServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINBACK_")}
    env.update(
        WINBACK_HOME=str(home), WINBACK_DATABASE_URL=url, WINBACK_SMTP_HOST="127.0.0.1",
        WINBACK_SMTP_PORT=str(smtp.port), WINBACK_SMTP_FROM="shop@example.com",
    )  # fmt: skip
    return env


def add_messages(engine: sa.Engine, first: int, n: int, send_at: datetime) -> list[int]:
    users = [f"u{first + i}" for i in range(n)]
    offset = daytime_offset()
    decisions = [
        {"user_id": u, "cart_id": f"c-{u}", "action": "reminder/email/1h", "channel": "email",
         "send_at": send_at, "coupon": 0.0, "recommended": ""}
        for u in users
    ]  # fmt: skip
    contacts = {u: Contact(email=f"{u}@example.com", utc_offset_minutes=offset) for u in users}
    return schedule(engine, decisions, contacts, carts={}).ids


def ready(process: subprocess.Popen[bytes]) -> bytes:
    """The worker's first line on stderr (it says it is ready)."""
    assert process.stderr is not None
    return process.stderr.readline()


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    database_url: str, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    trials, per_trial, lease = 50, 6, 0.4
    rng = random.Random(6)
    engine = make_engine(database_url)
    upgrade(engine)
    env = worker_env(database_url, tmp_path / "home", smtp_server)
    command = [WINBACK, "worker", "--batch", "3", "--record-every", "2", "--lease-seconds", str(lease),
               "--poll-interval", "0.02"]  # fmt: skip
    inbox = smtp_server.inbox
    expected: list[int] = []
    in_flight = 0  # messages the server had received but the outbox had not recorded, at the kills
    for trial in range(trials):
        expected += add_messages(engine, trial * per_trial, per_trial, datetime.now(UTC))
        target = inbox.distinct + rng.randint(1, per_trial)  # kill after this many have arrived...
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda t=target: inbox.distinct >= t, 30), (
                f"trial {trial}: the worker sent nothing ({process.poll()=})"
            )
            time.sleep(rng.uniform(0, 0.01))  # ...and up to 10 ms more: during a send, a record, a claim
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL
        with engine.connect() as connection:
            recorded = connection.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar_one()
        in_flight += inbox.distinct - recorded
    time.sleep(lease)
    finished = subprocess.run([*command[:2], "--once", "--json"], env=env, capture_output=True, timeout=60)
    assert finished.returncode == 0, finished.stderr.decode()
    total = trials * per_trial
    with engine.connect() as connection:
        statuses = dict(connection.execute(sa.select(outbox.c.id, outbox.c.status)).all())
        delivered = connection.execute(sa.select(deliveries.c.message_id)).scalars().all()
    engine.dispose()
    print(  # what happened, for the record (pytest -s)
        f"{trials} SIGKILLs; {total} messages; server received {inbox.distinct} distinct, "
        f"{inbox.duplicates} repeats deduplicated; {in_flight} sent-but-unrecorded at the kills"
    )
    assert sorted(statuses) == sorted(expected)
    assert set(statuses.values()) == {"sent"}  # none lost
    assert sorted(delivered) == sorted(expected)  # one recorded delivery each
    assert inbox.distinct == total  # every message reached the server, under its own Message-ID
    assert in_flight > 0  # the kills did land between a send and its record...
    assert inbox.duplicates >= 1  # ...and those messages were resent, then deduplicated by Message-ID


@pytest.mark.slow
def test_stopped_with_messages_pending_they_go_out_on_time_after_a_restart(
    database_url: str, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    env = worker_env(database_url, tmp_path / "home", smtp_server)
    command = [WINBACK, "worker", "--poll-interval", "0.05"]
    launched = datetime.now(UTC)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b"ready" in ready(first)
    # due after a stop and a restart as slow as this start (a loaded machine starts Python slowly)
    start = datetime.now(UTC)
    lead = 2 * (start - launched).total_seconds() + 3.0
    due = {start + timedelta(seconds=lead + s): add_messages(engine, 10 + int(s * 10), 2,
                                                               start + timedelta(seconds=lead + s))
           for s in (0.0, 0.5)}  # fmt: skip
    first.send_signal(signal.SIGTERM)  # stopped while running, nothing due yet
    out, err = first.communicate(timeout=10)
    assert first.returncode == 0, err.decode()
    assert out.decode().startswith("0 sent")
    assert outbox_counts(engine) == {"scheduled": 4}
    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert b"ready" in ready(second)
        restarted = datetime.now(UTC)
        assert restarted < min(due), f"the restart took until {restarted - start} (the test needs it sooner)"
        assert wait_for(lambda: smtp_server.inbox.distinct == 4, 15)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox.c.id, outbox.c.idempotency_key)).all()
    engine.dispose()
    keys = {i: k for i, k in rows}
    arrived = smtp_server.inbox.arrived
    for at, ids in due.items():
        for i in ids:
            lateness = arrived[f"<{keys[i]}@winback>"] - at.timestamp()
            assert 0 <= lateness < 1.0, f"message {i} arrived {lateness:+.2f} s from its send time"
    assert smtp_server.inbox.duplicates == 0

"""A winback command started with WINBACK_PARENT_PID stops when that parent is killed outright (what keeps
the live demo from leaving orphans behind), and not before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# The parent: starts `winback worker` with its own pid as WINBACK_PARENT_PID, says the child's pid, waits.
PARENT = """
import os, subprocess, sys, time
env = {**os.environ, "WINBACK_PARENT_PID": str(os.getpid())}
child = subprocess.Popen([sys.executable, "-m", "winback.cli", "worker", "--poll-interval", "0.1"], env=env,
                         stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], "w"))
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_command_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = {**os.environ, "WINBACK_HOME": str(tmp_path / "home")}
    env.pop("WINBACK_DATABASE_URL", None)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(log)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    worker = psutil.Process(int(parent.stdout.readline()))
    try:
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ready" in log.read_text()
        time.sleep(1.0)
        assert worker.is_running()  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        worker.wait(timeout=10)  # stopped by its own SIGTERM within the half-second check
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker.is_running():  # the lifeline failed: leave no orphan behind
            worker.kill()
    assert not worker.is_running()


def test_a_bad_parent_pid_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "WINBACK_HOME": str(tmp_path), "WINBACK_PARENT_PID": "abc"}
    done = subprocess.run(
        [sys.executable, "-m", "winback.cli", "worker", "--once"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "WINBACK_PARENT_PID='abc': expected a process id" in done.stderr


def test_no_variable_no_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    from winback.lifeline import PARENT_PID, watch_parent

    monkeypatch.delenv(PARENT_PID, raising=False)
    assert watch_parent() is None
    monkeypatch.setenv(PARENT_PID, "")
    assert watch_parent() is None

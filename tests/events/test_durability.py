"""Loads are all-or-nothing even when the process dies, and stream files larger than the memory limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from winback.config import load_settings
from winback.errors import BadInputError, WinbackError
from winback.events.ingest import ingest_files
from winback.events.store import EventStore

WINBACK = [sys.executable, "-m", "winback.cli"]


def big_csv(path: Path, rows: int) -> Path:
    """A synthetic REES46-shaped file, written by DuckDB (fast, deterministic)."""
    duckdb.execute(
        f"""COPY (SELECT TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(i * 0.3) AS timestamp,
                  'u' || (i // 7) % 50000 AS user_id,
                  (['view', 'view', 'view', 'add_to_cart', 'purchase'])[1 + i % 5] AS event_type,
                  'p' || (i * 7919) % 20000 AS product_id, round((i % 9973) / 10.0, 2) AS price,
                  md5(CAST(i // 7 AS VARCHAR)) AS session_id
                 FROM range({rows}) t(i)) TO '{path}' (HEADER)"""
    )
    return path


@pytest.mark.slow
def test_killed_mid_load_stores_nothing_and_a_rerun_loads_everything(tmp_path: Path) -> None:
    path = big_csv(tmp_path / "big.csv", 3_000_000)
    home = tmp_path / "home"
    env = {**os.environ, "WINBACK_HOME": str(home)}
    proc = subprocess.Popen(
        [*WINBACK, "ingest", str(path), "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    store_file = home / "events.duckdb"
    deadline = time.monotonic() + 30
    while not store_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the load, which takes several seconds
    assert proc.poll() is None, "the load finished before it could be killed; make the file bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with EventStore(load_settings(home=home)) as store:
        assert store.count() == 0
        assert store.batches() == []
    done = subprocess.run([*WINBACK, "ingest", str(path), "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with EventStore(load_settings(home=home), read_only=True) as store:
        assert store.count() == 3_000_000


@pytest.mark.slow
def test_a_file_larger_than_the_memory_limit_streams_through(tmp_path: Path) -> None:
    path = big_csv(tmp_path / "big.csv", 2_000_000)
    assert path.stat().st_size > 150 * 2**20
    settings = load_settings(home=tmp_path / "home", memory_limit="100MB", threads=1)
    with EventStore(settings) as store:
        report = ingest_files(store, [path]).as_dict()
        assert report["ingested"] == 2_000_000
        again = ingest_files(store, [path]).as_dict()
        assert (again["ingested"], again["duplicates"]) == (0, 2_000_000)


@pytest.mark.slow
def test_bad_row_deep_in_a_big_file_is_named_by_its_line(tmp_path: Path) -> None:
    """Row numbers stay exact while DuckDB reads the file in parallel chunks."""
    path = big_csv(tmp_path / "big.csv", 1_500_000)
    lines = path.read_text().splitlines(keepends=True)
    lines[1_234_567] = lines[1_234_567].replace(",view,", ",teleport,")
    path.write_text("".join(lines))
    settings = load_settings(home=tmp_path / "home")
    with EventStore(settings) as store, pytest.raises(BadInputError) as info:
        ingest_files(store, [path])
    assert info.value.problems == [
        f"{path}, line 1234568: event_type: found 'teleport', expected one of view, add_to_cart, "
        "remove_from_cart, checkout_start, purchase, message_sent, message_opened, message_clicked, "
        "unsubscribed (map other names with --event-types NAME=TYPE, or NAME=ignore to drop them)"
    ]


def _hold_read_only(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process reading ``path`` (as the dashboard or a report does) for ``seconds``."""
    code = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print('open', flush=True); time.sleep(float(sys.argv[2]))"
    )
    reader = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE)
    assert reader.stdout is not None
    assert reader.stdout.readline() == b"open\n"
    return reader


def test_a_writer_waits_for_a_reader_of_another_process(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    EventStore(settings).close()
    reader = _hold_read_only(settings.store_path, 1.5)
    try:
        started = time.monotonic()
        with EventStore(settings) as store:  # waits for the reader instead of failing
            waited = time.monotonic() - started
            assert store.con.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert 0.5 < waited < 30
        assert reader.wait(timeout=30) == 0
        reader = _hold_read_only(settings.store_path, 5)
        impatient = load_settings(home=tmp_path / "home", lock_wait_seconds=0.3)
        with pytest.raises(WinbackError, match=r"event store .*events\.duckdb.*WINBACK_LOCK_WAIT_SECONDS"):
            EventStore(impatient)
    finally:
        reader.kill()
        reader.wait()

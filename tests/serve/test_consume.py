"""The Redis Stream path on SQLite and PostgreSQL, against the real Redis of this machine: stored once,
acknowledged only after storing, a dead consumer's entries claimed by another, invalid entries
dead-lettered with their reason, the same event_id over HTTP and Redis stored once, `winback consume`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient

from winback.config import Settings
from winback.events.model import Event
from winback.serve.consume import StreamConsumer, pending_count
from winback.serve.db import events as events_table
from winback.serve.db import make_engine, upgrade
from winback.serve.ingest import count_events, store_events

REDIS_URL = os.environ.get("WINBACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _event(i: int, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"r{i}", "event_type": "add_to_cart", "timestamp": "2024-05-01T10:00:00Z",
            "user_id": f"u{i % 7}", "product_id": f"p{i % 11}", "price": 9.5, **changes}  # fmt: skip


@pytest.fixture
def client_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({error}); the stream tests need a real server: run "
            "`make test` (it starts one) or set WINBACK_TEST_REDIS_URL"
        )
    yield client
    client.close()


@pytest.fixture
def stream(client_redis: redis.Redis) -> Iterator[str]:
    """A stream key of this test alone (and its dead-letter stream), deleted afterwards."""
    key = f"winback:test:{secrets.token_hex(6)}"
    yield key
    client_redis.delete(key, f"{key}:dead")


@pytest.fixture
def settings(service_settings: Settings, stream: str) -> Settings:
    return service_settings.model_copy(
        update={"redis_url": REDIS_URL, "redis_stream": stream, "redis_dead_letter": f"{stream}:dead"}
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(settings.state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _add(client: redis.Redis, stream: str, events: list[dict[str, Any]]) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, {"event": orjson.dumps(event)})
    pipe.execute()


def _ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(events_table.c.event_id)).scalars())


def test_entries_are_stored_once_and_acknowledged(
    settings: Settings, engine: sa.Engine, client_redis: redis.Redis, stream: str
) -> None:
    _add(client_redis, stream, [_event(i) for i in range(250)])
    client_redis.xadd(stream, {"events": orjson.dumps([_event(i) for i in range(245, 260)])})  # 5 repeats
    consumer = StreamConsumer(settings, engine, client_redis, consumer="c1")
    stats = consumer.run(100, once=True)
    assert (stats.entries, stats.events, stats.stored, stats.duplicates, stats.dead) == (251, 265, 260, 5, 0)
    assert stats.batches == 3
    assert count_events(engine) == 260
    assert pending_count(client_redis, stream, settings.redis_group) == 0
    with engine.connect() as connection:
        assert set(connection.execute(sa.select(events_table.c.source)).scalars()) == {"redis"}
    sample = consumer.metrics.registry.get_sample_value
    assert sample("winback_events_in_total", {"path": "redis", "result": "stored"}) == 260
    assert sample("winback_events_in_total", {"path": "redis", "result": "duplicate"}) == 5


def test_a_consumer_that_stops_before_xack_leaves_entries_that_another_claims(
    settings: Settings, engine: sa.Engine, client_redis: redis.Redis, stream: str
) -> None:
    _add(client_redis, stream, [_event(i) for i in range(300)])
    dying = StreamConsumer(settings, engine, client_redis, consumer="dying")
    dying.ensure_group()
    delivered = dying.read_new(200, None)  # read: delivered to it, pending in the group
    half = [Event.model_validate_json(fields[b"event"]) for _, fields in delivered[:120]]
    store_events(engine, half, "redis")  # stored 120 of them, then died before XACK
    assert pending_count(client_redis, stream, settings.redis_group) == 200
    time.sleep(0.06)
    survivor = StreamConsumer(settings, engine, client_redis, consumer="survivor", claim_idle_ms=50)
    stats = survivor.run(500, once=True)
    assert stats.claimed == 200
    assert (stats.stored, stats.duplicates) == (180, 120)  # the 80 claimed unstored + the 100 never read
    assert _ids(engine) == sorted(f"r{i}" for i in range(300))  # nothing lost, nothing twice
    assert pending_count(client_redis, stream, settings.redis_group) == 0


def test_a_consumer_restarted_under_its_name_reads_its_own_pending_entries_first(
    settings: Settings, engine: sa.Engine, client_redis: redis.Redis, stream: str
) -> None:
    _add(client_redis, stream, [_event(i) for i in range(50)])
    first = StreamConsumer(settings, engine, client_redis, consumer="node-1")
    first.ensure_group()
    assert len(first.read_new(30, None)) == 30  # then killed
    again = StreamConsumer(settings, engine, client_redis, consumer="node-1")  # long idle time: no claims
    stats = again.run(20, once=True)
    assert (stats.claimed, stats.stored, stats.entries) == (0, 50, 50)
    assert pending_count(client_redis, stream, settings.redis_group) == 0


def test_invalid_entries_go_to_the_dead_letter_stream_with_the_reason(
    settings: Settings, engine: sa.Engine, client_redis: redis.Redis, stream: str
) -> None:
    _add(client_redis, stream, [_event(0), _event(1)])
    client_redis.xadd(stream, {"event": b"{not json"})
    client_redis.xadd(stream, {"payload": b"{}"})
    client_redis.xadd(stream, {"event": orjson.dumps(_event(2, price=-3))})
    client_redis.xadd(stream, {"events": orjson.dumps([_event(3), _event(4, event_type="click")])})
    _add(client_redis, stream, [_event(5)])
    stats = StreamConsumer(settings, engine, client_redis, consumer="c").run(100, once=True)
    assert (stats.entries, stats.stored, stats.dead) == (7, 3, 4)
    assert _ids(engine) == ["r0", "r1", "r5"]  # a bad entry holds back neither the others nor the stream
    assert pending_count(client_redis, stream, settings.redis_group) == 0
    dead = client_redis.xrange(settings.redis_dead_letter)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert reasons[0].startswith("event: Invalid JSON")
    assert (
        "expected a field 'event' (one event's JSON) or 'events' (a JSON list); found payload" in reasons[1]
    )
    assert reasons[2] == "price: Input should be greater than or equal to 0"
    assert reasons[3].startswith("events[1].event_type: Input should be 'view'")
    assert dead[2][1][b"event"] == orjson.dumps(_event(2, price=-3))  # the entry itself is kept
    assert {fields[b"stream"] for _, fields in dead} == {stream.encode()}
    originals = {entry_id for entry_id, _ in client_redis.xrange(stream)}
    assert {fields[b"entry_id"] for _, fields in dead} <= originals


def test_the_same_event_over_http_and_redis_is_stored_once(
    client: TestClient, auth: dict[str, str], settings: Settings, client_redis: redis.Redis, stream: str
) -> None:
    engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    assert client.post("/v1/events", json=[_event(1), _event(2)], headers=auth).json()["stored"] == 2
    _add(client_redis, stream, [_event(2), _event(3)])
    stats = StreamConsumer(settings, engine, client_redis, consumer="c").run(once=True)
    assert (stats.stored, stats.duplicates) == (1, 1)
    again = client.post("/v1/events", json=[_event(3), _event(4)], headers=auth).json()
    assert (again["stored"], again["duplicates"]) == (1, 1)
    without_id = {k: v for k, v in _event(9).items() if k != "event_id"}  # identified by its content
    _add(client_redis, stream, [without_id])
    StreamConsumer(settings, engine, client_redis, consumer="c").run(once=True)
    assert client.post("/v1/events", json=without_id, headers=auth).json()["duplicates"] == 1
    assert count_events(engine) == 5


def _consume(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "WINBACK_HOME": str(settings.home), "WINBACK_DATABASE_URL": settings.state_url,
           "WINBACK_REDIS_URL": REDIS_URL, "WINBACK_REDIS_STREAM": settings.redis_stream,
           "WINBACK_REDIS_DEAD_LETTER": settings.redis_dead_letter}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "winback.cli", "consume", *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_winback_consume_killed_mid_run_loses_and_duplicates_nothing(
    settings: Settings, engine: sa.Engine, client_redis: redis.Redis, stream: str
) -> None:
    n = 20_000
    _add(client_redis, stream, [_event(i) for i in range(n)])
    victim = _consume(settings, "--batch", "500", "--consumer", "victim")
    deadline = time.monotonic() + 60
    while count_events(engine) == 0:  # let it store some batches, then kill it mid-run
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "winback consume stored nothing in 60 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    stored_before = count_events(engine)
    pending = pending_count(client_redis, stream, settings.redis_group)
    assert 0 < stored_before < n
    time.sleep(0.3)
    survivor = _consume(settings, "--once", "--json", "--claim-idle-ms", "200", "--consumer", "survivor")
    out, errors = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, errors
    stats = json.loads(out)
    assert stats["claimed"] == pending
    assert stats["stored"] == n - stored_before
    assert stats["dead"] == 0
    assert count_events(engine) == n
    assert _ids(engine) == sorted(f"r{i}" for i in range(n))
    assert pending_count(client_redis, stream, settings.redis_group) == 0


def test_winback_consume_fails_clearly_without_redis(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "WINBACK_HOME": str(tmp_path), "WINBACK_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "winback.cli", "consume", "--once"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "Redis at redis://127.0.0.1:1/0 (WINBACK_REDIS_URL) is not reachable" in done.stderr

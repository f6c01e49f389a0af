"""The Redis Stream path of ingest: ``winback consume`` reads events from a stream with a consumer group.

Delivery is at least once, and storage idempotent by ``event_id``, so each event is stored exactly once:

- Producers ``XADD`` entries to ``WINBACK_REDIS_STREAM`` (default ``winback:events``); an entry's field
  ``event`` holds one event's JSON (the canonical model of ``POST /v1/events``), or ``events`` a JSON
  list of them.
- The consumer reads with ``XREADGROUP`` in group ``WINBACK_REDIS_GROUP`` (created, with the stream, if
  missing), validates the whole read batch, stores it with :func:`store_events` in one transaction, and
  only then ``XACK``\\ s it. A consumer that dies before the acknowledgement leaves its entries pending:
  on restart under the same name it reads them again first; any other consumer claims them with
  ``XAUTOCLAIM`` once they have been idle for ``WINBACK_REDIS_CLAIM_IDLE_MS``. Redelivered events are
  duplicates the database refuses, so nothing is stored twice.
- An entry that is not valid (not JSON, neither field, an invalid event) goes to the dead-letter stream
  ``WINBACK_REDIS_DEAD_LETTER`` (default ``winback:events:dead``) with its fields, its id and the reason,
  and is acknowledged in the same ``MULTI``: never lost, never blocking the stream. (A crash between the
  two writes cannot happen inside ``MULTI``; a crash before it re-delivers the entry, which may then be
  dead-lettered twice.)
- A database error leaves the batch unacknowledged; the consumer backs off and reads its pending
  entries again.

Metrics: the consumer counts ``winback_events_in{path="redis", result=stored|duplicate|rejected}`` in
its own :class:`Metrics` registry, served on ``--metrics-port`` when given (nothing otherwise).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.errors import WinbackError
from winback.events.json_batch import fast_rows
from winback.events.model import Event, EventRow
from winback.serve.ingest import store_rows
from winback.serve.metrics import Metrics

log = logging.getLogger("winback.consume")

_BATCH = TypeAdapter(list[Event])
Entry = tuple[bytes, dict[bytes, bytes] | None]


@dataclass
class ConsumeStats:
    """What a consumer did: entries read (claimed ones included), events stored, duplicates, entries
    dead-lettered, batches, and entries claimed from other consumers."""

    entries: int = 0
    events: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    batches: int = 0
    claimed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


def _reason(error: ValidationError, many: bool) -> str:
    """What is wrong, by field: ``price: ...`` for an ``event`` entry, ``events[1].price: ...`` for a list."""
    parts = []
    for e in error.errors(include_url=False, include_input=False):
        loc = [str(p) for p in e["loc"]]
        where = "" if not loc else f"events[{loc[0]}]" if many else ""
        where = ".".join(x for x in (where, *loc[1:]) if x) or ("events" if many else "event")
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)[:2000]


def _entry_json(fields: dict[bytes, bytes]) -> bytes:
    """The body of an entry as the items of a JSON list (no brackets), or a ValueError saying why not."""
    if b"event" in fields:
        return fields[b"event"].strip()
    if b"events" in fields:
        body = fields[b"events"].strip()
        if not (body.startswith(b"[") and body.endswith(b"]")):
            raise ValueError("field 'events': expected a JSON list of events")
        return body[1:-1].strip()
    names = ", ".join(k.decode(errors="replace") for k in fields) or "none"
    raise ValueError(f"expected a field 'event' (one event's JSON) or 'events' (a JSON list); found {names}")


def parse_entries(entries: list[Entry]) -> tuple[list[EventRow], list[tuple[bytes, dict[bytes, bytes], str]]]:
    """The rows of the valid events of ``entries`` and the bad entries with their reason.

    All the entries' events are decoded as one JSON list in one call (:func:`fast_rows`, then the model
    if that does not take it); only when that fails is each entry validated alone, to tell the good from
    the bad.
    """
    parts: list[bytes] = []
    dead: list[tuple[int, bytes, dict[bytes, bytes], str]] = []
    kept: list[tuple[int, bytes, dict[bytes, bytes], bytes]] = []
    for position, (entry_id, fields) in enumerate(entries):
        if not fields:  # deleted from the stream while pending: nothing to store
            continue
        try:
            body = _entry_json(fields)
        except ValueError as error:
            dead.append((position, entry_id, fields, str(error)))
            continue
        if body:
            parts.append(body)
            kept.append((position, entry_id, fields, body))
    rows: list[EventRow] = []
    if parts:
        try:
            rows = _validate(b"[" + b",".join(parts) + b"]")
            parts = []
        except ValidationError:
            pass
    if parts:
        for position, entry_id, fields, body in kept:
            try:
                rows += _validate(b"[" + body + b"]")
            except ValidationError as error:
                dead.append((position, entry_id, fields, _reason(error, b"event" not in fields)))
    return rows, [(entry_id, fields, reason) for _, entry_id, fields, reason in sorted(dead)]


def _validate(body: bytes) -> list[EventRow]:
    """The rows of a JSON list of events, or the model's ValidationError."""
    rows = fast_rows(body)
    return rows if rows is not None else [event.as_row() for event in _BATCH.validate_json(body)]


class StreamConsumer:
    """One member of the consumer group; :meth:`run` until stopped, or :meth:`step` one batch."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: redis.Redis | None = None,
        *,
        consumer: str | None = None,
        stream: str | None = None,
        group: str | None = None,
        dead_letter: str | None = None,
        claim_idle_ms: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.client: Any = client if client is not None else redis.Redis.from_url(settings.redis_url)
        self.url = settings.redis_url
        self.stream = stream or settings.redis_stream
        self.group = group or settings.redis_group
        self.dead_letter = dead_letter or settings.redis_dead_letter
        self.claim_idle_ms = claim_idle_ms if claim_idle_ms is not None else settings.redis_claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or Metrics()
        self.stats = ConsumeStats()
        self._own_pending = True  # first re-read what this consumer name left unacknowledged
        self._claim_cursor = b"0-0"

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing, reading from the stream's start."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        except redis.ConnectionError as error:
            raise WinbackError(f"Redis at {self.url} (WINBACK_REDIS_URL) is not reachable: {error}") from None

    def claim(self, count: int) -> list[Entry]:
        """Entries other consumers left pending longer than the idle time, now this consumer's."""
        reply = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = reply[0]
        entries: list[Entry] = reply[1]
        self.stats.claimed += len(entries)
        return entries

    def read_own(self, count: int) -> list[Entry]:
        """Entries delivered to this consumer's name and not acknowledged (after a restart or an error)."""
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        return reply[0][1] if reply else []

    def read_new(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries, waiting up to ``block_ms`` for them (None: not at all)."""
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return reply[0][1] if reply else []

    def commit(
        self, entries: list[Entry], events: list[EventRow], dead: list[tuple[bytes, dict[bytes, bytes], str]]
    ) -> None:
        """Store ``events`` in one transaction, then dead-letter ``dead`` and acknowledge all ``entries``
        in one MULTI."""
        stored = store_rows(self.engine, events, "redis") if events else None
        pipe = self.client.pipeline(transaction=True)
        for entry_id, fields, reason in dead:
            pipe.xadd(
                self.dead_letter,
                {
                    **fields,
                    b"reason": reason.encode(),
                    b"entry_id": entry_id,
                    b"stream": self.stream.encode(),
                },
            )
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        new = stored.stored if stored else 0
        self.stats.entries += len(entries)
        self.stats.events += len(events)
        self.stats.stored += new
        self.stats.duplicates += len(events) - new
        self.stats.dead += len(dead)
        self.stats.batches += 1
        self.metrics.events_in.labels("redis", "stored").inc(new)
        self.metrics.events_in.labels("redis", "duplicate").inc(len(events) - new)
        self.metrics.events_in.labels("redis", "rejected").inc(len(dead))
        for entry_id, _, reason in dead:
            log.warning("dead-lettered %s: %s", entry_id.decode(), reason[:200])

    def handle(self, entries: list[Entry]) -> None:
        """Validate and :meth:`commit` ``entries`` (synchronously)."""
        if entries:
            self.commit(entries, *parse_entries(entries))

    def run(
        self,
        count: int = 10_000,
        block_ms: int = 1_000,
        *,
        once: bool = False,
        stop: Callable[[], bool] = lambda: False,
    ) -> ConsumeStats:
        """Consume until ``stop()`` is true (checked between batches) or, with ``once``, until nothing is
        left to claim or read.

        New entries are pipelined: while one batch is being stored (and then acknowledged) in a
        background thread, the next is read and validated; at most one batch is in flight, and a batch
        is acknowledged only once stored. Claims (every half idle time, at most every 5 s) and this
        consumer's own pending entries are handled with nothing in flight, so no entry is handled twice
        by the same consumer. A storage or Redis error is logged and retried with back-off (the batches
        stay pending and are read again), except with ``once``, where it is raised. The garbage collector
        is paused while a batch is read and validated (its objects are freed by reference counting).
        """
        self.ensure_group()
        backoff = 0.5
        claim_every = min(self.claim_idle_ms / 2000, 5.0)
        next_claim = 0.0
        batches = 0
        dry = False  # the last claim (and own pending read) found nothing
        inflight: list[Future[None]] = []

        def settle() -> None:
            while inflight:
                inflight.pop().result()

        with ThreadPoolExecutor(1, thread_name_prefix="winback-store") as storer:
            while not stop():
                collecting = gc.isenabled()
                gc.disable()
                try:
                    entries: list[Entry] = []
                    synchronous = False
                    if self._own_pending or time.monotonic() >= next_claim:
                        settle()
                        entries = self.claim(count)
                        if not entries:
                            next_claim = time.monotonic() + claim_every
                            if self._own_pending:
                                entries = self.read_own(count)
                                self._own_pending = bool(entries)
                        synchronous = bool(entries)
                        dry = not entries
                    if not entries:
                        entries = self.read_new(count, None if once else block_ms)
                        dry = dry and not entries
                    if not entries:
                        settle()
                        if once:
                            if dry:
                                break
                            next_claim = 0.0  # a last claim before stopping
                        continue
                    events, dead = parse_entries(entries)
                    settle()
                    if synchronous:
                        self.commit(entries, events, dead)
                    else:
                        inflight.append(storer.submit(self.commit, entries, events, dead))
                    backoff = 0.5
                except Exception as error:
                    self._own_pending = True  # what was read is pending: read it again
                    problem: Exception = error
                    try:
                        settle()
                    except Exception as failed:  # the batch in flight failed (first)
                        problem = failed
                    if once:
                        if isinstance(problem, redis.ConnectionError | redis.TimeoutError):
                            raise WinbackError(f"Redis at {self.url}: {problem}") from None
                        raise problem  # noqa: B904 (the error itself, not a new one)
                    self.stats.errors.append(str(problem)[:500])
                    log.error("a batch failed (left pending): %s; retrying in %.1f s", problem, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30)
                finally:
                    if collecting:
                        gc.enable()
                batches += 1
                if batches % 20 == 0:
                    gc.collect(1)
            settle()
        return self.stats


def pending_count(client: redis.Redis, stream: str, group: str) -> int:
    """Entries delivered to the group and not yet acknowledged."""
    summary: Any = client.xpending(stream, group)
    return int(summary["pending"])


def encode_entry(event: dict[str, Any]) -> dict[bytes, bytes]:
    """The stream entry of one event (what producers ``XADD``)."""
    return {b"event": orjson.dumps(event)}

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

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.errors import WinbackError
from winback.events.model import Event
from winback.serve.ingest import store_events
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


def parse_entries(entries: list[Entry]) -> tuple[list[Event], list[tuple[bytes, dict[bytes, bytes], str]]]:
    """The valid events of ``entries`` and the bad entries with their reason.

    The fast path validates all the entries' events as one JSON list in one call; only when that fails
    is each entry validated alone, to tell the good from the bad.
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
    events: list[Event] = []
    if parts:
        try:
            events = _BATCH.validate_json(b"[" + b",".join(parts) + b"]")
            parts = []
        except ValidationError:
            pass
    if parts:
        for position, entry_id, fields, body in kept:
            try:
                events += _BATCH.validate_json(b"[" + body + b"]")
            except ValidationError as error:
                dead.append((position, entry_id, fields, _reason(error, b"event" not in fields)))
    return events, [(entry_id, fields, reason) for _, entry_id, fields, reason in sorted(dead)]


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

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """The next entries: this consumer's own pending ones first, then new ones (waiting up to
        ``block_ms`` for them; None: do not wait)."""
        if self._own_pending:
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            entries: list[Entry] = reply[0][1] if reply else []
            if entries:
                return entries
            self._own_pending = False
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return reply[0][1] if reply else []

    def handle(self, entries: list[Entry]) -> None:
        """Store ``entries``' events in one transaction, then dead-letter the bad ones and acknowledge all."""
        if not entries:
            return
        events, dead = parse_entries(entries)
        stored = store_events(self.engine, events, "redis") if events else None
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

    def step(self, count: int, block_ms: int | None) -> int:
        """One batch: claimed entries if any are idle past the time, else own pending or new ones.
        How many entries were handled."""
        entries = self.claim(count)
        if not entries:
            entries = self.read(count, block_ms)
        try:
            self.handle(entries)
        except Exception:
            self._own_pending = True  # left pending: read again after the back-off
            raise
        return len(entries)

    def run(
        self,
        count: int = 10_000,
        block_ms: int = 1_000,
        *,
        once: bool = False,
        stop: Callable[[], bool] = lambda: False,
    ) -> ConsumeStats:
        """Consume until ``stop()`` is true (checked between batches) or, with ``once``, until a read
        finds nothing new. A storage error is logged and retried with back-off (the batch stays
        pending), except with ``once``, where it is raised."""
        self.ensure_group()
        backoff = 0.5
        while not stop():
            try:
                handled = self.step(count, None if once else block_ms)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if once:
                    raise WinbackError(f"Redis at {self.url}: {error}") from None
                log.error("Redis: %s; retrying in %.1f s", error, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            except Exception as error:
                if once:
                    raise
                self.stats.errors.append(str(error)[:500])
                log.error("storing a batch failed (left pending): %s; retrying in %.1f s", error, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            backoff = 0.5
            if once and handled == 0:
                break
        return self.stats


def pending_count(client: redis.Redis, stream: str, group: str) -> int:
    """Entries delivered to the group and not yet acknowledged."""
    summary: Any = client.xpending(stream, group)
    return int(summary["pending"])


def encode_entry(event: dict[str, Any]) -> dict[bytes, bytes]:
    """The stream entry of one event (what producers ``XADD``)."""
    return {b"event": orjson.dumps(event)}

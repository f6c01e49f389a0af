"""The worker: claims due messages, re-checks them at send time, renders, sends, records.

For each claimed batch (see :func:`winback.act.outbox.claim`) the worker reads, in a few queries, the
customers' last purchases and unsubscribes (the ``events`` table) and their last deliveries, then for
each message:

1. **re-checks** it: a purchase by the customer since the message was scheduled, or an unsubscribe
   (``unsubscribed`` event; its ``properties.channel`` names the channel, none means all) cancels it;
   inside the customer's quiet hours (the catalogue's ``limits.quiet_hours``, in the time zone stored
   with the message) it is **deferred** to the end of the quiet hours, not counted as an attempt (at
   planning a message inside quiet hours is refused; here it was planned outside them and is only late,
   e.g. after an outage); then the catalogue's other limits, as :mod:`winback.decide.guardrails`
   applies them at planning, cancel it: the channel's frequency cap (against its last recorded
   delivery, and the messages this worker sent in the batch) and the largest coupon. (The worker reads
   the catalogue's ``Limits`` itself rather than importing the guardrails module, whose harvester
   detector pulls in scipy and scikit-learn: 1.2 s more at every worker start.) When the customer has
   a profile (winback.serve.profiles), it is read as it is now: consent withdrawn on the channel, or
   no address on it any more, cancels the message; an unsubscribe cancels it unless consent was given
   again after it; quiet hours are in the profile's time zone; a changed address is sent to. Without
   a profile, consent was checked when the message was planned and the unsubscribes since then are
   what can withdraw it;
2. renders it (:class:`~winback.act.render.Renderer`);
3. sends it through its channel with its idempotency key;
4. records it: deliveries are written every ``record_every`` messages and at the end of the batch, in
   one transaction each (a worker killed in between leaves those messages claimed; once the lease
   expires another worker sends them again under the same idempotency key, which the receiver
   deduplicates).

A provider error that may pass (SMTP 4xx, connection errors, webhook 5xx and timeouts) gives the message
back for a retry after ``retry_seconds`` x 2^(attempt - 1) (at most a day, plus up to 10% jitter); after
``max_attempts`` attempts it is ``dead``. A permanent refusal (SMTP 5xx, webhook 4xx) or a template
error makes it ``failed``. The lease is renewed while a batch is being sent, so a slow provider does not
let another worker take messages this one still holds.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, cast

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.act.channels import Channel, PermanentError, TransientError
from winback.act.outbox import (
    Message,
    SendFacts,
    Sent,
    as_utc,
    claim,
    defer,
    finish,
    record_sent,
    release,
    renew,
    retry,
    send_facts,
    utcnow,
)
from winback.act.render import Renderer
from winback.act.tracking import Links
from winback.config import Settings
from winback.decide.actions import Channel as ChannelName
from winback.decide.catalogue import Catalogue, load_catalogue
from winback.errors import BadInputError
from winback.serve.db import outbox

__all__ = ["Worker", "WorkerStats", "default_channels", "next_due", "run_workers"]

log = logging.getLogger("winback.worker")
MAX_BACKOFF = 24 * 3600.0
#: As the guardrails name channels in their reasons (winback.decide.guardrails.CHANNEL_LABELS).
CHANNEL_LABELS = {"email": "e-mail", "sms": "sms", "push": "push"}

ChannelFactory = Callable[[], Channel]


@dataclass
class WorkerStats:
    """What one worker (or several, added up) did."""

    claimed: int = 0
    sent: int = 0
    cancelled: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0

    def add(self, other: WorkerStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def default_channels(settings: Settings) -> dict[str, ChannelFactory]:
    """E-mail through SMTP, SMS and push through webhooks, configured by the settings."""
    from winback.act.channels.smtp import SMTPChannel
    from winback.act.channels.webhook import WebhookChannel

    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    timeout = settings.webhook_timeout_seconds
    return {
        "email": lambda: SMTPChannel(settings),
        "sms": lambda: WebhookChannel("sms", settings.sms_webhook_url, secret, timeout),
        "push": lambda: WebhookChannel("push", settings.push_webhook_url, secret, timeout),
    }


def next_due(engine: Engine) -> datetime | None:
    """When the next message falls due (a scheduled one's next attempt, or a claim's lease end)."""
    with engine.connect() as connection:
        scheduled = connection.execute(
            sa.select(sa.func.min(outbox.c.next_attempt_at)).where(outbox.c.status == "scheduled")
        ).scalar()
        leased = connection.execute(
            sa.select(sa.func.min(outbox.c.lease_until)).where(outbox.c.status == "claimed")
        ).scalar()
    found = [as_utc(t) for t in (scheduled, leased) if t is not None]
    return min(found) if found else None


class Worker:
    """One worker loop: claims batches and sends them, one message at a time.

    Parameters
    ----------
    engine
        The service's database (migrated).
    settings
        Lease, retries, templates and (through ``channels``' default) the SMTP and webhook settings.
    worker_id
        Names the claims (default: host, process id and ``index``).
    catalogue
        Frequency caps, quiet hours and the largest coupon (default: the packaged catalogue).
    channels
        Per channel name, a function making that channel (called once, when first needed).
    batch_size
        Messages claimed at a time.
    record_every
        Deliveries written per transaction (the most a killed worker can leave sent but unrecorded).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        worker_id: str | None = None,
        index: int = 0,
        catalogue: Catalogue | None = None,
        channels: Mapping[str, ChannelFactory] | None = None,
        batch_size: int = 50,
        record_every: int = 20,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        retry_seconds: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if batch_size < 1 or record_every < 1:
            raise BadInputError(f"batch_size {batch_size}, record_every {record_every}: expected 1 or more")
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{index}"
        self.catalogue = catalogue or load_catalogue()
        self.factories = dict(channels) if channels is not None else default_channels(settings)
        self.batch_size = batch_size
        self.record_every = record_every
        self.lease_seconds = lease_seconds or settings.outbox_lease_seconds
        self.max_attempts = max_attempts or settings.outbox_max_attempts
        self.retry_seconds = retry_seconds or settings.outbox_retry_seconds
        self.clock = clock
        self.renderer = Renderer(settings.templates_dir, Links.from_settings(settings))
        self._channels: dict[str, Channel] = {}
        self.stats = WorkerStats()

    # -- one message ---------------------------------------------------------------------------------

    def recheck(
        self, message: Message, facts: SendFacts, now: datetime
    ) -> tuple[str | None, datetime | None]:
        """Why the message must not go out now (cancel), or until when it waits (quiet hours)."""
        user, channel = message.user_id, message.channel
        bought = facts.purchases.get(user)
        if bought is not None and bought > message.created_at:
            return f"purchased at {bought.isoformat()}, after the message was scheduled", None
        left = facts.unsubscribed.get(user, {})
        unsubscribed = max((t for t in (left.get(channel), left.get("*")) if t is not None), default=None)
        profile = facts.profiles.get(user)
        offset = message.utc_offset_minutes
        if profile is not None:  # the customer's profile now: consent, address, time zone
            label = CHANNEL_LABELS.get(channel, channel)
            if profile.consent.get(channel) is False:
                return f"no consent for {label} any more", None
            given = profile.consent_at.get(channel)
            if unsubscribed is not None and not (
                profile.consent.get(channel) and given and given > unsubscribed
            ):
                return f"unsubscribed from {channel}", None
            if not profile.address(channel):
                return f"no {label} address any more", None
            if profile.knows_time_zone:
                offset = profile.offset_at(now, offset)
        elif unsubscribed is not None:
            return f"unsubscribed from {channel}", None
        quiet = self.catalogue.limits.quiet_hours
        now_s = now.timestamp()
        if quiet is not None and channel in quiet.channels:
            local = int((now_s + offset * 60) // 60) % 1440
            if quiet.contains(local):
                wait = (quiet.end_minute - local) % 1440
                until = now.replace(second=0, microsecond=0) + timedelta(minutes=wait)
                return f"deferred: quiet hours {quiet} for the customer", until
        coupon = message.payload.get("coupon") or None
        limits = self.catalogue.limits
        if coupon and float(coupon["percent"]) / 100 > limits.max_coupon + 1e-9:
            return f"coupon {coupon['percent']:g}% is over the maximum of {limits.max_coupon * 100:g}%", None
        cap = limits.frequency_cap_hours.get(cast(ChannelName, channel), 0.0) * 3600.0
        last = facts.last_sent.get((user, channel))
        if cap > 0 and last is not None and abs(now_s - last.timestamp()) < cap:
            ago = round((now_s - last.timestamp()) / 3600, 1)
            label = CHANNEL_LABELS.get(channel, channel)
            return f"{label} frequency cap: last message {ago:g} h ago (cap {cap / 3600:g} h)", None
        return None, None

    def backoff(self, attempts: int) -> float:
        delay = min(self.retry_seconds * 2 ** max(attempts - 1, 0), MAX_BACKOFF)
        return delay * (1 + 0.1 * random.random())

    def channel(self, name: str) -> Channel:
        found = self._channels.get(name)
        if found is None:
            factory = self.factories.get(name)
            if factory is None:
                raise PermanentError(f"channel {name!r}: no channel configured for it")
            try:
                found = self._channels[name] = factory()
            except BadInputError as error:  # not configured (yet): retried, the operator may fix it
                raise TransientError(str(error)) from None
        return found

    # -- a batch -------------------------------------------------------------------------------------

    def process(self, messages: Sequence[Message], stop: threading.Event | None = None) -> WorkerStats:
        """Re-check, send and record ``messages`` (claimed by this worker)."""
        stats = WorkerStats(claimed=len(messages))
        if not messages:
            return stats
        facts = send_facts(self.engine, {m.user_id for m in messages})
        lease_end = time.monotonic() + self.lease_seconds
        pending: list[Sent] = []
        ended: list[tuple[Message, str, str]] = []
        held: set[int] | None = None
        for position, message in enumerate(messages):
            if stop is not None and stop.is_set():
                stats.released += release(self.engine, messages[position:], self.worker_id)
                break
            if time.monotonic() > lease_end - self.lease_seconds / 2:  # renew before it runs out
                held = renew(
                    self.engine,
                    self.worker_id,
                    [m.id for m in messages[position:]],
                    lease_seconds=self.lease_seconds,
                )
                lease_end = time.monotonic() + self.lease_seconds
            if held is not None and message.id not in held:
                continue  # another worker took it over (this one stalled past its lease)
            now = self.clock()
            reason, until = self.recheck(message, facts, now)
            if until is not None:
                stats.deferred += defer(self.engine, message, self.worker_id, reason or "deferred", until)
                continue
            if reason is not None:
                ended.append((message, "cancelled", reason))
                stats.cancelled += 1
                continue
            if message.attempts > self.max_attempts:
                ended.append((message, "dead", f"claimed {message.attempts} times without a result"))
                stats.dead += 1
                continue
            profile = facts.profiles.get(message.user_id)
            address = profile.address(message.channel) if profile is not None else None
            if address and address != message.recipient:  # the customer's address changed since
                message = replace(message, recipient=address)
            try:
                rendered = self.renderer.render(message)
            except jinja2.TemplateError as error:
                ended.append((message, "failed", f"template {message.channel}/{message.template}: {error}"))
                stats.failed += 1
                continue
            try:
                receipt = self.channel(message.channel).send(message, rendered)
            except TransientError as error:
                if message.attempts >= self.max_attempts:
                    ended.append((message, "dead", f"after {message.attempts} attempts: {error}"))
                    stats.dead += 1
                else:
                    at = now + timedelta(seconds=self.backoff(message.attempts))
                    stats.retried += retry(self.engine, message, self.worker_id, str(error), at)
                continue
            except PermanentError as error:
                ended.append((message, "failed", str(error)))
                stats.failed += 1
                continue
            sent_at = self.clock()
            pending.append(Sent(message, receipt.provider_message_id, receipt.result, sent_at))
            facts.last_sent[(message.user_id, message.channel)] = sent_at
            stats.sent += 1
            if len(pending) >= self.record_every:
                record_sent(self.engine, pending, self.worker_id)
                pending = []
        record_sent(self.engine, pending, self.worker_id)
        finish(self.engine, ended, self.worker_id)
        return stats

    def run_batch(self, stop: threading.Event | None = None) -> WorkerStats:
        """Claim one batch and process it."""
        messages = claim(
            self.engine,
            self.worker_id,
            limit=self.batch_size,
            lease_seconds=self.lease_seconds,
            now=self.clock(),
        )
        stats = self.process(messages, stop)
        self.stats.add(stats)
        return stats

    def run(
        self, stop: threading.Event | None = None, *, once: bool = False, poll_interval: float = 1.0
    ) -> WorkerStats:
        """Send until ``stop`` is set; with ``once``, until nothing is due. Between batches with nothing
        due it sleeps until the next message falls due, at most ``poll_interval`` seconds."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                try:
                    batch = self.run_batch(stop)
                except sa.exc.OperationalError as error:  # the database went away for a moment
                    log.warning("worker %s: database error, retrying: %s", self.worker_id, error)
                    stop.wait(poll_interval)
                    continue
                if batch.claimed:
                    continue
                if once:
                    break
                due = next_due(self.engine)
                wait = poll_interval
                if due is not None:
                    wait = min(max((due - self.clock()).total_seconds(), 0.001), poll_interval)
                stop.wait(wait)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


def run_workers(
    engine: Engine,
    settings: Settings,
    *,
    concurrency: int = 1,
    once: bool = False,
    stop: threading.Event | None = None,
    poll_interval: float = 1.0,
    **options: Any,
) -> WorkerStats:
    """Run ``concurrency`` workers in threads of this process (each with its own channel connections)
    until ``stop`` is set (or, with ``once``, until nothing is due); their stats added up."""
    if concurrency < 1:
        raise BadInputError(f"--concurrency {concurrency}: expected 1 or more")
    stop = stop or threading.Event()
    catalogue = options.pop("catalogue", None) or load_catalogue()
    workers = [Worker(engine, settings, index=i, catalogue=catalogue, **options) for i in range(concurrency)]
    if concurrency == 1:
        return workers[0].run(stop, once=once, poll_interval=poll_interval)
    threads = [
        threading.Thread(
            target=w.run,
            args=(stop,),
            kwargs={"once": once, "poll_interval": poll_interval},
            name=f"winback-worker-{i}",
            daemon=True,
        )
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    total = WorkerStats()
    for worker in workers:
        total.add(worker.stats)
    return total

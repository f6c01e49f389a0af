"""The worker against a real SMTP server (aiosmtpd on loopback), on both databases: what an e-mail
holds, the send-time re-check, retries and the dead letter, a resend after a crash deduplicated on
Message-ID, and two workers that never send the same message."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from act_receivers import SMTPServer  # loaded by conftest.py

from winback.act.channels.smtp import message_id
from winback.act.outbox import Contact, claim, outbox_counts, schedule
from winback.act.worker import Worker
from winback.config import Settings
from winback.serve.db import coupons, deliveries, events, make_engine, outbox, upgrade

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # 12:00 UTC: outside quiet hours at UTC


def decisions(n: int, *, coupon: float = 0.0, channel: str = "email", prefix: str = "u") -> pd.DataFrame:
    kind = f"coupon{coupon:g}+recs" if coupon else "reminder+recs"
    return pd.DataFrame(
        {
            "cart_id": [f"c{i}" for i in range(n)],
            "user_id": [f"{prefix}{i}" for i in range(n)],
            "action": f"{kind}/{channel}/24h",
            "channel": channel,
            "send_at": pd.Timestamp(NOW - timedelta(minutes=1)),
            "coupon": coupon,
            "recommended": "p7 p8",
        }
    )


def people(n: int, prefix: str = "u", offset: int = 0) -> dict[str, Contact]:
    return {
        f"{prefix}{i}": Contact(
            email=f"{prefix}{i}@example.com",
            phone=f"+4917000{i:04d}",
            push_token=f"tok-{prefix}{i}",
            utc_offset_minutes=offset,
            name=f"Ann {i}",
        )
        for i in range(n)
    }


CART = [
    {"product_id": "p1", "name": "Blue <b>kettle</b>", "price": 39.5, "quantity": 1, "url": "https://s/p1"}
]
PRODUCTS = {"p7": {"name": "Mug & saucer", "price": 9.0}, "p8": {"name": "Tea"}}


def setup(settings: Settings, n: int, **kw: object) -> sa.Engine:
    engine = make_engine(settings.state_url)
    upgrade(engine)
    carts = {f"c{i}": CART for i in range(n)}
    schedule(
        engine, decisions(n, **kw), people(n), carts=carts, products=PRODUCTS, now=NOW - timedelta(hours=1)
    )  # type: ignore[arg-type]
    return engine


def worker(engine: sa.Engine, settings: Settings, name: str = "w1", **kw: object) -> Worker:
    return Worker(engine, settings, worker_id=name, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_an_email_carries_the_cart_recommendations_and_coupon(
    act_settings: Settings, smtp_server: SMTPServer
) -> None:
    engine = setup(act_settings, 3, coupon=10.0)
    stats = worker(engine, act_settings).run(once=True)
    assert stats.sent == 3
    inbox = smtp_server.inbox
    assert (inbox.distinct, inbox.duplicates) == (3, 0)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox).order_by(outbox.c.id)).mappings().all()
        sent = connection.execute(sa.select(deliveries)).mappings().all()
        codes = connection.execute(sa.select(coupons)).mappings().all()
        logged = connection.execute(sa.select(events).where(events.c.event_type == "message_sent")).all()
    engine.dispose()
    assert {r["status"] for r in rows} == {"sent"}
    assert len(sent) == 3
    assert {c["status"] for c in codes} == {"sent"}
    assert len(logged) == 3
    first = rows[0]
    mail = inbox.messages[message_id(first["idempotency_key"])]
    assert inbox.envelopes[mail["Message-ID"]] == ("shop@example.com", ["u0@example.com"])
    code = json.loads(first["payload"])["coupon"]["code"]
    assert mail["Subject"] == f"10% off the cart you left: {code}"
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert code in text
    assert code in html
    assert "Hello Ann 0" in text
    assert "Blue <b>kettle</b> x 1  39.50 USD" in text  # plain text as given
    assert "Blue &lt;b&gt;kettle&lt;/b&gt;" in html
    assert "<b>kettle" not in html
    assert "Mug &amp; saucer" in html
    assert "Tea" in text
    assert "before 2026-12-08" in text  # 7 days after the send time
    delivery = next(d for d in sent if d["message_id"] == first["id"])
    assert delivery["provider_message_id"].startswith("2.0.0 Ok: queued as Q")
    assert delivery["idempotency_key"] == first["idempotency_key"]


def test_send_time_recheck_cancels_or_defers(act_settings: Settings, smtp_server: SMTPServer) -> None:
    engine = setup(act_settings, 5, coupon=10.0)
    schedule(  # u5 lives at UTC+11: 23:00 local, quiet hours until 08:00 local (21:00 UTC)
        engine,
        decisions(1, prefix="far"),
        people(1, prefix="far", offset=11 * 60),
        carts={},
        now=NOW - timedelta(hours=1),
    )
    schedule(  # a second e-mail to u4 by another decision: the frequency cap stops it
        engine,
        decisions(5, coupon=10.0).iloc[4:].assign(cart_id="other", action="reminder/email/6h", coupon=0.0),
        people(5),
        carts={},
        now=NOW - timedelta(hours=1),
    )
    base = {
        "timestamp": NOW - timedelta(minutes=30),
        "source": "test",
        "received_at": NOW,
        "value": None,
        "properties": None,
    }
    with engine.begin() as connection:
        connection.execute(
            events.insert(),
            [
                {**base, "event_id": "buy", "event_type": "purchase", "user_id": "u0", "value": 10.0},
                {
                    **base,
                    "event_id": "old",
                    "event_type": "purchase",
                    "user_id": "u1",
                    "timestamp": NOW - timedelta(days=3),
                },  # before scheduling: no effect
                {
                    **base,
                    "event_id": "stop",
                    "event_type": "unsubscribed",
                    "user_id": "u2",
                    "properties": json.dumps({"channel": "email"}),
                },
                {
                    **base,
                    "event_id": "stop-sms",
                    "event_type": "unsubscribed",
                    "user_id": "u3",
                    "properties": json.dumps({"channel": "sms"}),
                },  # another channel: no effect
            ],
        )
    stats = worker(engine, act_settings).run(once=True)
    assert (stats.sent, stats.cancelled, stats.deferred) == (3, 3, 1)
    with engine.connect() as connection:
        rows = {(r["user_id"], r["cart_id"]): r for r in connection.execute(sa.select(outbox)).mappings()}
        void = connection.execute(
            sa.select(coupons.c.status).where(coupons.c.user_id.in_(["u0", "u2"]))
        ).scalars()
        assert set(void) == {"void"}
    engine.dispose()
    assert rows[("u0", "c0")]["status"] == "cancelled"
    assert rows[("u0", "c0")]["last_error"].startswith("purchased at")
    assert rows[("u2", "c2")]["last_error"] == "unsubscribed from email"
    assert {rows[(u, f"c{u[1]}")]["status"] for u in ("u1", "u3", "u4")} == {"sent"}
    assert rows[("u4", "other")]["status"] == "cancelled"
    assert "frequency cap" in rows[("u4", "other")]["last_error"]
    far = rows[("far0", "c0")]
    assert far["status"] == "scheduled"
    assert far["attempts"] == 0
    due = (
        far["next_attempt_at"].replace(tzinfo=UTC)
        if far["next_attempt_at"].tzinfo is None
        else far["next_attempt_at"]
    )
    assert due == datetime(2026, 12, 1, 21, 0, tzinfo=UTC)  # 08:00 at UTC+11
    assert smtp_server.inbox.distinct == 3


def test_provider_errors_are_retried_then_dead(act_settings: Settings, smtp_server: SMTPServer) -> None:
    engine = setup(act_settings, 3)
    inbox = smtp_server.inbox
    inbox.fail = ["451 4.3.0 try again later"]  # the first message
    clock = [NOW]
    w = Worker(
        engine,
        act_settings,
        worker_id="w",
        clock=lambda: clock[0],
        max_attempts=3,
        retry_seconds=60,
        batch_size=1,
    )
    w.run(once=True)
    with engine.connect() as connection:
        first = connection.execute(sa.select(outbox).where(outbox.c.user_id == "u0")).mappings().one()
    due = first["next_attempt_at"].replace(tzinfo=None) - NOW.replace(tzinfo=None)
    assert first["status"] == "scheduled"
    assert first["attempts"] == 1
    assert "451" in first["last_error"]
    assert timedelta(seconds=60) <= due <= timedelta(seconds=66)  # 60 s, plus up to 10% jitter
    assert outbox_counts(engine) == {"sent": 2, "scheduled": 1}
    for minutes in (2, 5):  # the second attempt fails again (backoff 120 s), the third goes through
        inbox.fail = ["451 4.3.0 try again later"] if minutes == 2 else []
        clock[0] = NOW + timedelta(minutes=minutes)
        w.run(once=True)
    counts = outbox_counts(engine)
    assert counts == {"sent": 3}
    with engine.connect() as connection:
        assert (
            connection.execute(
                sa.select(deliveries.c.attempts).where(deliveries.c.message_id == first["id"])
            ).scalar()
            == 3
        )
    # a provider that keeps failing: dead after the last attempt; a 5xx refusal fails at once
    schedule(engine, decisions(2, prefix="v"), people(2, prefix="v"), carts={}, now=NOW)
    inbox.fail = ["550 5.1.1 no such user"] + ["421 4.4.2 timeout"] * 3
    for minutes in (10, 20, 40):
        clock[0] = NOW + timedelta(minutes=minutes)
        w.run(once=True)
    with engine.connect() as connection:
        ended = dict(
            connection.execute(
                sa.select(outbox.c.status, outbox.c.last_error).where(outbox.c.status.in_(["dead", "failed"]))
            ).all()
        )
    engine.dispose()
    assert set(ended) == {"dead", "failed"}
    assert ended["failed"].startswith("SMTP RCPT") or ended["failed"].startswith("SMTP DATA")
    assert "550" in ended["failed"]
    assert ended["dead"].startswith("after 3 attempts")
    assert "421" in ended["dead"]


def test_a_resend_after_a_crash_has_the_same_message_id(
    act_settings: Settings, smtp_server: SMTPServer
) -> None:
    """A worker sends and dies before recording: after its lease, another sends again under the same
    Message-ID; the server sees a duplicate, deduplicates it, and the outbox records one delivery."""
    engine = setup(act_settings, 2)
    doomed = worker(engine, act_settings, "doomed", lease_seconds=30)
    for message in claim(engine, "doomed", limit=10, lease_seconds=30, now=NOW):
        doomed.channel("email").send(message, doomed.renderer.render(message))  # sent, never recorded
    doomed.close()
    assert worker(engine, act_settings, "early").run(once=True).claimed == 0  # still leased
    late = Worker(engine, act_settings, worker_id="late", clock=lambda: NOW + timedelta(seconds=31))
    assert late.run(once=True).sent == 2
    inbox = smtp_server.inbox
    assert (inbox.distinct, inbox.duplicates) == (2, 2)
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 2
    assert outbox_counts(engine) == {"sent": 2}
    engine.dispose()


def test_two_workers_never_send_the_same_message(act_settings: Settings, smtp_server: SMTPServer) -> None:
    engine = setup(act_settings, 300)
    engines = [make_engine(act_settings.state_url) for _ in range(2)]
    workers = [
        Worker(e, act_settings, worker_id=f"w{i}", batch_size=10, clock=lambda: NOW)
        for i, e in enumerate(engines)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    inbox = smtp_server.inbox
    assert (inbox.distinct, inbox.duplicates) == (300, 0)
    assert [w.stats.sent for w in workers] != [300, 0]
    assert sum(w.stats.sent for w in workers) == 300
    with engine.connect() as connection:
        by_worker = dict(
            connection.execute(
                sa.select(deliveries.c.worker, sa.func.count()).group_by(deliveries.c.worker)
            ).all()
        )
        attempts = set(connection.execute(sa.select(outbox.c.attempts)).scalars())
    assert sum(by_worker.values()) == 300
    assert attempts == {1}  # no message claimed twice
    for e in [engine, *engines]:
        e.dispose()


@pytest.mark.parametrize("template", ["reminder", "coupon"])
def test_a_broken_template_fails_the_message_and_says_why(
    act_settings: Settings, smtp_server: SMTPServer, tmp_path: object, template: str
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "templates" / "email"
    folder.mkdir(parents=True)
    (folder / f"{template}.subject.txt").write_text("Hi {{ customer.nickname }}")
    settings = act_settings.model_copy(update={"templates_dir": folder.parent})
    engine = setup(settings, 1, coupon=10.0 if template == "coupon" else 0.0)
    assert worker(engine, settings).run(once=True).failed == 1
    with engine.connect() as connection:
        error = connection.execute(sa.select(outbox.c.last_error)).scalar_one()
    engine.dispose()
    assert error.startswith(f"template email/{template}")
    assert "nickname" in error
    assert smtp_server.inbox.distinct == 0

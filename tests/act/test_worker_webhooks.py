"""SMS and push through signed webhooks to a local receiver, on both databases: the body and its
HMAC-SHA256 signature, retries on 5xx and timeouts, failure on 4xx, and a resend deduplicated on the
Idempotency-Key."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from act_receivers import WebhookReceiver  # loaded by conftest.py

from winback.act.channels.webhook import WebhookChannel, sign, verify
from winback.act.outbox import Contact, as_utc, claim, outbox_counts, schedule
from winback.act.worker import Worker
from winback.config import Settings
from winback.errors import BadInputError
from winback.serve.db import deliveries, make_engine, outbox, upgrade

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def setup(settings: Settings, channel: str, n: int = 2, coupon: float = 0.0) -> sa.Engine:
    engine = make_engine(settings.state_url)
    upgrade(engine)
    kind = f"coupon{coupon:g}" if coupon else "reminder+recs"
    table = pd.DataFrame(
        {"cart_id": [f"c{i}" for i in range(n)], "user_id": [f"u{i}" for i in range(n)],
         "action": f"{kind}/{channel}/24h", "channel": channel, "send_at": pd.Timestamp(NOW),
         "coupon": coupon, "recommended": "p7"}
    )  # fmt: skip
    people = {f"u{i}": Contact(phone=f"+4917000{i:04d}", push_token=f"tok-{i}") for i in range(n)}
    carts = {f"c{i}": [{"product_id": "p1", "price": 5.0, "quantity": 2}] for i in range(n)}
    schedule(engine, table, people, carts=carts, now=NOW - timedelta(hours=1))
    return engine


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"id":"wb-1"}'
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", body) == expected
    assert verify(b"s3cret", body, expected)
    assert not verify(b"s3cret", body + b" ", expected)
    assert not verify(b"other", body, expected)
    assert not verify(b"s3cret", body, None)
    with pytest.raises(BadInputError, match="WINBACK_SMS_WEBHOOK_URL"):
        WebhookChannel("sms", None, "s3cret")
    with pytest.raises(BadInputError, match="WINBACK_WEBHOOK_SECRET"):
        WebhookChannel("push", "http://127.0.0.1:1/push", None)


@pytest.mark.parametrize("channel", ["sms", "push"])
def test_webhooks_are_signed_and_carry_the_message(
    act_settings: Settings, webhook_receiver: WebhookReceiver, channel: str
) -> None:
    engine = setup(act_settings, channel, coupon=10.0)
    stats = Worker(engine, act_settings, clock=lambda: NOW).run(once=True)
    assert stats.sent == 2
    assert (webhook_receiver.distinct, webhook_receiver.duplicates, webhook_receiver.bad_signatures) == (
        2,
        0,
        0,
    )
    with engine.connect() as connection:
        row = connection.execute(sa.select(outbox).where(outbox.c.user_id == "u0")).mappings().one()
        delivery = (
            connection.execute(sa.select(deliveries).where(deliveries.c.message_id == row["id"]))
            .mappings()
            .one()
        )
    engine.dispose()
    key = row["idempotency_key"]
    body = webhook_receiver.bodies[key]
    code = json.loads(row["payload"])["coupon"]["code"]
    assert webhook_receiver.paths[key] == f"/{channel}"
    assert body["id"] == key
    assert body["to"] == ("+49170000000" if channel == "sms" else "tok-0")
    assert body["coupon"] == code
    assert code in body["text"]
    assert body["title"] == ("10% off your cart" if channel == "push" else None)
    assert delivery["provider_message_id"] == f"p-{key[-8:]}"
    assert delivery["result"] == "200"


def test_5xx_and_timeouts_are_retried_4xx_fails(
    act_settings: Settings, webhook_receiver: WebhookReceiver
) -> None:
    settings = act_settings.model_copy(update={"webhook_timeout_seconds": 0.3})
    engine = setup(settings, "sms", n=4)
    phone = {f"u{i}": f"+4917000{i:04d}" for i in range(4)}
    webhook_receiver.fail_to = {phone["u0"]: [503, 502], phone["u3"]: [400]}
    webhook_receiver.delay_to = {phone["u1"]: [1.0]}  # its first call outlasts the timeout
    clock = [NOW]
    worker = Worker(engine, settings, clock=lambda: clock[0], retry_seconds=10, max_attempts=2)
    worker.run(once=True)
    with engine.connect() as connection:
        rows = {r["user_id"]: r for r in connection.execute(sa.select(outbox)).mappings()}
    assert rows["u0"]["status"] == "scheduled"
    assert "HTTP 503" in rows["u0"]["last_error"]
    assert rows["u1"]["status"] == "scheduled"
    assert "timed out" in rows["u1"]["last_error"] or "Timeout" in rows["u1"]["last_error"]
    assert rows["u2"]["status"] == "sent"
    assert rows["u3"]["status"] == "failed"
    assert "HTTP 400" in rows["u3"]["last_error"]
    due = as_utc(rows["u0"]["next_attempt_at"]) - NOW
    assert timedelta(seconds=10) <= due <= timedelta(seconds=11)
    deadline = time.monotonic() + 5
    while webhook_receiver.distinct < 2 and time.monotonic() < deadline:  # u1's slow first call lands
        time.sleep(0.01)
    clock[0] = NOW + timedelta(seconds=30)
    worker.run(once=True)  # u0 fails again: dead after its second attempt; u1 goes through
    with engine.connect() as connection:
        ended = dict(connection.execute(sa.select(outbox.c.user_id, outbox.c.status)).all())
        last = connection.execute(sa.select(outbox.c.last_error).where(outbox.c.user_id == "u0")).scalar_one()
    engine.dispose()
    assert ended == {"u0": "dead", "u1": "sent", "u2": "sent", "u3": "failed"}
    assert last.startswith("after 2 attempts")
    assert "HTTP 502" in last
    # the timed-out call had arrived after all (slowly): its retry was answered as a repeat of its key
    assert (webhook_receiver.distinct, webhook_receiver.duplicates) == (2, 1)


def test_a_resend_carries_the_same_idempotency_key(
    act_settings: Settings, webhook_receiver: WebhookReceiver
) -> None:
    engine = setup(act_settings, "push")
    doomed = Worker(engine, act_settings, worker_id="doomed")
    for message in claim(engine, "doomed", limit=10, lease_seconds=30, now=NOW):
        doomed.channel("push").send(message, doomed.renderer.render(message))  # sent, never recorded
    doomed.close()
    assert Worker(engine, act_settings, clock=lambda: NOW + timedelta(seconds=31)).run(once=True).sent == 2
    assert (webhook_receiver.distinct, webhook_receiver.duplicates) == (2, 2)
    assert outbox_counts(engine) == {"sent": 2}
    engine.dispose()

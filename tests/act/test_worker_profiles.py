"""The worker's send-time re-check reads the customers' profiles as they are now (real SMTP server, both
databases): consent withdrawn or no address any more cancels, an unsubscribe cancels unless consent was
given again after it, a changed address is sent to, and quiet hours follow the profile's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from act_receivers import SMTPServer  # loaded by conftest.py

from winback.act.outbox import Contact, schedule, write_transaction
from winback.act.worker import Worker
from winback.config import Settings
from winback.serve.db import events, make_engine, outbox, upgrade
from winback.serve.profiles import ProfileUpdate, upsert_profiles

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # 12:00 UTC; 21:00 in Tokyo (quiet hours there)
USERS = ("keeps", "withdrew", "unsubscribed", "resubscribed", "moved", "no_address", "tokyo", "no_profile")


def test_the_recheck_reads_the_profile_as_it_is_now(act_settings: Settings, smtp_server: SMTPServer) -> None:
    engine = make_engine(act_settings.state_url)
    upgrade(engine)
    plan = pd.DataFrame(
        {"cart_id": [f"c-{u}" for u in USERS], "user_id": list(USERS), "action": "reminder/email/24h",
         "channel": "email", "send_at": pd.Timestamp(NOW - timedelta(minutes=1)), "coupon": 0.0,
         "recommended": ""}
    )  # fmt: skip
    contacts = {u: Contact(email=f"{u}@old.example.com") for u in USERS}
    schedule(engine, plan, contacts, carts={}, now=NOW - timedelta(hours=2))
    given = NOW - timedelta(days=10)
    updates = [
        ProfileUpdate(u, {"email": f"{u}@old.example.com"}, {"email": (True, given)})
        for u in USERS if u != "no_profile"
    ]  # fmt: skip
    updates += [
        ProfileUpdate("withdrew", {}, {"email": (False, NOW - timedelta(hours=1))}),
        ProfileUpdate("resubscribed", {}, {"email": (True, NOW - timedelta(minutes=30))}),
        ProfileUpdate("moved", {"email": "moved@new.example.com"}),
        ProfileUpdate("no_address", {"email": None}),
        ProfileUpdate("tokyo", {"time_zone": "Asia/Tokyo"}),
    ]
    with write_transaction(engine) as connection:
        upsert_profiles(connection, updates)
        connection.execute(
            events.insert(),
            [{"event_id": f"unsub-{u}", "event_type": "unsubscribed", "user_id": u, "source": "test",
              "timestamp": NOW - timedelta(hours=1), "received_at": NOW, "properties": '{"channel": "email"}'}
             for u in ("unsubscribed", "resubscribed")],
        )  # fmt: skip
    stats = Worker(engine, act_settings, worker_id="w", clock=lambda: NOW).run(once=True)
    with engine.connect() as connection:
        found = {r.user_id: r for r in connection.execute(sa.select(outbox))}
    assert {u: r.status for u, r in found.items()} == {
        "keeps": "sent", "withdrew": "cancelled", "unsubscribed": "cancelled", "resubscribed": "sent",
        "moved": "sent", "no_address": "cancelled", "tokyo": "scheduled", "no_profile": "sent",
    }  # fmt: skip
    assert found["withdrew"].last_error == "no consent for e-mail any more"
    assert found["unsubscribed"].last_error == "unsubscribed from email"
    assert found["no_address"].last_error == "no e-mail address any more"
    assert "quiet hours" in found["tokyo"].last_error  # deferred to 08:00 in Tokyo
    assert found["tokyo"].next_attempt_at.replace(tzinfo=UTC) == datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
    recipients = sorted(r for _, (_, to) in smtp_server.inbox.envelopes.items() for r in to)
    assert recipients == sorted(
        ["keeps@old.example.com", "resubscribed@old.example.com", "moved@new.example.com",
         "no_profile@old.example.com"]
    )  # fmt: skip
    assert stats.sent == 4
    assert stats.cancelled == 3
    assert stats.deferred == 1

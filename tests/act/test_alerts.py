"""Staff alerts: which carts and customers raise one, the Slack-compatible body, and delivery to a real
local HTTP receiver (signed, one key per subject, failures reported instead of raised)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tests.act.receivers import WebhookReceiver

from winback.act.alerts import Alert, find_alerts, send_alerts
from winback.errors import BadInputError

SECRET = "alert-secret"

CARTS = pd.DataFrame(
    {"cart_id": ["c1", "c2"], "user_id": ["u1", "u2"], "cart_value": [900.0, 40.0],
     "abandon_probability": [0.8, 0.9], "reasons": ["idle 3 h; 4 items", ""]}
)  # fmt: skip
CUSTOMERS = pd.DataFrame(
    {"user_id": ["u3", "u4", "u5"], "clv": [5_000.0, 5_000.0, 50.0], "churn_probability": [0.9, 0.2, 0.95],
     "reasons": ["no order for 80 days", "", ""]}
)  # fmt: skip


def test_big_carts_and_valuable_customers_at_risk_raise_alerts_most_at_stake_first() -> None:
    alerts = find_alerts(CARTS, CUSTOMERS, cart_value=500, customer_value=1_000, churn_probability=0.7)
    assert [(a.kind, a.user_id) for a in alerts] == [("churn_risk", "u3"), ("abandoned_cart", "u1")]
    cart = alerts[1]
    assert cart.text() == (
        "Big cart abandoned: 900.00 by customer u1 (cart c1); chance it stays abandoned: 80%. "
        "Why: idle 3 h; 4 items"
    )
    body = cart.payload()
    assert body["text"] == cart.text()
    assert body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert body["winback"]["cart_id"] == "c1"
    assert body["winback"]["id"] == cart.key
    again = Alert("abandoned_cart", "u1", "c1", 1.0, 0.1, "")
    assert again.key == cart.key  # one key per subject: a repeat is recognisable
    assert find_alerts(CARTS.iloc[0:0], CUSTOMERS.iloc[0:0], cart_value=0, customer_value=0,
                       churn_probability=0) == []  # fmt: skip


def test_alerts_are_posted_signed_and_failures_reported() -> None:
    alerts = find_alerts(CARTS, CUSTOMERS, cart_value=500, customer_value=1_000, churn_probability=0.7)
    with WebhookReceiver(SECRET) as receiver:
        report = send_alerts(alerts, receiver.url("/hooks/staff"), SECRET, timeout=5)
        assert (report.sent, report.failed) == (2, 0)
        assert receiver.distinct == 2
        assert receiver.bad_signatures == 0
        texts = {body["text"] for body in receiver.bodies.values()}
        assert any("Valuable customer at risk: u3" in t for t in texts)
        receiver.fail = [500]
        failed = send_alerts(alerts[:1], receiver.url("/hooks/staff"), SECRET, timeout=5)
        assert (failed.sent, failed.failed) == (0, 1)
        assert "500" in (failed.first_error or "")
    unreachable = send_alerts(alerts[:1], "http://127.0.0.1:9/none", None, timeout=1)
    assert unreachable.failed == 1
    with pytest.raises(BadInputError, match="WINBACK_ALERT_WEBHOOK_URL"):
        send_alerts(alerts, "ftp://example.com/x")


def test_the_detector_alerts_staff_of_big_carts_at_their_threshold(database_url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from winback.act.outbox import write_transaction
    from winback.config import load_settings
    from winback.decide.holdout import in_holdout
    from winback.events.model import Event
    from winback.serve.db import make_engine, upgrade
    from winback.serve.detect import Detector
    from winback.serve.ingest import store_events
    from winback.serve.profiles import ProfileUpdate, upsert_profiles

    candidates = [f"a{i}" for i in range(100)]
    held = next(u for u, h in zip(candidates, in_holdout(candidates), strict=True) if h)
    big, small = [u for u, h in zip(candidates, in_holdout(candidates), strict=True) if not h][:2]
    engine = make_engine(database_url)
    upgrade(engine)
    at = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    store_events(engine, [Event.model_validate(
        {"event_id": f"e-{u}", "event_type": "add_to_cart", "user_id": u, "session_id": f"s-{u}",
         "product_id": "p1", "price": price, "quantity": 2, "timestamp": at.isoformat()})
        for u, price in ((big, 400.0), (small, 20.0), (held, 400.0))])  # fmt: skip
    with write_transaction(engine) as connection:
        upsert_profiles(connection, [ProfileUpdate(u, {"email": f"{u}@example.com"}, {"email": (True, at)})
                                     for u in (big, small, held)])  # fmt: skip
    with WebhookReceiver(SECRET) as receiver:
        settings = load_settings(
            home=tmp_path / "home", database_url=database_url, alert_webhook_url=receiver.url("/staff"),
            webhook_secret=SECRET,
        )  # fmt: skip
        detector = Detector(
            engine, settings, recommend=False, outcomes_every=0, clock=lambda: at + timedelta(hours=1)
        )
        assert detector.tick() == (3, 3)
        detector.close()  # waits for the alerts posted in the background
        assert receiver.distinct == 1  # the big cart; not the small one, not the holdout's
        (body,) = receiver.bodies.values()
    assert (
        body["text"]
        == f"Big cart abandoned: 800.00 by customer {big} (cart s-{big}). Why: idle 30 min; 2 items"
    )
    assert body["winback"]["probability"] is None
    engine.dispose()

"""Learning from outcomes, on both databases: the detector records each decision's outcome once its window
has closed (recovered, revenue, discount, margin, and the revenue attributed to its message), and
`winback sync` carries the service's events and decisions into the home, idempotently."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from tests.serve.helpers import BASE, Clock, engine_of

from winback.act.outbox import Sent, claim, record_sent
from winback.config import Settings
from winback.decide.holdout import in_holdout
from winback.decide.log import DecisionLog
from winback.events.store import EventStore
from winback.serve.db import decisions
from winback.serve.detect import Detector
from winback.serve.sync import sync_home


def shop(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> tuple[Detector, Clock, dict[str, str]]:
    """Three customers abandon a cart at BASE: one messaged who buys two days later (after the e-mail
    went out), one in the holdout who buys too, one messaged who does not buy."""
    candidates = [f"k{i}" for i in range(300)]
    held = [u for u, h in zip(candidates, in_holdout(candidates), strict=True) if h]
    free = [u for u, h in zip(candidates, in_holdout(candidates), strict=True) if not h]
    who = {"buyer": free[0], "control": held[0], "idle": free[1]}
    for user in who.values():
        body = {"email": f"{user}@example.com", "consent": {"email": True},
                "consent_at": (BASE - timedelta(days=9)).isoformat()}  # fmt: skip
        assert client.put(f"/v1/customers/{user}", json=body, headers=auth).status_code == 200
    carts = [
        {"event_id": f"add-{u}", "event_type": "add_to_cart", "user_id": u, "session_id": f"s-{u}",
         "product_id": "p1", "brand": "Acme", "price": 40.0, "timestamp": BASE.isoformat()}
        for u in who.values()
    ]  # fmt: skip
    assert client.post("/v1/events", json=carts, headers=auth).json()["stored"] == 3
    clock = Clock(BASE + timedelta(minutes=31))
    detector = Detector(engine_of(client), settings, clock=clock, recommend=False, outcomes_every=0)
    assert detector.tick() == (3, 3)
    engine = engine_of(client)
    due = claim(engine, "w", now=BASE + timedelta(hours=11))
    assert len(due) == 2  # the buyer's and the idle customer's reminders, 10 h after the cart
    record_sent(engine, [Sent(m, "250 ok", "250", m.send_at) for m in due], "w")
    orders = [
        {"event_id": f"buy-{u}", "event_type": "purchase", "user_id": u, "session_id": f"s2-{u}",
         "product_id": "p1", "price": 40.0, "quantity": 1, "order_id": f"o-{u}",
         "timestamp": (BASE + timedelta(days=2)).isoformat()}
        for u in (who["buyer"], who["control"])
    ]  # fmt: skip
    assert client.post("/v1/events", json=orders, headers=auth).json()["stored"] == 2
    return detector, clock, who


def outcomes(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        return {r["user_id"]: dict(r) for r in connection.execute(sa.select(decisions)).mappings()}


def test_outcomes_land_once_the_window_has_closed(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    detector, clock, who = shop(client, auth, service_settings)
    clock.now = BASE + timedelta(days=6)
    assert detector.record_outcomes() == 0  # the 7-day windows are still open
    clock.now = BASE + timedelta(days=8)
    assert detector.record_outcomes() == 3
    found = outcomes(engine_of(client))
    buyer, control, idle = found[who["buyer"]], found[who["control"]], found[who["idle"]]
    assert buyer["recovered"]
    assert buyer["revenue"] == 40.0
    assert buyer["margin"] == 12.0  # the catalogue's 30%
    assert buyer["attributed_revenue"] == 40.0  # the order followed its e-mail
    assert control["holdout"]
    assert control["recovered"]  # the holdout is measured the same way
    assert control["attributed_revenue"] is None  # no message to attribute to
    assert not idle["recovered"]
    assert idle["attributed_revenue"] == 0.0
    assert detector.record_outcomes() == 0  # recorded once
    detector.close()


def test_sync_brings_events_and_decisions_into_the_home_once(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    detector, clock, who = shop(client, auth, service_settings)
    engine = engine_of(client)
    first = sync_home(engine, service_settings)
    # 3 adds, 2 message_sent events, 2 orders; 3 decisions, no outcome yet
    assert (first.events_read, first.events_stored, first.decisions_logged, first.outcomes_recorded) == (
        7,
        7,
        3,
        0,
    )
    again = sync_home(engine, service_settings)
    assert (again.events_read, again.events_stored, again.decisions_logged) == (0, 0, 0)

    clock.now = BASE + timedelta(days=8)
    detector.record_outcomes()
    detector.close()
    late = {"event_id": "late-view", "event_type": "view", "user_id": who["idle"],
            "timestamp": (BASE + timedelta(days=8)).isoformat()}  # fmt: skip
    client.post("/v1/events", json=late, headers=auth)
    third = sync_home(engine, service_settings)
    assert (third.events_read, third.events_stored, third.decisions_logged, third.outcomes_recorded) == (
        1,
        1,
        0,
        3,
    )
    full = sync_home(engine, service_settings, full=True)  # everything read again, nothing stored twice
    assert (full.events_read, full.events_stored, full.decisions_logged) == (8, 0, 0)

    with EventStore(service_settings, read_only=True) as store:
        assert store.count() == 8
        kinds = dict(store.con.execute("SELECT event_type, count(*) FROM events GROUP BY 1").fetchall())
        brands = store.con.execute("SELECT DISTINCT brand FROM events WHERE event_type = 'add_to_cart'")
        assert brands.fetchall() == [("Acme",)]  # what the shop sent over HTTP reaches the home whole
    assert kinds == {"add_to_cart": 3, "message_sent": 2, "purchase": 2, "view": 1}
    with DecisionLog(service_settings, read_only=True) as log:
        logged = log.read().set_index("user_id")
    assert set(logged.index) == set(who.values())
    assert logged.loc[who["buyer"], "recovered"]
    assert logged.loc[who["buyer"], "revenue"] == 40.0
    assert logged.loc[who["control"], "holdout"]
    assert set(logged["policy"]) == {"static-10h"}
    with engine.connect() as connection:  # the same decision ids in both places
        ids = set(connection.execute(sa.select(decisions.c.decision_id)).scalars())
    assert set(logged["decision_id"]) == ids


def test_outcomes_are_recorded_when_nobody_ordered(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    """Regression: with no order since the decisions the orders frame is empty, and its untyped columns
    (object ids, another time unit) made pandas 3's merge_asof raise, which stopped the detector."""
    users = ["n1", "n2"]
    for user in users:
        body = {"email": f"{user}@example.com", "consent": {"email": True},
                "consent_at": (BASE - timedelta(days=9)).isoformat()}  # fmt: skip
        assert client.put(f"/v1/customers/{user}", json=body, headers=auth).status_code == 200
    carts = [
        {"event_id": f"add-{u}", "event_type": "add_to_cart", "user_id": u, "session_id": f"s-{u}",
         "product_id": "p1", "price": 25.0, "timestamp": BASE.isoformat()}
        for u in users
    ]  # fmt: skip
    assert client.post("/v1/events", json=carts, headers=auth).json()["stored"] == 2
    clock = Clock(BASE + timedelta(minutes=31))
    # a window of half a day (`winback detect --window-days 0.5`) instead of the settings' 7 days
    detector = Detector(
        engine_of(client), service_settings, clock=clock, recommend=False, outcomes_every=0, window_days=0.5
    )
    assert detector.tick() == (2, 2)
    clock.now = BASE + timedelta(hours=11)
    assert detector.record_outcomes() == 0  # the windows are still open
    clock.now = BASE + timedelta(hours=13)
    assert detector.record_outcomes() == 2
    found = outcomes(engine_of(client))
    assert [found[u]["recovered"] for u in users] == [False, False]
    assert [found[u]["revenue"] for u in users] == [0.0, 0.0]
    detector.close()

"""The abandonment detector on both databases, fed through the real app: a cart idle past its threshold
is decided once (holdout, consent and the policy as `winback plan` applies them), its message scheduled;
a purchase of its items cancels the message at once; state survives a restart; two detectors never
decide a cart twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from tests.serve.helpers import BASE, Clock, engine_of

from winback.config import Settings
from winback.decide.holdout import in_holdout
from winback.serve.carts import IdleThresholds
from winback.serve.db import carts, coupons, decisions, make_engine, outbox
from winback.serve.detect import Detector


#: A Monday morning: static-10h's message (10 h after the last activity) falls outside quiet hours.
def users(n: int, *, held: bool) -> list[str]:
    """``n`` customer ids in (or out of) the default 10% holdout."""
    candidates = [f"cust{i}" for i in range(400)]
    return [u for u, h in zip(candidates, in_holdout(candidates), strict=True) if h == held][:n]


def add(
    user: str, cart: str | None, product: str, at: datetime, price: float = 20.0, **extra: Any
) -> dict[str, Any]:
    event = {"event_id": f"{user}-{product}-{at.timestamp()}", "event_type": "add_to_cart", "user_id": user,
             "product_id": product, "price": price, "timestamp": at.isoformat(), **extra}  # fmt: skip
    if cart is not None:
        event["session_id"] = cart
    return event


def post(client: TestClient, auth: dict[str, str], body: list[dict[str, Any]]) -> None:
    reply = client.post("/v1/events", json=body, headers=auth)
    assert reply.status_code == 200, reply.text


def consent(client: TestClient, auth: dict[str, str], user: str, **channels: bool) -> None:
    body = {"email": f"{user}@example.com", "phone": "+4915112345678", "time_zone": "Europe/Berlin",
            "consent": channels or {"email": True},
            "consent_at": (BASE - timedelta(days=30)).isoformat()}  # fmt: skip
    reply = client.put(f"/v1/customers/{user}", json=body, headers=auth)
    assert reply.status_code == 200, reply.text


@pytest.fixture
def clock() -> Clock:
    return Clock(BASE)


@pytest.fixture
def detector(client: TestClient, service_settings: Settings, clock: Clock) -> Iterator[Detector]:
    found = Detector(engine_of(client), service_settings, clock=clock, recommend=False, outcomes_every=0)
    yield found
    found.close()


def rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(sa.select(table)).mappings()]


def test_an_idle_cart_is_decided_once_at_its_threshold(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(
        client, auth, [add(user, "s1", "p1", BASE - timedelta(minutes=10)), add(user, "s1", "p2", BASE, 5.0)]
    )
    post(client, auth, [{"event_id": "v1", "event_type": "view", "user_id": user, "session_id": "s1",
                         "product_id": "p3",
                         "timestamp": (BASE + timedelta(minutes=5)).isoformat()}])  # fmt: skip
    assert detector.tick() == (3, 0)  # folded in; not idle yet
    (cart,) = rows(engine, carts)
    assert (cart["cart_id"], cart["user_key"], cart["status"], cart["n_items"], cart["value"]) == (
        "s1",
        user,
        "open",
        2,
        25.0,
    )
    due = BASE + timedelta(minutes=35)  # the view kept the cart alive: 30 minutes after it
    assert detector.next_due() == due

    clock.now = due - timedelta(seconds=1)
    assert detector.tick() == (0, 0)
    clock.now = due
    assert detector.tick() == (0, 1)
    assert detector.tick() == (0, 0)  # decided once
    (decision,) = rows(engine, decisions)
    assert decision["cart_id"] == "s1"
    assert decision["action"] == "reminder/email/10h"
    assert decision["policy"] == "static-10h"
    assert decision["propensity"] == 1.0
    assert not decision["holdout"]
    context = json.loads(decision["context"])
    assert context["consent"] == ["email"]
    assert context["n_items"] == 2
    assert context["value"] == 25.0
    assert context["utc_offset_minutes"] == 60  # Europe/Berlin in November
    (message,) = rows(engine, outbox)
    assert message["recipient"] == f"{user}@example.com"
    assert message["cart_id"] == "s1"
    assert message["idempotency_key"] == decision["message_key"]
    sent_at = message["send_at"].replace(tzinfo=UTC)
    assert sent_at == BASE + timedelta(minutes=5, hours=10)  # 10 h after the last activity
    assert [i["product_id"] for i in json.loads(message["payload"])["cart"]["items"]] == ["p1", "p2"]
    assert rows(engine, carts)[0]["status"] == "decided"
    assert detector.stats.decided == 1
    assert detector.stats.actions == {"reminder/email/10h": 1}


def test_holdout_and_unknown_consent_get_nothing(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    (held,) = users(1, held=True)
    free, silent = users(2, held=False)
    for user in (held, free):
        consent(client, auth, user, email=True, sms=True, push=True)
    consent(client, auth, silent, email=False)
    post(client, auth, [add(u, f"s-{u}", "p1", BASE) for u in (held, free, silent)])
    clock.now = BASE + timedelta(minutes=31)
    detector.tick()
    found = {d["user_id"]: d for d in rows(engine, decisions)}
    assert found[held]["action"] == "nothing"
    assert found[held]["holdout"]
    assert "holdout" in json.loads(found[held]["reasons"])[0]
    assert found[free]["action"] == "reminder/email/10h"
    assert not found[free]["holdout"]
    assert found[silent]["action"] == "nothing"  # consent withdrawn
    assert {m["user_id"] for m in rows(engine, outbox)} == {free}  # the holdout on no channel


def test_a_purchase_of_its_items_cancels_the_message_at_once(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    coupon_detector = Detector(
        engine, detector.settings, policy="coupon-everyone", clock=clock, recommend=False, outcomes_every=0
    )
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, "s1", "p1", BASE), add(user, "s1", "p2", BASE)])
    clock.now = BASE + timedelta(minutes=31)
    coupon_detector.tick()
    (message,) = rows(engine, outbox)
    assert message["status"] == "scheduled"
    assert message["template"] == "coupon"
    assert rows(engine, coupons)[0]["status"] == "issued"
    # two hours later, in another session, the customer buys p2
    later = BASE + timedelta(hours=2)
    post(client, auth, [{"event_id": "o1", "event_type": "purchase", "user_id": user, "session_id": "s9",
                         "product_id": "p2", "price": 20.0, "quantity": 1, "order_id": "o1",
                         "timestamp": later.isoformat()}])  # fmt: skip
    clock.now = later
    coupon_detector.tick()
    (message,) = rows(engine, outbox)
    assert message["status"] == "cancelled"
    assert "purchased" in message["last_error"]
    assert rows(engine, coupons)[0]["status"] == "void"
    assert coupon_detector.stats.cancelled == 1
    coupon_detector.close()


def test_a_purchase_before_the_threshold_ends_the_cart(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, "s1", "p1", BASE),
                        {"event_id": "o1", "event_type": "purchase", "user_id": user, "session_id": "s1",
                         "product_id": "p1", "price": 20.0,
                         "timestamp": (BASE + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    clock.now = BASE + timedelta(hours=1)
    assert detector.tick() == (2, 0)
    assert rows(engine, carts)[0]["status"] == "purchased"
    assert rows(engine, decisions) == []


def test_sessions_without_ids_are_numbered_like_the_batch_pipeline(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    (user,) = users(1, held=False)
    post(client, auth, [add(user, None, "p1", BASE), add(user, None, "p2", BASE + timedelta(minutes=20)),
                        add(user, None, "p3", BASE + timedelta(minutes=90))])  # fmt: skip
    clock.now = BASE + timedelta(minutes=91)
    detector.tick()
    found = {c["cart_id"]: c for c in rows(engine, carts)}
    assert set(found) == {f"{user}#1", f"{user}#2"}
    assert found[f"{user}#1"]["n_items"] == 2
    assert found[f"{user}#2"]["n_items"] == 1
    assert {d["cart_id"] for d in rows(engine, decisions)} == {f"{user}#1"}  # #2 is not idle yet


def test_state_survives_a_restart(
    client: TestClient, auth: dict[str, str], service_settings: Settings, clock: Clock
) -> None:
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, "s1", "p1", BASE)])
    first = Detector(engine, service_settings, clock=clock, recommend=False, outcomes_every=0)
    assert first.catch_up() == 1
    first.close()
    post(client, auth, [add(user, "s1", "p2", BASE + timedelta(minutes=1))])
    restarted = make_engine(service_settings.state_url)
    second = Detector(restarted, service_settings, clock=clock, recommend=False, outcomes_every=0)
    assert second.catch_up() == 1  # only the new event: the first is not folded in twice
    (cart,) = rows(restarted, carts)
    assert cart["n_items"] == 2
    clock.now = BASE + timedelta(minutes=31)
    assert second.tick() == (0, 1)
    second.close()
    restarted.dispose()


def test_two_detectors_never_decide_a_cart_twice(
    client: TestClient, auth: dict[str, str], service_settings: Settings, clock: Clock
) -> None:
    engine = engine_of(client)
    people = users(60, held=False)
    for user in people:
        consent(client, auth, user)
    post(
        client,
        auth,
        [add(u, f"s-{u}", f"p{i % 7}", BASE + timedelta(seconds=i)) for i, u in enumerate(people)],
    )
    clock.now = BASE + timedelta(minutes=40)
    detectors = [
        Detector(make_engine(service_settings.state_url), service_settings, clock=clock, recommend=False,
                 outcomes_every=0, batch_carts=4, batch_events=7, detector_id=f"d{i}")
        for i in range(2)
    ]  # fmt: skip
    decided: list[list[str]] = [[], []]

    def run(i: int) -> None:
        for _ in range(40):
            detectors[i].catch_up()
            decided[i] += [d.cart_id for d in detectors[i].decide_due()]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both = decided[0] + decided[1]
    assert sorted(both) == sorted(f"s-{u}" for u in people)  # every cart once, by one of them
    assert len(rows(engine, decisions)) == 60
    assert len(rows(engine, outbox)) == 60
    assert sum(d.stats.events for d in detectors) == 60  # each event folded in once
    for d in detectors:
        d.close()
        d.engine.dispose()


def test_learned_thresholds_by_kind_of_cart(tmp_path: Any) -> None:
    table = tmp_path / "thresholds.csv"
    table.write_text(
        "kind,value_band,customer,value_from,value_to,threshold_minutes\n"
        "low value new,low,new,,50,20\nhigh value new,high,new,50,,90\nall,all,all,,,45\n"
    )
    found = IdleThresholds.load(table, default_minutes=30)
    assert (found.minutes(10, False), found.minutes(80, False), found.minutes(10, True)) == (20, 90, 45)
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,threshold_minutes\nnew,10\n")
    with pytest.raises(Exception, match="missing columns"):
        IdleThresholds.load(bad)


def test_a_prepared_decision_is_dropped_when_the_cart_changes(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, "s1", "p1", BASE)])
    due = BASE + timedelta(minutes=30)
    clock.now = due - timedelta(seconds=1)
    assert detector.tick() == (1, 0)  # folded in, and its decision prepared as of its due time
    assert set(detector._prepared) == {"s1"}
    # the customer comes back a moment before the threshold: the prepared decision no longer holds
    post(client, auth, [add(user, "s1", "p2", due - timedelta(milliseconds=500))])
    detector.catch_up()
    clock.now = due
    assert detector.store_prepared() == []
    assert rows(engine, decisions) == []
    clock.now = due + timedelta(minutes=30)  # 30 minutes after the second add
    assert detector.tick() == (0, 1)
    (decision,) = rows(engine, decisions)
    assert json.loads(decision["context"])["n_items"] == 2


def prepared_cart(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock, session: str | None
) -> tuple[sa.Engine, str, datetime]:
    """A consenting customer's one-item cart (of ``session``, or a session by the gap), folded in a
    second before it falls due and its decision prepared; the engine, the customer and when it is due."""
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, session, "p1", BASE)])
    due = BASE + timedelta(minutes=30)
    clock.now = due - timedelta(seconds=1)
    assert detector.tick() == (1, 0)  # folded in, and its decision prepared
    return engine, user, due


@pytest.mark.parametrize("session", ["s1", None])
def test_a_cart_whose_customer_is_back_but_not_folded_in_yet_is_postponed(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock, session: str | None
) -> None:
    engine, user, due = prepared_cart(client, auth, detector, clock, session)
    cart_id = session or f"{user}#1"  # the source's session, or one by the gap
    assert set(detector._prepared) == {cart_id}
    # A view of the same session (a session by the gap: a view without a session id), stored but not
    # folded in when the cart falls due.
    back = due - timedelta(milliseconds=500)
    view = {"event_type": "view", "user_id": user, "product_id": "p9", "timestamp": back.isoformat()}
    post(client, auth, [dict(view, event_id="v1", **({"session_id": session} if session else {}))])
    clock.now = due
    assert detector.store_prepared() == []
    (cart,) = rows(engine, carts)
    assert cart["status"] == "open"
    assert cart["due_at"].replace(tzinfo=UTC) == due + timedelta(seconds=1)  # looked at again in a second
    assert rows(engine, decisions) == []
    clock.now = due + timedelta(seconds=2)
    assert detector.tick() == (1, 0)  # folded in now: due 30 minutes after the view
    assert rows(engine, carts)[0]["due_at"].replace(tzinfo=UTC) == back + timedelta(minutes=30)
    clock.now = back + timedelta(minutes=30)
    assert detector.tick() == (0, 1)
    (decision,) = rows(engine, decisions)
    assert decision["cart_id"] == cart_id


@pytest.mark.parametrize("session", ["s1", None])
def test_an_event_of_another_session_does_not_postpone_a_cart(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock, session: str | None
) -> None:
    engine, user, due = prepared_cart(client, auth, detector, clock, session)
    at = (due - timedelta(milliseconds=500)).isoformat()
    view = {"event_id": "v1", "event_type": "view", "user_id": user, "product_id": "p9",
            "session_id": "elsewhere", "timestamp": at}  # fmt: skip
    post(client, auth, [view])  # stored, not folded in: another session (another cart) of the customer
    clock.now = due
    (decided,) = detector.store_prepared()
    assert decided.cart_id == (session or f"{user}#1")
    assert [d["cart_id"] for d in rows(engine, decisions)] == [decided.cart_id]


def test_the_threaded_loop_decides_in_real_time(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    engine = engine_of(client)
    people = users(5, held=False)
    for user in people:
        consent(client, auth, user)
    now = datetime.now(UTC)
    post(client, auth, [add(u, f"live-{u}", "p1", now - timedelta(seconds=1) + timedelta(seconds=i * 0.3))
                        for i, u in enumerate(people)])  # fmt: skip
    detector = Detector(
        engine, service_settings, thresholds=IdleThresholds(2 / 60), recommend=False, outcomes_every=0
    )
    stop = threading.Event()
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    stats = detector.run(stop, poll_interval=0.02)
    assert stats.decided == 5
    assert len(stats.latencies) == 5
    assert all(0 <= latency < 2.0 for latency in stats.latencies)  # within seconds of each threshold
    assert {d["cart_id"] for d in rows(engine, decisions)} == {f"live-{u}" for u in people}


def test_a_guest_cart_moves_to_the_customer_the_visitor_becomes(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    """A guest adds to a cart, then identifies (an identify call linking the anonymous id): the open cart
    is the customer's, so the decision reaches them; before the link it could reach nobody."""
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    guest = {"event_id": "g1", "event_type": "add_to_cart", "anonymous_id": "visitor-7", "product_id": "p1",
             "price": 30.0, "session_id": "s-guest", "timestamp": BASE.isoformat()}  # fmt: skip
    post(client, auth, [guest])
    clock.now = BASE + timedelta(minutes=5)
    detector.tick()
    assert rows(engine, carts)[0]["user_key"] == "anonymous:visitor-7"
    identify = {"type": "identify", "messageId": "i-7", "userId": user, "anonymousId": "visitor-7",
                "timestamp": (BASE + timedelta(minutes=6)).isoformat(), "traits": {}}  # fmt: skip
    reply = client.post("/v1/webhooks/segment", json=identify, headers=auth)
    assert reply.status_code == 200, reply.text
    (cart,) = rows(engine, carts)
    assert (cart["cart_id"], cart["user_key"], cart["status"]) == ("s-guest", user, "open")
    clock.now = BASE + timedelta(minutes=31)
    detector.tick()
    (decision,) = rows(engine, decisions)
    assert decision["cart_id"] == "s-guest"
    assert decision["action"] == "reminder/email/10h"
    (message,) = rows(engine, outbox)
    assert message["recipient"] == f"{user}@example.com"


def test_two_carts_prepared_apart_get_one_message_the_cap_allows(
    client: TestClient, auth: dict[str, str], detector: Detector, clock: Clock
) -> None:
    """Two carts of one customer due a second apart are prepared in different rounds, the first not
    stored yet when the second is prepared: the frequency cap counts the prepared message (before, both
    were scheduled and the worker cancelled one at send time)."""
    engine = engine_of(client)
    (user,) = users(1, held=False)
    consent(client, auth, user)
    post(client, auth, [add(user, "s1", "p1", BASE), add(user, "s2", "p2", BASE + timedelta(seconds=1))])
    due = BASE + timedelta(minutes=30)
    clock.now = due - timedelta(seconds=1.5)
    detector.catch_up()
    assert detector.prepare(clock.now) == 1  # s1 only: s2 is due beyond the lead
    clock.now = due - timedelta(seconds=0.5)
    assert detector.prepare(clock.now) == 1  # s2, with s1's message prepared and not stored
    clock.now = due + timedelta(seconds=1)
    assert len(detector.store_prepared()) == 2
    found = {d["cart_id"]: d for d in rows(engine, decisions)}
    assert found["s1"]["action"] == "reminder/email/10h"
    assert found["s2"]["action"] == "nothing"
    assert any("cap" in reason for reason in json.loads(found["s2"]["reasons"]))
    assert [m["cart_id"] for m in rows(engine, outbox)] == ["s1"]

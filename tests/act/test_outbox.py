"""The outbox on both databases: scheduling plan decisions (idempotent, with unique coupon codes),
claims that never overlap, leases that expire, and the cart read from the received events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from winback.act.outbox import Contact, cart_items, claim, decision_key, idempotency_key, schedule
from winback.serve.db import coupons, events, make_engine, outbox, upgrade

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def plan_table(n: int, *, coupon: float = 0.0, send_at: datetime = NOW) -> pd.DataFrame:
    """Rows like plan_decisions' table."""
    return pd.DataFrame(
        {
            "cart_id": [f"c{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "subject": "cart",
            "action": "coupon10+recs/email/24h" if coupon else "reminder/email/24h",
            "channel": "email",
            "send_at": pd.Timestamp(send_at),
            "coupon": coupon,
            "recommended": "p7 p8",
            "reasons": "",
        }
    )


def contacts(n: int) -> dict[str, Contact]:
    return {f"u{i}": Contact(email=f"u{i}@example.com") for i in range(n)}


def test_schedule_is_idempotent_and_gives_unique_coupons(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    table = plan_table(6, coupon=10.0)
    nothing = table.iloc[:1].assign(action="nothing", channel=None, user_id="u0")
    no_address = table.iloc[:1].assign(user_id="stranger")
    carts = {f"c{i}": [{"product_id": "p1", "price": 20.0, "quantity": 2}] for i in range(6)}
    first = schedule(
        engine,
        pd.concat([table, nothing, no_address]),
        contacts(6),
        carts=carts,
        now=NOW,
        products={"p7": {"name": "Mug"}},
    )
    assert (first.scheduled, first.already, first.coupons) == (6, 0, 6)
    assert first.skipped == {"no email address": 1}
    again = schedule(engine, table, contacts(6), carts=carts, now=NOW)
    assert (again.scheduled, again.already, again.coupons) == (0, 6, 0)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox)).mappings().all()
        codes = connection.execute(sa.select(coupons)).mappings().all()
    engine.dispose()
    assert len(rows) == 6
    assert {r["status"] for r in rows} == {"scheduled"}
    key = idempotency_key(decision_key("u0", "c0", "coupon10+recs/email/24h", NOW))
    row = next(r for r in rows if r["user_id"] == "u0")
    assert row["idempotency_key"] == key
    assert row["template"] == "coupon"
    assert row["recipient"] == "u0@example.com"
    payload = json.loads(row["payload"])
    assert payload["cart"]["value"] == 40.0
    assert payload["recommendations"][0] == {"product_id": "p7", "name": "Mug"}
    assert len({c["code"] for c in codes}) == 6  # one code per message, each its own
    by_message = {c["message_id"]: c for c in codes}
    for r in rows:
        code = by_message[r["id"]]
        assert code["user_id"] == r["user_id"]
        assert code["status"] == "issued"
        assert code["code"] == json.loads(r["payload"])["coupon"]["code"]
        expires = (
            code["expires_at"].replace(tzinfo=UTC)
            if code["expires_at"].tzinfo is None
            else code["expires_at"]
        )
        assert expires == NOW + timedelta(days=7)


def test_claims_never_overlap_and_expired_leases_come_back(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    schedule(engine, plan_table(10), contacts(10), carts={}, now=NOW)
    later = schedule(
        engine,
        plan_table(3, send_at=NOW + timedelta(hours=1)).assign(user_id=lambda f: "late-" + f["user_id"]),
        {f"late-u{i}": Contact(email="x@example.com") for i in range(3)},
        carts={},
        now=NOW,
    )
    assert later.scheduled == 3
    a = claim(engine, "a", limit=4, lease_seconds=30, now=NOW)
    b = claim(engine, "b", limit=100, lease_seconds=30, now=NOW)
    assert len(a) == 4
    assert len(b) == 6
    assert not {m.id for m in a} & {m.id for m in b}
    assert claim(engine, "c", limit=100, lease_seconds=30, now=NOW + timedelta(seconds=29)) == []
    # a's lease runs out (its worker died): its messages are claimed again, as a second attempt
    c = claim(engine, "c", limit=100, lease_seconds=30, now=NOW + timedelta(seconds=31))
    assert {m.id for m in c} == {m.id for m in a} | {m.id for m in b}
    assert {m.attempts for m in c} == {2}
    assert {m.claimed_by for m in c} == {"c"}
    engine.dispose()


def test_cart_items_come_from_the_received_events(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)

    def event(i: int, kind: str, product: str | None, session: str, quantity: int = 1) -> dict[str, object]:
        return {
            "event_id": f"e{i}",
            "event_type": kind,
            "timestamp": NOW + timedelta(minutes=i),
            "user_id": "u1",
            "session_id": session,
            "product_id": product,
            "price": 10.0 + i,
            "quantity": quantity,
            "source": "test",
            "received_at": NOW,
        }

    with engine.begin() as connection:
        connection.execute(
            events.insert(),
            [
                event(0, "add_to_cart", "old", "s0"),
                event(1, "purchase", None, "s0"),
                event(2, "add_to_cart", "p1", "s1", 2),
                event(3, "add_to_cart", "p2", "s1"),
                event(4, "remove_from_cart", "p2", "s1"),
                event(5, "add_to_cart", "p1", "s1"),
            ],
        )
    with engine.connect() as connection:
        assert cart_items(connection, "u1", "s1") == [
            {"product_id": "p1", "category": None, "price": 15.0, "quantity": 3}
        ]
        assert [i["product_id"] for i in cart_items(connection, "u1", None)] == ["p1"]  # since the purchase
    engine.dispose()

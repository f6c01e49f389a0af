"""Customer rights on both databases: export, erase (admin only, one transaction, counts per table),
export again shows nothing left, other customers untouched, and links of erased messages dead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from fastapi.testclient import TestClient
from tests.serve.helpers import engine_of

from winback.act import Contact, schedule
from winback.act.outbox import Sent, claim, record_sent
from winback.act.tracking import Links, Signer
from winback.config import Settings
from winback.serve.db import coupons, deliveries, events, outbox
from winback.serve.keys import create_key


def key(client: TestClient, scope: str) -> dict[str, str]:
    token, _ = create_key(engine_of(client), scope)
    return {"Authorization": f"Bearer {token}"}


def shop(client: TestClient, auth: dict[str, str]) -> dict[str, int]:
    """Events, two coupon messages per customer (one sent) for u1 and u2; the outbox ids of u1's."""
    engine = engine_of(client)
    now = datetime.now(UTC)
    body = [
        {"event_id": f"{u}-{i}", "event_type": "add_to_cart", "user_id": u, "product_id": f"p{i}",
         "timestamp": (now - timedelta(hours=i)).isoformat(), "price": 10.0, "session_id": f"c-{u}"}
        for u in ("u1", "u2") for i in range(3)
    ]  # fmt: skip
    assert client.post("/v1/events", json=body, headers=auth).json()["stored"] == 6
    plan = pd.DataFrame(
        {
            "cart_id": ["c-u1", "c-u1", "c-u2", "c-u2"],
            "user_id": ["u1", "u1", "u2", "u2"],
            "action": ["coupon10/email/24h", "coupon10/email/72h"] * 2,
            "channel": "email",
            "send_at": [pd.Timestamp(now - timedelta(minutes=5)), pd.Timestamp(now + timedelta(days=2))] * 2,
            "coupon": 10.0,
            "recommended": "",
        }
    )
    contacts = {u: Contact(email=f"{u}@example.com") for u in ("u1", "u2")}
    done = schedule(engine, plan, contacts, now=now - timedelta(hours=1))
    assert (done.scheduled, done.coupons) == (4, 4)
    due = claim(engine, "w")
    assert len(due) == 2
    record_sent(engine, [Sent(m, "250 ok", "250", now) for m in due], "w")  # + a message_sent event each
    with engine.connect() as connection:
        ids = connection.execute(sa.select(outbox.c.id).where(outbox.c.user_id == "u1")).scalars().all()
    return {"first": min(ids), "second": max(ids)}


def counts(engine: sa.Engine, user: str) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            t.name: int(
                connection.execute(sa.select(sa.func.count()).where(t.c.user_id == user)).scalar_one()
            )
            for t in (coupons, deliveries, outbox, events)
        }


def test_export_then_erase_then_nothing_left(
    client: TestClient, service_settings: Settings, auth: dict[str, str]
) -> None:
    engine = engine_of(client)
    ids = shop(client, auth)
    before_u2 = counts(engine, "u2")
    read, admin = key(client, "read"), key(client, "admin")

    exported: dict[str, Any] = client.get("/v1/customers/u1", headers=read).json()
    assert exported["user_id"] == "u1"
    assert len(exported["events"]) == 4  # three cart events and one message_sent
    assert {e["event_type"] for e in exported["events"]} == {"add_to_cart", "message_sent"}
    assert len(exported["outbox"]) == 2
    assert len(exported["deliveries"]) == 1
    assert len(exported["coupons"]) == 2
    assert exported["outbox"][0]["payload"]["coupon"]["code"].startswith("WB-")  # JSON, not a string
    assert all(isinstance(e["timestamp"], str) for e in exported["events"])
    assert {e["user_id"] for e in exported["events"]} == {"u1"}

    erased = client.delete("/v1/customers/u1", headers=admin)
    assert erased.status_code == 200
    nothing = dict.fromkeys(("decisions", "carts", "visitors", "identities", "customers"), 0)
    assert erased.json()["erased"] == {"coupons": 2, "deliveries": 1, "outbox": 2, "events": 4, **nothing}
    assert any("retrain" in line for line in erased.json()["not_reached"])

    after = client.get("/v1/customers/u1", headers=read).json()
    assert after == {"user_id": "u1", "customer": None, "identities": [], "events": [], "outbox": [],
                     "deliveries": [], "coupons": [], "carts": [], "decisions": []}  # fmt: skip
    assert counts(engine, "u1") == {"coupons": 0, "deliveries": 0, "outbox": 0, "events": 0}
    assert counts(engine, "u2") == before_u2  # nobody else touched
    again = client.delete("/v1/customers/u1", headers=admin).json()["erased"]
    assert again == {"coupons": 0, "deliveries": 0, "outbox": 0, "events": 0, **nothing}

    # an erased customer's old links lead nowhere and record nothing
    links = Links("http://testserver", Signer.from_settings(service_settings))
    pixel = links.open_url(ids["first"], "email").removeprefix("http://testserver")
    assert client.get(pixel).status_code == 404
    assert (
        client.post(
            links.unsubscribe_url(ids["second"], "email").removeprefix("http://testserver")
        ).status_code
        == 404
    )
    assert counts(engine, "u1")["events"] == 0


def test_scopes_are_enforced(client: TestClient, auth: dict[str, str]) -> None:
    engine = engine_of(client)
    shop(client, auth)
    before = counts(engine, "u1")
    read, write = key(client, "read"), key(client, "write")
    assert client.get("/v1/customers/u1").status_code == 401
    assert (
        client.get("/v1/customers/u1", headers={"Authorization": "Bearer wbk_nope_nope"}).status_code == 401
    )
    assert client.delete("/v1/customers/u1").status_code == 401
    for headers in (read, write):
        refused = client.delete("/v1/customers/u1", headers=headers)
        assert refused.status_code == 403
        assert "admin needed" in refused.json()["detail"]
    assert client.get("/v1/customers/u1", headers=write).status_code == 200  # write covers read
    assert counts(engine, "u1") == before  # nothing erased by the refused calls


def test_ids_with_slashes_and_unknown_customers(client: TestClient, auth: dict[str, str]) -> None:
    now = datetime.now(UTC).isoformat()
    event = {"event_id": "x1", "event_type": "view", "timestamp": now, "user_id": "shop/42"}
    assert client.post("/v1/events", json=event, headers=auth).json()["stored"] == 1
    admin = key(client, "admin")
    assert len(client.get("/v1/customers/shop%2F42", headers=admin).json()["events"]) == 1
    assert client.delete("/v1/customers/shop/42", headers=admin).json()["erased"]["events"] == 1
    nobody = client.get("/v1/customers/nobody", headers=admin).json()
    assert nobody["events"] == []
    assert nobody["outbox"] == []

"""Customers' profiles on both databases: PUT /v1/customers/{id} (checked, merged, consent ordered by its
moment), Segment identify and Shopify customers/* webhooks, unsubscribes withdrawing consent, and
export and erasure reaching the new tables and the winback home."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from fastapi.testclient import TestClient
from tests.serve.helpers import engine_of

from winback.config import Settings
from winback.decide.log import DecisionLog
from winback.events.schema import EVENT_SCHEMA
from winback.events.store import EventStore
from winback.serve.db import identities
from winback.serve.detect import Detector
from winback.serve.keys import create_key

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def admin(client: TestClient) -> dict[str, str]:
    token, _ = create_key(engine_of(client), "admin")
    return {"Authorization": f"Bearer {token}"}


def test_put_sets_merges_and_orders_consent(client: TestClient, auth: dict[str, str]) -> None:
    first = {"email": "ann@example.com", "time_zone": "Europe/Paris",
             "consent": {"email": True, "sms": False},
             "consent_at": T0.isoformat()}  # fmt: skip
    reply = client.put("/v1/customers/ann", json=first, headers=auth)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["email"], body["time_zone"], body["consent"]) == (
        "ann@example.com",
        "Europe/Paris",
        {"email": True, "sms": False, "push": None},
    )
    # fields left out keep their value, null clears, an older consent statement changes nothing
    later = {"phone": "+33612345678", "time_zone": None, "consent": {"email": False},
             "consent_at": (T0 - timedelta(days=1)).isoformat()}  # fmt: skip
    body = client.put("/v1/customers/ann", json=later, headers=auth).json()
    assert (body["email"], body["phone"], body["time_zone"]) == ("ann@example.com", "+33612345678", None)
    assert body["consent"]["email"] is True
    newer = {"consent": {"email": False}, "consent_at": (T0 + timedelta(days=1)).isoformat()}
    assert client.put("/v1/customers/ann", json=newer, headers=auth).json()["consent"]["email"] is False


def test_put_refuses_bad_input_by_field(client: TestClient, auth: dict[str, str]) -> None:
    for body, field in (
        ({"email": "not-an-address"}, "email"),
        ({"phone": "0612"}, "phone"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"utc_offset_minutes": 900}, "utc_offset_minutes"),
        ({"consent": {"fax": True}}, "fax"),
        ({"consent_at": "2024-05-01T10:00:00"}, "consent_at"),
        ({"nickname": "a"}, "nickname"),
    ):
        reply = client.put("/v1/customers/bob", json=body, headers=auth)
        assert reply.status_code == 422, body
        assert field in str(reply.json()["detail"][0]["loc"]), reply.json()
    read, _ = create_key(engine_of(client), "read")
    refused = client.put("/v1/customers/bob", json={}, headers={"Authorization": f"Bearer {read}"})
    assert refused.status_code == 403
    assert client.get("/v1/customers/bob", headers=auth).json()["customer"] is None  # nothing written


def test_identify_payloads_fill_profiles(client: TestClient, auth: dict[str, str]) -> None:
    identify = {
        "type": "identify", "messageId": "i1", "userId": "u-7", "anonymousId": "anon-7",
        "timestamp": T0.isoformat(),
        "traits": {"email": "u7@example.com", "phone": "+4915112345678", "firstName": "Ute",
                   "lastName": "Sieben",
                   "email_subscribe": "opted_in", "sms_subscribe": "unsubscribed"},
        "context": {"timezone": "Europe/Berlin", "device": {"token": "push-token-7"}},
    }  # fmt: skip
    reply = client.post("/v1/webhooks/segment", json=identify, headers=auth)
    assert reply.json()["customers"] == 1
    customer = client.get("/v1/customers/u-7", headers=auth).json()["customer"]
    assert customer["name"] == "Ute Sieben"
    assert customer["push_token"] == "push-token-7"
    assert customer["time_zone"] == "Europe/Berlin"
    assert customer["consent"] == {"email": True, "sms": False, "push": None}
    with engine_of(client).connect() as connection:
        assert connection.execute(sa.select(identities.c.user_id)).scalars().all() == ["u-7"]

    shopify = {"id": 115310627, "email": "jane@example.com", "first_name": "Jane", "phone": "+15145550199",
               "updated_at": "2024-03-06T10:20:00-05:00",
               "email_marketing_consent": {"state": "subscribed",
                                           "consent_updated_at": "2024-03-06T10:20:00-05:00"},
               "sms_marketing_consent": {"state": "not_subscribed", "consent_updated_at": None}}  # fmt: skip
    reply = client.post(
        "/v1/webhooks/shopify", content=orjson.dumps(shopify),
        headers={"X-Shopify-Topic": "customers/update", "Content-Type": "application/json", **auth},
    )  # fmt: skip
    assert reply.status_code == 200
    assert reply.json()["customers"] == 1
    jane = client.get("/v1/customers/115310627", headers=auth).json()["customer"]
    assert (jane["email"], jane["consent"]["email"], jane["consent"]["sms"]) == (
        "jane@example.com",
        True,
        False,
    )
    assert jane["consent_at"]["email"] == "2024-03-06T15:20:00+00:00"


def test_an_unsubscribe_withdraws_consent_until_given_again(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    body = {"email": "c@example.com", "consent": {"email": True, "push": True}, "consent_at": T0.isoformat()}
    client.put("/v1/customers/carl", json=body, headers=auth)
    stop = {"event_id": "unsub-1", "event_type": "unsubscribed", "user_id": "carl",
            "timestamp": (T0 + timedelta(hours=1)).isoformat(),
            "properties": {"channel": "email"}}  # fmt: skip
    assert client.post("/v1/events", json=stop, headers=auth).json()["stored"] == 1
    detector = Detector(engine_of(client), service_settings, recommend=False, outcomes_every=0)
    detector.catch_up()
    detector.close()
    customer = client.get("/v1/customers/carl", headers=auth).json()["customer"]
    assert customer["consent"] == {"email": False, "sms": None, "push": True}
    again = {"consent": {"email": True}, "consent_at": (T0 + timedelta(hours=2)).isoformat()}
    assert client.put("/v1/customers/carl", json=again, headers=auth).json()["consent"]["email"] is True


def _home_rows(settings: Settings, user: str) -> tuple[int, int]:
    with EventStore(settings, read_only=True) as store:
        events = store.con.execute("SELECT count(*) FROM events WHERE user_id = ?", [user]).fetchone()
    with DecisionLog(settings, read_only=True) as log:
        logged = int((log.read()["user_id"] == user).sum())
    return int(events[0]) if events else 0, logged


def test_export_and_erasure_reach_carts_decisions_anonymous_events_and_the_home(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    client.put(
        "/v1/customers/dora", json={"email": "d@example.com", "consent": {"email": True}}, headers=auth
    )
    now = datetime.now(UTC)
    body = [
        {"event_id": "a1", "event_type": "view", "anonymous_id": "anon-d",
         "timestamp": (now - timedelta(hours=2)).isoformat()},
        {"event_id": "a2", "event_type": "add_to_cart", "anonymous_id": "anon-d", "user_id": "dora",
         "product_id": "p1", "price": 9.0, "session_id": "sd",
         "timestamp": (now - timedelta(hours=1)).isoformat()},
        {"event_id": "e1", "event_type": "add_to_cart", "user_id": "eve", "product_id": "p1", "price": 9.0,
         "session_id": "se", "timestamp": (now - timedelta(hours=1)).isoformat()},
    ]  # fmt: skip
    assert client.post("/v1/events", json=body, headers=auth).json()["stored"] == 3
    detector = Detector(
        engine_of(client), service_settings, recommend=False, outcomes_every=0, holdout_share=0.0
    )
    detector.tick()
    detector.close()
    # the home holds dora's events and a decision too
    table = pa.Table.from_pylist(
        [{"event_id": "h1", "event_type": "view", "timestamp": now - timedelta(days=3), "user_id": "dora"},
         {"event_id": "h2", "event_type": "view", "timestamp": now - timedelta(days=3), "user_id": "eve"}],
        schema=EVENT_SCHEMA,
    )  # fmt: skip
    with EventStore(service_settings) as store:
        store.append(table)
    with DecisionLog(service_settings) as log:
        log.append(pd.DataFrame({"decided_at": [now, now], "user_id": ["dora", "eve"], "policy": "static-10h",
                                 "version": "1", "action": "nothing", "cart_id": ["x", "y"]}))  # fmt: skip
    assert _home_rows(service_settings, "dora") == (1, 1)

    exported: dict[str, Any] = client.get("/v1/customers/dora", headers=auth).json()
    assert exported["customer"]["email"] == "d@example.com"
    assert [e["event_id"] for e in exported["events"]] == ["a1", "a2"]  # the anonymous view too
    assert [c["cart_id"] for c in exported["carts"]] == ["sd"]
    assert [d["cart_id"] for d in exported["decisions"]] == ["sd"]
    assert exported["identities"][0]["anonymous_id"] == "anon-d"

    erased = client.delete("/v1/customers/dora", headers=admin(client)).json()
    counts = erased["erased"]
    assert (
        counts["events"],
        counts["carts"],
        counts["decisions"],
        counts["customers"],
        counts["identities"],
    ) == (2, 1, 1, 1, 1)
    assert (counts["home_events"], counts["home_decisions"]) == (1, 1)
    assert _home_rows(service_settings, "dora") == (0, 0)
    assert _home_rows(service_settings, "eve") == (1, 1)  # nobody else
    left = client.get("/v1/customers/dora", headers=auth).json()
    assert left["events"] == []
    assert left["customer"] is None
    assert left["carts"] == []
    assert len(client.get("/v1/customers/eve", headers=auth).json()["events"]) == 1


def test_a_locked_home_is_reported_not_reached(
    client: TestClient, auth: dict[str, str], service_settings: Settings
) -> None:
    with EventStore(service_settings) as store:
        store.append(pa.Table.from_pylist(
            [{"event_id": "h1", "event_type": "view", "timestamp": T0, "user_id": "fred"}],
            schema=EVENT_SCHEMA,
        ))  # fmt: skip
    import subprocess
    import sys

    holder = subprocess.Popen(  # another process holds the store (DuckDB: one writing process)
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
         "time.sleep(60)", str(service_settings.store_path)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ok"
        erased = client.delete("/v1/customers/fred", headers=admin(client)).json()
    finally:
        holder.kill()
        holder.wait()
    assert "home_events" not in erased["erased"]
    assert any(
        str(service_settings.store_path) in line and "winback erase" in line for line in erased["not_reached"]
    )

"""The webhooks of Segment, Shopify and GA4 on SQLite and PostgreSQL: the adapters' fixtures map to the
same canonical events as file ingest, retries are stored once (source event ids), Shopify's HMAC is
verified, bad payloads are refused whole naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from winback.config import load_settings
from winback.events import adapters
from winback.events.adapters.payloads import record_events
from winback.events.adapters.shopify import unwrap
from winback.events.ingest import ingest_files
from winback.events.store import EventStore
from winback.serve.db import events as events_table
from winback.serve.ingest import count_events
from winback.serve.keys import create_key
from winback.serve.main import create_app
from winback.serve.routes.webhooks import shopify_signature

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = {
    "segment": FIXTURES / "segment" / "events.jsonl",
    "ga4": FIXTURES / "ga4" / "events.jsonl",
    "shopify": FIXTURES / "shopify" / "webhooks.jsonl",
}
FIELDS = ("event_id", "event_type", "timestamp", "user_id", "anonymous_id", "session_id", "product_id",
          "category", "price", "quantity", "order_id", "value", "currency", "properties")  # fmt: skip


def _lines(fmt: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in GOOD[fmt].read_text().splitlines() if line.strip()]


def _canonical(row: dict[str, Any]) -> tuple[Any, ...]:
    """An event as comparable values; the content-derived ids of the two stores are spelled differently,
    so an id is compared only when it came from the source."""
    values = dict(row)
    if isinstance(values["properties"], str):
        values["properties"] = json.loads(values["properties"])
    values["properties"] = values["properties"] or None
    ts = values["timestamp"]
    values["timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
    event_id = str(values["event_id"])
    if event_id.startswith("content:") or re.fullmatch("[0-9a-f]{32}", event_id):
        values["event_id"] = None
    return tuple(json.dumps(values[f], sort_keys=True, default=str) for f in FIELDS)


def _file_events(fmt: str, tmp_path: Path) -> list[tuple[Any, ...]]:
    with EventStore(load_settings(home=tmp_path / f"file-{fmt}")) as store:
        ingest_files(store, [GOOD[fmt]])
        cursor = store.con.execute(f"SELECT {', '.join(FIELDS)} FROM events")
        return sorted(_canonical(dict(zip(FIELDS, r, strict=True))) for r in cursor.fetchall())


def _served_events(client: TestClient) -> list[tuple[Any, ...]]:
    engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(sa.select(*[events_table.c[f] for f in FIELDS])).mappings().all()
    return sorted(_canonical(dict(r)) for r in rows)


@pytest.mark.parametrize("fmt", list(GOOD))
def test_the_shared_mapping_gives_the_events_of_file_ingest(fmt: str, tmp_path: Path) -> None:
    mapper = adapters.get(fmt).mapper  # type: ignore[attr-defined]
    mapped = [e.model_dump() for record in _lines(fmt) for e in record_events(mapper, record)]
    assert sorted(_canonical(e) for e in mapped) == _file_events(fmt, tmp_path)


def _post_shopify(client: TestClient, line: dict[str, Any], **headers: str) -> Any:
    """Deliver a line of the fixture as Shopify does: the payload as body, topic and id as headers."""
    topic, webhook_id, payload = unwrap(line)
    sent = {"X-Shopify-Topic": topic, "Content-Type": "application/json", **headers}
    if webhook_id is not None:
        sent["X-Shopify-Webhook-Id"] = webhook_id
    return client.post("/v1/webhooks/shopify", content=orjson.dumps(payload), headers=sent)


@pytest.mark.parametrize("fmt", list(GOOD))
def test_each_sources_webhook_stores_the_events_of_file_ingest_and_retries_once(
    client: TestClient, auth: dict[str, str], fmt: str, tmp_path: Path
) -> None:
    lines = _lines(fmt)
    totals = {"received": 0, "stored": 0, "ignored": 0}
    for line in lines:  # one delivery per payload, as the sources send them
        if fmt == "shopify":
            reply = _post_shopify(client, line, **auth)
        else:
            reply = client.post(f"/v1/webhooks/{fmt}", json=line, headers=auth)
        assert reply.status_code == 200, reply.text
        for k in totals:
            totals[k] += reply.json()[k]
    assert _served_events(client) == _file_events(fmt, tmp_path)
    stored = count_events(client.app.state.winback.engine)  # type: ignore[attr-defined]
    assert totals["stored"] == stored > 0
    identify = [  # profiles, not events
        x for x in lines
        if (fmt == "segment" and x.get("type") == "identify")
        or (fmt == "shopify" and x.get("topic") in ("customers/create", "customers/update"))
    ]  # fmt: skip
    dropped = sum(not record_events(adapters.get(fmt).mapper, x) for x in lines)  # type: ignore[attr-defined]
    assert totals["ignored"] == dropped - len(identify)
    if fmt == "ga4":  # GA4 rows carry no id: a retry is the same content, stored once all the same
        again = client.post("/v1/webhooks/ga4", json=lines, headers=auth).json()
    elif fmt == "segment":
        again = client.post("/v1/webhooks/segment", json={"batch": lines}, headers=auth).json()
    else:
        again = {"stored": sum(_post_shopify(client, x, **auth).json()["stored"] for x in lines)}
    assert again["stored"] == 0
    assert count_events(client.app.state.winback.engine) == stored  # type: ignore[attr-defined]


def _segment_order(message_id: str = "ord-msg-1") -> dict[str, Any]:
    return {
        "type": "track", "event": "Order Completed", "messageId": message_id, "userId": "u-9",
        "timestamp": "2024-03-05T12:00:00.000Z",
        "properties": {"order_id": "50314b8e", "total": 27.5, "revenue": 25.0, "currency": "usd",
                       "products": [{"product_id": "507f1", "price": 19.0, "quantity": 1},
                                    {"product_id": "505bd", "price": "3.00", "quantity": "2"}]},
    }  # fmt: skip


def test_segment_batches_use_message_ids_and_ignore_other_calls(
    client: TestClient, auth: dict[str, str]
) -> None:
    batch = [_segment_order(), {"type": "page", "messageId": "p1", "userId": "u-9", "name": "Home"},
             {"type": "identify", "messageId": "i1", "userId": "u-9", "traits": {}}]  # fmt: skip
    reply = client.post("/v1/webhooks/segment", json={"batch": batch}, headers=auth)
    assert reply.json() == {"received": 2, "stored": 2, "duplicates": 0, "ignored": 1, "customers": 1}
    engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(sa.select(events_table).order_by(events_table.c.event_id)).mappings().all()
    assert [(r["event_id"], r["event_type"], r["product_id"], r["price"], r["quantity"]) for r in rows] == [
        ("ord-msg-1:0", "purchase", "507f1", 19.0, 1),
        ("ord-msg-1:1", "purchase", "505bd", 3.0, 2),
    ]
    assert {(r["order_id"], r["currency"], r["source"]) for r in rows} == {("50314b8e", "USD", "segment")}
    # Segment retries the same message: nothing new
    assert client.post("/v1/webhooks/segment", json=_segment_order(), headers=auth).json()["duplicates"] == 2


def test_a_bad_payload_is_refused_whole_naming_the_field(client: TestClient, auth: dict[str, str]) -> None:
    bad = _segment_order("bad-1")
    bad["properties"]["products"][1]["price"] = -5
    reply = client.post("/v1/webhooks/segment", json=[_segment_order("ok-1"), bad], headers=auth)
    assert reply.status_code == 422
    assert "body[1] /properties/products/1: price: Input should be greater than or equal to 0" in reply.text
    bad["properties"]["products"] = "G-32, G-41"
    reply = client.post("/v1/webhooks/segment", json=bad, headers=auth)
    assert reply.status_code == 422
    assert "/properties/products: found 'G-32, G-41', expected an array of product objects" in reply.text
    assert client.post("/v1/webhooks/segment", content=b"{nope", headers=auth).status_code == 400
    assert client.post("/v1/webhooks/segment", json=_segment_order()).status_code == 401  # no key
    assert count_events(client.app.state.winback.engine) == 0  # type: ignore[attr-defined]


def test_ga4_measurement_protocol_events_take_their_id_from_the_event_id_parameter(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {
        "client_id": "1197596843.1709280000", "user_id": "u-1001", "timestamp_micros": "1709290000000000",
        "events": [
            {"name": "purchase", "params": {
                "event_id": "ev-77", "transaction_id": "T-1", "currency": "EUR", "value": 42.0,
                "session_id": "1709280000",
                "items": [{"item_id": "SKU_1", "item_name": "Socks", "price": 12.0, "quantity": 1},
                          {"item_id": "SKU_2", "item_category": "Shoes", "price": 30.0, "quantity": 1}]}},
            {"name": "page_view", "params": {"page_location": "https://shop.example.com/"}},
        ],
    }  # fmt: skip
    reply = client.post("/v1/webhooks/ga4", json=body, headers=auth)
    assert reply.json() == {"received": 2, "stored": 2, "duplicates": 0, "ignored": 1, "customers": 0}, (
        reply.text
    )
    engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(sa.select(events_table).order_by(events_table.c.event_id)).mappings().all()
    assert [(r["event_id"], r["product_id"], r["price"]) for r in rows] == [
        ("ev-77:0", "SKU_1", 12.0),
        ("ev-77:1", "SKU_2", 30.0),
    ]
    row = rows[1]
    assert (row["event_type"], row["order_id"], row["currency"], row["category"]) == (
        "purchase",
        "T-1",
        "EUR",
        "Shoes",
    )
    assert row["session_id"] == "1197596843.1709280000:1709280000"
    assert row["timestamp"].replace(tzinfo=UTC) == datetime(2024, 3, 1, 10, 46, 40, tzinfo=UTC)
    body["events"][0]["params"]["value"] = 43.0  # a retry (even a changed one) of the same event id
    assert client.post("/v1/webhooks/ga4", json=body, headers=auth).json()["duplicates"] == 2


def _shopify_order() -> dict[str, Any]:
    """The fixture's orders/create delivery as a {topic, webhook_id, payload} wrapper."""
    topic, webhook_id, payload = next(unwrap(x) for x in _lines("shopify") if unwrap(x)[0] == "orders/create")
    return {"topic": topic, "webhook_id": webhook_id, "payload": payload}


@pytest.fixture
def signed_client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        home=tmp_path / "home", database_url=database_url, shopify_webhook_secret="shpss_test_secret"
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_shopify_hmac_is_verified_when_the_secret_is_set(signed_client: TestClient) -> None:
    line = _shopify_order()
    body = orjson.dumps(line["payload"])
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": line["webhook_id"]}
    missing = signed_client.post("/v1/webhooks/shopify", content=body, headers=headers)
    assert missing.status_code == 401
    assert "X-Shopify-Hmac-Sha256: missing" in missing.text
    wrong = shopify_signature("another-secret", body)
    forged = signed_client.post(
        "/v1/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": wrong}
    )
    assert forged.status_code == 401
    tampered = body.replace(b'"quantity": 1', b'"quantity": 9', 1).replace(
        b'"quantity":1', b'"quantity":9', 1
    )
    assert tampered != body
    good = shopify_signature("shpss_test_secret", body)
    changed = signed_client.post(
        "/v1/webhooks/shopify", content=tampered, headers={**headers, "X-Shopify-Hmac-Sha256": good}
    )
    assert changed.status_code == 401
    engine = signed_client.app.state.winback.engine  # type: ignore[attr-defined]
    assert count_events(engine) == 0
    # the signature is Shopify's authentication: no API key needed
    ok = signed_client.post(
        "/v1/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": good}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["stored"] == len(line["payload"]["line_items"]) == count_events(engine)
    with engine.connect() as connection:
        ids = set(connection.execute(sa.select(events_table.c.event_id)).scalars())
    assert ids == {f"{line['webhook_id']}:{i}" for i in range(len(line["payload"]["line_items"]))}


def test_shopify_without_a_secret_needs_an_api_key_and_ignores_other_topics(
    client: TestClient, auth: dict[str, str]
) -> None:
    line = _shopify_order()
    assert _post_shopify(client, line).status_code == 401
    paid = _post_shopify(client, {**line, "topic": "orders/paid"}, **auth)
    assert paid.json() == {"received": 0, "stored": 0, "duplicates": 0, "ignored": 1, "customers": 0}
    # the file format's wrapper, without headers, is read as the adapter reads it
    wrapped = client.post("/v1/webhooks/shopify", json=line, headers=auth)
    assert wrapped.json()["stored"] == len(line["payload"]["line_items"])
    assert _post_shopify(client, line, **auth).json()["stored"] == 0  # the same webhook id
    # one event delivered to two subscriptions: two webhook ids, one X-Shopify-Event-Id
    event = {"X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5"}
    other = {**line, "webhook_id": "another-subscription"}
    assert _post_shopify(client, line, **auth, **event).json()["stored"] == len(line["payload"]["line_items"])
    assert _post_shopify(client, other, **auth, **event).json()["stored"] == 0


def test_shopify_customers_redact_erases_the_customer_everywhere(
    signed_client: TestClient, client: TestClient, auth: dict[str, str]
) -> None:
    """Shopify's mandatory compliance webhook: signed, it erases as DELETE /v1/customers/{id} does;
    relayed without the signature it needs an admin key, not a write key."""
    line = _shopify_order()
    body = orjson.dumps(line["payload"])
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": line["webhook_id"]}
    signature = shopify_signature("shpss_test_secret", body)
    stored = signed_client.post(
        "/v1/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": signature}
    ).json()["stored"]
    engine = signed_client.app.state.winback.engine  # type: ignore[attr-defined]
    assert stored == count_events(engine) > 0
    customer = line["payload"]["customer"]["id"]
    redact = orjson.dumps({"shop_id": 954889, "customer": {"id": customer, "email": "x@example.com"}})
    headers = {"X-Shopify-Topic": "customers/redact"}
    forged = signed_client.post(
        "/v1/webhooks/shopify",
        content=redact,
        headers={**headers, "X-Shopify-Hmac-Sha256": shopify_signature("another-secret", redact)},
    )
    assert forged.status_code == 401
    assert count_events(engine) == stored
    signed = {**headers, "X-Shopify-Hmac-Sha256": shopify_signature("shpss_test_secret", redact)}
    erased = signed_client.post("/v1/webhooks/shopify", content=redact, headers=signed)
    assert erased.status_code == 200, erased.text
    assert erased.json()["erased"]["events"] == stored
    assert count_events(engine) == 0
    empty = orjson.dumps({"shop_id": 954889, "customer": {"email": "x@example.com"}})
    missing = signed_client.post(
        "/v1/webhooks/shopify",
        content=empty,
        headers={**headers, "X-Shopify-Hmac-Sha256": shopify_signature("shpss_test_secret", empty)},
    )
    assert missing.status_code == 422
    assert "customer.id" in missing.text

    # without the secret: a write key may send events but not erase
    refused = client.post("/v1/webhooks/shopify", content=redact, headers={**headers, **auth})
    assert refused.status_code == 403, refused.text
    admin, _ = create_key(client.app.state.winback.engine, "admin")  # type: ignore[attr-defined]
    done = client.post(
        "/v1/webhooks/shopify", content=redact, headers={**headers, "Authorization": f"Bearer {admin}"}
    )
    assert done.status_code == 200, done.text

"""Signed tracking links on both databases: the open pixel, the click redirect (only to the signed
target), the unsubscribe page and one-click POST (which the worker's re-check turns into a cancelled
message), tampered and foreign tokens refused with nothing stored, the links in rendered e-mails with
List-Unsubscribe headers, and purchases attributed to the last message sent before them."""

from __future__ import annotations

import email
import json
import re
from datetime import UTC, datetime, timedelta
from email.message import Message as MailMessage
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from tests.serve.helpers import engine_of

from winback.act import Contact, schedule
from winback.act.attribution import attribute_purchases, log_outcomes
from winback.act.channels.smtp import build_email
from winback.act.outbox import Sent, claim, record_sent, send_facts
from winback.act.render import Renderer
from winback.act.tracking import BadTokenError, Link, Links, Signer
from winback.act.worker import Worker
from winback.config import Settings
from winback.decide.log import DecisionLog
from winback.errors import BadInputError
from winback.serve.db import events, outbox

TARGET = "https://shop.example/p/1?ref=mail"
CART = [{"product_id": "p1", "name": "Kettle", "price": 39.5, "quantity": 1, "url": TARGET}]


def links_for(settings: Settings) -> Links:
    return Links("http://testserver", Signer.from_settings(settings), "https://shop.example/cart")


def scheduled(engine: sa.Engine, user: str = "u1", *, coupon: float = 0.0, minutes_ago: int = 1) -> int:
    send_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    plan = pd.DataFrame(
        {
            "cart_id": [f"c-{user}"],
            "user_id": [user],
            "action": [f"coupon{coupon:g}/email/24h" if coupon else "reminder/email/24h"],
            "channel": ["email"],
            "send_at": [pd.Timestamp(send_at)],
            "coupon": [coupon],
            "recommended": [""],
        }
    )
    done = schedule(
        engine,
        plan,
        {user: Contact(email=f"{user}@example.com")},
        carts={f"c-{user}": CART},
        now=send_at - timedelta(hours=1),
    )
    return done.ids[0]


def stored(engine: sa.Engine, kind: str | None = None) -> list[Any]:
    query = sa.select(events).where(events.c.source == "winback")
    if kind:
        query = query.where(events.c.event_type == kind)
    with engine.connect() as connection:
        return list(connection.execute(query).mappings())


def tampered(token: str) -> list[str]:
    """The token with one character of its payload, then of its signature, changed; and re-split."""
    payload, signature = token.split(".")
    flip = {"A": "B"}

    def change(text: str, i: int) -> str:
        return text[:i] + flip.get(text[i], "A") + text[i + 1 :]

    return [f"{change(payload, 3)}.{signature}", f"{payload}.{change(signature, 5)}", payload, token + "x"]


# -- tokens ----------------------------------------------------------------------------------------------


def test_tokens_round_trip_and_refuse_tampering() -> None:
    signer = Signer("s3cret")
    link = Link("click", 42, "email", TARGET, issued_at=1_700_000_000)
    token = signer.sign(link, issued_at=1_700_000_000)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)  # URL-safe as it is
    assert signer.verify(token, "click") == link
    for bad in tampered(token):
        with pytest.raises(BadTokenError):
            signer.verify(bad, "click")
    with pytest.raises(BadTokenError, match="signature"):
        Signer("another secret").verify(token, "click")  # a foreign token
    with pytest.raises(BadTokenError, match="click token used as open"):
        signer.verify(token, "open")
    with pytest.raises(BadInputError, match="http"):
        signer.sign(Link("click", 1, "email", "javascript:alert(1)"))
    unsubscribe = signer.sign(Link("unsubscribe", 42, "sms"))
    assert signer.verify(unsubscribe, "unsubscribe").channel == "sms"


# -- routes, on both databases ----------------------------------------------------------------------------


def test_open_pixel_records_the_first_open_once(client: TestClient, service_settings: Settings) -> None:
    engine = engine_of(client)
    message = scheduled(engine)
    url = links_for(service_settings).open_url(message, "email")
    for _ in range(3):  # mail clients and proxies fetch the pixel again
        answer = client.get(url.removeprefix("http://testserver"))
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/gif"
        assert answer.content.startswith(b"GIF89a")
        assert len(answer.content) == 42
        assert "no-store" in answer.headers["cache-control"]
    opened = stored(engine, "message_opened")
    assert len(opened) == 1
    assert opened[0]["user_id"] == "u1"
    assert opened[0]["session_id"] == "c-u1"
    assert json.loads(opened[0]["properties"]) == {"message_id": message, "channel": "email"}


def test_click_redirects_only_to_the_signed_target(client: TestClient, service_settings: Settings) -> None:
    engine = engine_of(client)
    message = scheduled(engine)
    links = links_for(service_settings)
    path = links.click_url(message, "email", TARGET).removeprefix("http://testserver")
    answer = client.get(
        path + "?url=https://evil.example/&next=https://evil.example/", follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == TARGET  # from the token, whatever the query says
    client.get(path, follow_redirects=False)
    other = links.click_url(message, "email", "https://shop.example/p/2")
    assert client.get(other.removeprefix("http://testserver"), follow_redirects=False).status_code == 303
    clicks = stored(engine, "message_clicked")
    assert sorted(json.loads(c["properties"])["url"] for c in clicks) == [TARGET, "https://shop.example/p/2"]


def test_tampered_foreign_and_erased_tokens_store_nothing(
    client: TestClient, service_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_of(client)
    message = scheduled(engine)
    links = links_for(service_settings)
    foreign = Links("http://testserver", Signer("not this service's secret"))
    urls = {
        "open": (links.open_url(message, "email"), foreign.open_url(message, "email")),
        "click": (links.click_url(message, "email", TARGET), foreign.click_url(message, "email", TARGET)),
        "unsubscribe": (links.unsubscribe_url(message, "email"), foreign.unsubscribe_url(message, "email")),
    }
    caplog.set_level("WARNING", logger="winback.serve")
    for kind, (good, bad) in urls.items():
        prefix, token = good.rsplit("/", 1)
        prefix = prefix.removeprefix("http://testserver")
        candidates = [*(f"{prefix}/{t}" for t in tampered(token)), bad.removeprefix("http://testserver")]
        for path in candidates:
            method = client.post if kind == "unsubscribe" else client.get
            answer = method(path, follow_redirects=False)
            assert answer.status_code == 404, (kind, path)
            assert answer.text == "This link is not valid."
            assert "location" not in answer.headers
    # a valid token of one kind used for another, and one for a message no longer in the outbox
    open_token = urls["open"][0].rsplit("/", 1)[1]
    assert client.get(f"/t/c/{open_token}", follow_redirects=False).status_code == 404
    gone = links.open_url(message + 1000, "email").removeprefix("http://testserver")
    assert client.get(gone).status_code == 404
    assert stored(engine) == []
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refused) >= 14
    assert not any("u1" in line or open_token in line for line in refused)  # nothing personal logged
    metrics = client.get("/metrics").text
    assert 'winback_auth_failures_total{reason="tracking_token"}' in metrics


def test_unsubscribe_cancels_the_pending_message(client: TestClient, service_settings: Settings) -> None:
    engine = engine_of(client)
    message = scheduled(engine)
    path = links_for(service_settings).unsubscribe_url(message, "email").removeprefix("http://testserver")
    page = client.get(path)
    assert page.status_code == 200
    assert 'method="post"' in page.text
    assert stored(engine) == []  # a GET (a link scanner) unsubscribes nobody
    # RFC 8058 one-click: the mail client POSTs List-Unsubscribe=One-Click to the header's URL
    for _ in range(2):
        done = client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200
        assert "unsubscribed" in done.text
    unsubscribed = stored(engine, "unsubscribed")
    assert len(unsubscribed) == 1
    assert json.loads(unsubscribed[0]["properties"])["channel"] == "email"
    assert set(send_facts(engine, ["u1"]).unsubscribed["u1"]) == {"email"}
    stats = Worker(engine, service_settings).run(once=True)
    assert (stats.claimed, stats.cancelled, stats.sent) == (1, 1, 0)
    with engine.connect() as connection:
        row = connection.execute(sa.select(outbox).where(outbox.c.id == message)).mappings().one()
    assert row["status"] == "cancelled"
    assert row["last_error"] == "unsubscribed from email"


def test_rendered_email_carries_tracked_links_and_list_unsubscribe(
    client: TestClient, service_settings: Settings
) -> None:
    engine = engine_of(client)
    scheduled(engine)
    (message,) = claim(engine, "test-worker")
    rendered = Renderer(links=links_for(service_settings)).render(message)
    assert rendered.html is not None
    assert rendered.unsubscribe_url is not None
    hrefs = re.findall(r'(?:href|src)="([^"]+)"', rendered.html)
    assert hrefs
    assert all(h.startswith("http://testserver/") for h in hrefs)
    assert TARGET not in rendered.html
    assert TARGET not in rendered.text
    assert rendered.unsubscribe_url in rendered.text
    pixel = next(h for h in hrefs if "/t/o/" in h)
    assert client.get(pixel.removeprefix("http://testserver")).status_code == 200
    cart_link = next(h for h in hrefs if "/t/c/" in h)
    follow = client.get(cart_link.removeprefix("http://testserver"), follow_redirects=False)
    assert follow.headers["location"] in (TARGET, "https://shop.example/cart")
    mail: MailMessage = email.message_from_bytes(build_email(message, rendered, "shop@example.com"))
    assert mail["List-Unsubscribe"] == f"<{rendered.unsubscribe_url}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert client.post(rendered.unsubscribe_url.removeprefix("http://testserver")).status_code == 200
    untracked = Renderer().render(message)  # without WINBACK_PUBLIC_URL: no pixel, links as given
    assert untracked.unsubscribe_url is None
    assert "/t/o/" not in (untracked.html or "")
    assert TARGET in (untracked.html or "")
    assert "List-Unsubscribe" not in build_email(message, untracked, "shop@example.com").decode()


# -- attribution --------------------------------------------------------------------------------------------


def test_purchases_are_attributed_to_the_last_message_in_the_window(
    client: TestClient, service_settings: Settings, auth: dict[str, str], tmp_path: Any
) -> None:
    engine = engine_of(client)
    now = datetime.now(UTC)
    first = scheduled(engine, "u1", minutes_ago=60 * 24 * 3)
    second = scheduled(engine, "u1", coupon=10.0, minutes_ago=60 * 24 * 2)
    scheduled(engine, "u2", minutes_ago=60 * 24 * 9)
    messages = {m.id: m for m in claim(engine, "w", limit=10)}
    assert set(messages) >= {first, second}
    record_sent(
        engine,
        [Sent(m, None, "250", m.send_at) for m in messages.values()],
        "w",
    )

    def purchase(user: str, order: str, at: datetime, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": f"{order}:1", "event_type": "purchase", "timestamp": at.isoformat(), "user_id": user,
            "product_id": "p1", "price": 39.5, "quantity": 2, "order_id": order, **extra,
        }  # fmt: skip

    body = [
        purchase("u1", "o1", now - timedelta(days=1), properties={"coupon": "WB-X"}),
        purchase("u2", "o2", now - timedelta(hours=1)),  # its message was 9 days before: outside
        purchase("u3", "o3", now - timedelta(hours=2)),  # never messaged
    ]
    assert client.post("/v1/events", json=body, headers=auth).json()["stored"] == 3
    found = {a.order_id: a for a in attribute_purchases(engine, window_days=7)}
    assert found["o1"].message_id == second  # the last one before the order, not the first
    assert found["o1"].decision_id == messages[second].decision_id
    assert found["o1"].revenue == 79.0
    assert found["o1"].used_coupon
    assert found["o2"].message_id is None
    assert found["o3"].message_id is None
    # into the decision log: the decisions as a plan would have logged them
    with DecisionLog(service_settings, tmp_path / "decisions.duckdb") as log:
        log.append(
            [
                {
                    "decided_at": messages[m].created_at, "cart_id": messages[m].cart_id, "user_id": "u1",
                    "policy": "static", "version": "1", "action": messages[m].payload["action"],
                    "send_at": messages[m].send_at, "propensity": 1.0,
                }
                for m in (first, second)
            ]
        )  # fmt: skip
        updated = log_outcomes(engine, log, window_days=7, until=now + timedelta(days=8))
        outcome = log.read().set_index("action")
    assert updated == 2
    assert bool(outcome.loc["coupon10/email/24h", "recovered"])
    assert outcome.loc["coupon10/email/24h", "revenue"] == 79.0
    assert outcome.loc["coupon10/email/24h", "discount"] == 7.9
    assert not bool(outcome.loc["reminder/email/24h", "recovered"])

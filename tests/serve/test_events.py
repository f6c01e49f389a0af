"""POST /v1/events on SQLite and PostgreSQL: one event or a batch, idempotent by event_id, validated
whole (nothing partly written), errors naming the field, API keys required."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from winback.serve.ingest import count_events
from winback.serve.keys import create_key, revoke


def _event(i: int = 0, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "event_type": "add_to_cart", "timestamp": "2024-05-01T10:00:00+02:00",
            "user_id": f"u{i % 7}", "session_id": f"s{i % 3}", "product_id": f"p{i}", "price": 19.5,
            "quantity": 2, "currency": "EUR", "properties": {"campaign": "spring"}, **changes}  # fmt: skip


def _stored(client: TestClient) -> int:
    return count_events(client.app.state.winback.engine)  # type: ignore[attr-defined]


def test_one_event_a_list_or_an_events_object_each_stored_once(
    client: TestClient, auth: dict[str, str]
) -> None:
    one = client.post("/v1/events", json=_event(0), headers=auth)
    assert one.status_code == 200, one.text
    assert one.json() == {"received": 1, "stored": 1, "duplicates": 0}
    batch = [_event(i) for i in range(1, 501)]
    assert client.post("/v1/events", json=batch, headers=auth).json() == {
        "received": 500, "stored": 500, "duplicates": 0
    }  # fmt: skip
    # a retried batch, the same event inside one batch, and the object form: stored once
    again = client.post("/v1/events", json={"events": [*batch[:10], _event(999), _event(999)]}, headers=auth)
    assert again.json() == {"received": 12, "stored": 1, "duplicates": 11}
    assert _stored(client) == 502


def test_an_event_without_id_is_identified_by_its_content(client: TestClient, auth: dict[str, str]) -> None:
    event = _event(1)
    del event["event_id"]
    assert client.post("/v1/events", json=event, headers=auth).json()["stored"] == 1
    assert client.post("/v1/events", json=event, headers=auth).json()["duplicates"] == 1
    assert client.post("/v1/events", json={**event, "quantity": 3}, headers=auth).json()["stored"] == 1


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"event_type": "click"}, "event_type", "view"),
        ({"timestamp": "2024-05-01T10:00:00"}, "timestamp", "time zone"),
        ({"timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"price": -1}, "price", "greater than or equal to 0"),
        ({"quantity": 0}, "quantity", "greater than or equal to 1"),
        ({"currency": "euro"}, "currency", "pattern"),
        ({"product_id": None}, None, "product_id: required on add_to_cart"),
        ({"user_id": None}, None, "user_id: a user_id or an anonymous_id"),
        ({"prize": 3}, "prize", "Extra inputs"),
        ({"properties": [1, 2]}, "properties", "dictionary"),
        ({"session_id": "s\x00"}, "session_id", "NUL"),  # PostgreSQL cannot store it
    ],
)
def test_a_bad_event_is_refused_naming_the_field_and_nothing_is_written(
    client: TestClient, auth: dict[str, str], change: dict[str, Any], field: str | None, words: str
) -> None:
    batch = [_event(1), _event(2, **change), _event(3)]
    reply = client.post("/v1/events", json=batch, headers=auth)
    assert reply.status_code == 422
    (error,) = reply.json()["detail"]
    assert error["loc"][:2] == ["body", 1]
    if field is not None:
        assert error["loc"][2] == field
    assert words in error["msg"]
    assert _stored(client) == 0  # the good events of the batch were not written either


def test_malformed_bodies_get_4xx(client: TestClient, auth: dict[str, str]) -> None:
    assert client.post("/v1/events", content=b"{not json", headers=auth).status_code == 400
    assert client.post("/v1/events", json=[], headers=auth).status_code == 422
    assert client.post("/v1/events", json="view", headers=auth).status_code == 422
    assert client.post("/v1/events", json={"events": [1]}, headers=auth).status_code == 422
    assert _stored(client) == 0


def test_api_keys_are_required_scoped_and_revocable(client: TestClient, auth: dict[str, str]) -> None:
    engine = client.app.state.winback.engine  # type: ignore[attr-defined]
    assert client.post("/v1/events", json=_event()).status_code == 401
    wrong = {"Authorization": auth["Authorization"][:-2] + "xx"}
    assert client.post("/v1/events", json=_event(), headers=wrong).status_code == 401
    assert client.post("/v1/events", json=_event(), headers={"X-API-Key": "wbk_nope"}).status_code == 401
    reader, _ = create_key(engine, "read")
    refused = client.post("/v1/events", json=_event(), headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    assert "scope read" in refused.json()["detail"]
    token, key = create_key(engine, "admin")
    assert client.post("/v1/events", json=_event(), headers={"X-API-Key": token}).status_code == 200
    assert revoke(engine, key.key_id)
    assert client.post("/v1/events", json=_event(9), headers={"X-API-Key": token}).status_code == 401
    assert _stored(client) == 1
    assert 'winback_auth_failures_total{reason="invalid"} 3.0' in client.get("/metrics").text


def test_sql_metacharacters_are_data(client: TestClient, auth: dict[str, str]) -> None:
    nasty = "x'); DROP TABLE events; --"
    reply = client.post("/v1/events", json=_event(1, user_id=nasty, product_id='p" OR 1=1 --'), headers=auth)
    assert reply.status_code == 200
    assert _stored(client) == 1
    with client.app.state.winback.engine.connect() as connection:  # type: ignore[attr-defined]
        (user,) = connection.exec_driver_sql("SELECT user_id FROM events").one()
    assert user == nasty


def test_oversized_bodies_are_refused(service_settings, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from winback.serve.main import create_app

    small = service_settings.model_copy(update={"max_body_bytes": 2_000, "max_batch_events": 5})
    with TestClient(create_app(small)) as client:
        token, _ = create_key(client.app.state.winback.engine, "write")  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {token}"}
        big = client.post("/v1/events", json=[_event(i) for i in range(20)], headers=headers)
        assert big.status_code == 413
        assert "2,000 bytes" in big.json()["detail"]
        many = client.post("/v1/events", json=[{"event_type": "view"}] * 6, headers=headers)
        assert many.status_code == 413
        assert "at most 5" in many.json()["detail"]
        assert _stored(client) == 0


def test_health_readiness_metrics_and_schema(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    client.post("/v1/events", json=[_event(1), _event(2)], headers=auth)
    assert 'winback_events_in_total{path="http",result="stored"} 2.0' in client.get("/metrics").text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(body["anyOf"]) == 3
    assert "Event" in schema["components"]["schemas"]

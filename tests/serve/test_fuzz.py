"""A schema-driven fuzz of the HTTP API: schemathesis generates requests for every operation of the
app's own OpenAPI schema, valid and invalid, sent with an admin key and without one, on SQLite and on
PostgreSQL. None gets a 5xx, and a JSON refusal says what was wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from winback.config import Settings
from winback.serve.keys import create_key
from winback.serve.main import create_app

EXAMPLES = 40


def _fuzzer(operation: Any, key: str, seen: set[int]) -> Callable[[], None]:
    """A Hypothesis test of one operation: its generated requests, with the key and without."""

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )  # fmt: skip
    @given(operation.as_strategy())
    def fuzz(case: Any) -> None:
        for headers in ({"Authorization": f"Bearer {key}"}, {}):
            response = case.call(headers=headers)
            seen.add(response.status_code)
            assert response.status_code < 500, (
                case.method, case.path, case.body, response.status_code, response.text[:300]
            )  # fmt: skip
            if response.status_code >= 400 and "json" in str(response.headers.get("content-type", "")):
                assert response.json().get("detail"), response.text[:300]

    return fuzz


def test_no_request_gets_a_server_error(service_settings: Settings) -> None:
    app = create_app(service_settings)
    key, _ = create_key(app.state.winback.engine, "admin")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    tried: dict[str, set[int]] = {}
    for operation in operations:
        seen = tried.setdefault(f"{operation.method.upper()} {operation.path}", set())
        _fuzzer(operation, key, seen)()
    assert all(tried.values()), tried
    # the fuzz reached both sides: some requests were accepted, some refused
    assert any(c < 300 for codes in tried.values() for c in codes), tried
    assert any(400 <= c < 500 for codes in tried.values() for c in codes), tried

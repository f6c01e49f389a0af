"""The canonical event model under property-based tests: whatever a client sends, the model either
gives a valid event or a ValidationError naming what is wrong, never another exception."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from winback.events.model import Event
from winback.events.schema import EVENT_TYPES, PRODUCT_EVENT_TYPES

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s
)
times = st.datetimes(
    min_value=datetime(1990, 1, 2), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
).filter(lambda t: t < datetime.now(UTC) + timedelta(hours=23))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    event: dict[str, Any] = {"event_type": kind, "timestamp": draw(times).isoformat()}
    event["user_id" if draw(st.booleans()) else "anonymous_id"] = draw(ids)
    if kind in PRODUCT_EVENT_TYPES or draw(st.booleans()):
        event["product_id"] = draw(ids)
    for name, strategy in (
        ("event_id", ids), ("session_id", ids), ("order_id", ids), ("category", ids), ("brand", ids),
        ("price", st.floats(0, 1e7)), ("value", st.floats(0, 1e7)), ("quantity", st.integers(1, 1_000_000)),
        ("currency", st.sampled_from(["USD", "EUR", "JPY"])),
        ("properties", st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    ):  # fmt: skip
        if draw(st.booleans()):
            event[name] = draw(strategy)
    return event


@settings(max_examples=300, deadline=None)
@given(valid_events())
def test_valid_events_validate_and_keep_their_values(raw: dict[str, Any]) -> None:
    event = Event.model_validate(raw)
    assert event.event_id
    row = event.row("http", datetime.now(UTC))
    for name in ("event_type", "user_id", "anonymous_id", "product_id", "quantity", "currency"):
        assert row[name] == raw.get(name)
    assert row["timestamp"] == datetime.fromisoformat(raw["timestamp"])
    if "event_id" not in raw:  # identified by content: the same content, the same id, in any key order
        again = Event.model_validate(dict(reversed(list(raw.items()))))
        assert again.event_id == event.event_id


def _problems(raw: dict[str, Any]) -> list[Any] | None:
    """The model's refusal of ``raw`` (its problems), or None if it is a valid event; any other
    exception propagates and fails the test."""
    try:
        Event.model_validate(raw)
    except ValidationError as error:
        return list(error.errors())
    return None


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*Event.model_fields, "extra", "prize"]), json_values, max_size=8))
def test_any_object_is_an_event_or_a_validation_error(raw: dict[str, Any]) -> None:
    problems = _problems(raw)
    if problems is not None:
        assert problems, "a refusal names at least one problem"
        assert all(p["msg"] for p in problems)


FIELDS = st.sampled_from(["timestamp", "price", "quantity", "currency", "event_type"])


@settings(max_examples=200, deadline=None)
@given(valid_events(), FIELDS, json_values)
def test_a_bad_value_is_refused_by_its_field_name(raw: dict[str, Any], field: str, value: Any) -> None:
    problems = _problems({**raw, field: value})
    if problems is not None:
        named = [p for p in problems if p["loc"][:1] == (field,) or field in p["msg"]]
        assert named, problems


def test_naive_and_implausible_timestamps_are_refused() -> None:
    base = {"event_type": "view", "user_id": "u"}
    for stamp, words in (
        ("2024-05-01T10:00:00", "time zone"),
        ("1970-01-02T00:00:00Z", "after 1990"),
        ((datetime.now(UTC) + timedelta(days=3)).isoformat(), "no later than"),
    ):
        with pytest.raises(ValidationError, match=words):
            Event.model_validate({**base, "timestamp": stamp})


def test_a_brand_is_kept_and_is_not_part_of_an_events_identity() -> None:
    """As in the store: the brand describes the product, and events sent before the field existed keep
    their content ids."""
    raw = {"event_type": "view", "timestamp": "2024-05-01T10:00:00Z", "user_id": "u1", "product_id": "p1"}
    branded = Event.model_validate(raw | {"brand": " Acme "})
    assert branded.brand == "Acme"
    assert branded.event_id == Event.model_validate(raw).event_id
    assert _problems(raw | {"brand": ""}) is not None

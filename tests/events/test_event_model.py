"""The canonical event model under property-based tests: whatever a client sends, the model either
gives a valid event or a ValidationError naming what is wrong, never another exception; and the fast
path of ingest (events/json_batch.py) takes only what the model takes, with the same row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from winback.events.json_batch import fast_rows
from winback.events.model import ROW_FIELDS, Event
from winback.events.schema import EVENT_TYPES, PRODUCT_EVENT_TYPES

characters = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00")
ids = st.text(characters, min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)
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
    row = dict(zip(ROW_FIELDS, event.as_row(), strict=True))
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


def test_a_nul_character_in_a_text_field_is_refused_by_name() -> None:
    base = {"event_type": "view", "timestamp": "2024-05-01T10:00:00Z", "user_id": "u"}
    with pytest.raises(ValidationError, match="NUL") as refused:
        Event.model_validate({**base, "session_id": "s\x00"})
    assert refused.value.errors()[0]["loc"] == ("session_id",)
    assert (
        Event.model_validate({**base, "properties": {"note": "a\x00b"}}).as_row()[-1]
        == '{"note":"a\\u0000b"}'
    )


# -- the fast path (msgspec) against the model ----------------------------------------------------------

_MODEL = TypeAdapter(list[Event])


def _model_rows(body: bytes) -> list[Any] | None:
    try:
        return [event.as_row() for event in _MODEL.validate_json(body)]
    except ValidationError:
        return None


def _agree(events: list[Any], body: bytes | None = None, *, wrapped: bool = False) -> bool:
    """Whether the fast path took ``events`` (sent as ``body``, by default a JSON list); if it did, the
    model takes them too, with the same rows (same types, same time zone, same content ids)."""
    fast = fast_rows(body or orjson.dumps(events), wrapped=wrapped)
    if fast is not None:
        model = _model_rows(orjson.dumps(events))
        assert model is not None, events
        assert repr(fast) == repr(model), events
    return fast is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_events(), min_size=1, max_size=4))
def test_the_fast_path_takes_valid_events_with_the_rows_of_the_model(raw: list[dict[str, Any]]) -> None:
    taken = _agree(raw)
    # only property keys the model would strip, or a NUL, go the slow way
    assert (
        taken
        or b"\\u0000" in orjson.dumps(raw)
        or any(k.strip() != k for event in raw for k in event.get("properties", {}))
    ), raw
    assert _agree(raw, orjson.dumps({"events": raw}), wrapped=True) == taken
    assert _agree(raw[:1], orjson.dumps(raw[0]), wrapped=True) or not taken


odd_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6).map(
    lambda s: st.sampled_from([s, f" {s}", f"{s}\t", f"{s}\u2003", f"\x1c{s}", "USD\n", "usd"])
)
odd_values = (
    json_values
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["12.5", "1e3", 3.0, 2.5, -0.0, True, 10**19, 1_000_001, "2024-05-01"])
    | odd_texts.flatmap(lambda s: s)
)


@settings(max_examples=500, deadline=None)
@given(valid_events(), st.sampled_from([*Event.model_fields, "extra"]), odd_values)
def test_whatever_the_fast_path_takes_the_model_takes_alike(
    raw: dict[str, Any], field: str, value: Any
) -> None:
    _agree([{**raw, field: value}])
    _agree([{**raw, field: value}], orjson.dumps({**raw, field: value}), wrapped=True)


timestamps = st.builds(
    "{}-{:02d}-{:02d}{}{:02d}:{:02d}{}{}{}".format,
    st.sampled_from(["2024", "1989", "2099", "0000", "24"]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " ", "_", ""]),
    st.integers(0, 25),
    st.integers(0, 60),
    st.sampled_from([":00", ":59", ":60", ""]),
    st.sampled_from(["", ".", ".5", ".123456", ".1234567", ".9999999", ",5", ".000000001"]),
    st.sampled_from(
        ["Z", "z", "", "+02:00", "+0200", "+02", "-00:00", "+00:00", "+23:59", "+24:00", "-12:30"]
    ),
)


@settings(max_examples=500, deadline=None)
@given(valid_events(), timestamps)
def test_timestamps_the_fast_path_takes_mean_the_same_time_to_the_model(
    raw: dict[str, Any], stamp: str
) -> None:
    _agree([{**raw, "timestamp": stamp}])


def test_common_bodies_take_the_fast_path() -> None:
    event = {"event_type": "add_to_cart", "timestamp": "2024-05-01T10:00:00.25+02:00", "user_id": "u1",
             "product_id": "p1", "price": 19, "quantity": 2, "currency": "EUR",
             "properties": {"a": [1, "b"]}}  # fmt: skip
    assert _agree([event, {**event, "event_id": "e2"}])
    assert _agree([event], orjson.dumps(event), wrapped=True)
    assert _agree([event], orjson.dumps({"events": [event]}), wrapped=True)
    assert fast_rows(orjson.dumps({"events": [event], "more": 1}), wrapped=True) is None
    assert fast_rows(orjson.dumps(event)) is None  # a list is expected there (stream entries)
    assert _agree([{**event, "price": 16.991500000000002, "properties": {"note": "<é>"}}])
    # a long fraction of a second (rounded by msgspec, truncated by pydantic), even escaped: the model's
    for stamp in (b"10:00:00.2500001", b"10:00:00\\u002e2500001"):
        body = orjson.dumps([event]).replace(b"10:00:00.25", stamp)
        assert fast_rows(body) is None, body
        assert _model_rows(body) is not None


def test_a_brand_is_kept_and_is_not_part_of_an_events_identity() -> None:
    """As in the store: the brand describes the product, and events sent before the field existed keep
    their content ids."""
    raw = {"event_type": "view", "timestamp": "2024-05-01T10:00:00Z", "user_id": "u1", "product_id": "p1"}
    branded = Event.model_validate(raw | {"brand": " Acme "})
    assert branded.brand == "Acme"
    assert branded.event_id == Event.model_validate(raw).event_id
    assert _problems(raw | {"brand": ""}) is not None

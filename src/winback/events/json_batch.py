"""JSON batches of events decoded straight into table rows, at under 2 µs of CPU an event (the pydantic
model takes 8-9 µs with its row).

msgspec decodes the batch into typed structs in C (types, lengths, bounds, the known event types, no
unknown fields, a time zone on the timestamp); a short Python pass checks what msgspec cannot (the time
bounds, someone and a product where required, no whitespace to strip, the currency, the properties'
size) and builds the rows. The pydantic :class:`~winback.events.model.Event` stays the judge: a batch this
fast path does not take whole, for whatever reason, returns None and is validated by the model, which
either accepts it (pydantic is laxer: ``"12.5"`` as a price, whitespace it strips, seven-digit fractions
of a second it truncates where msgspec would round) or says by field what is wrong. So the fast path
only ever accepts what the model accepts, with the same row (tested with hypothesis in
``tests/events/test_event_model.py``), and refusals read as before.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

from winback.events.model import MAX_FUTURE, MIN_TIMESTAMP, EventRow, EventTypeName, content_id
from winback.events.schema import PRODUCT_EVENT_TYPES

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_Money = Annotated[float, msgspec.Meta(ge=0)]


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    """The wire form of :class:`~winback.events.model.Event` (same names, same constraints as far as
    msgspec can say them)."""

    event_type: EventTypeName
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    event_id: _Id | None = None
    user_id: _Id | None = None
    anonymous_id: _Id | None = None
    session_id: _Id | None = None
    product_id: _Id | None = None
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    brand: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    price: _Money | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    order_id: _Id | None = None
    value: _Money | None = None
    currency: str | None = None
    properties: dict[str, Any] | None = None


class _Wrapped(msgspec.Struct, forbid_unknown_fields=True):
    events: list[_Event]


_LIST = msgspec.json.Decoder(list[_Event])
_ONE = msgspec.json.Decoder(_Event)
_WRAPPED = msgspec.json.Decoder(_Wrapped)

#: Left to the model: a batch with a NUL (refused in text fields) or an escaped digit, colon or dot (which
#: could hide the next case from its check); a batch with a fraction of a second of more than 6 digits,
#: which msgspec rounds and pydantic truncates (a quick gate, also true of floats such as
#: 16.991500000000002, then the check). False alarms (such text inside a property) go to the model too.
_ESCAPED = re.compile(rb"\\u00(?:00|3[0-9aA]|2[eE])")
_SEVEN_DIGITS = re.compile(rb"\.\d{7}")
_LONG_FRACTION = re.compile(rb":\d\d:\d\d\.\d{7}")


def _model_decides(body: bytes) -> bool:
    return bool(_ESCAPED.search(body) or (_SEVEN_DIGITS.search(body) and _LONG_FRACTION.search(body)))


class _ModelDecidesError(Exception):
    """Something the fast path leaves to the model."""


def fast_rows(body: bytes, *, wrapped: bool = False) -> list[EventRow] | None:
    """The rows of ``body``, a JSON list of events (with ``wrapped``: also one event object or
    ``{"events": [...]}``, the bodies of ``POST /v1/events``); None when the fast path does not take it
    whole, and the model must decide."""
    if _model_decides(body):
        return None
    try:
        if not wrapped:
            return _rows(_LIST.decode(body))
        first = body.lstrip()[:1]
        if first == b"[":
            return _rows(_LIST.decode(body))
        if first != b"{":
            return None
        try:
            return _rows([_ONE.decode(body)])
        except msgspec.ValidationError:
            return _rows(_WRAPPED.decode(body).events)
    except (msgspec.DecodeError, msgspec.ValidationError, _ModelDecidesError):
        return None


def _rows(events: list[_Event]) -> list[EventRow]:
    """The rows of decoded events, after the checks msgspec cannot make; _ModelDecidesError if one fails."""
    latest = time.time() + MAX_FUTURE.total_seconds()
    rows: list[EventRow] = []
    for e in events:
        timestamp = e.timestamp.astimezone(UTC)
        if timestamp < MIN_TIMESTAMP or timestamp.timestamp() > latest:
            raise _ModelDecidesError
        if e.user_id is None and e.anonymous_id is None:
            raise _ModelDecidesError
        if e.product_id is None and e.event_type in PRODUCT_EVENT_TYPES:
            raise _ModelDecidesError
        texts = (
            e.event_id, e.user_id, e.anonymous_id, e.session_id, e.product_id, e.category, e.brand, e.order_id
        )  # fmt: skip
        for text in texts:
            if text is not None and text.strip() != text:  # the model would strip it
                raise _ModelDecidesError
        currency = e.currency
        if currency is not None and not (
            len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
        ):
            raise _ModelDecidesError
        properties = None if e.properties is None else _properties(e.properties)
        event_id = e.event_id
        if event_id is None:  # brand is not part of the content, as in the model and the store
            event_id = content_id(
                {
                    "event_type": e.event_type, "timestamp": _json_time(timestamp), "user_id": e.user_id,
                    "anonymous_id": e.anonymous_id, "session_id": e.session_id, "product_id": e.product_id,
                    "category": e.category, "price": e.price, "quantity": e.quantity, "order_id": e.order_id,
                    "value": e.value, "currency": currency, "properties": e.properties,
                }
            )  # fmt: skip
        rows.append(
            (
                event_id, e.event_type, timestamp, e.user_id, e.anonymous_id, e.session_id, e.product_id,
                e.category, e.brand, e.price, e.quantity, e.order_id, e.value, currency, properties,
            )
        )  # fmt: skip
    return rows


def _properties(properties: dict[str, Any]) -> str:
    """The properties as JSON text, as the model stores them; _ModelDecidesError where the model would
    refuse or change them (not encodable, over 16 KB, keys it would strip)."""
    try:
        text = orjson.dumps(properties)
    except TypeError:
        raise _ModelDecidesError from None
    if len(text) > 16_384 or any(key.strip() != key for key in properties):
        raise _ModelDecidesError
    return text.decode()


def _json_time(timestamp: datetime) -> str:
    """A UTC time as pydantic writes it in JSON (``2024-05-01T08:00:00Z``, microseconds when not 0):
    what the content id of an event hashes."""
    return timestamp.isoformat().replace("+00:00", "Z")

"""The canonical event as one validated object: what the service's ``POST /v1/events`` accepts.

The same rules as file ingest (:mod:`winback.events.normalize`), written for one event at a time:
a known event type; a timestamp with a time zone, after ``min_timestamp`` and at most ``max_future``
ahead; a user or anonymous id; a product on cart events; non-negative finite money; a whole quantity from
1 to 1,000,000; a three-letter currency; properties as a JSON object. Unknown fields are refused by name
(a typo must not silently drop data), and so is a NUL character in a text field (PostgreSQL cannot store
one, and SQLite would cut the text there). An event without an ``event_id`` gets one from its content, so
the same event sent twice is stored once.

>>> event = Event.model_validate({"event_type": "view", "timestamp": "2024-05-01T10:00:00Z",
...                               "user_id": "u1", "product_id": "p1"})
>>> event.event_id == Event.model_validate(event.model_dump(exclude={"event_id"})).event_id
True
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from winback.events.schema import PRODUCT_EVENT_TYPES

EventTypeName = Literal[
    "view",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
    "purchase",
    "message_sent",
    "message_opened",
    "message_clicked",
    "unsubscribed",
]

#: Bounds on event times, as in the settings' defaults (``min_timestamp``, ``max_future``).
MIN_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=1)
_MAX_FUTURE_S = MAX_FUTURE.total_seconds()

Id = Field(default=None, min_length=1, max_length=200)

#: An event as a row of the service's ``events`` table: the values of :data:`ROW_FIELDS` in that order
#: (the table's first columns; storage adds ``source`` and ``received_at``), the timestamp in UTC and the
#: properties as JSON text.
EventRow = tuple[Any, ...]
ROW_FIELDS = (
    "event_id", "event_type", "timestamp", "user_id", "anonymous_id", "session_id", "product_id",
    "category", "brand", "price", "quantity", "order_id", "value", "currency", "properties",
)  # fmt: skip


class Event(BaseModel):
    """One behaviour event (see :data:`winback.events.schema.EVENT_SCHEMA` for the columns)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    event_id: str | None = Field(default=None, min_length=1, max_length=200)
    event_type: EventTypeName
    timestamp: datetime
    user_id: str | None = Id
    anonymous_id: str | None = Id
    session_id: str | None = Id
    product_id: str | None = Id
    category: str | None = Field(default=None, min_length=1, max_length=500)
    brand: str | None = Field(default=None, min_length=1, max_length=500)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    quantity: int | None = Field(default=None, ge=1, le=1_000_000)
    order_id: str | None = Id
    value: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    properties: dict[str, Any] | None = None

    @field_validator(
        "event_id",
        "user_id",
        "anonymous_id",
        "session_id",
        "product_id",
        "category",
        "brand",
        "order_id",
        "currency",
    )
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("text without NUL characters (\\u0000)")
        return value

    @field_validator("timestamp")
    @classmethod
    def _zoned_and_plausible(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("a timestamp with a time zone, e.g. 2024-05-01T10:00:00Z or +02:00")
        value = value.astimezone(UTC)
        if value < MIN_TIMESTAMP:
            raise ValueError(
                f"a time after {MIN_TIMESTAMP:%Y-%m-%d} (are milliseconds being read as seconds?)"
            )
        if value.timestamp() > time.time() + _MAX_FUTURE_S:  # cheaper than datetime.now() per event
            raise ValueError(f"a time no later than {MAX_FUTURE.days * 24} h from now")
        return value

    @field_validator("properties")
    @classmethod
    def _json_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            text = orjson.dumps(value)
        except TypeError as error:
            raise ValueError(f"a JSON object ({error})") from None
        if len(text) > 16_384:
            raise ValueError("a JSON object of at most 16 KB")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Event:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError(
                "user_id: a user_id or an anonymous_id is required (an event must belong to someone)"
            )
        if self.event_type in PRODUCT_EVENT_TYPES and self.product_id is None:
            raise ValueError(f"product_id: required on {self.event_type} events")
        for name in ("price", "value"):
            number = getattr(self, name)
            if number is not None and not math.isfinite(number):
                raise ValueError(f"{name}: a finite number")
        if self.event_id is None:
            fields = self.model_dump(mode="json", exclude={"event_id", "brand"})  # brand: as in the store
            object.__setattr__(self, "event_id", content_id(fields))
        return self

    def as_row(self) -> EventRow:
        """The event as a row of the service's ``events`` table (:data:`ROW_FIELDS`)."""
        properties = orjson.dumps(self.properties).decode() if self.properties is not None else None
        return (
            self.event_id, self.event_type, self.timestamp, self.user_id, self.anonymous_id,
            self.session_id, self.product_id, self.category, self.brand, self.price, self.quantity,
            self.order_id, self.value, self.currency, properties,
        )  # fmt: skip


def content_id(fields: dict[str, Any]) -> str:
    """A stable id of an event's content (for events sent without one): 32 hex digits of the md5 of its
    fields but ``event_id`` as JSON (``Event.model_dump(mode="json")``) with sorted keys."""
    digest = hashlib.md5(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS), usedforsecurity=False)
    return "content:" + digest.hexdigest()

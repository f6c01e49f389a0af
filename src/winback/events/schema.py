"""The one canonical event model every adapter maps onto and every later stage reads.

The schema is an Arrow schema because every engine we use (DuckDB, pandas, Spark, Parquet) speaks Arrow
without copying; the DuckDB DDL in :mod:`winback.events.store` is derived from it.
"""

from __future__ import annotations

import json
from enum import StrEnum

import pyarrow as pa


class EventType(StrEnum):
    """Behaviour events a shop sends, and the message events winback emits itself."""

    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    CHECKOUT_START = "checkout_start"
    PURCHASE = "purchase"
    MESSAGE_SENT = "message_sent"
    MESSAGE_OPENED = "message_opened"
    MESSAGE_CLICKED = "message_clicked"
    UNSUBSCRIBED = "unsubscribed"


EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)

#: Event types that concern one product and so must name it.
PRODUCT_EVENT_TYPES: tuple[str, ...] = (EventType.ADD_TO_CART.value, EventType.REMOVE_FROM_CART.value)

#: Canonical columns, in storage order. Money is a float in the event's currency; a purchase is either a
#: line item (price x quantity) or, where the source has no line items, an order total in ``value``.
#: ``brand`` (optional, like every field but the type and time) describes the product, as ``category``
#: does; it is not part of an event's identity (see :mod:`winback.events.store`).
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("product_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32()),
        pa.field("order_id", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("properties", pa.string()),  # a JSON object, or null
    ]
)

EVENT_FIELDS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)

#: Order properties that say a purchase used a coupon (as the simulator and the Segment, GA4 and Shopify
#: adapters write them).
COUPON_KEYS: tuple[str, ...] = ("coupon", "discount", "discount_codes")


def used_coupon(properties: object) -> bool:
    """Whether a purchase's JSON ``properties`` say it used a coupon (:data:`COUPON_KEYS`)."""
    if not isinstance(properties, str) or not properties:
        return False
    try:
        data = json.loads(properties)
    except ValueError:
        return False
    return isinstance(data, dict) and any(data.get(key) not in (None, "", [], 0) for key in COUPON_KEYS)

"""Segment track calls (E-commerce Events Spec v2) as JSON Lines, one call per line.

Mapped ``track`` events (names compared case-insensitively, ``snake_case`` spellings and the v1 names in
brackets accepted too):

- ``Product Viewed`` (``Viewed Product``) -> ``view``
- ``Product Added`` (``Added Product``) -> ``add_to_cart``
- ``Product Removed`` (``Removed Product``) -> ``remove_from_cart``
- ``Checkout Started`` -> ``checkout_start``
- ``Order Completed`` (``Completed Order``) -> ``purchase``

Product events take the product from ``properties``: one row, ``_item`` ``/properties``; a product's
``brand`` is the canonical brand (and stays among its properties, with ``sku``, ``name``, ``variant``).
Checkout and order events give one row per element of ``properties.products`` (``_item``
``/properties/products/N``) with the order-level ``order_id`` on each and ``total``, ``subtotal``,
``revenue``, ``discount``, ``coupon``, ``tax``, ``shipping``, ``affiliation``, ``checkout_id`` in its
properties; without products they give one row whose ``value`` is ``revenue`` (else ``total``, else
``value``).

Every other call is dropped on purpose and counted nowhere: ``identify``, ``page``, ``screen``,
``group`` and ``alias`` calls (a page view is not a product view), and track events outside the list
above (``Products Searched``, ``Product List Viewed``, ``Cart Viewed``, ``Order Refunded``...). A user
who wants one of them names it in ``--event-types`` (``--event-types "Cart Viewed=view"``, or
``"Product Viewed=ignore"`` to count mapped ones as ignored): a track event whose name the user's
mapping contains is always emitted, under its own name, for the mapping to decide.

Identity: ``userId`` -> user_id, ``anonymousId`` -> anonymous_id. ``messageId`` is the event id (for a
row exploded from ``products``, ``messageId:N``), so reloads are idempotent. The time is ``timestamp``,
else ``originalTimestamp``, else ``sentAt``. Segment has no standard session id: ``context.session_id``
is used when present. From the context only ``campaign``, ``page.url``, ``device.type`` and
``timezone`` are kept, in properties.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.records import RecordAdapter, RecordError, Row, compact, dig, first

CALL_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

EVENTS: dict[str, str] = {
    "product viewed": "view",
    "viewed product": "view",
    "product added": "add_to_cart",
    "added product": "add_to_cart",
    "product removed": "remove_from_cart",
    "removed product": "remove_from_cart",
    "checkout started": "checkout_start",
    "order completed": "purchase",
    "completed order": "purchase",
}
PRODUCT_EVENTS = frozenset({"view", "add_to_cart", "remove_from_cart"})

_PRODUCT_PROPERTIES = ("sku", "name", "brand", "variant", "position")
_ORDER_PROPERTIES = (
    "checkout_id",
    "total",
    "subtotal",
    "revenue",
    "discount",
    "coupon",
    "tax",
    "shipping",
    "affiliation",
)


class SegmentMapper:
    """Segment track calls of the e-commerce spec v2, one JSON object per line."""

    name = "segment"
    summary = "Segment track calls, e-commerce spec v2 (Product Viewed/Added/Removed, Order Completed...)"
    sources: Mapping[str, str] = {
        "event_id": "/messageId",
        "event_type": "/event",
        "timestamp": "/timestamp",
        "user_id": "/userId",
        "anonymous_id": "/anonymousId",
        "session_id": "/context/session_id",
        "product_id": "{item}/product_id",
        "category": "{item}/category",
        "brand": "{item}/brand",
        "price": "{item}/price",
        "quantity": "{item}/quantity",
        "order_id": "/properties/order_id",
        "value": "/properties/revenue",
        "currency": "/properties/currency",
    }

    def detect(self, head: FileHead) -> bool:
        record = head.first_record
        return (
            record is not None
            and record.get("type") in CALL_TYPES
            and any(k in record for k in ("messageId", "userId", "anonymousId"))
        )

    def rows(self, record: dict[str, Any], options: AdapterOptions) -> Iterable[Row]:
        if record.get("type") != "track":
            return []
        name = record.get("event")
        if not isinstance(name, str) or not name.strip():
            raise RecordError("/event", name, "the name of the track event, such as 'Order Completed'")
        key = name.strip().lower()
        if key in {k.strip().lower() for k in options.event_type_map}:
            event_type, canonical = name, None  # the user's mapping decides, in SQL
        else:
            canonical = EVENTS.get(key.replace("_", " "))
            if canonical is None:
                return []
            event_type = canonical
        props = record.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise RecordError("/properties", props, "an object of event properties")

        message_id = record.get("messageId")
        base: Row = {
            "event_type": event_type,
            "timestamp": first(
                record.get("timestamp"), record.get("originalTimestamp"), record.get("sentAt")
            ),
            "user_id": record.get("userId"),
            "anonymous_id": record.get("anonymousId"),
            "session_id": first(dig(record, "context.session_id"), dig(record, "context.sessionId")),
            "currency": props.get("currency"),
        }
        context = compact(
            {
                "campaign": dig(record, "context.campaign"),
                "page_url": dig(record, "context.page.url"),
                "device_type": dig(record, "context.device.type"),
                "timezone": dig(record, "context.timezone"),
            }
        )

        if canonical in PRODUCT_EVENTS:
            row = base | self._product(props, "/properties")
            row["event_id"] = message_id
            row["properties"] = compact(
                {
                    **row["properties"],
                    "coupon": props.get("coupon"),
                    "cart_id": props.get("cart_id"),
                    **context,
                }
            )
            return [row]

        order = compact({k: props.get(k) for k in _ORDER_PROPERTIES}) | context
        base["order_id"] = props.get("order_id")
        products = props.get("products")
        if products is None:
            row = base | {"_item": "/properties"}
            if canonical is None:  # a user-mapped event may name one product in its properties
                row |= self._product(props, "/properties")
            row["event_id"] = message_id
            row["value"] = first(props.get("revenue"), props.get("total"), props.get("value"))
            row["properties"] = row.get("properties", {}) | order
            return [row]
        if not isinstance(products, list):
            raise RecordError("/properties/products", products, "an array of product objects")
        rows = []
        for index, product in enumerate(products):
            pointer = f"/properties/products/{index}"
            if not isinstance(product, dict):
                raise RecordError(pointer, product, "a product object")
            row = base | self._product(product, pointer)
            row["event_id"] = None if message_id is None else f"{message_id}:{index}"
            row["properties"] = compact({**row["properties"], "item_coupon": product.get("coupon")}) | order
            rows.append(row)
        return rows

    @staticmethod
    def _product(product: dict[str, Any], pointer: str) -> Row:
        return {
            "product_id": first(product.get("product_id"), product.get("id"), product.get("sku")),
            "category": product.get("category"),
            "brand": product.get("brand"),
            "price": product.get("price"),
            "quantity": product.get("quantity"),
            "properties": compact({k: product.get(k) for k in _PRODUCT_PROPERTIES}),
            "_item": pointer,
        }


SEGMENT = RecordAdapter(SegmentMapper())

"""Shopify checkout and order webhooks (Admin REST payloads) as JSON Lines, one webhook per line.

A payload body does not say which topic it was delivered for (Shopify sends that in the
``X-Shopify-Topic`` header), so a line is either

- a wrapper ``{"topic": "orders/create", "webhook_id": "...", "payload": {...}}`` (recommended; the
  topic and webhook id may also come from a ``headers`` object holding ``X-Shopify-Topic`` and
  ``X-Shopify-Webhook-Id``), or
- the raw payload body, whose topic is inferred from its shape: an order (it has ``order_number`` or
  ``financial_status``) is read as ``orders/create`` -- so an orders export from the Admin API loads
  too --, a checkout (``abandoned_checkout_url``, or ``token`` and ``line_items``) as
  ``checkouts/update``. A raw payload of any other shape is a bad row: wrap it to say what it is.

Mapped topics, one row per element of ``line_items`` (``_item`` ``/line_items/N``):

- ``checkouts/create`` -> ``checkout_start`` at ``created_at``
- ``checkouts/update`` -> ``checkout_start`` at ``updated_at``: a checkout webhook says "this checkout
  holds these items now", so every update is a checkout_start; exact repeats are removed by the store.
- ``orders/create`` -> ``purchase`` at ``created_at``, order_id = the order's ``id``.

Every other topic (``orders/updated``, ``orders/paid``, ``orders/cancelled``, ``checkouts/delete``,
``carts/create``, ``carts/update``, ``refunds/create``, ``customers/*``...) is dropped on purpose and
counted nowhere: mapping, say, ``orders/paid`` as well as ``orders/create`` would count every order
twice. A user who wants one names it in ``--event-types`` (``--event-types orders/paid=purchase``, or
``checkouts/update=ignore`` to count mapped ones as ignored): a topic the user's mapping contains is
always emitted, under its own name, for the mapping to decide.

Fields: product_id is the line's ``product_id`` (else ``variant_id``); ``price`` (Shopify writes money
as strings such as ``"19.99"``) and ``quantity``; the line's ``vendor`` is the brand; ``sku``,
``variant_id``, ``title``, ``vendor`` (kept there too) and the line's ``id`` (orders) or ``key``
(checkouts) in properties. The currency is ``currency`` (the shop
currency the prices are in), else ``presentment_currency``. Order-level ``total_price``,
``subtotal_price``, ``total_discounts``, ``total_tax``, ``discount_codes``, ``cart_token`` and
``checkout_token`` (a checkout's own ``token``) go into the properties of every line: the tokens are
what links a checkout to its order. Without line items, one row whose ``value`` is ``total_price``.

Identity: ``customer.id`` -> user_id. ``cart_token`` (else the checkout token) -> anonymous_id, on every
row, customer or not: a guest checkout and the order a customer places from it then share an
anonymous id, which is how the store's identity map joins them. Shopify webhooks have no session id.
The event id is ``webhook_id:N`` when the wrapper gives a webhook id (a redelivery carries the same
one); without it the store derives the id from the content.

JSON pointers in error messages point into the payload (for a wrapped line, into its ``payload``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.records import RecordAdapter, RecordError, Row, compact, dig, first

TOPICS: dict[str, str] = {
    "checkouts/create": "checkout_start",
    "checkouts/update": "checkout_start",
    "orders/create": "purchase",
}

#: Webhook topic resources, to recognise a wrapper without mistaking other ``{topic, payload}`` logs.
RESOURCES = frozenset({
    "app", "carts", "checkouts", "collections", "customer_groups", "customers", "disputes", "draft_orders",
    "fulfillment_events", "fulfillments", "inventory_items", "inventory_levels", "locations",
    "order_transactions", "orders", "products", "refunds", "shop", "tender_transactions", "themes",
})  # fmt: skip

_ORDER_PROPERTIES = ("order_number", "name", "checkout_id", "checkout_token", "financial_status")
_COMMON_PROPERTIES: tuple[str, ...] = ("cart_token", "total_price", "subtotal_price", "total_discounts")
_COMMON_PROPERTIES += ("total_tax", "discount_codes", "source_name", "landing_site", "referring_site")
_LINE_PROPERTIES = ("sku", "variant_id", "title", "variant_title", "vendor")


def _header(headers: Any, name: str) -> Any:
    if not isinstance(headers, dict):
        return None
    return next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name), None)


def _is_order(payload: Mapping[str, Any]) -> bool:
    return "order_number" in payload or "financial_status" in payload


def _is_checkout(payload: Mapping[str, Any]) -> bool:
    return "abandoned_checkout_url" in payload or ("token" in payload and "line_items" in payload)


def infer_topic(payload: dict[str, Any]) -> str:
    """The topic a raw payload body was most likely delivered for."""
    if _is_order(payload):
        return "orders/create"
    if _is_checkout(payload):
        return "checkouts/update"
    keys = ", ".join(list(payload)[:8])
    expected = 'a Shopify order or checkout payload, or {"topic": ..., "payload": ...}'
    raise RecordError("", f"an object with keys {keys}", expected)


def unwrap(record: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """(topic, webhook id or None, payload) of one line."""
    if "payload" not in record:
        return infer_topic(record), None, record
    payload = record["payload"]
    if not isinstance(payload, dict):
        raise RecordError("/payload", payload, "a Shopify webhook payload object")
    headers = record.get("headers")
    topic = first(record.get("topic"), _header(headers, "x-shopify-topic"))
    webhook_id = first(record.get("webhook_id"), _header(headers, "x-shopify-webhook-id"))
    if topic is None:
        topic = infer_topic(payload)
    if not isinstance(topic, str):
        raise RecordError("/topic", topic, "a webhook topic such as 'orders/create'")
    return topic, webhook_id, payload


def _is_wrapper(record: Mapping[str, object]) -> bool:
    topic = first(record.get("topic"), _header(record.get("headers"), "x-shopify-topic"))
    return (
        isinstance(record.get("payload"), dict)
        and isinstance(topic, str)
        and topic.partition("/")[0] in RESOURCES
        and bool(topic.partition("/")[2])
    )


class ShopifyMapper:
    """Shopify checkout and order webhooks, one per line, wrapped with their topic or raw."""

    name = "shopify"
    summary = "Shopify checkout/order webhooks ({topic, payload} wrappers or raw payload bodies)"
    sources: Mapping[str, str] = {
        "event_id": "webhook_id",
        "event_type": "topic",
        "timestamp": "/created_at or /updated_at",
        "user_id": "/customer/id",
        "anonymous_id": "/cart_token",
        "product_id": "{item}/product_id",
        "brand": "{item}/vendor",
        "price": "{item}/price",
        "quantity": "{item}/quantity",
        "order_id": "/id",
        "value": "/total_price",
        "currency": "/currency",
    }

    def detect(self, head: FileHead) -> bool:
        record = head.first_record
        if record is None:
            return False
        if _is_wrapper(record):
            return True
        return isinstance(record.get("line_items"), list) and (_is_order(record) or _is_checkout(record))

    def rows(self, record: dict[str, Any], options: AdapterOptions) -> Iterable[Row]:
        topic, webhook_id, payload = unwrap(record)
        key = topic.strip().lower()
        if key in {k.strip().lower() for k in options.event_type_map}:
            event_type = topic  # the user's mapping decides, in SQL
        elif key in TOPICS:
            event_type = TOPICS[key]
        else:
            return []
        lines = payload.get("line_items")
        if lines is None:
            lines = []
        if not isinstance(lines, list):
            raise RecordError("/line_items", lines, "an array of line item objects")

        is_order = key.startswith("orders/") or (not key.startswith("checkouts/") and _is_order(payload))
        created, updated = payload.get("created_at"), payload.get("updated_at")
        if is_order:
            checkout_token = payload.get("checkout_token")
        elif key.startswith("checkouts/") or _is_checkout(payload):
            checkout_token = payload.get("token")
        else:
            checkout_token = None
        # a cart's token (a user-mapped carts/* topic) names a shopper; an order's names the order
        own_token = None if is_order else payload.get("token")
        base: Row = {
            "event_type": event_type,
            "timestamp": first(created, updated) if key.endswith("/create") else first(updated, created),
            "user_id": dig(payload, "customer.id"),
            "anonymous_id": first(payload.get("cart_token"), checkout_token, own_token),
            "order_id": payload.get("id") if is_order else None,
            "currency": first(payload.get("currency"), payload.get("presentment_currency")),
        }
        header = compact({k: payload.get(k) for k in _COMMON_PROPERTIES})
        if is_order:
            header |= compact({k: payload.get(k) for k in _ORDER_PROPERTIES})
        else:
            header |= compact(
                {
                    "checkout_token": checkout_token,
                    "abandoned_checkout_url": payload.get("abandoned_checkout_url"),
                    "completed_at": payload.get("completed_at"),
                }
            )

        if not lines:
            row = base | {
                "event_id": webhook_id,
                "value": payload.get("total_price"),
                "properties": header,
                "_item": "/line_items/0",
            }
            return [row]
        rows = []
        for index, line in enumerate(lines):
            pointer = f"/line_items/{index}"
            if not isinstance(line, dict):
                raise RecordError(pointer, line, "a line item object")
            line_properties = compact({k: line.get(k) for k in _LINE_PROPERTIES})
            line_properties |= compact({"line_item_id": line.get("id"), "line_key": line.get("key")})
            rows.append(
                base
                | {
                    "event_id": None if webhook_id is None else f"{webhook_id}:{index}",
                    "product_id": first(line.get("product_id"), line.get("variant_id")),
                    "brand": line.get("vendor"),
                    "price": line.get("price"),
                    "quantity": line.get("quantity"),
                    "properties": line_properties | header,
                    "_item": pointer,
                }
            )
        return rows


SHOPIFY = RecordAdapter(ShopifyMapper())

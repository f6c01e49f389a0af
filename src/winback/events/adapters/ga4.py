"""Google Analytics 4 BigQuery export rows (the ``events_YYYYMMDD`` tables) as JSON Lines.

Mapped ``event_name`` values (GA4's recommended e-commerce events):

- ``view_item`` -> ``view``
- ``add_to_cart`` -> ``add_to_cart``
- ``remove_from_cart`` -> ``remove_from_cart``
- ``begin_checkout`` -> ``checkout_start``
- ``purchase`` -> ``purchase``

Each gives one row per element of ``items`` (``_item`` ``/items/N``): ``item_id`` -> product_id,
``item_category`` -> category, ``item_brand`` -> brand, ``price``, ``quantity``; ``item_name``,
``item_brand`` (kept there too), ``item_variant`` in properties. Without items, one row whose ``value``
is ``ecommerce.purchase_revenue`` (else the ``value`` event parameter). ``(not set)``, GA4's
placeholder, counts as missing.

Every other event is dropped on purpose and counted nowhere: the automatically collected ones
(``session_start``, ``first_visit``, ``page_view`` -- a page view is not a product view --,
``user_engagement``, ``scroll``...) and the other e-commerce ones (``view_item_list``, ``select_item``,
``view_cart``, ``add_payment_info``, ``add_shipping_info``, ``add_to_wishlist``, ``refund``...). A user
who wants one names it in ``--event-types`` (``--event-types view_cart=view``, or
``purchase=ignore`` to count mapped ones as ignored): an event whose name the user's mapping contains
is always emitted, under its own name, for the mapping to decide.

Identity: ``user_id`` -> user_id, ``user_pseudo_id`` (the device/browser id) -> anonymous_id. The
session is the ``ga_session_id`` event parameter prefixed with ``user_pseudo_id``, because GA session
ids are only unique per user. ``event_timestamp`` is in microseconds (BigQuery writes 64-bit integers as
JSON strings): it is converted to ISO 8601 UTC text with full precision. The currency is the
``currency`` event parameter (else ``ecommerce.currency``); the order id ``ecommerce.transaction_id``
(else the ``transaction_id`` parameter). GA4 has no event id of its own: an ``event_id`` event parameter
(what tag setups send for de-duplication) is the event id (``event_id:N`` for the row of item N);
without one the store derives one from the content; the items of one purchase differ by product and
price, so they stay distinct, and reloads stay idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.records import RecordAdapter, RecordError, Row, blank, compact, dig, first

EVENTS: dict[str, str] = {
    "view_item": "view",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "begin_checkout": "checkout_start",
    "purchase": "purchase",
}

NOT_SET = "(not set)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTEGER = re.compile(r"\s*-?\d+\s*")
_ITEM_PROPERTIES = ("item_name", "item_brand", "item_variant", "item_list_name", "affiliation")
_VALUE_KINDS = ("string_value", "int_value", "float_value", "double_value")


def _clean(value: Any) -> Any:
    """``None`` for GA4's empty placeholders."""
    return None if value in (None, "", NOT_SET) else value


def _blank(value: object) -> bool:
    return blank(value) or value == NOT_SET


def _compact(values: Mapping[str, Any]) -> dict[str, Any]:
    return compact(values, _blank)


def _first(*values: Any) -> Any:
    return first(*values, is_blank=_blank)


def micros_to_iso(value: Any) -> Any:
    """GA4's microseconds since the epoch as ISO 8601 UTC text; anything else unchanged, for SQL to reject."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if not isinstance(value, int):
        return value
    try:
        moment = _EPOCH + timedelta(microseconds=value)
    except OverflowError:
        return str(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_params(record: dict[str, Any]) -> dict[str, Any]:
    """``event_params`` as a dict key -> the one value set among string/int/float/double."""
    params = record.get("event_params")
    if params is None:
        return {}
    if not isinstance(params, list):
        raise RecordError("/event_params", params, "an array of {key, value} objects")
    result: dict[str, Any] = {}
    for index, param in enumerate(params):
        if not isinstance(param, dict) or not isinstance(param.get("key"), str):
            raise RecordError(f"/event_params/{index}", param, "an object with a key and a value")
        value = param.get("value")
        if isinstance(value, dict):
            value = next((value[k] for k in _VALUE_KINDS if value.get(k) is not None), None)
        result[param["key"]] = value
    return result


class Ga4Mapper:
    """GA4 BigQuery export rows, one JSON object per line."""

    name = "ga4"
    summary = "Google Analytics 4 BigQuery export rows (event_name, event_params, items...)"
    sources: Mapping[str, str] = {
        "event_id": "/event_params (event_id)",
        "event_type": "/event_name",
        "timestamp": "/event_timestamp",
        "user_id": "/user_id",
        "anonymous_id": "/user_pseudo_id",
        "session_id": "/event_params (ga_session_id)",
        "product_id": "{item}/item_id",
        "category": "{item}/item_category",
        "brand": "{item}/item_brand",
        "price": "{item}/price",
        "quantity": "{item}/quantity",
        "order_id": "/ecommerce/transaction_id",
        "value": "/ecommerce/purchase_revenue",
        "currency": "/event_params (currency)",
    }

    def detect(self, head: FileHead) -> bool:
        record = head.first_record
        return (
            record is not None
            and "event_name" in record
            and "event_timestamp" in record
            and ("user_pseudo_id" in record or "event_params" in record)
        )

    def rows(self, record: dict[str, Any], options: AdapterOptions) -> Iterable[Row]:
        name = record.get("event_name")
        if not isinstance(name, str) or not name.strip():
            raise RecordError("/event_name", name, "the name of the event, such as 'purchase'")
        if name.strip().lower() in {k.strip().lower() for k in options.event_type_map}:
            event_type = name  # the user's mapping decides, in SQL
        elif name.strip().lower() in EVENTS:
            event_type = EVENTS[name.strip().lower()]
        else:
            return []
        params = event_params(record)
        ecommerce = record.get("ecommerce")
        if ecommerce is None:
            ecommerce = {}
        if not isinstance(ecommerce, dict):
            raise RecordError("/ecommerce", ecommerce, "an object")
        items = record.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise RecordError("/items", items, "an array of item objects")

        pseudo_id = _clean(record.get("user_pseudo_id"))
        ga_session = _clean(params.get("ga_session_id"))
        session = None if ga_session is None else f"{pseudo_id or record.get('user_id') or ''}:{ga_session}"
        base: Row = {
            "event_type": event_type,
            "timestamp": micros_to_iso(record.get("event_timestamp")),
            "user_id": _clean(record.get("user_id")),
            "anonymous_id": pseudo_id,
            "session_id": session,
            "order_id": _first(ecommerce.get("transaction_id"), params.get("transaction_id")),
            "currency": _first(params.get("currency"), ecommerce.get("currency")),
        }
        event_properties = _compact(
            {
                "purchase_revenue": ecommerce.get("purchase_revenue"),
                "shipping_value": _first(ecommerce.get("shipping_value"), params.get("shipping")),
                "tax_value": _first(ecommerce.get("tax_value"), params.get("tax")),
                "coupon": params.get("coupon"),
                "page_location": params.get("page_location"),
                "device_category": dig(record, "device.category"),
                "country": dig(record, "geo.country"),
            }
        )

        event_id = _clean(params.get("event_id"))
        if not items:
            row = base | {
                "event_id": event_id,
                "value": _first(ecommerce.get("purchase_revenue"), params.get("value")),
                "properties": event_properties,
                "_item": "/items/0",
            }
            return [row]
        rows = []
        for index, item in enumerate(items):
            pointer = f"/items/{index}"
            if not isinstance(item, dict):
                raise RecordError(pointer, item, "an item object")
            item_properties = _compact({k: item.get(k) for k in _ITEM_PROPERTIES})
            if _clean(item.get("coupon")) is not None:
                item_properties["item_coupon"] = item["coupon"]
            rows.append(
                base
                | {
                    "event_id": None if event_id is None else f"{event_id}:{index}",
                    "product_id": _clean(item.get("item_id")),
                    "category": _clean(item.get("item_category")),
                    "brand": _clean(item.get("item_brand")),
                    "price": item.get("price"),
                    "quantity": item.get("quantity"),
                    "properties": item_properties | event_properties,
                    "_item": pointer,
                }
            )
        return rows


GA4 = RecordAdapter(Ga4Mapper())

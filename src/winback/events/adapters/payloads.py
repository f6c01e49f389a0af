"""One source payload (a Segment call, a Shopify webhook, a GA4 event) as canonical :class:`Event` objects.

The service's webhooks receive the same records the file adapters read one per line, so they map them
with the very same per-record mappers (``SegmentMapper.rows``, ``ShopifyMapper.rows``,
``Ga4Mapper.rows``); only the last step differs. File ingest parses the mappers' raw values in SQL
(:mod:`winback.events.normalize`); here :func:`canonical_row` applies the same parsing rules in Python
(trimmed text, JSON numbers as text, upper-case currency with the settings' default, the same
timestamp kinds) and :class:`Event` validates. ``tests/serve/test_webhooks.py`` checks that both paths
give the same canonical events for every fixture of the adapters' tests.

>>> from winback.events.adapters.segment import SEGMENT
>>> call = {"type": "track", "event": "Product Added", "messageId": "m1", "userId": 42,
...         "timestamp": "2024-03-04T15:01:00Z", "properties": {"product_id": "p1", "price": "9.50"}}
>>> [(e.event_id, e.event_type, e.user_id, e.price, e.currency) for e in record_events(SEGMENT.mapper, call)]
[('m1', 'add_to_cart', '42', 9.5, 'USD')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from pydantic import ValidationError

from winback.errors import BadInputError
from winback.events.adapters.base import AdapterOptions
from winback.events.adapters.records import RecordError, RecordMapper, text
from winback.events.model import Event
from winback.events.normalize import TEXT_FIELDS, sniff_timestamp_format

_NO_OPTIONS = AdapterOptions()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _text(value: object) -> str | None:
    """Like the SQL's ``nullif(trim(CAST(x AS VARCHAR)), '')``."""
    result = text(value)
    if result is None:
        return None
    result = result.strip()
    return result or None


def _timestamp(value: object, zone: tzinfo) -> object:
    """A raw time as an aware datetime, by the same kinds file ingest recognises (ISO 8601 text,
    YYYYMMDD, unix seconds or milliseconds); naive times are in ``zone``. Anything else is returned
    as it came, for :class:`Event` to reject by name."""
    raw = _text(value)
    if raw is None:
        return None
    kind = sniff_timestamp_format([raw])
    try:
        if kind == "yyyymmdd":
            moment = datetime.strptime(raw, "%Y%m%d")
        elif kind in ("unix_s", "unix_ms"):
            micros = round(float(raw) * (1_000_000 if kind == "unix_s" else 1_000))
            return _EPOCH + timedelta(microseconds=micros)
        else:
            moment = datetime.fromisoformat(raw)
    except (ValueError, OverflowError):
        return raw
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _quantity(value: object) -> object:
    raw = _text(value)
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        return raw
    return int(number) if number.is_integer() else raw


def canonical_row(
    row: Mapping[str, Any], default_currency: str = "USD", zone: tzinfo = UTC
) -> dict[str, Any]:
    """A mapper's raw row as the input of :class:`Event` (the parsing of normalize.py, per value)."""
    out: dict[str, Any] = {name: _text(row.get(name)) for name in (*TEXT_FIELDS, "event_id", "event_type")}
    out["currency"] = (_text(row.get("currency")) or default_currency).upper()
    out["timestamp"] = _timestamp(row.get("timestamp"), zone)
    for name in ("price", "value"):
        out[name] = _text(row.get(name))
    out["quantity"] = _quantity(row.get("quantity"))
    properties = row.get("properties")
    out["properties"] = properties or None
    return out


def record_events(
    mapper: RecordMapper,
    record: dict[str, Any],
    *,
    default_currency: str = "USD",
    zone: tzinfo = UTC,
    where: str = "payload",
) -> list[Event]:
    """The canonical events of one source record (none for calls the adapter drops on purpose).

    A record that cannot be mapped or whose events are invalid raises :class:`BadInputError` naming
    ``where`` and the field (a JSON pointer into the record, as file ingest reports it).
    """
    try:
        rows = list(mapper.rows(record, _NO_OPTIONS))
    except RecordError as error:
        raise BadInputError(f"{where}: {error}") from None
    events = []
    for row in rows:
        try:
            events.append(Event.model_validate(canonical_row(row, default_currency, zone)))
        except ValidationError as error:
            item = row.get("_item") or ""
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
                for e in error.errors(include_url=False)
            )
            raise BadInputError(f"{where}{' ' + item if item else ''}: {problems}") from None
    return events


def records_events(
    mapper: RecordMapper,
    records: Iterable[dict[str, Any]],
    *,
    default_currency: str = "USD",
    where: str = "payload",
) -> tuple[list[Event], int]:
    """The events of several records (validated whole) and how many records gave none (dropped on
    purpose: a Segment ``identify``, a Shopify ``orders/paid``, a GA4 ``page_view``)."""
    events: list[Event] = []
    ignored = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadInputError(f"{where}[{index}]: found {type(record).__name__}, expected a JSON object")
        mapped = record_events(mapper, record, default_currency=default_currency, where=f"{where}[{index}]")
        ignored += not mapped
        events += mapped
    return events, ignored

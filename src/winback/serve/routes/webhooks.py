"""Webhooks of the sources shops already have: ``POST /v1/webhooks/segment``, ``/shopify``, ``/ga4``.

Each takes the payloads its source sends and maps them to canonical events with the file adapters' own
per-record mappers (:mod:`winback.events.adapters.payloads`), validates them with :class:`Event` and
stores them with :func:`store_events`: a whole request or nothing, each ``event_id`` once. Event ids come
from the source (Segment's ``messageId``, Shopify's ``X-Shopify-Event-Id`` or ``X-Shopify-Webhook-Id``,
GA4's ``event_id`` event parameter; ``:N`` appended for line item N), so a source that retries a
delivery stores nothing twice.
Calls the adapters drop on purpose (a Segment ``page``, a Shopify ``orders/paid``, a GA4 ``page_view``)
are answered 200 and counted as ``ignored``, so the source does not retry them.

Identify payloads fill the customers' profiles (:mod:`winback.serve.profiles`): a Segment ``identify``
(traits: e-mail, phone, name, consent per channel; the time zone and push token from its context; the
anonymous id it links) and Shopify's ``customers/create`` and ``customers/update`` (e-mail, phone,
name, e-mail and SMS marketing consent), counted as ``customers``. They are saved after the request's
events, in their own transaction: a source retrying a failed request stores nothing twice.

Authentication: a write-scoped API key, as for ``/v1/events``. Shopify cannot add headers to its
webhooks; it signs them instead. When ``WINBACK_SHOPIFY_WEBHOOK_SECRET`` is set, every Shopify request
must carry a valid ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body), and that signature is
its authentication; without the secret the Shopify endpoint needs an API key like the others.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from winback.act.outbox import write_transaction
from winback.errors import BadInputError
from winback.events.adapters.ga4 import GA4
from winback.events.adapters.payloads import records_events
from winback.events.adapters.records import RecordMapper
from winback.events.adapters.segment import SEGMENT
from winback.events.adapters.shopify import SHOPIFY
from winback.serve.deps import AppState, State, WriteKey, log, require
from winback.serve.ingest import store_events
from winback.serve.profiles import (
    SHOPIFY_CUSTOMER_TOPICS,
    ProfileUpdate,
    from_segment,
    from_shopify,
    save_identities,
    upsert_profiles,
)
from winback.serve.routes.customers import erase_everywhere, pseudonym

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not JSON"},
    401: {"description": "No valid API key (or Shopify signature)"},
    413: {"description": "Too large"},
    422: {"description": "A payload that cannot be mapped or gives an invalid event"},
}


class WebhookResult(BaseModel):
    received: int  # canonical events the payloads gave
    stored: int
    duplicates: int
    ignored: int  # payloads dropped on purpose (not behaviour events winback reads)
    customers: int = 0  # customer profiles the identify payloads updated
    erased: dict[str, int] | None = None  # rows erased per table, for Shopify's customers/redact


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise HTTPException(400, f"request body: not valid JSON ({error})") from None


def _records(data: Any, batch_key: str | None, limit: int) -> list[Any]:
    """One object, a list of them, or ``{batch_key: [...]}`` as a list of records."""
    if isinstance(data, dict) and batch_key is not None and isinstance(data.get(batch_key), list):
        data = data[batch_key]
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data:
        if len(data) > limit:
            raise HTTPException(413, f"request body: {len(data):,} payloads; at most {limit:,} per request")
        return data
    shape = "an empty list" if data == [] else type(data).__name__
    raise HTTPException(422, f"request body: found {shape}, expected a payload object or a list of them")


def _save_profiles(
    state: AppState, updates: list[ProfileUpdate], links: dict[str, tuple[str, datetime]]
) -> int:
    with write_transaction(state.engine) as connection:
        save_identities(connection, links)
        return upsert_profiles(connection, updates)


async def _ingest(
    state: AppState,
    source: str,
    mapper: RecordMapper,
    records: list[Any],
    where: str = "body",
    *,
    profiles: list[ProfileUpdate] | None = None,
    links: dict[str, tuple[str, datetime]] | None = None,
) -> WebhookResult:
    try:
        events, ignored = (
            records_events(mapper, records, default_currency=state.settings.default_currency, where=where)
            if records
            else ([], 0)
        )
    except BadInputError as error:
        state.metrics.events_in.labels(source, "rejected").inc()
        raise HTTPException(422, str(error)) from None
    if len(events) > state.settings.max_batch_events:
        raise HTTPException(
            413, f"request body: {len(events):,} events; at most {state.settings.max_batch_events:,}"
        )
    stored = await run_in_threadpool(store_events, state.engine, events, source) if events else None
    new = stored.stored if stored else 0
    state.metrics.events_in.labels(source, "stored").inc(new)
    state.metrics.events_in.labels(source, "duplicate").inc(len(events) - new)
    state.metrics.events_in.labels(source, "ignored").inc(ignored)
    changed = 0
    if profiles or links:
        changed = await run_in_threadpool(_save_profiles, state, profiles or [], links or {})
    return WebhookResult(
        received=len(events), stored=new, duplicates=len(events) - new, ignored=ignored, customers=changed
    )


@router.post("/segment", response_model=WebhookResult, response_model_exclude_none=True, responses=RESPONSES)
async def segment(request: Request, state: State, _key: WriteKey) -> WebhookResult:
    """Segment calls (e-commerce spec v2): one call as the Webhooks destination sends it, a list, or
    ``{"batch": [...]}`` as Segment's HTTP API batches them."""
    data = _json(await request.body())
    records = _records(data, "batch", state.settings.max_batch_events)
    profiles: list[ProfileUpdate] = []
    links: dict[str, tuple[str, datetime]] = {}
    calls = []
    now = datetime.now(UTC)
    for record in records:
        if isinstance(record, dict) and record.get("type") == "identify":
            update, link = from_segment(record, now)
            if update is not None:
                profiles.append(update)
            if link is not None:
                links.setdefault(link[0], (link[1], now))
        else:
            calls.append(record)
    return await _ingest(state, "segment", SEGMENT.mapper, calls, profiles=profiles, links=links)


def shopify_signature(secret: str, body: bytes) -> str:
    """What Shopify sends in ``X-Shopify-Hmac-Sha256`` for ``body``: base64 of its HMAC-SHA256."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _authenticate_shopify(request: Request, state: AppState, body: bytes, scope: str = "write") -> None:
    secret = state.settings.shopify_webhook_secret
    if secret is None:
        require(scope)(request, state)
        return
    sent = request.headers.get("x-shopify-hmac-sha256")
    if not sent or not hmac.compare_digest(sent.strip(), shopify_signature(secret.get_secret_value(), body)):
        reason = "missing" if not sent else "invalid"
        state.metrics.auth_failures.labels(f"shopify_hmac_{reason}").inc()
        log.warning("refused %s %s: %s X-Shopify-Hmac-Sha256", request.method, request.url.path, reason)
        raise HTTPException(
            401, f"X-Shopify-Hmac-Sha256: {reason} (signed with WINBACK_SHOPIFY_WEBHOOK_SECRET)"
        )


@router.post("/shopify", response_model=WebhookResult, response_model_exclude_none=True, responses=RESPONSES)
async def shopify(request: Request, state: State) -> WebhookResult:
    """One Shopify webhook: the payload as body, the topic in ``X-Shopify-Topic``, the event's id in
    ``X-Shopify-Event-Id`` (else ``X-Shopify-Webhook-Id``; both the same on Shopify's retries).
    ``checkouts/create``, ``checkouts/update`` and ``orders/create`` give events, ``customers/create``
    and ``customers/update`` profiles, ``customers/redact`` erases the customer; other topics are
    ignored. Without the topic header the body may
    be a ``{"topic", "webhook_id", "payload"}`` wrapper (the file format), or the topic is inferred
    from the payload's shape."""
    body = await request.body()
    topic = request.headers.get("x-shopify-topic")
    # an erasure asks more of a relay than an event does: without Shopify's signature, an admin key
    _authenticate_shopify(request, state, body, "admin" if topic == SHOPIFY_REDACT_TOPIC else "write")
    data = _json(body)
    if not isinstance(data, dict):
        raise HTTPException(
            422, f"request body: found {type(data).__name__}, expected a webhook payload object"
        )
    if topic == SHOPIFY_REDACT_TOPIC:
        return await _redact(state, data)
    wrapped = data.get("topic") if topic is None and isinstance(data.get("payload"), dict) else None
    if topic in SHOPIFY_CUSTOMER_TOPICS or wrapped in SHOPIFY_CUSTOMER_TOPICS:
        update = from_shopify(data if wrapped is None else data["payload"])
        if update is None:
            raise HTTPException(422, f"request body: a {topic or wrapped} payload needs the customer's id")
        return await _ingest(state, "shopify", SHOPIFY.mapper, [], profiles=[update])
    record: dict[str, Any] = data
    if topic is not None:
        # X-Shopify-Event-Id is the same on retries and across subscriptions; older deliveries have only
        # X-Shopify-Webhook-Id (the same on retries)
        delivery = request.headers.get("x-shopify-event-id") or request.headers.get("x-shopify-webhook-id")
        record = {"topic": topic, "webhook_id": delivery, "payload": data}
    return await _ingest(state, "shopify", SHOPIFY.mapper, [record])


#: Shopify's mandatory compliance webhook asking the app to erase one customer's data.
SHOPIFY_REDACT_TOPIC = "customers/redact"


async def _redact(state: AppState, data: dict[str, Any]) -> WebhookResult:
    """``customers/redact``: erase ``customer.id`` everywhere, as ``DELETE /v1/customers/{id}`` does."""
    customer = data.get("customer")
    user = customer.get("id") if isinstance(customer, dict) else None
    if not isinstance(user, int | str) or isinstance(user, bool) or not str(user).strip():
        raise HTTPException(422, "request body: customer.id: missing, expected the customer's id to erase")
    result = await run_in_threadpool(erase_everywhere, state.settings, state.engine, str(user).strip())
    log.info(
        "erased customer sha256:%s for Shopify customers/redact: %s",
        pseudonym(result.user_id),
        orjson.dumps(result.erased).decode(),
    )
    return WebhookResult(received=0, stored=0, duplicates=0, ignored=0, customers=1, erased=result.erased)


def measurement_protocol_rows(body: dict[str, Any], received_micros: int) -> list[dict[str, Any]]:
    """A GA4 Measurement Protocol request (``client_id``, ``user_id``, ``events: [{name, params}]``,
    optional ``timestamp_micros``) as rows of the BigQuery export the GA4 adapter reads. An event's
    ``session_id`` parameter becomes ``ga_session_id``; without a timestamp the event is dated on
    receipt."""
    rows = []
    for event in body["events"]:
        if not isinstance(event, dict):
            raise BadInputError(f"body.events: found {type(event).__name__}, expected an event object")
        params = event.get("params") or {}
        if not isinstance(params, dict):
            raise BadInputError(f"body.events: params of {event.get('name')!r} must be an object")
        event_params = []
        for key, value in params.items():
            if key == "items" or isinstance(value, dict | list):
                continue
            kind = (
                "string_value"
                if isinstance(value, str)
                else "int_value"
                if isinstance(value, int)
                else "double_value"
            )
            event_params.append(
                {"key": "ga_session_id" if key == "session_id" else key, "value": {kind: value}}
            )
        rows.append(
            {
                "event_name": event.get("name"),
                "event_timestamp": event.get("timestamp_micros")
                or body.get("timestamp_micros")
                or received_micros,
                "user_id": body.get("user_id"),
                "user_pseudo_id": body.get("client_id") or body.get("app_instance_id"),
                "event_params": event_params,
                "items": params.get("items") or [],
                "ecommerce": {"transaction_id": params.get("transaction_id")},
            }
        )
    return rows


@router.post("/ga4", response_model=WebhookResult, response_model_exclude_none=True, responses=RESPONSES)
async def ga4(request: Request, state: State, _key: WriteKey) -> WebhookResult:
    """GA4 events: a Measurement Protocol request (what a server-side tag forwards: ``client_id``,
    ``events: [{name, params}]``), or rows of the BigQuery export (one, a list, or ``{"events": [...]}``)."""
    data = _json(await request.body())
    if (
        isinstance(data, dict)
        and isinstance(data.get("events"), list)
        and "event_name" not in data
        and ("client_id" in data or "app_instance_id" in data or "user_id" in data)
    ):
        if len(data["events"]) > state.settings.max_batch_events:
            raise HTTPException(
                413,
                f"request body: {len(data['events']):,} events; at most {state.settings.max_batch_events:,}",
            )
        try:
            records = measurement_protocol_rows(data, time.time_ns() // 1000)
        except BadInputError as error:
            raise HTTPException(422, str(error)) from None
        return await _ingest(state, "ga4", GA4.mapper, records, where="body.events")
    return await _ingest(state, "ga4", GA4.mapper, _records(data, "events", state.settings.max_batch_events))

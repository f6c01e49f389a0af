"""``POST /v1/events``: one event, a list of events, or ``{"events": [...]}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, TypeAdapter, ValidationError

from winback.events.json_batch import fast_rows
from winback.events.model import Event, EventRow
from winback.serve.deps import State, WriteKey
from winback.serve.ingest import store_rows

router = APIRouter(prefix="/v1", tags=["events"])

_BATCH = TypeAdapter(list[Event])


class IngestResult(BaseModel):
    received: int
    stored: int
    duplicates: int


_BODY_SCHEMA = {
    "anyOf": [
        {"$ref": "#/components/schemas/Event"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1},
        {
            "type": "object",
            "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
            "required": ["events"],
            "additionalProperties": False,
        },
    ]
}


def schemas() -> dict[str, Any]:
    """The OpenAPI component schemas of the body (``Event``)."""
    return {"Event": Event.model_json_schema(ref_template="#/components/schemas/{model}")}


def parse_events(body: bytes, limit: int) -> list[EventRow]:
    """The events of a request body as rows, validated whole; an HTTPException (400/413/422) naming what
    is wrong otherwise. The fast path (:func:`fast_rows`) takes most bodies; the rest, valid or not, are
    decided by the model."""
    rows = fast_rows(body, wrapped=True)
    if rows is not None:
        if not rows:
            raise HTTPException(422, "request body: an empty list of events")
        if len(rows) > limit:
            raise HTTPException(413, f"request body: {len(rows):,} events; at most {limit:,} per request")
        return rows
    return [event.as_row() for event in _validate(body, limit)]


def _validate(body: bytes, limit: int) -> list[Event]:
    """The events of a request body, by the model."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise HTTPException(400, f"request body: not valid JSON ({error})") from None
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, dict) and set(data) == {"events"}:
        data, prefix = data["events"], ("events",)
    try:
        if isinstance(data, list):
            if not data:
                raise HTTPException(422, "request body: an empty list of events")
            if len(data) > limit:
                raise HTTPException(413, f"request body: {len(data):,} events; at most {limit:,} per request")
            return _BATCH.validate_python(data)
        if isinstance(data, dict):
            return [Event.model_validate(data)]
    except ValidationError as error:
        raise HTTPException(
            422,
            [
                {"loc": ["body", *prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in error.errors(include_url=False, include_input=False)
            ],
        ) from None
    raise HTTPException(422, 'request body: expected an event object, a list of events or {"events": [...]}')


@router.post(
    "/events",
    response_model=IngestResult,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}
    },
    responses={
        400: {"description": "Not JSON"},
        413: {"description": "Too large"},
        422: {"description": "Invalid event"},
    },
)
async def post_events(request: Request, state: State, _key: WriteKey) -> IngestResult:
    """Store events (idempotent by ``event_id``); the whole batch or nothing."""
    body = await request.body()
    try:
        batch = parse_events(body, state.settings.max_batch_events)
    except HTTPException:
        state.metrics.events_in.labels("http", "rejected").inc()
        raise
    stored = await run_in_threadpool(store_rows, state.engine, batch, "http")
    state.metrics.events_in.labels("http", "stored").inc(stored.stored)
    state.metrics.events_in.labels("http", "duplicate").inc(stored.duplicates)
    return IngestResult(received=stored.received, stored=stored.stored, duplicates=stored.duplicates)

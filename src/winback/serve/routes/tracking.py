"""Open pixel, click redirect and unsubscribe: no API key, the signed token is the authority.

``GET /t/o/{token}`` answers a 1x1 transparent GIF and records ``message_opened``; ``GET /t/c/{token}``
records ``message_clicked`` and redirects (303) to the target signed into the token, never to anything
the request says; ``GET /u/{token}`` shows a confirmation form, and ``POST /u/{token}`` (the form, or a
mail client's one-click POST of RFC 8058) records ``unsubscribed`` with ``{"channel": ...}``, which the
worker's send-time re-check reads to cancel the channel's pending messages.

Each becomes a canonical event in the ``events`` table (:func:`winback.serve.ingest.store_events`)
whose id comes from the message and, for clicks, the target: the **first** open of a message, the first
click on each of its links and its unsubscribe are stored once; repeats (mail clients and proxies
fetch pixels and links again and again) are duplicates. A token that is malformed, signed with another
secret, of another kind, or names a message the database no longer holds (erased) gets 404 with a
plain message, is logged without the token or anything personal, counted in
``winback_auth_failures_total{reason="tracking_token"}``, and stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse

from winback.act.tracking import BadTokenError, Kind, Link, Signer
from winback.events.model import Event
from winback.serve.db import outbox
from winback.serve.deps import AppState, State
from winback.serve.ingest import store_events

router = APIRouter(tags=["tracking"])
log = logging.getLogger("winback.serve")

#: A 1x1 transparent GIF (42 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
_CHANNEL_NAMES = {"email": "e-mail", "sms": "SMS", "push": "push notifications"}


def _refused(state: AppState, kind: str, reason: str) -> PlainTextResponse:
    state.metrics.auth_failures.labels("tracking_token").inc()
    log.warning("refused %s link: %s", kind, reason)
    return PlainTextResponse("This link is not valid.", status_code=404, headers=_NO_STORE)


def _message(state: AppState, token: str, kind: Kind) -> tuple[Link, Any] | str:
    """The token's link and its outbox row; the reason it is refused otherwise."""
    try:
        link = Signer.from_settings(state.settings).verify(token, kind)
    except BadTokenError as error:
        return str(error)
    with state.engine.connect() as connection:
        row = connection.execute(
            sa.select(
                outbox.c.id, outbox.c.idempotency_key, outbox.c.user_id, outbox.c.cart_id, outbox.c.channel
            ).where(outbox.c.id == link.message_id)
        ).first()
    if row is None:
        return f"message {link.message_id} is not in the outbox (erased?)"
    if row.channel != link.channel:
        return f"message {link.message_id}: token channel does not match"
    return link, row


def _record(state: AppState, event_type: str, event_id: str, row: Any, properties: dict[str, Any]) -> None:
    event = Event.model_validate(
        {
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": datetime.now(UTC),
            "user_id": row.user_id,
            "session_id": row.cart_id,
            "properties": {"message_id": int(row.id), "channel": row.channel, **properties},
        }
    )
    store_events(state.engine, [event], source="winback")


def _track(state: AppState, token: str, kind: Kind) -> tuple[Link, Any] | str:
    found = _message(state, token, kind)
    if isinstance(found, str):
        return found
    link, row = found
    if kind == "open":
        _record(state, "message_opened", f"message_opened:{row.idempotency_key}", row, {})
    elif kind == "click":
        target = link.target or ""
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        _record(
            state, "message_clicked", f"message_clicked:{row.idempotency_key}:{digest}", row, {"url": target}
        )
    return found


@router.get("/t/o/{token}", response_class=Response, responses={404: {"description": "Invalid link"}})
async def opened(token: str, state: State) -> Response:
    """A 1x1 transparent GIF; the message's first open is recorded."""
    found = await run_in_threadpool(_track, state, token, "open")
    if isinstance(found, str):
        return _refused(state, "open", found)
    return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)


@router.get("/t/c/{token}", response_class=RedirectResponse, responses={404: {"description": "Invalid link"}})
async def clicked(token: str, state: State) -> Response:
    """Redirect (303) to the link's signed target; the first click on it is recorded."""
    found = await run_in_threadpool(_track, state, token, "click")
    if isinstance(found, str):
        return _refused(state, "click", found)
    link, _row = found
    return RedirectResponse(link.target or "", status_code=303, headers=_NO_STORE)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title></head>'
        f'<body style="font-family: sans-serif; max-width: 480px; margin: 3em auto;">{body}</body></html>',
        status_code=status,
        headers=_NO_STORE,
    )


@router.get("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "Invalid link"}})
async def unsubscribe_page(token: str, state: State) -> Response:
    """A confirmation form (nothing is recorded on GET: link scanners fetch links)."""
    found = await run_in_threadpool(_message, state, token, "unsubscribe")
    if isinstance(found, str):
        return _refused(state, "unsubscribe", found)
    channel = _CHANNEL_NAMES.get(found[1].channel, found[1].channel)
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving {html.escape(channel)} from us?</p>"
        '<form method="post"><button type="submit">Unsubscribe</button></form>',
    )


def _unsubscribe(state: AppState, token: str) -> tuple[Link, Any] | str:
    found = _message(state, token, "unsubscribe")
    if isinstance(found, str):
        return found
    _link, row = found
    _record(state, "unsubscribed", f"unsubscribed:{row.idempotency_key}", row, {"source": "link"})
    return found


@router.post("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "Invalid link"}})
async def unsubscribe(token: str, state: State) -> Response:
    """Record ``unsubscribed`` for the message's channel (the form's POST or RFC 8058 one-click)."""
    found = await run_in_threadpool(_unsubscribe, state, token)
    if isinstance(found, str):
        return _refused(state, "unsubscribe", found)
    channel = _CHANNEL_NAMES.get(found[1].channel, found[1].channel)
    return _page(
        "Unsubscribed", f"<p>You are unsubscribed: you will get no more {html.escape(channel)} from us.</p>"
    )

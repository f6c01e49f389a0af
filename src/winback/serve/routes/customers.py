"""Customer rights: ``GET /v1/customers/{user_id}`` exports what the service holds about a customer,
``DELETE /v1/customers/{user_id}`` erases it.

Both cover the service's database: the customer's events (``user_id`` equal to the id; events only
under an ``anonymous_id`` are not linked to them here), outbox messages, deliveries and coupon codes.
The erasure runs in one transaction and answers how many rows it removed per table. It does not reach
the embedded winback home (the DuckDB event store ``events.duckdb``, the decision log
``decisions.duckdb``, plan files) nor models already trained on the data: see docs/serve.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from winback.act.outbox import as_utc, write_transaction
from winback.serve.db import coupons, deliveries, events, outbox
from winback.serve.deps import ReadKey, State, require
from winback.serve.keys import ApiKey

router = APIRouter(prefix="/v1", tags=["customers"])
log = logging.getLogger("winback.serve")

AdminKey = Annotated[ApiKey, Depends(require("admin"))]
UserId = Annotated[str, Path(min_length=1, max_length=200)]

#: Tables erased, in the order the foreign keys need (coupons and deliveries point at outbox rows).
TABLES = ("coupons", "deliveries", "outbox", "events")


class Export(BaseModel):
    user_id: str
    events: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    coupons: list[dict[str, Any]]


class Erased(BaseModel):
    user_id: str
    erased: dict[str, int]
    not_reached: list[str]


NOT_REACHED = [
    "the embedded event store (HOME/events.duckdb) and decision log (HOME/decisions.duckdb)",
    "models, plans and reports made before the erasure",
]


def _plain(row: Any, json_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if isinstance(value, datetime):
            value = as_utc(value).isoformat()
        elif key in json_columns and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = value
    return out


def _ids(connection: sa.Connection, user_id: str) -> list[int]:
    return [
        int(i)
        for i in connection.execute(sa.select(outbox.c.id).where(outbox.c.user_id == user_id)).scalars()
    ]


def export_customer(engine: Engine, user_id: str) -> Export:
    """Everything the service's database holds about ``user_id``."""
    with engine.connect() as connection:
        ids = _ids(connection, user_id)
        mine = [deliveries.c.user_id == user_id, deliveries.c.message_id.in_(ids)]
        found = {
            "events": connection.execute(
                sa.select(events)
                .where(events.c.user_id == user_id)
                .order_by(events.c.timestamp, events.c.event_id)
            ).mappings(),
            "outbox": connection.execute(
                sa.select(outbox).where(outbox.c.user_id == user_id).order_by(outbox.c.id)
            ).mappings(),
            "deliveries": connection.execute(
                sa.select(deliveries).where(sa.or_(*mine)).order_by(deliveries.c.message_id)
            ).mappings(),
            "coupons": connection.execute(
                sa.select(coupons)
                .where(sa.or_(coupons.c.user_id == user_id, coupons.c.message_id.in_(ids)))
                .order_by(coupons.c.code)
            ).mappings(),
        }
        plain = {name: [_plain(r, ("properties", "payload")) for r in rows] for name, rows in found.items()}
    return Export(user_id=user_id, **plain)


def erase_customer(engine: Engine, user_id: str) -> dict[str, int]:
    """Delete ``user_id``'s events, messages, deliveries and coupons in one transaction; rows per table."""
    with write_transaction(engine) as connection:
        ids = _ids(connection, user_id)
        erased = {
            "coupons": connection.execute(
                coupons.delete().where(sa.or_(coupons.c.user_id == user_id, coupons.c.message_id.in_(ids)))
            ).rowcount,
            "deliveries": connection.execute(
                deliveries.delete().where(
                    sa.or_(deliveries.c.user_id == user_id, deliveries.c.message_id.in_(ids))
                )
            ).rowcount,
            "outbox": connection.execute(outbox.delete().where(outbox.c.user_id == user_id)).rowcount,
            "events": connection.execute(events.delete().where(events.c.user_id == user_id)).rowcount,
        }
    return {table: int(erased[table]) for table in TABLES}


def _pseudonym(user_id: str) -> str:
    """What the log says instead of the id: a short hash (lets an operator confirm a request was done)."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:12]


@router.get("/customers/{user_id:path}", response_model=Export)
async def export(user_id: UserId, state: State, _key: ReadKey) -> Export:
    """The customer's events, outbox messages, deliveries and coupons as JSON."""
    return await run_in_threadpool(export_customer, state.engine, user_id)


@router.delete("/customers/{user_id:path}", response_model=Erased)
async def erase(user_id: UserId, state: State, key: AdminKey) -> Erased:
    """Erase the customer's events, messages, deliveries and coupons (one transaction); what was erased,
    per table, and what this does not reach."""
    erased = await run_in_threadpool(erase_customer, state.engine, user_id)
    log.info("erased customer sha256:%s by key %s: %s", _pseudonym(user_id), key.key_id, erased)
    return Erased(user_id=user_id, erased=erased, not_reached=NOT_REACHED)

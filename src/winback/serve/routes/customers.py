"""Customers: ``PUT /v1/customers/{user_id}`` sets a profile (addresses, time zone, consent per channel),
``GET`` exports what the service holds about a customer, ``DELETE`` erases it.

Export and erasure cover the service's database -- the profile, the customer's events (under their
``user_id``, and under the anonymous ids linked to them), outbox messages, deliveries, coupon codes, live
carts, the detector's decisions and its identity and session records -- and the winback home the
service is configured with: the embedded event store (``HOME/events.duckdb``) and decision log
(``HOME/decisions.duckdb``), when they exist there and no other process holds them (the answer lists
what it could not reach, and ``winback erase`` finishes it on the home's machine). Models already
trained on the data are never reached: retrain to forget.
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
from sqlalchemy.engine import Connection, Engine

from winback.act.outbox import as_utc, write_transaction
from winback.config import Settings
from winback.serve.db import (
    carts,
    coupons,
    customers,
    decisions,
    deliveries,
    events,
    identities,
    outbox,
    visitors,
)
from winback.serve.deps import ReadKey, State, WriteKey, require
from winback.serve.feed import rewind
from winback.serve.keys import ApiKey
from winback.serve.profiles import CustomerIn, read_profiles, upsert_profiles

router = APIRouter(prefix="/v1", tags=["customers"])
log = logging.getLogger("winback.serve")

AdminKey = Annotated[ApiKey, Depends(require("admin"))]
UserId = Annotated[str, Path(min_length=1, max_length=200)]

#: Tables erased, in the order the foreign keys need (coupons and deliveries point at outbox rows).
TABLES = (
    "coupons", "deliveries", "outbox", "events", "decisions", "carts", "visitors", "identities", "customers",
)  # fmt: skip
#: What erasure never reaches.
NOT_REACHED = ["models, plans and reports made before the erasure (retrain to forget)"]


class Customer(BaseModel):
    """A stored profile."""

    user_id: str
    name: str | None
    email: str | None
    phone: str | None
    push_token: str | None
    time_zone: str | None
    utc_offset_minutes: int | None
    consent: dict[str, bool | None]
    consent_at: dict[str, str | None]


class Export(BaseModel):
    user_id: str
    customer: Customer | None = None
    identities: list[dict[str, Any]] = []
    events: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    coupons: list[dict[str, Any]]
    carts: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []


class Erased(BaseModel):
    user_id: str
    erased: dict[str, int]
    not_reached: list[str]


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


def _ids(connection: Connection, user_id: str) -> list[int]:
    return [
        int(i)
        for i in connection.execute(sa.select(outbox.c.id).where(outbox.c.user_id == user_id)).scalars()
    ]


def _anonymous_ids(connection: Connection, user_id: str) -> list[str]:
    return sorted(
        connection.execute(
            sa.select(identities.c.anonymous_id).where(identities.c.user_id == user_id)
        ).scalars()
    )


def _their_events(user_id: str, anonymous: list[str]) -> Any:
    """The customer's events: under their id, or under a linked anonymous id with no other customer's."""
    return sa.or_(
        events.c.user_id == user_id, sa.and_(events.c.anonymous_id.in_(anonymous), events.c.user_id.is_(None))
    )


def _customer(connection: Connection, user_id: str) -> Customer | None:
    found = read_profiles(connection, [user_id]).get(user_id)
    if found is None:
        return None
    return Customer(
        user_id=found.user_id, name=found.name, email=found.email, phone=found.phone,
        push_token=found.push_token, time_zone=found.time_zone, utc_offset_minutes=found.utc_offset_minutes,
        consent=dict(found.consent),
        consent_at={c: (at.isoformat() if at else None) for c, at in found.consent_at.items()},
    )  # fmt: skip


def export_customer(engine: Engine, user_id: str) -> Export:
    """Everything the service's database holds about ``user_id``."""
    with engine.connect() as connection:
        ids = _ids(connection, user_id)
        anonymous = _anonymous_ids(connection, user_id)
        mine = [deliveries.c.user_id == user_id, deliveries.c.message_id.in_(ids)]
        event_columns = [c for c in events.columns if c.name != "txid"]
        found = {
            "identities": connection.execute(
                sa.select(identities)
                .where(identities.c.user_id == user_id)
                .order_by(identities.c.anonymous_id)
            ).mappings(),
            "events": connection.execute(
                sa.select(*event_columns)
                .where(_their_events(user_id, anonymous))
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
            "carts": connection.execute(
                sa.select(carts).where(carts.c.user_key == user_id).order_by(carts.c.started_at)
            ).mappings(),
            "decisions": connection.execute(
                sa.select(decisions).where(decisions.c.user_id == user_id).order_by(decisions.c.decided_at)
            ).mappings(),
        }
        plain = {
            name: [_plain(r, ("properties", "payload", "items", "reasons", "context")) for r in rows]
            for name, rows in found.items()
        }
        customer = _customer(connection, user_id)
    return Export(user_id=user_id, customer=customer, **plain)


def erase_customer(engine: Engine, user_id: str) -> tuple[dict[str, int], list[str]]:
    """Delete everything the service's database holds about ``user_id`` in one transaction: rows per
    table, and the anonymous ids that were linked to the customer (for erasing elsewhere)."""
    with write_transaction(engine) as connection:
        ids = _ids(connection, user_id)
        anonymous = _anonymous_ids(connection, user_id)
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
            "events": connection.execute(events.delete().where(_their_events(user_id, anonymous))).rowcount,
            "decisions": connection.execute(
                decisions.delete().where(decisions.c.user_id == user_id)
            ).rowcount,
            "carts": connection.execute(
                carts.delete().where(
                    sa.or_(
                        carts.c.user_key == user_id,
                        carts.c.user_key.in_([f"anonymous:{a}" for a in anonymous]),
                    )
                )
            ).rowcount,
            "visitors": connection.execute(
                visitors.delete().where(
                    sa.or_(
                        visitors.c.user_key == user_id,
                        visitors.c.user_key.in_([f"anonymous:{a}" for a in anonymous]),
                    )
                )
            ).rowcount,
            "identities": connection.execute(
                identities.delete().where(identities.c.user_id == user_id)
            ).rowcount,
            "customers": connection.execute(
                customers.delete().where(customers.c.user_id == user_id)
            ).rowcount,
        }
        rewind(connection)
    return {table: int(erased[table]) for table in TABLES}, anonymous


def erase_everywhere(settings: Settings, engine: Engine, user_id: str) -> Erased:
    """:func:`erase_customer`, then the winback home's event store and decision log."""
    from winback.serve.sync import erase_from_home

    erased, anonymous = erase_customer(engine, user_id)
    home, unreached = erase_from_home(settings, user_id, anonymous)
    return Erased(user_id=user_id, erased=erased | home, not_reached=unreached + NOT_REACHED)


def pseudonym(user_id: str) -> str:
    """What the log says instead of the id: a short hash (lets an operator confirm a request was done)."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:12]


def save_customer(engine: Engine, user_id: str, body: CustomerIn) -> Customer:
    with write_transaction(engine) as connection:
        upsert_profiles(connection, [body.update(user_id)])
        found = _customer(connection, user_id)
    assert found is not None
    return found


@router.put("/customers/{user_id:path}", response_model=Customer)
async def put_customer(user_id: UserId, body: CustomerIn, state: State, _key: WriteKey) -> Customer:
    """Set the customer's profile: addresses, time zone, consent per channel (as of ``consent_at``,
    default now; an older statement than the stored one does not change it). Fields left out keep their
    value, fields sent as null are cleared."""
    return await run_in_threadpool(save_customer, state.engine, user_id, body)


@router.get("/customers/{user_id:path}", response_model=Export)
async def export(user_id: UserId, state: State, _key: ReadKey) -> Export:
    """The customer's profile, events, outbox messages, deliveries, coupons, carts and decisions as
    JSON."""
    return await run_in_threadpool(export_customer, state.engine, user_id)


@router.delete("/customers/{user_id:path}", response_model=Erased)
async def erase(user_id: UserId, state: State, key: AdminKey) -> Erased:
    """Erase the customer from the service's database (one transaction) and from the winback home's event
    store and decision log; what was erased, per table, and what this does not reach."""
    erased = await run_in_threadpool(erase_everywhere, state.settings, state.engine, user_id)
    log.info(
        "erased customer sha256:%s by key %s: %s", pseudonym(user_id), key.key_id, json.dumps(erased.erased)
    )
    return erased

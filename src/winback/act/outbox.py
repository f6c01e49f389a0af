"""The durable outbox: scheduled messages in the service's database, claimed by workers under a lease.

:func:`schedule` turns plan decisions (:func:`winback.decide.plan.plan_decisions`'s table) into outbox
rows: one per message, each with a deterministic **idempotency key** (a hash of the decision: customer,
cart, action, send time), so scheduling the same decisions again adds nothing, and a fresh coupon code
for a coupon message. :func:`claim` hands due messages to one worker: on PostgreSQL an
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` (several workers never take the same row),
on SQLite the same UPDATE ... RETURNING inside ``BEGIN IMMEDIATE`` (one writer at a time). A claim is a
lease: a worker that dies leaves its messages ``claimed`` until ``lease_until`` passes, after which any
worker claims them again. :func:`record_sent`, :func:`retry`, :func:`finish` move a message on; all but
``record_sent`` are fenced by the claim (a worker whose lease was taken over changes nothing).

Exactly once. A worker can die after the provider accepted a message and before the outbox recorded
it; its successor then sends the message again. Every send carries the message's idempotency key (the
SMTP ``Message-ID``; the webhook ``Idempotency-Key`` header), so a receiver that deduplicates on it
delivers the message once: this is how exactly-once delivery is obtained in practice (outbox plus
idempotent receiver; Stripe-style ``Idempotency-Key`` APIs, and SMS/push gateways that accept a client
reference). Within winback the guarantee is at-least-once sending with a stable key and exactly one
recorded delivery per message (``deliveries`` has the message id as its primary key). A receiver that
does not deduplicate (many SMTP relays do not look at ``Message-ID``) can see a duplicate for the
messages in flight when a worker is killed: at most ``record_every`` messages per killed worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from winback.errors import BadInputError
from winback.serve.db import coupons, deliveries, events, outbox
from winback.serve.profiles import Profile, read_profiles

__all__ = [
    "Contact",
    "Message",
    "Scheduled",
    "cart_items",
    "claim",
    "coupon_code",
    "coupon_of",
    "decision_key",
    "finish",
    "insert_messages",
    "message_rows",
    "outbox_counts",
    "record_sent",
    "release",
    "renew",
    "retry",
    "schedule",
    "schedule_in",
]

#: Characters of coupon codes: no 0/O or 1/I/L to misread.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 12  # 31^12 ~ 2^59: a collision among ten million codes has odds of about 1 in 10,000
_CHUNK = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone: they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Contact:
    """Where a customer is reached: an address per channel and the customer's time zone."""

    email: str | None = None
    phone: str | None = None
    push_token: str | None = None
    utc_offset_minutes: int = 0
    name: str | None = None

    def address(self, channel: str) -> str | None:
        return {"email": self.email, "sms": self.phone, "push": self.push_token}.get(channel)


@dataclass(frozen=True)
class Message:
    """One claimed outbox row."""

    id: int
    idempotency_key: str
    decision_id: str | None
    user_id: str
    cart_id: str | None
    channel: str
    recipient: str
    template: str
    payload: dict[str, Any]
    utc_offset_minutes: int
    send_at: datetime
    attempts: int
    created_at: datetime
    claimed_by: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Message:
        return cls(
            id=int(row["id"]),
            idempotency_key=row["idempotency_key"],
            decision_id=row["decision_id"],
            user_id=row["user_id"],
            cart_id=row["cart_id"],
            channel=row["channel"],
            recipient=row["recipient"],
            template=row["template"],
            payload=json.loads(row["payload"]),
            utc_offset_minutes=int(row["utc_offset_minutes"]),
            send_at=as_utc(row["send_at"]),
            attempts=int(row["attempts"]),
            created_at=as_utc(row["created_at"]),
            claimed_by=row["claimed_by"],
        )


@dataclass
class Scheduled:
    """What :func:`schedule` did."""

    scheduled: int = 0
    already: int = 0
    coupons: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)


def decision_key(user_id: str, cart_id: str | None, action: str, send_at: datetime) -> str:
    """The decision's id: who, which cart, what, when (the same decision planned twice has one id)."""
    return f"{user_id}|{cart_id or ''}|{action}|{as_utc(send_at).isoformat()}"


def idempotency_key(decision_id: str) -> str:
    """A message's idempotency key: a hash of its decision id (stable across retries and restarts)."""
    return "wb-" + hashlib.sha256(decision_id.encode()).hexdigest()[:40]


def coupon_code() -> str:
    """A fresh random coupon code, e.g. ``WB-7K2Q-XR9M-4TPA``."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "WB-" + "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


#: How long a writer waits for SQLite's write lock, and how often it looks while waiting.
SQLITE_LOCK_WAIT = 30.0
_SQLITE_POLL = (0.0002, 0.002)


def _begin_immediate(connection: Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock by looking every 0.2-2 ms. SQLite's own busy
    handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between looks, so under a steady stream of other
    writers a waiter can sleep tens of milliseconds past the moment the lock was free."""
    connection.exec_driver_sql("PRAGMA busy_timeout = 0")
    try:
        deadline, pause = time.monotonic() + SQLITE_LOCK_WAIT, _SQLITE_POLL[0]
        while True:
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except sa.exc.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                connection.rollback()
                time.sleep(pause)
                pause = min(pause * 1.5, _SQLITE_POLL[1])
    finally:
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(SQLITE_LOCK_WAIT * 1000)}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes: on SQLite ``BEGIN IMMEDIATE`` takes the write lock first (see
    :func:`_begin_immediate`), so a read followed by a write in it never fails on another writer's
    commit."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            _begin_immediate(connection)
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def _insert(engine: Engine | Connection, table: sa.Table) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _records(decisions: Any) -> list[dict[str, Any]]:
    if hasattr(decisions, "to_dict"):
        return list(decisions.to_dict("records"))
    return [dict(d) for d in decisions]


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value) in ("", "NaT", "nan", "None")


def _timestamp(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    if hasattr(value, "to_pydatetime"):
        return as_utc(value.to_pydatetime())
    try:
        return as_utc(datetime.fromisoformat(str(value)))
    except ValueError:
        raise BadInputError(f"{where}: send_at {value!r}; expected an ISO timestamp") from None


def cart_items(connection: Connection, user_id: str, cart_id: str | None) -> list[dict[str, Any]]:
    """What the cart holds, from the events the service received: the session's ``add_to_cart`` less its
    ``remove_from_cart`` (the cart id is the session key); without a session, the customer's since their
    last purchase. One entry per product: ``product_id``, ``category``, ``price``, ``quantity``."""
    base = (
        sa.select(
            events.c.event_type,
            events.c.product_id,
            events.c.category,
            events.c.price,
            events.c.quantity,
            events.c.session_id,
            events.c.timestamp,
        )
        .where(
            events.c.user_id == user_id,
            events.c.event_type.in_(("add_to_cart", "remove_from_cart", "purchase")),
        )
        .order_by(events.c.timestamp)
    )
    rows = connection.execute(base).all()
    in_session: Sequence[Any] = [r for r in rows if cart_id is not None and r.session_id == cart_id]
    if not in_session:
        last_purchase = max((i for i, r in enumerate(rows) if r.event_type == "purchase"), default=-1)
        in_session = rows[last_purchase + 1 :]
    items: dict[str, dict[str, Any]] = {}
    for row in in_session:
        if row.product_id is None or row.event_type == "purchase":
            continue
        quantity = int(row.quantity or 1)
        item = items.setdefault(
            row.product_id,
            {"product_id": row.product_id, "category": row.category, "price": row.price, "quantity": 0},
        )
        if row.event_type == "add_to_cart":
            item["quantity"] += quantity
            if row.price is not None:
                item["price"] = row.price
        else:
            item["quantity"] = max(item["quantity"] - quantity, 0)
    return [i for i in items.values() if i["quantity"] > 0]


def schedule(
    engine: Engine,
    decisions: Any,
    contacts: Mapping[str, Contact],
    *,
    carts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    products: Mapping[str, Mapping[str, Any]] | None = None,
    coupon_valid_days: float = 7.0,
    currency: str = "USD",
    now: datetime | None = None,
) -> Scheduled:
    """Put plan decisions into the outbox.

    Parameters
    ----------
    engine
        The service's database (migrated).
    decisions
        The plan's table (``Plan.table``) or mappings with its columns: ``user_id``, ``cart_id``,
        ``action``, ``channel``, ``send_at``, ``coupon`` (percent), ``recommended`` (space-separated
        product ids). Rows whose action is ``nothing`` are skipped.
    contacts
        Per customer, the address on each channel and the time zone (for quiet hours at send time). A
        decision for a customer without an address on its channel is skipped and counted.
    carts
        Per cart id, its items (``product_id``, ``price``, ``quantity``, optionally ``name``, ``url``);
        None reads them from the received events (:func:`cart_items`).
    products
        Per product id, what the templates show (``name``, ``price``, ``url``, ``image``...).
    coupon_valid_days
        A coupon code expires this long after the message's send time.
    now
        The scheduling time (default: now); a purchase after it cancels the message.

    Returns
    -------
    Scheduled
        Counts, and the ids of the rows added. Scheduling the same decisions again adds nothing (the
        idempotency key is unique).
    """
    with write_transaction(engine) as connection:
        return schedule_in(
            connection, decisions, contacts, carts=carts, products=products,
            coupon_valid_days=coupon_valid_days, currency=currency, now=now,
        )  # fmt: skip


def schedule_in(
    connection: Connection,
    decisions: Any,
    contacts: Mapping[str, Contact],
    *,
    carts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    products: Mapping[str, Mapping[str, Any]] | None = None,
    coupon_valid_days: float = 7.0,
    currency: str = "USD",
    now: datetime | None = None,
) -> Scheduled:
    """:func:`schedule` in the caller's (write) transaction, e.g. with the decisions being logged."""
    now = as_utc(now) if now is not None else utcnow()
    rows, skipped = message_rows(
        decisions, contacts, connection=connection, carts=carts, products=products,
        coupon_valid_days=coupon_valid_days, currency=currency,
    )  # fmt: skip
    result = insert_messages(connection, rows, now)
    result.skipped = skipped
    return result


def message_rows(
    decisions: Any,
    contacts: Mapping[str, Contact],
    *,
    connection: Connection | None = None,
    carts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    products: Mapping[str, Mapping[str, Any]] | None = None,
    coupon_valid_days: float = 7.0,
    currency: str = "USD",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The outbox rows of ``decisions`` (as :func:`schedule` takes them), without their ``created_at``
    and ``updated_at`` (the moment they are inserted), and the count of messages skipped per reason.
    Nothing is written: the detector builds them before the cart falls due. The carts' items come from
    ``carts``, else are read through ``connection``."""
    products = products or {}
    skipped: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(_records(decisions)):
        action = str(record.get("action") or "nothing")
        channel = record.get("channel")
        if action == "nothing" or _missing(channel):
            continue
        where = f"decisions, row {i}"
        user = record.get("user_id")
        if _missing(user):
            raise BadInputError(f"{where}: user_id is empty; expected the customer's id")
        user = str(user)
        if _missing(record.get("send_at")):
            raise BadInputError(f"{where}: send_at is empty; expected when the message goes out")
        send_at = _timestamp(record["send_at"], where)
        cart = None if _missing(record.get("cart_id")) else str(record["cart_id"])
        contact = contacts.get(user)
        address = contact.address(str(channel)) if contact else None
        if not address:
            reason = f"no {channel} address"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        percent = float(record.get("coupon") or 0.0)
        recommended = str(record.get("recommended") or "").split()
        if carts is not None:
            items = [dict(item) for item in carts.get(cart or "", ())]
        elif connection is not None:
            items = cart_items(connection, user, cart)
        else:
            raise ValueError("message_rows: either carts or a connection to read them")
        for item in items:
            item.update(
                {k: v for k, v in products.get(str(item.get("product_id")), {}).items() if k not in item}
            )
        decision_id = decision_key(user, cart, action, send_at)
        payload: dict[str, Any] = {
            "action": action,
            "customer": {"user_id": user, "name": contact.name if contact else None},
            "cart": {
                "id": cart,
                "items": items,
                "currency": currency,
                "value": round(
                    sum(float(i.get("price") or 0) * int(i.get("quantity") or 1) for i in items), 2
                ),
            },
            "recommendations": [{"product_id": p, **products.get(p, {})} for p in recommended],
            "coupon": None,
        }
        if percent > 0:
            expires = send_at + timedelta(days=coupon_valid_days)
            payload["coupon"] = {
                "code": coupon_code(),
                "percent": round(percent, 6),
                "expires_at": expires.isoformat(),
            }
        rows.append(
            {
                "idempotency_key": idempotency_key(decision_id),
                "decision_id": decision_id,
                "user_id": user,
                "cart_id": cart,
                "channel": str(channel),
                "recipient": address,
                "template": "coupon" if percent > 0 else "reminder",
                "payload": json.dumps(payload, default=str),
                "utc_offset_minutes": contact.utc_offset_minutes if contact else 0,
                "send_at": send_at,
                "status": "scheduled",
                "attempts": 0,
                "next_attempt_at": send_at,
            }
        )
    return rows, skipped


def coupon_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The coupon a message row (:func:`message_rows`) carries, as a ``coupons`` row less its
    ``message_id`` and ``created_at``; None without one."""
    coupon = json.loads(row["payload"])["coupon"]
    if not coupon:
        return None
    return {
        "code": coupon["code"],
        "user_id": row["user_id"],
        "percent": coupon["percent"],
        "status": "issued",
        "expires_at": datetime.fromisoformat(coupon["expires_at"]),
    }


def insert_messages(connection: Connection, rows: Sequence[Mapping[str, Any]], now: datetime) -> Scheduled:
    """Insert message rows (:func:`message_rows`) created ``now``, and their coupons; those whose
    idempotency key is there already are left alone."""
    result = Scheduled()
    if not rows:
        return result
    timed = [dict(r, created_at=now, updated_at=now) for r in rows]
    keys = [r["idempotency_key"] for r in timed]
    insert = (
        _insert(connection, outbox)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(outbox.c.id, outbox.c.user_id, outbox.c.payload)
    )
    mine: list[Any] = []
    for start in range(0, len(timed), _CHUNK):
        mine += connection.execute(insert, timed[start : start + _CHUNK]).all()
    result.ids = sorted(int(r.id) for r in mine)
    result.scheduled = len(mine)
    result.already = len(set(keys)) - len(mine)
    codes = []
    for row in mine:
        coupon = coupon_of(row._mapping)
        if coupon:
            codes.append(dict(coupon, message_id=row.id, created_at=now))
    if codes:
        connection.execute(
            _insert(connection, coupons).on_conflict_do_nothing(index_elements=["message_id"]), codes
        )
    result.coupons = len(codes)
    return result


def _due(now: datetime) -> Any:
    return sa.or_(
        sa.and_(outbox.c.status == "scheduled", outbox.c.next_attempt_at <= now),
        sa.and_(outbox.c.status == "claimed", outbox.c.lease_until < now),
    )


def claim(
    engine: Engine, worker: str, *, limit: int = 50, lease_seconds: float = 60.0, now: datetime | None = None
) -> list[Message]:
    """Claim up to ``limit`` due messages for ``worker`` (oldest first) under a lease of
    ``lease_seconds``; messages whose lease expired (their worker died) are due again. Each claim
    counts as an attempt."""
    now = now or utcnow()
    chosen = (
        sa.select(outbox.c.id)
        .where(_due(now))
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        outbox.update()
        .where(outbox.c.id.in_(chosen.scalar_subquery()))
        .values(
            status="claimed",
            claimed_by=worker,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=outbox.c.attempts + 1,
            updated_at=now,
        )
        .returning(*outbox.c)
    )
    with write_transaction(engine) as connection:
        rows = connection.execute(statement).mappings().all()
    return sorted((Message.from_row(dict(r)) for r in rows), key=lambda m: (m.send_at, m.id))


def renew(
    engine: Engine, worker: str, ids: Sequence[int], *, lease_seconds: float, now: datetime | None = None
) -> set[int]:
    """Extend ``worker``'s lease on ``ids``; the ids it still holds (others were taken over)."""
    if not ids:
        return set()
    now = now or utcnow()
    statement = (
        outbox.update()
        .where(outbox.c.id.in_(list(ids)), outbox.c.claimed_by == worker, outbox.c.status == "claimed")
        .values(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(outbox.c.id)
    )
    with write_transaction(engine) as connection:
        return {int(i) for i in connection.execute(statement).scalars()}


@dataclass(frozen=True)
class Sent:
    """A message the provider accepted."""

    message: Message
    provider_message_id: str | None
    result: str
    sent_at: datetime


def record_sent(engine: Engine, sent: Sequence[Sent], worker: str) -> None:
    """Record deliveries in one transaction: the delivery row (once per message), the message ``sent``,
    its coupon ``sent``, and a ``message_sent`` event (for attribution). Not fenced: a message the
    provider accepted is sent whoever holds its claim now."""
    if not sent:
        return
    now = utcnow()
    with write_transaction(engine) as connection:
        connection.execute(
            _insert(engine, deliveries).on_conflict_do_nothing(index_elements=["message_id"]),
            [
                {
                    "message_id": s.message.id,
                    "idempotency_key": s.message.idempotency_key,
                    "user_id": s.message.user_id,
                    "channel": s.message.channel,
                    "provider_message_id": s.provider_message_id,
                    "result": s.result,
                    "attempts": s.message.attempts,
                    "worker": worker,
                    "sent_at": s.sent_at,
                }
                for s in sent
            ],
        )
        ids = [s.message.id for s in sent]
        connection.execute(
            outbox.update()
            .where(outbox.c.id.in_(ids), outbox.c.status != "sent")
            .values(status="sent", claimed_by=None, lease_until=None, last_error=None, updated_at=now)
        )
        with_coupon = [s for s in sent if s.message.payload.get("coupon")]
        if with_coupon:
            connection.execute(
                coupons.update()
                .where(coupons.c.message_id.in_([s.message.id for s in with_coupon]))
                .values(status="sent", sent_at=now)
            )
        connection.execute(
            _insert(engine, events).on_conflict_do_nothing(index_elements=["event_id"]),
            [
                {
                    "event_id": f"message_sent:{s.message.idempotency_key}",
                    "event_type": "message_sent",
                    "timestamp": s.sent_at,
                    "user_id": s.message.user_id,
                    "session_id": s.message.cart_id,
                    "properties": json.dumps(
                        {
                            "channel": s.message.channel,
                            "message_id": s.message.id,
                            "action": s.message.payload.get("action"),
                            "coupon": (s.message.payload.get("coupon") or {}).get("code"),
                        }
                    ),
                    "source": "winback",
                    "received_at": now,
                }
                for s in sent
            ],
        )


def _fenced(message_ids: Sequence[int], worker: str) -> Any:
    return sa.and_(
        outbox.c.id.in_(list(message_ids)), outbox.c.claimed_by == worker, outbox.c.status == "claimed"
    )


def retry(
    engine: Engine, message: Message, worker: str, error: str, at: datetime, *, counted: bool = True
) -> bool:
    """Give the message back for another attempt at ``at``; False if ``worker`` no longer held it.
    ``counted=False`` does not count the attempt just made (see :func:`defer`)."""
    values: dict[str, Any] = {
        "status": "scheduled", "next_attempt_at": at, "claimed_by": None, "lease_until": None,
        "last_error": error[:2000], "updated_at": utcnow(),
    }  # fmt: skip
    if not counted:
        values["attempts"] = outbox.c.attempts - 1
    with write_transaction(engine) as connection:
        done = connection.execute(outbox.update().where(_fenced([message.id], worker)).values(**values))
    return bool(done.rowcount)


def defer(engine: Engine, message: Message, worker: str, reason: str, at: datetime) -> bool:
    """Put the message off until ``at`` without counting the attempt (quiet hours)."""
    return retry(engine, message, worker, reason, at, counted=False)


def finish(engine: Engine, messages: Iterable[tuple[Message, str, str]], worker: str) -> int:
    """End messages without a delivery: ``(message, status, reason)`` with status ``cancelled``,
    ``failed`` or ``dead``; their coupons are void. How many ``worker`` still held."""
    done = 0
    items = list(messages)
    if not items:
        return 0
    now = utcnow()
    with write_transaction(engine) as connection:
        for message, status, reason in items:
            if status not in ("cancelled", "failed", "dead"):
                raise ValueError(f"status {status!r}: expected cancelled, failed or dead")
            changed = connection.execute(
                outbox.update()
                .where(_fenced([message.id], worker))
                .values(
                    status=status, claimed_by=None, lease_until=None, last_error=reason[:2000], updated_at=now
                )
            ).rowcount
            if changed and message.payload.get("coupon"):
                connection.execute(
                    coupons.update().where(coupons.c.message_id == message.id).values(status="void")
                )
            done += changed
    return done


def release(engine: Engine, messages: Sequence[Message], worker: str) -> int:
    """Hand claimed messages that were not tried back (a worker stopping): due again at once."""
    if not messages:
        return 0
    with write_transaction(engine) as connection:
        return int(
            connection.execute(
                outbox.update()
                .where(_fenced([m.id for m in messages], worker))
                .values(
                    status="scheduled",
                    attempts=outbox.c.attempts - 1,
                    claimed_by=None,
                    lease_until=None,
                    updated_at=utcnow(),
                )
            ).rowcount
        )


def cancel(engine: Engine, ids: Sequence[int], reason: str = "cancelled by hand") -> int:
    """Cancel scheduled (not yet claimed) messages; how many were."""
    with write_transaction(engine) as connection:
        return len(cancel_in(connection, outbox.c.id.in_(list(ids)), reason))


def cancel_in(connection: Connection, which: Any, reason: str) -> list[int]:
    """Cancel the scheduled messages matching ``which`` (a condition on ``outbox``) in the caller's
    transaction, their coupons void; the ids cancelled. Claimed messages are left to the worker's
    send-time re-check."""
    changed = [
        int(i)
        for i in connection.execute(
            outbox.update()
            .where(which, outbox.c.status == "scheduled")
            .values(status="cancelled", last_error=reason[:2000], updated_at=utcnow())
            .returning(outbox.c.id)
        ).scalars()
    ]
    if changed:
        connection.execute(coupons.update().where(coupons.c.message_id.in_(changed)).values(status="void"))
    return changed


def outbox_counts(engine: Engine) -> dict[str, int]:
    """Messages per status."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
    return {str(status): int(n) for status, n in rows}


@dataclass(frozen=True)
class SendFacts:
    """What the send-time re-check reads for a batch of customers."""

    purchases: dict[str, datetime]  # last purchase per customer
    unsubscribed: dict[str, dict[str, datetime]]  # per customer, channel ("*": all) -> last unsubscribe
    last_sent: dict[tuple[str, str], datetime]  # last delivery per (customer, channel)
    profiles: dict[str, Profile] = field(default_factory=dict)  # the customers' stored profiles


def unsubscribes(connection: Connection, users: Sequence[str]) -> dict[str, dict[str, datetime]]:
    """Per customer of ``users``, their last ``unsubscribed`` event per channel (``*``: all channels)."""
    found: dict[str, dict[str, datetime]] = {}
    for user, at, properties in connection.execute(
        sa.select(events.c.user_id, events.c.timestamp, events.c.properties).where(
            events.c.user_id.in_(list(users)), events.c.event_type == "unsubscribed"
        )
    ):
        try:
            channel = (json.loads(properties) or {}).get("channel") if properties else None
        except (ValueError, AttributeError):
            channel = None
        mine = found.setdefault(user, {})
        key = str(channel) if channel else "*"
        mine[key] = max(mine.get(key, as_utc(at)), as_utc(at))
    return found


def send_facts(engine: Engine, users: Iterable[str]) -> SendFacts:
    """Last purchases, unsubscribes, last deliveries and profiles of ``users`` (a few queries per batch)."""
    users = sorted(set(users))
    purchases: dict[str, datetime] = {}
    unsubscribed: dict[str, dict[str, datetime]] = {}
    last_sent: dict[tuple[str, str], datetime] = {}
    with engine.connect() as connection:
        for start in range(0, len(users), _CHUNK):
            chunk = users[start : start + _CHUNK]
            for user, at in connection.execute(
                sa.select(events.c.user_id, sa.func.max(events.c.timestamp))
                .where(events.c.user_id.in_(chunk), events.c.event_type == "purchase")
                .group_by(events.c.user_id)
            ):
                purchases[user] = as_utc(at)
            unsubscribed |= unsubscribes(connection, chunk)
            for user, channel, at in connection.execute(
                sa.select(deliveries.c.user_id, deliveries.c.channel, sa.func.max(deliveries.c.sent_at))
                .where(deliveries.c.user_id.in_(chunk))
                .group_by(deliveries.c.user_id, deliveries.c.channel)
            ):
                last_sent[(user, channel)] = as_utc(at)
        profiles = read_profiles(connection, users)
    return SendFacts(purchases, unsubscribed, last_sent, profiles)

"""Live carts: the state of every cart kept from the stored events, and when each becomes abandoned.

:func:`apply_events` folds a batch of events from the feed (winback.serve.feed, in commit order) into
the ``carts``, ``visitors``, ``identities`` and ``customers`` tables, in the caller's transaction -- the
same one that moves the feed's cursor, so every event counts exactly once, across restarts.

Definitions (DESIGN.md, and winback.features.carts for the batch pipeline):

- A customer's key is the ``user_id``, else the customer an ``anonymous_id`` was linked to (an event or
  identify call carrying both; the first customer keeps it), else ``anonymous:<id>`` (its open carts
  move to the customer when the link arrives: :func:`winback.serve.profiles.save_identities`).
- A session is the source's ``session_id``; without one, the customer's behaviour events with gaps under
  the session gap (30 minutes), numbered from 1 per customer: ``<user key>#<n>``, the batch pipeline's
  key when events arrive in time order (a late event joins the current session).
- A cart is a session with an ``add_to_cart``; it holds the added less the removed quantities per
  product. Its threshold is the idle time after its last event (any behaviour event of its session) past
  which it is abandoned (:class:`IdleThresholds`: learned per kind of cart, else the configured 30
  minutes); ``due_at`` = last event + threshold, for a cart with items.
- A purchase in the cart's session ends it (``purchased``). A purchase of one of its products in another
  session (or an order without products) also ends an open cart, and cancels the scheduled messages of a
  decided one at once (the worker's send-time re-check stays the last word).
- An ``unsubscribed`` event withdraws the customer's consent on its channel (all of them without one),
  as of the event's time.

A cart that is decided keeps its decision; later events still update its contents and last activity.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from winback.act.outbox import cancel_in
from winback.decide.actions import CHANNELS
from winback.errors import BadInputError
from winback.serve.db import carts, identities, outbox, visitors
from winback.serve.profiles import ProfileUpdate, save_identities, upsert_profiles

__all__ = ["Applied", "IdleThresholds", "apply_events", "user_key"]

BEHAVIOUR = frozenset({"view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase"})
_CHUNK = 500


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class IdleThresholds:
    """Idle minutes after which a cart is abandoned: per kind of cart (value band x new or returning
    customer) when learned, else ``default_minutes``.

    ``kinds`` rows are ``(value_from, value_to, customer, minutes)`` with customer ``new``,
    ``returning`` or ``all``; the first row whose band holds the cart's value and whose customer matches
    wins. :meth:`load` reads them from a table such as ``winback warnings --json``'s
    ``cart_thresholds`` (columns ``value_from``, ``value_to``, ``customer``, ``threshold_minutes``).
    """

    default_minutes: float = 30.0
    kinds: tuple[tuple[float, float, str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.default_minutes > 0:
            raise BadInputError(f"idle threshold {self.default_minutes} minutes: expected more than 0")

    def minutes(self, value: float, returning: bool) -> float:
        who = "returning" if returning else "new"
        for low, high, customer, minutes in self.kinds:
            if customer in (who, "all") and low <= value < high:
                return minutes
        return self.default_minutes

    @classmethod
    def load(cls, path: Path, default_minutes: float = 30.0) -> IdleThresholds:
        """Thresholds from a CSV, Parquet or JSON table (see the class docstring)."""
        import pandas as pd

        try:
            if path.suffix.lower() == ".csv":
                frame = pd.read_csv(path)
            elif path.suffix.lower() == ".parquet":
                frame = pd.read_parquet(path)
            elif path.suffix.lower() == ".json":
                data = json.loads(path.read_text())
                frame = pd.DataFrame(data.get("cart_thresholds", data) if isinstance(data, dict) else data)
            else:
                raise BadInputError(f"--thresholds {path}: expected a .csv, .parquet or .json file")
        except (OSError, ValueError) as error:
            raise BadInputError(f"--thresholds {path}: cannot read it ({error})") from None
        needed = ("value_from", "value_to", "customer", "threshold_minutes")
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise BadInputError(
                f"--thresholds {path}: missing columns {missing}; expected {list(needed)} (as "
                "`winback warnings --json` gives in cart_thresholds)"
            )
        kinds = []
        for i, row in enumerate(frame.to_dict("records")):
            minutes = float(row["threshold_minutes"])
            if not minutes > 0 or str(row["customer"]) not in ("new", "returning", "all"):
                raise BadInputError(
                    f"--thresholds {path}, row {i + 1}: threshold_minutes {row['threshold_minutes']!r}, "
                    f"customer {row['customer']!r}; expected minutes > 0 and new, returning or all"
                )
            low = -math.inf if pd.isna(row["value_from"]) else float(row["value_from"])
            high = math.inf if pd.isna(row["value_to"]) else float(row["value_to"])
            kinds.append((low, high, str(row["customer"]), minutes))
        kinds.sort(key=lambda k: k[2] == "all")  # the pooled row last
        return cls(default_minutes, tuple(kinds))


@dataclass
class Applied:
    """What one batch of events did to the live state."""

    events: int = 0
    carts_opened: int = 0
    carts_purchased: int = 0
    messages_cancelled: int = 0
    identities: int = 0
    unsubscribes: int = 0
    last_event_at: datetime | None = None
    touched: set[str] = field(default_factory=set)


def user_key(user_id: str | None, anonymous_id: str | None, linked: Mapping[str, str]) -> str | None:
    """The key events are grouped by (see the module docstring)."""
    if user_id:
        return user_id
    if anonymous_id:
        return linked.get(anonymous_id) or f"anonymous:{anonymous_id}"
    return None


def _select_in(
    connection: Connection, table: sa.Table, column: str, keys: Iterable[str], *, lock: bool = False
) -> list[Any]:
    """Rows whose ``column`` is one of ``keys``; with ``lock``, locked for the transaction (PostgreSQL)."""
    wanted = sorted(set(keys))
    rows: list[Any] = []
    for start in range(0, len(wanted), _CHUNK):
        query = sa.select(table).where(table.c[column].in_(wanted[start : start + _CHUNK]))
        rows += connection.execute(query.with_for_update() if lock else query).mappings().all()
    return rows


def _cart_value(items: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    n = sum(int(i["quantity"]) for i in items)
    value = sum(float(i.get("price") or 0.0) * int(i["quantity"]) for i in items)
    return n, round(value, 2)


#: The event columns :func:`apply_events` reads.
COLUMNS = (
    "event_id", "event_type", "timestamp", "user_id", "anonymous_id", "session_id", "product_id", "category",
    "price", "quantity", "properties",
)  # fmt: skip


class _Event(NamedTuple):
    """A feed row as the fold reads it (attribute access on a tuple: cheaper than on a Row)."""

    event_id: str
    event_type: str
    at: datetime  # the timestamp, in UTC
    user_id: str | None
    anonymous_id: str | None
    session_id: str | None
    product_id: str | None
    category: str | None
    price: float | None
    quantity: int | None
    properties: str | None


@cache
def _statements(dialect: str) -> dict[str, Any]:
    """The fold's write statements, built once per dialect (building and cache-keying them per batch
    cost more than running them)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    cart = insert(carts)
    person = insert(visitors)
    return {
        "carts": cart.on_conflict_do_update(
            index_elements=["cart_id"],
            set_={c.name: cart.excluded[c.name] for c in carts.columns if c.name != "cart_id"},
        ),
        "visitors": person.on_conflict_do_update(
            index_elements=["user_key"],
            set_={c: person.excluded[c] for c in ("session_no", "last_seen_at", "first_purchase_at")},
        ),
        "touch": carts.update()
        .where(carts.c.cart_id == sa.bindparam("id"))
        .values(
            last_event_at=sa.bindparam("last"), due_at=sa.bindparam("due"),
            idle_minutes=sa.bindparam("minutes"), version=carts.c.version + 1, updated_at=sa.bindparam("now"),
        ),
    }  # fmt: skip


def _write(
    connection: Connection,
    records: list[dict[str, Any]],
    touched: list[dict[str, Any]],
    people: list[dict[str, Any]],
    now: datetime,
) -> None:
    """Write carts (whole rows), carts' last activity (lighter), and visitors."""
    statements = _statements(connection.dialect.name)
    if records:
        connection.execute(statements["carts"], records)
    if touched:
        connection.execute(statements["touch"], [dict(t, now=now) for t in touched])
    if people:
        connection.execute(statements["visitors"], people)


def apply_events(
    connection: Connection,
    rows: Sequence[Any],
    *,
    thresholds: IdleThresholds,
    session_gap: timedelta = timedelta(minutes=30),
    now: datetime | None = None,
) -> Applied:
    """Fold ``rows`` (feed rows with the :data:`COLUMNS`) into the live state, in the caller's
    transaction."""
    now = now or datetime.now(UTC)
    done = Applied(events=len(rows))
    if not rows:
        return done
    ordered = sorted(
        (
            _Event(r[0], r[1], _utc(r[2]), *r[3:])
            for r in (tuple(getattr(x, c) for c in COLUMNS) for x in rows)
        ),
        key=lambda e: (e.at, e.event_id),
    )
    done.last_event_at = ordered[-1].at

    # Who is who: identities known, and new links from events carrying both ids.
    anonymous = {str(r.anonymous_id) for r in ordered if r.anonymous_id}
    linked = {
        r["anonymous_id"]: r["user_id"] for r in _select_in(connection, identities, "anonymous_id", anonymous)
    }
    new_links: dict[str, tuple[str, datetime]] = {}
    for r in ordered:
        if r.user_id and r.anonymous_id and r.anonymous_id not in linked:
            linked[r.anonymous_id] = r.user_id
            new_links[r.anonymous_id] = (r.user_id, r.at)
    save_identities(connection, new_links)
    done.identities = len(new_links)

    behaviour = [r for r in ordered if r.event_type in BEHAVIOUR]
    keys = {id(r): user_key(r.user_id, r.anonymous_id, linked) for r in behaviour}
    behaviour = [r for r in behaviour if keys[id(r)] is not None]

    # Sessions: the source's, else numbered per customer by the session gap.
    need_visitor = {
        str(keys[id(r)]) for r in behaviour if not r.session_id or r.event_type in ("add_to_cart", "purchase")
    }
    people = {r["user_key"]: dict(r) for r in _select_in(connection, visitors, "user_key", need_visitor)}
    changed_people: set[str] = set()
    session_of: dict[int, str] = {}
    for r in behaviour:
        key = str(keys[id(r)])
        at = r.at
        if r.session_id:
            session_of[id(r)] = str(r.session_id)
        else:
            person = people.setdefault(
                key, {"user_key": key, "session_no": 0, "last_seen_at": None, "first_purchase_at": None}
            )
            last = person["last_seen_at"]
            last = _utc(last) if last is not None else None
            if last is None or at - last > session_gap:
                person["session_no"] = int(person["session_no"]) + 1
            person["last_seen_at"] = at if last is None else max(at, last)
            session_of[id(r)] = f"{key}#{person['session_no']}"
            changed_people.add(key)
        if r.event_type == "purchase":
            person = people.setdefault(
                key, {"user_key": key, "session_no": 0, "last_seen_at": None, "first_purchase_at": None}
            )
            first = person["first_purchase_at"]
            if first is None or at < _utc(first):
                person["first_purchase_at"] = at
                changed_people.add(key)

    # Carts of the sessions touched, and the other open or decided carts of customers who bought.
    buyers = {str(keys[id(r)]) for r in behaviour if r.event_type == "purchase"}
    # Locked (PostgreSQL): a detector deciding one of them meanwhile skips it, and sees this batch's changes.
    sessions = set(session_of.values())
    found = {r["cart_id"]: dict(r) for r in _select_in(connection, carts, "cart_id", sessions, lock=True)}
    for start in range(0, len(sorted(buyers)), _CHUNK):
        chunk = sorted(buyers)[start : start + _CHUNK]
        for row in connection.execute(
            sa.select(carts)
            .where(carts.c.user_key.in_(chunk), carts.c.status.in_(("open", "decided")))
            .with_for_update()
        ).mappings():
            found.setdefault(row["cart_id"], dict(row))
    contents = {c: {i["product_id"]: i for i in json.loads(row["items"])} for c, row in found.items()}
    changed: set[str] = set()  # carts whose state changed
    reshaped: set[str] = set()  # ... in more than their last activity (new, items, status, checkout)
    bought: dict[str, list[tuple[datetime, set[str], str]]] = defaultdict(list)  # user: (at, products, cart)

    for r in behaviour:
        cart_id, key, at = session_of[id(r)], str(keys[id(r)]), r.at
        cart = found.get(cart_id)
        if cart is None:
            if r.event_type != "add_to_cart":
                if r.event_type == "purchase":
                    bought[key].append((at, {r.product_id} if r.product_id else set(), cart_id))
                continue
            person = people.get(key) or {}
            first = person.get("first_purchase_at")
            cart = found[cart_id] = {
                "cart_id": cart_id, "user_key": key, "status": "open", "items": "[]", "n_items": 0,
                "value": 0.0, "checkout_started": False,
                "returning_customer": first is not None and _utc(first) < at, "started_at": at,
                "last_event_at": at, "idle_minutes": thresholds.default_minutes, "due_at": None,
                "purchased_at": None, "version": 0,
            }  # fmt: skip
            contents[cart_id] = {}
            done.carts_opened += 1
        items = contents[cart_id]
        quantity = int(r.quantity or 1)
        if r.event_type == "add_to_cart" and r.product_id:
            item = items.setdefault(
                r.product_id,
                {"product_id": r.product_id, "category": r.category, "price": r.price, "quantity": 0},
            )
            item["quantity"] += quantity
            if r.price is not None:
                item["price"] = r.price
            cart["started_at"] = min(_utc(cart["started_at"]), at)
        elif r.event_type == "remove_from_cart" and r.product_id in items:
            items[r.product_id]["quantity"] = max(items[r.product_id]["quantity"] - quantity, 0)
        elif r.event_type == "checkout_start":
            cart["checkout_started"] = True
        elif r.event_type == "purchase":
            bought[key].append((at, {r.product_id} if r.product_id else set(), cart_id))
            if cart["purchased_at"] is None:
                cart["purchased_at"] = at
                if cart["status"] == "open":
                    cart["status"] = "purchased"
                    done.carts_purchased += 1
        cart["last_event_at"] = max(_utc(cart["last_event_at"]), at)
        changed.add(cart_id)
        if r.event_type != "view":
            reshaped.add(cart_id)

    # A purchase of a cart's product elsewhere ends the open cart and cancels a decided one's messages.
    cancel: list[tuple[str, str, datetime]] = []
    for key, orders in bought.items():
        for cart_id, cart in found.items():
            if cart["user_key"] != key or cart["status"] not in ("open", "decided"):
                continue
            mine = {p for p, i in contents[cart_id].items() if i["quantity"] > 0}
            for at, products, where in orders:
                elsewhere = where != cart_id  # (a purchase in its own session ended an open cart above)
                if elsewhere and (at < _utc(cart["started_at"]) or (products and not products & mine)):
                    continue
                cart["purchased_at"] = cart["purchased_at"] or at
                if cart["status"] == "decided":
                    cancel.append((key, cart_id, at))
                else:
                    cart["status"] = "purchased"
                    done.carts_purchased += 1
                changed.add(cart_id)
                reshaped.add(cart_id)
                break
    done.messages_cancelled = _cancel_messages(connection, cancel)

    # Write the carts back, with their due time: whole rows for the reshaped, last activity for the rest.
    records, touched = [], []
    for cart_id in sorted(changed):
        cart = found[cart_id]
        if cart_id in reshaped:
            left = [i for i in contents[cart_id].values() if i["quantity"] > 0]
            cart["items"] = json.dumps(left, separators=(",", ":"))
            cart["n_items"], cart["value"] = _cart_value(left)
        if cart["status"] == "open":
            cart["idle_minutes"] = thresholds.minutes(cart["value"], bool(cart["returning_customer"]))
            last = _utc(cart["last_event_at"])
            cart["due_at"] = last + timedelta(minutes=cart["idle_minutes"]) if cart["n_items"] > 0 else None
        cart["updated_at"] = now
        cart["version"] = int(cart["version"]) + 1
        if cart_id in reshaped:
            records.append(cart)
        else:
            touched.append(
                {
                    "id": cart_id,
                    "last": cart["last_event_at"],
                    "due": cart["due_at"],
                    "minutes": cart["idle_minutes"],
                }
            )
    _write(connection, records, touched, [people[k] for k in sorted(changed_people)], now)
    done.touched = changed

    # Unsubscribes withdraw consent as of their time.
    withdrawn = []
    for r in ordered:
        if r.event_type != "unsubscribed" or not r.user_id:
            continue
        channel = None
        if r.properties:
            try:
                channel = (json.loads(r.properties) or {}).get("channel")
            except (ValueError, AttributeError):
                channel = None
        channels = [channel] if channel in CHANNELS else list(CHANNELS)
        at = r.at
        withdrawn.append(ProfileUpdate(r.user_id, {}, {c: (False, at) for c in channels}, "unsubscribe"))
    if withdrawn:
        upsert_profiles(connection, withdrawn, now)
        done.unsubscribes = len(withdrawn)
    return done


def _cancel_messages(connection: Connection, carts_bought: list[tuple[str, str, datetime]]) -> int:
    """Cancel the scheduled messages of decided carts whose products were bought; their coupons are void."""
    cancelled = 0
    for user, cart_id, at in carts_bought:
        which = sa.and_(outbox.c.user_id == user, outbox.c.cart_id == cart_id)
        reason = f"purchased at {at.isoformat()}: an item of the cart (cancelled when the purchase arrived)"
        cancelled += len(cancel_in(connection, which, reason))
    return cancelled

"""Customers' profiles in the service: where each is reached (e-mail, phone, push token), their time zone,
and their consent per channel.

Profiles come from ``PUT /v1/customers/{id}`` (:class:`CustomerIn`), Segment ``identify`` calls
(:func:`from_segment`) and Shopify ``customers/create`` / ``customers/update`` webhooks
(:func:`from_shopify`), and ``unsubscribed`` events withdraw consent (the detector applies them). Every
statement of consent carries its moment; a statement older than the one stored is ignored, so a late
delivery never undoes a newer choice (an unsubscribe after a subscribe wins, and so does a re-subscribe
after an unsubscribe). Fields an update leaves out keep their value; a field sent as null is cleared.

The decision at the trigger and the outbox's send-time re-check read them (:func:`read_profiles`): a
channel is usable when its consent is true and its address is known; consent that is not known is no.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from winback.decide.actions import CHANNELS, Channel
from winback.serve.db import carts, customers, identities

__all__ = [
    "ADDRESS",
    "CustomerIn",
    "Profile",
    "ProfileUpdate",
    "from_segment",
    "from_shopify",
    "read_profiles",
    "save_identities",
    "upsert_profiles",
]

#: The profile field holding each channel's address.
ADDRESS: dict[str, str] = {"email": "email", "sms": "phone", "push": "push_token"}
_FIELDS = ("name", "email", "phone", "push_token", "time_zone", "utc_offset_minutes")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")  # E.164
#: Consent values of identify traits (Braze's Segment convention: ``email_subscribe`` and friends) and
#: of Shopify's marketing consent states. Anything else says nothing about consent.
_YES = frozenset({"opted_in", "subscribed", "true", "yes", "1"})
_NO = frozenset({"unsubscribed", "not_subscribed", "false", "no", "0", "redacted", "invalid", "pending"})


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not an IANA time zone, e.g. Europe/Paris or America/New_York"
        ) from None
    return name


class ConsentIn(BaseModel):
    """Consent per channel: true, false, or left out (unchanged)."""

    model_config = ConfigDict(extra="forbid")
    email: bool | None = None
    sms: bool | None = None
    push: bool | None = None


class CustomerIn(BaseModel):
    """A customer's profile as ``PUT /v1/customers/{id}`` takes it: fields left out keep their value,
    fields sent as null are cleared."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320, description="An e-mail address.")
    phone: str | None = Field(None, max_length=40, description="E.164, e.g. +4915112345678.")
    push_token: str | None = Field(None, max_length=500, description="The push provider's device token.")
    time_zone: str | None = Field(None, max_length=64, description="IANA name, e.g. Europe/Paris.")
    utc_offset_minutes: int | None = Field(
        None, ge=-720, le=840, description="Minutes east of UTC, when no time_zone is known."
    )
    consent: ConsentIn | None = Field(None, description="Consent to marketing messages per channel.")
    consent_at: datetime | None = Field(
        None, description="When the consent was given or withdrawn (default: now); with a time zone."
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("expected an e-mail address such as ann@example.com")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not _PHONE.match(value):
            raise ValueError("expected an E.164 phone number such as +4915112345678")
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        return None if value is None else _zone(value)

    @field_validator("consent_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expected a timestamp with a time zone, e.g. 2024-05-01T10:00:00Z")
        return value

    def update(self, user_id: str, source: str = "api", now: datetime | None = None) -> ProfileUpdate:
        given = self.model_fields_set
        values = {f: getattr(self, f) for f in _FIELDS if f in given}
        at = (self.consent_at or now or datetime.now(UTC)).astimezone(UTC)
        consent: dict[str, tuple[bool, datetime]] = {}
        if self.consent is not None:
            consent = {c: (v, at) for c, v in self.consent.model_dump().items() if v is not None}
        return ProfileUpdate(user_id, values, consent, source)


@dataclass(frozen=True)
class ProfileUpdate:
    """What one statement says about a customer: fields to set (None clears) and, per channel, consent
    given or withdrawn and when."""

    user_id: str
    values: Mapping[str, Any] = field(default_factory=dict)
    consent: Mapping[str, tuple[bool, datetime]] = field(default_factory=dict)
    source: str = "api"


@dataclass(frozen=True)
class Profile:
    """A stored customer profile."""

    user_id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    push_token: str | None = None
    time_zone: str | None = None
    utc_offset_minutes: int | None = None
    consent: Mapping[str, bool | None] = field(default_factory=dict)
    consent_at: Mapping[str, datetime | None] = field(default_factory=dict)

    def address(self, channel: str) -> str | None:
        found: str | None = getattr(self, ADDRESS[channel]) if channel in ADDRESS else None
        return found

    def usable(self, channel: str, unsubscribed_at: datetime | None = None) -> bool:
        """Consented, reachable, and not unsubscribed since the consent was given."""
        if not self.consent.get(channel) or not self.address(channel):
            return False
        given = self.consent_at.get(channel)
        return unsubscribed_at is None or (given is not None and given > unsubscribed_at)

    def channels(self, unsubscribed: Mapping[str, datetime] | None = None) -> frozenset[Channel]:
        """The channels winback may message the customer on now."""
        unsubscribed = unsubscribed or {}
        everywhere = unsubscribed.get("*")
        return frozenset(
            c
            for c in CHANNELS
            if self.usable(c, max((t for t in (unsubscribed.get(c), everywhere) if t), default=None))
        )

    def offset_at(self, when: datetime, default: int = 0) -> int:
        """Minutes east of UTC at ``when``: from the time zone (with its daylight saving), else the fixed
        offset, else ``default``."""
        if self.time_zone:
            offset = when.astimezone(ZoneInfo(self.time_zone)).utcoffset()
            if offset is not None:
                return int(offset.total_seconds() // 60)
        return self.utc_offset_minutes if self.utc_offset_minutes is not None else default

    @property
    def knows_time_zone(self) -> bool:
        return self.time_zone is not None or self.utc_offset_minutes is not None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _profile(row: Any) -> Profile:
    return Profile(
        user_id=row.user_id,
        **{f: getattr(row, f) for f in _FIELDS},
        consent={c: getattr(row, f"consent_{c}") for c in CHANNELS},
        consent_at={c: _as_utc(getattr(row, f"consent_{c}_at")) for c in CHANNELS},
    )


def read_profiles(connection: Connection, users: Iterable[str]) -> dict[str, Profile]:
    """The stored profiles of ``users`` (those that have one)."""
    wanted = sorted(set(users))
    out: dict[str, Profile] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for row in connection.execute(sa.select(customers).where(customers.c.user_id.in_(chunk))):
            out[row.user_id] = _profile(row)
    return out


def upsert_profiles(
    connection: Connection, updates: Iterable[ProfileUpdate], now: datetime | None = None
) -> int:
    """Apply ``updates`` (in order) in the caller's transaction; how many customers changed. A consent
    statement older than the stored one for its channel is ignored."""
    now = now or datetime.now(UTC)
    merged: dict[str, dict[str, Any]] = {}
    pending = list(updates)
    if not pending:
        return 0
    users = sorted({u.user_id for u in pending})
    query = sa.select(customers).where(customers.c.user_id.in_(users))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    for found in connection.execute(query).mappings():
        merged[found["user_id"]] = dict(found)
    changed: set[str] = set()
    for update in pending:
        row = merged.setdefault(
            update.user_id,
            {"user_id": update.user_id, **{f: None for f in _FIELDS},
             **{f"consent_{c}": None for c in CHANNELS}, **{f"consent_{c}_at": None for c in CHANNELS},
             "source": update.source, "created_at": now},
        )  # fmt: skip
        before = dict(row)
        row.update({k: v for k, v in update.values.items() if k in _FIELDS})
        for channel, (given, at) in update.consent.items():
            stored_at = _as_utc(row[f"consent_{channel}_at"])
            if stored_at is None or at >= stored_at:
                row[f"consent_{channel}"], row[f"consent_{channel}_at"] = given, at
        if row != before or "updated_at" not in row:
            row["source"], row["updated_at"] = update.source, now
            changed.add(update.user_id)
    if not changed:
        return 0
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    rows = [merged[u] for u in sorted(changed)]
    statement = insert(customers)
    columns = [c.name for c in customers.columns if c.name not in ("user_id", "created_at")]
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["user_id"], set_={c: statement.excluded[c] for c in columns}
        ),
        rows,
    )
    return len(changed)


def save_identities(connection: Connection, pairs: Mapping[str, tuple[str, datetime]]) -> None:
    """Record ``anonymous_id -> (user_id, first seen)``; an anonymous id already known keeps its customer.

    The open carts of a visitor who just became known move to their customer (``user_key``, a new
    ``version`` so a decision prepared for the visitor is made again): a guest who types an e-mail at
    checkout and leaves is the abandoned cart a shop can reach."""
    if not pairs:
        return
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(identities).on_conflict_do_nothing(index_elements=["anonymous_id"]),
        [{"anonymous_id": a, "user_id": u, "first_seen_at": t} for a, (u, t) in sorted(pairs.items())],
    )
    anonymous = sorted(pairs)
    for start in range(0, len(anonymous), 500):
        chunk = anonymous[start : start + 500]
        owner = {
            f"anonymous:{a}": u
            for a, u in connection.execute(
                sa.select(identities.c.anonymous_id, identities.c.user_id).where(
                    identities.c.anonymous_id.in_(chunk)
                )
            )
        }
        moving = connection.execute(
            sa.select(carts.c.cart_id, carts.c.user_key).where(
                carts.c.user_key.in_(sorted(owner)), carts.c.status == "open"
            )
        ).all()
        for cart_id, key in moving:
            connection.execute(
                carts.update()
                .where(carts.c.cart_id == cart_id)
                .values(user_key=owner[key], version=carts.c.version + 1)
            )


# -- identify payloads --------------------------------------------------------------------------------


def _consent_value(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).strip().lower()
        if text in _YES:
            return True
        if text in _NO:
            return False
    return None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _text(value: Any, limit: int) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """Addresses that fail :class:`CustomerIn`'s checks are left out rather than stored."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        if key == "email" and not _EMAIL.match(value):
            continue
        if key == "phone" and not _PHONE.match(value):
            continue
        if key == "time_zone":
            try:
                _zone(value)
            except ValueError:
                continue
        out[key] = value
    return out


def from_segment(
    call: Mapping[str, Any], now: datetime | None = None
) -> tuple[ProfileUpdate | None, tuple[str, str] | None]:
    """A Segment ``identify`` call as a profile update (None without a ``userId``) and the
    ``(anonymousId, userId)`` pair it links (None unless both are given).

    Read: ``traits.email``, ``traits.phone``, ``traits.name`` (else ``firstName`` and ``lastName``),
    the time zone from ``context.timezone`` (else ``traits.timezone``), the push token from
    ``context.device.token``, and consent from ``traits.email_subscribe``, ``sms_subscribe`` and
    ``push_subscribe`` (``opted_in`` / ``subscribed`` / true: yes; ``unsubscribed`` / false: no), as of
    the call's ``timestamp``.
    """
    user = _text(call.get("userId"), 200)
    anonymous = _text(call.get("anonymousId"), 200)
    link = (anonymous, user) if user and anonymous else None
    if not user:
        return None, link
    traits = call.get("traits") or (call.get("context") or {}).get("traits") or {}
    context = call.get("context") or {}
    traits = traits if isinstance(traits, dict) else {}
    context = context if isinstance(context, dict) else {}
    name = _text(traits.get("name"), 200) or _text(
        " ".join(str(traits[k]) for k in ("firstName", "lastName") if traits.get(k)), 200
    )
    device = context.get("device")
    device = device if isinstance(device, dict) else {}
    values = _checked(
        {
            "name": name,
            "email": _text(traits.get("email"), 320),
            "phone": _text(traits.get("phone"), 40),
            "time_zone": _text(context.get("timezone") or traits.get("timezone"), 64),
            "push_token": _text(device.get("token"), 500),
        }
    )
    at = _moment(call.get("timestamp")) or _moment(call.get("receivedAt")) or now or datetime.now(UTC)
    consent: dict[str, tuple[bool, datetime]] = {
        channel: (given, at)
        for channel in CHANNELS
        if (given := _consent_value(traits.get(f"{channel}_subscribe"))) is not None
    }
    return ProfileUpdate(user, values, consent, "segment"), link


#: Shopify topics that carry a customer.
SHOPIFY_CUSTOMER_TOPICS = ("customers/create", "customers/update")


def from_shopify(payload: Mapping[str, Any], now: datetime | None = None) -> ProfileUpdate | None:
    """A Shopify ``customers/create`` or ``customers/update`` payload as a profile update (None without
    an ``id``): ``id`` is the user id (as the order and checkout webhooks' ``customer.id``), ``email``,
    ``phone``, ``first_name`` and ``last_name``; consent from ``email_marketing_consent.state`` and
    ``sms_marketing_consent.state`` (``subscribed``: yes; ``not_subscribed``, ``unsubscribed``,
    ``pending`` (not confirmed yet), ``redacted``: no), as of their ``consent_updated_at``, else the
    legacy ``accepts_marketing`` for e-mail."""
    user = _text(payload.get("id"), 200)
    if not user:
        return None
    name = _text(" ".join(str(payload[k]) for k in ("first_name", "last_name") if payload.get(k)), 200)
    values = _checked(
        {"name": name, "email": _text(payload.get("email"), 320), "phone": _text(payload.get("phone"), 40)}
    )
    updated = _moment(payload.get("updated_at")) or now or datetime.now(UTC)
    consent: dict[str, tuple[bool, datetime]] = {}
    for channel, key in (("email", "email_marketing_consent"), ("sms", "sms_marketing_consent")):
        given = payload.get(key)
        if isinstance(given, dict) and (state := _consent_value(given.get("state"))) is not None:
            consent[channel] = (state, _moment(given.get("consent_updated_at")) or updated)
    if "email" not in consent and isinstance(payload.get("accepts_marketing"), bool):
        at = _moment(payload.get("accepts_marketing_updated_at")) or updated
        consent["email"] = (bool(payload["accepts_marketing"]), at)
    return ProfileUpdate(user, values, consent, "shopify")

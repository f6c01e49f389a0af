"""API keys: ``wbk_<key id>_<secret>``, scoped read < write < admin, kept only as a hash of the secret.

The secret is 32 random bytes, so a plain SHA-256 of it cannot be brute-forced and checking a key costs
microseconds per request (a slow password hash is for low-entropy passwords). Keys are compared in
constant time and can be revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from winback.errors import BadInputError
from winback.serve.db import api_keys

#: Scopes, each including the ones before it.
SCOPES = ("read", "write", "admin")
PREFIX = "wbk"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    scope: str
    label: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise BadInputError(f"--scope {scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def create_key(engine: Engine, scope: str, label: str = "") -> tuple[str, ApiKey]:
    """A new key: the token to hand to the client (shown once) and what is stored about it."""
    check_scope(scope)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(
            api_keys.insert().values(
                key_id=key_id,
                secret_hash=_hash(secret),
                scope=scope,
                label=label,
                created_at=datetime.now(UTC),
            )
        )
    return f"{PREFIX}_{key_id}_{secret}", ApiKey(key_id, scope, label)


def authenticate(engine: Engine, token: str | None) -> ApiKey | None:
    """The key ``token`` is, if it is a valid, unrevoked one; else None."""
    if not token:
        return None
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(api_keys.c.secret_hash, api_keys.c.scope, api_keys.c.label).where(
                api_keys.c.key_id == parts[1], api_keys.c.revoked_at.is_(None)
            )
        ).first()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
        return None
    return ApiKey(parts[1], row.scope, row.label)


def active_key(engine: Engine, key_id: str) -> ApiKey | None:
    """The unrevoked key ``key_id`` (a dashboard session names its key by id); else None."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(api_keys.c.scope, api_keys.c.label).where(
                api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)
            )
        ).first()
    return None if row is None else ApiKey(key_id, row.scope, row.label)


def allows(key: ApiKey, needed: str) -> bool:
    """Whether ``key``'s scope covers ``needed``."""
    return SCOPES.index(key.scope) >= SCOPES.index(needed)


def revoke(engine: Engine, key_id: str) -> bool:
    """Revoke a key; False if there is no such active key."""
    with engine.begin() as connection:
        done = connection.execute(
            api_keys.update()
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    return bool(done.rowcount)

"""The permanent randomised holdout: a fixed share of customers winback never messages.

A vendor's attributed numbers count every purchase after a message; only a comparison with customers
who were randomly left alone measures what the messages changed (DESIGN.md, "What the evidence says").
Membership is a hash of the customer id and a salt, so it is random with respect to everything about
the customer, the same on every machine and every run, and needs no table; changing the salt draws a
new holdout.

>>> in_holdout(["u1", "u2", "u3", "u4"], share=0.5, salt="shop")
[True, False, False, True]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from winback.errors import BadInputError

DEFAULT_SHARE = 0.10
DEFAULT_SALT = "winback-holdout"


def holdout_draw(user_id: str, salt: str = DEFAULT_SALT) -> float:
    """A uniform number in [0, 1) fixed by the customer id and the salt."""
    digest = hashlib.blake2b(f"{salt}|{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(
    user_ids: Iterable[object], share: float = DEFAULT_SHARE, salt: str = DEFAULT_SALT
) -> list[bool]:
    """Whether each customer is in the holdout (``share`` of all customers, 0 for none)."""
    if not 0 <= share < 1:
        raise BadInputError(f"holdout share {share!r}: expected a fraction from 0 up to (not including) 1")
    return [holdout_draw(str(u), salt) < share for u in user_ids]

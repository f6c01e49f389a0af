"""What a policy and the guardrails see for one decision: a small frozen record, no pandas.

One :class:`DecisionContext` is built per abandoned cart (or per at-risk customer, with ``cart_id``
None) on the real-time path, so it is plain Python and cheap to build; models read ``features``, the
guardrails read the rest. Times are epoch seconds (UTC), as in :mod:`winback.features`.

Examples
--------
>>> ctx = DecisionContext(user_id="u1", now=1_700_000_000, cart_id="c9", abandoned_at=1_700_000_000,
...                       value=80.0, consent=frozenset({"email"}), utc_offset_minutes=120)
>>> ctx.can_message("email"), ctx.can_message("sms")
(True, False)
>>> ctx.send_time(24) - ctx.now
86400.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from winback.decide.actions import CHANNELS, Action, Channel
from winback.errors import BadInputError

__all__ = ["DecisionContext"]

#: Time zones run from UTC-12:00 to UTC+14:00.
_OFFSETS = range(-12 * 60, 14 * 60 + 1)


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """One decision's inputs.

    Parameters
    ----------
    user_id
        The customer.
    now
        When the decision is made (epoch seconds).
    cart_id
        The abandoned cart; None for a customer-level win-back.
    abandoned_at
        When the cart was abandoned (epoch seconds); None for a customer-level win-back. Action delays
        count from here (from ``now`` when None).
    value
        Cart value in the shop's currency (what a coupon's percentage applies to); for a customer-level
        win-back, the expected order value.
    categories
        Product categories in the cart (for per-category margins).
    consent
        Channels the customer consented to be messaged on.
    unsubscribed
        Channels the customer has unsubscribed from since (they win over consent).
    last_message_at
        Per channel, when winback last messaged the customer (epoch seconds); absent if never.
    utc_offset_minutes
        The customer's time zone as minutes east of UTC (120 is UTC+2).
    in_stock
        Whether the cart's items are all in stock; None if stock is unknown (not checked).
    is_harvester
        Whether the customer abandons carts to harvest coupons (see ``HarvesterDetector``).
    features
        Model inputs by name.
    sent_in_flow
        Messages already sent in this flow (for this cart), oldest first.
    """

    user_id: str
    now: float
    cart_id: str | None = None
    abandoned_at: float | None = None
    value: float = 0.0
    categories: frozenset[str] = frozenset()
    consent: frozenset[Channel] = frozenset()
    unsubscribed: frozenset[Channel] = frozenset()
    last_message_at: Mapping[Channel, float] = field(default_factory=dict, hash=False)
    utc_offset_minutes: int = 0
    in_stock: bool | None = None
    is_harvester: bool = False
    features: Mapping[str, float] = field(default_factory=dict, hash=False)
    sent_in_flow: tuple[Action, ...] = ()

    def __post_init__(self) -> None:
        if self.utc_offset_minutes not in _OFFSETS:
            raise BadInputError(
                f"utc_offset_minutes {self.utc_offset_minutes}: expected minutes east of UTC, "
                "between -720 (UTC-12) and 840 (UTC+14)"
            )
        if not self.value >= 0:
            raise BadInputError(f"value {self.value}: expected a cart value of 0 or more")
        for name in ("consent", "unsubscribed", "last_message_at"):
            unknown = set(getattr(self, name)).difference(CHANNELS)
            if unknown:
                raise BadInputError(
                    f"{name}: unknown channel {sorted(unknown)[0]!r}; expected email, sms or push"
                )

    @property
    def anchor(self) -> float:
        """The time action delays count from: abandonment, or ``now`` for a customer-level win-back."""
        return self.now if self.abandoned_at is None else self.abandoned_at

    def send_time(self, delay_hours: float) -> float:
        """When a message ``delay_hours`` after the anchor goes out: never before ``now``."""
        return max(self.now, self.anchor + delay_hours * 3600.0)

    def can_message(self, channel: Channel) -> bool:
        """Consented and not unsubscribed."""
        return channel in self.consent and channel not in self.unsubscribed

    def local_minute(self, epoch_seconds: float) -> int:
        """Minutes after the customer's local midnight at ``epoch_seconds``."""
        return int((epoch_seconds + self.utc_offset_minutes * 60) // 60) % 1440

"""The interventions winback can choose between for an abandoned cart.

An :class:`Action` is what to send (nothing, a reminder, a coupon), with or without product
recommendations, on which channel and after which delay. Its ``name`` is a stable string such as
``coupon10+recs/email/24h`` that logs, configuration files and reports use, and :meth:`Action.parse`
reads it back, so a catalogue can live in configuration rather than code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Kind = Literal["nothing", "reminder", "coupon"]
Channel = Literal["email", "sms", "push"]

CHANNELS: tuple[Channel, ...] = ("email", "sms", "push")
DELAYS_HOURS: tuple[int, ...] = (1, 6, 24, 72)
COUPONS: tuple[float, ...] = (0.05, 0.10, 0.15)

_NUMBER = r"\d+(?:\.\d+)?"
_NAME = re.compile(rf"^(?:reminder|coupon({_NUMBER}))(\+recs)?/(email|sms|push)/({_NUMBER})h$")


@dataclass(frozen=True)
class Action:
    """One intervention; ``Action()`` is doing nothing.

    Parameters
    ----------
    kind
        ``"nothing"``, ``"reminder"`` or ``"coupon"``.
    coupon
        Discount as a fraction of the cart (0.10 is 10%); 0 unless ``kind`` is ``"coupon"``.
    channel
        ``"email"``, ``"sms"`` or ``"push"``; None for nothing.
    delay_hours
        Hours after abandonment at which the message is sent; 0 for nothing.
    with_recommendations
        Whether the message also shows recommended products.

    Examples
    --------
    >>> Action("coupon", 0.1, "email", 24, True).name
    'coupon10+recs/email/24h'
    >>> Action.parse("reminder/sms/1h") == Action("reminder", 0.0, "sms", 1)
    True
    """

    kind: Kind = "nothing"
    coupon: float = 0.0
    channel: Channel | None = None
    delay_hours: float = 0
    with_recommendations: bool = False

    def __post_init__(self) -> None:
        if self.kind == "nothing":
            if self.channel or self.coupon or self.delay_hours or self.with_recommendations:
                raise ValueError("the 'nothing' action takes no channel, coupon, delay or recommendations")
            return
        if self.kind not in ("reminder", "coupon"):
            raise ValueError(f"kind {self.kind!r}: expected nothing, reminder or coupon")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel {self.channel!r}: expected one of {', '.join(CHANNELS)}")
        if not self.delay_hours > 0:
            raise ValueError(f"delay_hours {self.delay_hours}: expected a positive number of hours")
        if (self.kind == "coupon") != (self.coupon > 0) or not 0 <= self.coupon < 1:
            raise ValueError(f"coupon {self.coupon}: a coupon action needs a fraction in (0, 1), others 0")

    @property
    def is_message(self) -> bool:
        """Whether anything is sent."""
        return self.kind != "nothing"

    @property
    def name(self) -> str:
        """The stable name, e.g. ``nothing``, ``reminder/email/24h``, ``coupon15+recs/sms/1h``."""
        if self.kind == "nothing":
            return "nothing"
        head = "reminder" if self.kind == "reminder" else f"coupon{round(self.coupon * 100, 6):g}"
        recs = "+recs" if self.with_recommendations else ""
        return f"{head}{recs}/{self.channel}/{self.delay_hours:g}h"

    @classmethod
    def parse(cls, name: str) -> Action:
        """The action called ``name`` (the inverse of :attr:`name`)."""
        if name == "nothing":
            return cls()
        match = _NAME.match(name)
        if not match:
            raise ValueError(
                f"action {name!r}: expected 'nothing' or e.g. 'reminder/email/24h', 'coupon10+recs/sms/6h'"
            )
        percent, recs, channel, hours = match.groups()
        kind: Kind = "coupon" if percent else "reminder"
        coupon = float(percent) / 100 if percent else 0.0
        delay = float(hours)
        return cls(
            kind, coupon, cast(Channel, channel), int(delay) if delay.is_integer() else delay, bool(recs)
        )

    def __str__(self) -> str:
        return self.name


NOTHING = Action()


def default_catalogue() -> list[Action]:
    """Nothing, then reminders and 5/10/15% coupons, each with and without recommendations, on every
    channel at every delay: 1 + 3 channels x 4 delays x 8 offers = 97 actions."""
    actions = [NOTHING]
    for channel in CHANNELS:
        for delay in DELAYS_HOURS:
            for recs in (False, True):
                actions.append(Action("reminder", 0.0, channel, delay, recs))
                actions.extend(Action("coupon", c, channel, delay, recs) for c in COUPONS)
    return actions

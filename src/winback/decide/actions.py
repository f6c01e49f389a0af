"""The interventions winback can choose between for an abandoned cart or a lapsing customer.

An :class:`Action` is what to send (nothing, a reminder, a coupon), with or without product
recommendations, on which channel and after which delay. Its ``name`` is a stable string such as
``coupon10+recs/email/24h`` that logs, configuration files and reports use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["nothing", "reminder", "coupon"]
Channel = Literal["email", "sms", "push"]

CHANNELS: tuple[Channel, ...] = ("email", "sms", "push")
DELAYS_HOURS: tuple[int, ...] = (1, 6, 24, 72)
COUPONS: tuple[float, ...] = (0.05, 0.10, 0.15)

_NAME = re.compile(r"^(reminder|coupon(\d+))(\+recs)?/(email|sms|push)/(\d+)h$")


@dataclass(frozen=True)
class Action:
    """One intervention. ``Action()`` is doing nothing."""

    kind: Kind = "nothing"
    coupon: float = 0.0
    channel: Channel | None = None
    delay_hours: int = 0
    with_recommendations: bool = False

    def __post_init__(self) -> None:
        if self.kind == "nothing":
            if self.channel or self.coupon or self.delay_hours or self.with_recommendations:
                raise ValueError("the 'nothing' action takes no channel, coupon, delay or recommendations")
            return
        if self.channel not in CHANNELS:
            raise ValueError(f"channel {self.channel!r}: expected one of {', '.join(CHANNELS)}")
        if self.delay_hours <= 0:
            raise ValueError(f"delay_hours {self.delay_hours}: expected a positive number of hours")
        if (self.kind == "coupon") != (self.coupon > 0) or not 0 <= self.coupon < 1:
            raise ValueError(f"coupon {self.coupon}: a coupon action needs a fraction in (0, 1), others 0")

    @property
    def is_message(self) -> bool:
        return self.kind != "nothing"

    @property
    def name(self) -> str:
        if self.kind == "nothing":
            return "nothing"
        head = "reminder" if self.kind == "reminder" else f"coupon{round(self.coupon * 100)}"
        recs = "+recs" if self.with_recommendations else ""
        return f"{head}{recs}/{self.channel}/{self.delay_hours}h"

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
        _head, percent, recs, channel, hours = match.groups()
        coupon = int(percent) / 100 if percent else 0.0
        kind: Kind = "coupon" if percent else "reminder"
        return cls(kind, coupon, channel, int(hours), bool(recs))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.name


NOTHING = Action()


def default_catalogue() -> list[Action]:
    """Nothing, plus reminders and coupons (with and without recommendations) on every channel and delay."""
    actions = [NOTHING]
    for channel in CHANNELS:
        for delay in DELAYS_HOURS:
            for recs in (False, True):
                actions.append(Action("reminder", 0.0, channel, delay, recs))
                actions.extend(Action("coupon", c, channel, delay, recs) for c in COUPONS)
    return actions

"""How a customer with an abandoned cart responds to each action: the simulator's causal truth.

The model, per cart (all probabilities clipped to [0, 0.98]):

- Without action the cart is recovered with probability ``p0 = 0.03 + 0.22 forgetfulness
  + 0.08 loyalty - 0.10 harvest_level``, after a log-logistic delay (median 20 h, shape 1.6: 57% of
  natural recoveries come within a day, 97% within a week).
- A message is sent ``delay`` hours after abandonment on a channel the customer consented to and has not
  left. If the customer recovered before then, the send-time re-check cancels it: nothing changes.
- It is opened with probability ``open_rate[channel] x responsiveness / (1 + 0.3 messages_last_week)``.
  Unopened, it changes nothing.
- Opened, recovery becomes ``p1 = p0 + lift``:
  reminder part ``0.30 forgetfulness exp(-delay / 96 h) - reactance(delay) (1 - forgetfulness) k``
  with reactance 0.35 at 1 h, 0.08 at 6 h, 0 from 24 h, and k = 1, 1.5, 1.2 for e-mail, SMS, push,
  so reminders sent within the hour hurt on average and 24 h is best; recommendations add
  ``0.03 (1 - forgetfulness)``; a coupon of c adds ``2.5 c max(price_sensitivity - 0.35, 0) / 0.65
  + 3 c harvest_level``: nothing for the price-insensitive, while its discount is paid on every order
  that uses it, including those that would have come anyway.
- Common random numbers: each cart carries its own uniforms (``u_rec``, ``u_time``, ``u_open``,
  ``u_lag``, ``u_unsub``), so two actions on the same cart differ only where the action matters:
  recovered iff (``u_rec < p0`` and the natural delay is before the send) or, otherwise,
  ``u_rec < p1`` if opened else ``u_rec < p0``.
- Expected recovery in closed form, with ``q = P(natural delay < send delay)`` and ``o`` the open
  probability: ``p0 q + (1 - o) p0 (1 - q) + o (p1 - min(p0, p1) q)``.
- Side effects of a sent and opened message: unsubscribing with probability
  ``unsubscribe_rate[channel] (1 + messages_last_week)^1.5``; a coupon raises the harvest level by half
  the customer's harvesting propensity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from winback.decide.actions import Action
from winback.sim.world import CHANNEL_NAMES, ShopConfig

NATURAL_MEDIAN_HOURS = 20.0
NATURAL_SHAPE = 1.6
REACTANCE = {1: 0.35, 6: 0.08}
CHANNEL_REACTANCE = {"email": 1.0, "sms": 1.5, "push": 1.2}

#: The per-cart columns the response model reads (the truth table of carts has all of them).
CART_COLUMNS = (
    "value",
    "p_natural",
    "forgetfulness",
    "price_sensitivity",
    "harvest_level",
    "messages_last_week",
    "u_rec",
    "u_time",
    "u_open",
    "u_lag",
    "u_unsub",
    *(f"can_{c}" for c in CHANNEL_NAMES),
    *(f"responsiveness_{c}" for c in CHANNEL_NAMES),
)


def natural_delay_hours(u_time: np.ndarray) -> np.ndarray:
    """Hours from abandonment to a natural recovery (log-logistic, by inverse CDF)."""
    u = np.clip(u_time, 1e-9, 1 - 1e-9)
    return NATURAL_MEDIAN_HOURS * (u / (1 - u)) ** (1 / NATURAL_SHAPE)


def natural_before(hours: float) -> float:
    """P(natural delay < ``hours``)."""
    return float(1.0 / (1.0 + (hours / NATURAL_MEDIAN_HOURS) ** -NATURAL_SHAPE)) if hours > 0 else 0.0


def p_natural(forgetfulness: np.ndarray, loyalty: np.ndarray, harvest_level: np.ndarray) -> np.ndarray:
    return np.clip(0.03 + 0.22 * forgetfulness + 0.08 * loyalty - 0.10 * harvest_level, 0.0, 0.98)


@dataclass
class Response:
    """Per-cart outcome of one action: exact expectations and the common-random-number realisation."""

    sent_if_not_recovered: np.ndarray  # the message would go out (consent, not unsubscribed)
    open_probability: np.ndarray
    p_treated: np.ndarray  # p1: recovery probability once the message is opened
    expected_recovery: np.ndarray
    expected_discount: np.ndarray
    expected_cost: np.ndarray
    recovered: np.ndarray  # realised
    recovered_after_hours: np.ndarray  # realised, hours after abandonment (nan if not recovered)
    sent: np.ndarray
    opened: np.ndarray
    via_message: np.ndarray  # recovered by clicking the message (uses the coupon, if any)
    unsubscribed: np.ndarray


def respond(carts: Mapping[str, np.ndarray], action: Action, config: ShopConfig) -> Response:
    """What every cart in ``carts`` (columns of :data:`CART_COLUMNS`) does under ``action``."""
    p0 = np.asarray(carts["p_natural"], dtype=float)
    n = p0.size
    u_rec, u_open = np.asarray(carts["u_rec"]), np.asarray(carts["u_open"])
    natural_hours = natural_delay_hours(np.asarray(carts["u_time"]))
    natural = u_rec < p0
    if not action.is_message:
        none = np.zeros(n, dtype=bool)
        return Response(
            none,
            np.zeros(n),
            p0,
            p0.copy(),
            np.zeros(n),
            np.zeros(n),
            natural,
            np.where(natural, natural_hours, np.nan),
            none,
            none,
            none,
            none,
        )
    assert action.channel is not None
    ch = action.channel
    forget = np.asarray(carts["forgetfulness"], dtype=float)
    fatigue = np.asarray(carts["messages_last_week"], dtype=float)
    delay = float(action.delay_hours)
    reactance = REACTANCE.get(action.delay_hours, 0.0 if delay >= 24 else 0.08) * CHANNEL_REACTANCE[ch]
    lift = 0.30 * forget * np.exp(-delay / 96.0) - reactance * (1 - forget)
    if action.with_recommendations:
        lift += 0.03 * (1 - forget)
    if action.kind == "coupon":
        sensitivity = np.asarray(carts["price_sensitivity"], dtype=float)
        harvest = np.asarray(carts["harvest_level"], dtype=float)
        lift += 2.5 * action.coupon * np.maximum(sensitivity - 0.35, 0) / 0.65 + 3 * action.coupon * harvest
    p1 = np.clip(p0 + lift, 0.0, 0.98)
    feasible = np.asarray(carts[f"can_{ch}"], dtype=bool)
    o = np.where(
        feasible,
        np.clip(config.open_rate[ch] * np.asarray(carts[f"responsiveness_{ch}"]) / (1 + 0.3 * fatigue), 0, 1),
        0,
    )
    q = natural_before(delay)
    expected = p0 * q + (1 - o) * p0 * (1 - q) + o * (p1 - np.minimum(p0, p1) * q)
    value = np.asarray(carts["value"], dtype=float)
    via_message_p = o * (p1 - np.minimum(p0, p1) * q)
    expected_discount = action.coupon * value * via_message_p
    expected_cost = config.channel_cost[ch] * feasible * (1 - p0 * q)

    before_send = natural & (natural_hours < delay)
    sent = feasible & ~before_send
    opened = sent & (u_open < o)
    via_message = opened & (u_rec < p1)
    recovered = before_send | via_message | (sent & ~opened & natural) | (~feasible & natural)
    lag = 0.1 + 2.0 * np.asarray(carts["u_lag"])
    hours = np.where(
        via_message, np.minimum(delay + lag, np.where(natural, natural_hours, np.inf)), natural_hours
    )
    hours = np.where(recovered, hours, np.nan)
    unsub_p = config.unsubscribe_rate[ch] * (1 + fatigue) ** 1.5
    unsubscribed = opened & (np.asarray(carts["u_unsub"]) < unsub_p)
    return Response(
        feasible,
        o,
        p1,
        expected,
        expected_discount,
        expected_cost,
        recovered,
        hours,
        sent,
        opened,
        via_message,
        unsubscribed,
    )


def expected_outcomes(
    carts: pd.DataFrame, actions: Action | list[Action], config: ShopConfig
) -> pd.DataFrame:
    """Exact expected outcome of each action on each cart: one row per (cart, action).

    Columns: ``cart_id``, ``action``, ``p_recover``, ``revenue``, ``discount``, ``cost``, ``margin``
    (margin_rate x revenue - discount - cost) and ``incremental_margin`` (against doing nothing).
    """
    columns = {c: carts[c].to_numpy() for c in CART_COLUMNS}
    base = respond(columns, Action(), config)
    value = carts["value"].to_numpy(dtype=float)
    base_margin = config.margin_rate * value * base.expected_recovery
    frames = []
    for action in [actions] if isinstance(actions, Action) else actions:
        r = respond(columns, action, config)
        margin = config.margin_rate * value * r.expected_recovery - r.expected_discount - r.expected_cost
        frames.append(
            pd.DataFrame(
                {
                    "cart_id": carts["cart_id"].to_numpy(),
                    "action": action.name,
                    "p_recover": r.expected_recovery,
                    "revenue": value * r.expected_recovery,
                    "discount": r.expected_discount,
                    "cost": r.expected_cost,
                    "margin": margin,
                    "incremental_margin": margin - base_margin,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def realised_outcomes(
    carts: pd.DataFrame, actions: Action | list[Action], config: ShopConfig
) -> pd.DataFrame:
    """The common-random-number realisation of each action on each cart: one row per (cart, action)."""
    columns = {c: carts[c].to_numpy() for c in CART_COLUMNS}
    value = carts["value"].to_numpy(dtype=float)
    frames = []
    for action in [actions] if isinstance(actions, Action) else actions:
        r = respond(columns, action, config)
        revenue = np.where(r.recovered, value, 0.0)
        discount = np.where(r.via_message, action.coupon * value, 0.0)
        cost = np.where(r.sent, config.channel_cost.get(action.channel or "", 0.0), 0.0)
        frames.append(
            pd.DataFrame(
                {
                    "cart_id": carts["cart_id"].to_numpy(),
                    "action": action.name,
                    "recovered": r.recovered,
                    "recovered_after_hours": r.recovered_after_hours,
                    "sent": r.sent,
                    "opened": r.opened,
                    "unsubscribed": r.unsubscribed,
                    "revenue": revenue,
                    "discount": discount,
                    "cost": cost,
                    "margin": config.margin_rate * revenue - discount - cost,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)

"""How a customer with an abandoned cart responds to each action: the simulator's causal truth.

Per cart, with the effect sizes of :class:`winback.sim.config.Effects` (defaults quoted):

- No action: the cart is recovered with probability ``p0 = expit(logit(natural_recovery)
  + 1.5 (loyalty - 0.5) - 1.2 (forgetfulness - 0.44) - 0.15 log(value / 60) + 1.0 harvest_level)``
  (mean about 0.14), at ``t0 = abandoned_at + D``; ``D`` is 45 minutes plus a Weibull (scale 30 h,
  shape 0.7) truncated at 6 days: 4% of natural recoveries come within 1 hour, 27% within 6, 60% within
  a day, 89% within 3 days.
- A message is due ``delay`` hours after abandonment. If the cart has recovered by then (``t0 < s``), the
  send-time re-check cancels it and nothing changes. It is sent only on a channel the customer consented
  to and has not left; it is opened with the customer's open probability ``o`` for that channel, about
  1.5 hours later. Unopened, it changes nothing.
- Opened, recovery becomes ``p1 = clip(p0 + lift, 0, 1)``. ``lift`` is the reminder lift at the delay
  (-0.05 at 1 h: reactance; +0.02 at 6 h; +0.06 at 24 h, the best; +0.035 at 72 h; positive parts scaled
  by ``0.5 + forgetfulness``) plus 0.012 with recommendations, plus for a coupon of ``c``
  ``1.6 c price_sensitivity (1 + 2 harvest_level)``. So a coupon does nothing for the price-insensitive,
  yet its discount is paid on every recovered order whose message was opened, including those that
  would have come anyway. An opened message's recovery is a visit 90 s after the open (a click).
- Common random numbers: each cart carries its own uniforms ``u_recover, u_time, u_open, u_lag,
  u_unsub, u_click``. Recovered iff ``u_recover < p1`` when opened, else ``u_recover < p0``; so two
  actions on one cart differ only where the action matters (a non-consented channel changes nothing).
- Exact expectation, with ``q = P(D < delay)``: ``P(recover) = p0 q + (1 - o) p0 (1 - q)
  + o (p1 - min(p0, p1) q)``; ``P(sent) = consent (1 - p0 q)``; expected discount
  ``c value o (p1 - min(p0, p1) q)``.
- An opened message makes the customer unsubscribe from its channel with probability
  ``unsubscribe_rate[channel] (1 + messages_7d)``, where ``messages_7d`` counts messages sent to them in
  the 7 days before the abandonment. The run loop also shortens the remaining lifetime of a customer
  messaged again within 7 days and of one who unsubscribes, and teaches harvesters from opened coupons
  (see :class:`winback.sim.config.Effects`); these long-run costs are outside the per-cart expectation,
  which reports ``p_unsubscribe`` for them.

Averaged over all abandoned carts (defaults), an e-mail changes recovery by -1.9 points at 1 h,
+0.8 at 6 h, +2.3 at 24 h and +1.3 at 72 h; a 15% coupon by e-mail at 24 h by +6.4 points, yet against
the same reminder without it, it loses margin on the less price-sensitive half of the carts (its discount
goes to people who would have come anyway) and gains only on the other half.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from winback.decide.actions import Action
from winback.sim.config import CHANNELS, Effects, ShopConfig
from winback.sim.customers import expit, logit

#: Seconds from opening a message to the visit it brings (a click at 30 s, the session at 90 s).
CLICK_AFTER_OPEN, VISIT_AFTER_OPEN, UNSUBSCRIBE_AFTER_OPEN = 30, 90, 60

#: Each cart's own uniform random numbers (common to every action evaluated on it).
UNIFORMS: tuple[str, ...] = ("u_recover", "u_time", "u_open", "u_lag", "u_unsub", "u_click")

#: The per-cart columns the response model reads (the carts truth table has them all).
CART_COLUMNS: tuple[str, ...] = (
    "value",
    "p_natural",
    "price_sensitivity",
    "forgetfulness",
    "harvest_level",
    "messages_7d",
    *(f"consent_{c}" for c in CHANNELS),
    *(f"open_{c}" for c in CHANNELS),
    *UNIFORMS,
)

#: Actions to evaluate: one for every cart, a list of them (each on every cart), or a Series aligned
#: with the carts giving each cart its own action (a policy's choices).
Actions = Action | str | Sequence[Action | str] | pd.Series


@dataclass(frozen=True)
class Treatments:
    """Actions as arrays, one entry per cart, so the model stays vectorised."""

    message: np.ndarray  # bool
    coupon: np.ndarray
    channel: np.ndarray  # index into CHANNELS, -1 for nothing
    delay_hours: np.ndarray
    recommendations: np.ndarray  # bool

    @classmethod
    def of(cls, actions: Sequence[Action]) -> Treatments:
        """Arrays for a sequence of actions (hashed once per distinct action, not per cart)."""
        codes, distinct = pd.factorize(pd.Series(list(actions), dtype=object))
        table = [
            (a.is_message, a.coupon, CHANNELS.index(a.channel) if a.channel else -1, a.delay_hours,
             a.with_recommendations)
            for a in distinct
        ]  # fmt: skip
        columns = list(zip(*table, strict=True)) if table else [()] * 5
        message, coupon, channel, delay, recs = (np.asarray(c)[codes] for c in columns)
        return cls(
            message.astype(bool), coupon.astype(float), channel.astype(np.int64), delay.astype(float),
            recs.astype(bool),
        )  # fmt: skip

    @classmethod
    def repeat(cls, action: Action, n: int) -> Treatments:
        """``action`` for each of ``n`` carts."""
        return cls.of([action]).take(np.zeros(n, dtype=np.int64))

    def take(self, index: np.ndarray) -> Treatments:
        """The treatments of the carts at ``index``."""
        return Treatments(
            self.message[index], self.coupon[index], self.channel[index], self.delay_hours[index],
            self.recommendations[index],
        )  # fmt: skip


def natural_probability(
    loyalty: np.ndarray,
    forgetfulness: np.ndarray,
    value: np.ndarray,
    harvest_level: np.ndarray,
    config: ShopConfig,
) -> np.ndarray:
    """``p0``: probability that an abandoned cart comes back with no action."""
    e = config.effects
    return expit(
        logit(config.natural_recovery)
        + e.natural_loyalty * (loyalty - 0.5)
        + e.natural_forgetfulness * (forgetfulness - 0.44)
        + e.natural_log_value * np.log(np.maximum(value, 1.0) / 60.0)
        + e.natural_harvest * harvest_level
    )


def _weibull_cdf(hours: np.ndarray, e: Effects) -> np.ndarray:
    x = np.maximum(np.asarray(hours, dtype=float) - e.recovery_min_hours, 0.0)
    return -np.expm1(-((x / e.recovery_scale_hours) ** e.recovery_shape))


def natural_delay_hours(u_time: np.ndarray, effects: Effects) -> np.ndarray:
    """Hours from abandonment to a natural recovery, by inverse CDF of ``u_time``."""
    e = effects
    cap = _weibull_cdf(np.array(24.0 * e.recovery_max_days), e)
    x = e.recovery_scale_hours * (-np.log1p(-np.asarray(u_time) * cap)) ** (1 / e.recovery_shape)
    return np.asarray(e.recovery_min_hours + x)


def natural_before(hours: np.ndarray, effects: Effects) -> np.ndarray:
    """``q``: probability that a natural recovery comes before ``hours`` after abandonment."""
    cap = _weibull_cdf(np.array(24.0 * effects.recovery_max_days), effects)
    return np.asarray(np.minimum(_weibull_cdf(hours, effects) / cap, 1.0))


def open_lag_seconds(u_lag: np.ndarray, effects: Effects) -> np.ndarray:
    """Seconds from send to open: one minute plus a truncated exponential."""
    mean, cap = effects.open_lag_mean_hours * 3600, effects.open_lag_max_hours * 3600
    return 60 + mean * -np.log1p(-np.asarray(u_lag) * -np.expm1(-cap / mean))


def message_lift(facts: Mapping[str, np.ndarray], t: Treatments, effects: Effects) -> np.ndarray:
    """Change in recovery probability once a message is opened (0 for doing nothing)."""
    e = effects
    delays = np.log(np.asarray(e.reminder_delays_hours))
    reminder = np.interp(np.log(np.maximum(t.delay_hours, 1e-6)), delays, np.asarray(e.reminder_lifts))
    forget = np.asarray(facts["forgetfulness"], dtype=float)
    reminder = np.where(reminder > 0, reminder * (0.5 + forget), reminder)
    coupon = (
        e.coupon_lift
        * t.coupon
        * np.asarray(facts["price_sensitivity"], dtype=float)
        * (1 + e.harvest_coupon_boost * np.asarray(facts["harvest_level"], dtype=float))
    )
    lift = reminder + e.recommendations_lift * t.recommendations + coupon
    return np.where(t.message, lift, 0.0)


def _channel_columns(facts: Mapping[str, np.ndarray], t: Treatments) -> tuple[np.ndarray, np.ndarray]:
    """(consented, open probability) on each cart's channel; False and 0 for doing nothing."""
    n = t.channel.size
    consent = np.stack([np.asarray(facts[f"consent_{c}"], dtype=bool) for c in CHANNELS], axis=1)
    opens = np.stack([np.asarray(facts[f"open_{c}"], dtype=float) for c in CHANNELS], axis=1)
    column = np.maximum(t.channel, 0)
    consented = t.message & consent[np.arange(n), column]
    return consented, np.where(consented, opens[np.arange(n), column], 0.0)


def _per_channel(values: Mapping[str, float], t: Treatments) -> np.ndarray:
    return np.where(t.message, np.array([values[c] for c in CHANNELS])[np.maximum(t.channel, 0)], 0.0)


def unsubscribe_probability(facts: Mapping[str, np.ndarray], t: Treatments, config: ShopConfig) -> np.ndarray:
    """Probability that an opened message makes the customer leave its channel."""
    fatigue = 1 + config.effects.unsubscribe_fatigue * np.asarray(facts["messages_7d"], dtype=float)
    return np.minimum(_per_channel(config.unsubscribe_rate, t) * fatigue, 1.0)


def expected(facts: Mapping[str, np.ndarray], t: Treatments, config: ShopConfig) -> dict[str, np.ndarray]:
    """Exact expected outcome of each cart's treatment (see the module docstring for the formulas)."""
    p0 = np.asarray(facts["p_natural"], dtype=float)
    value = np.asarray(facts["value"], dtype=float)
    consented, o = _channel_columns(facts, t)
    q = np.where(t.message, natural_before(t.delay_hours, config.effects), 0.0)
    p1 = np.clip(p0 + message_lift(facts, t, config.effects), 0.0, 1.0)
    via_message = o * (p1 - np.minimum(p0, p1) * q)  # opened, and recovered
    p_recover = p0 * q + (1 - o) * p0 * (1 - q) + via_message
    p_open = o * (1 - p0 * q)
    discount = t.coupon * value * via_message
    cost = _per_channel(config.channel_cost, t) * consented * (1 - p0 * q)
    revenue = value * p_recover
    margin = config.margin_rate * revenue - discount - cost
    return {
        "p_send": consented * (1 - p0 * q),
        "p_open": p_open,
        "p_recover": p_recover,
        "revenue": revenue,
        "discount": discount,
        "cost": cost,
        "margin": margin,
        "incremental_margin": margin - config.margin_rate * (value * p0),
        "p_unsubscribe": p_open * unsubscribe_probability(facts, t, config),
    }


def realise(facts: Mapping[str, np.ndarray], t: Treatments, config: ShopConfig) -> dict[str, np.ndarray]:
    """The common-random-number realisation of each cart's treatment.

    Times are offsets from abandonment in whole seconds: ``recovery_offset`` (the start of the return
    visit, -1 if none), ``send_offset`` and ``open_offset``.
    """
    e = config.effects
    p0 = np.asarray(facts["p_natural"], dtype=float)
    value = np.asarray(facts["value"], dtype=float)
    u_recover = np.asarray(facts["u_recover"], dtype=float)
    consented, o = _channel_columns(facts, t)
    p1 = np.clip(p0 + message_lift(facts, t, e), 0.0, 1.0)
    natural = u_recover < p0
    delay_hours = natural_delay_hours(np.asarray(facts["u_time"]), e)
    cancelled = t.message & natural & (delay_hours < t.delay_hours)
    sent = consented & ~cancelled
    opened = sent & (np.asarray(facts["u_open"]) < o)
    recovered = np.where(opened, u_recover < p1, natural)
    send_offset = np.rint(t.delay_hours * 3600).astype(np.int64)
    open_offset = send_offset + np.rint(open_lag_seconds(np.asarray(facts["u_lag"]), e)).astype(np.int64)
    recovery_offset = np.where(
        opened, open_offset + VISIT_AFTER_OPEN, np.rint(delay_hours * 3600).astype(np.int64)
    )
    clicked = opened & (recovered | (np.asarray(facts["u_click"]) < e.click_without_purchase))
    unsubscribed = opened & (np.asarray(facts["u_unsub"]) < unsubscribe_probability(facts, t, config))
    discount = np.where(opened & recovered, np.round(t.coupon * value, 2), 0.0)
    cost = _per_channel(config.channel_cost, t) * sent
    revenue = np.where(recovered, value, 0.0)
    margin = config.margin_rate * revenue - discount - cost
    return {
        "sent": sent,
        "opened": opened,
        "clicked": clicked,
        "unsubscribed": unsubscribed,
        "recovered": recovered,
        "recovery_offset": np.where(recovered, recovery_offset, -1),
        "send_offset": send_offset,
        "open_offset": open_offset,
        "revenue": revenue,
        "discount": discount,
        "cost": cost,
        "margin": margin,
        "incremental_margin": margin - config.margin_rate * value * natural,
    }


def expected_outcomes(
    carts: pd.DataFrame, actions: Actions, config: ShopConfig | None = None
) -> pd.DataFrame:
    """Exact expected outcome of actions on abandoned carts.

    Parameters
    ----------
    carts
        Abandoned carts with ``cart_id`` and the columns of :data:`CART_COLUMNS`, e.g.
        ``SimulationResult.carts``.
    actions
        An action (or its name) or a list of them, each evaluated on every cart; or a Series aligned with
        ``carts`` giving each cart its own action (a policy's choices).
    config
        The shop's knobs (margin, channel costs, effect sizes); the defaults if None.

    Returns
    -------
    pandas.DataFrame
        One row per cart and action (action by action, carts in order): ``cart_id``, ``action``,
        ``p_send``, ``p_open``, ``p_recover``, ``revenue`` (list value of the recovered cart),
        ``discount``, ``cost`` (channel), ``margin`` (``margin_rate x revenue - discount - cost``),
        ``incremental_margin`` (against doing nothing) and ``p_unsubscribe``: all expectations.

    Examples
    --------
    >>> from winback.sim import simulate
    >>> shop = simulate(customers=300, days=30, seed=1)
    >>> table = expected_outcomes(shop.carts, ["nothing", "reminder/email/24h"], shop.config)
    >>> bool((table.loc[table["action"] == "nothing", "incremental_margin"] == 0).all())
    True
    """
    return _outcomes(carts, actions, config or ShopConfig(), expected)


def realised_outcomes(
    carts: pd.DataFrame, actions: Actions, config: ShopConfig | None = None
) -> pd.DataFrame:
    """What actions would have done to abandoned carts, realised with each cart's own random numbers.

    Parameters are those of :func:`expected_outcomes`; ``carts`` also needs ``abandoned_at``.

    Returns
    -------
    pandas.DataFrame
        One row per cart and action: ``cart_id``, ``action``, ``sent``, ``opened``, ``clicked``,
        ``unsubscribed``, ``recovered``, ``recovered_at`` (start of the return visit), ``revenue``,
        ``discount``, ``cost``, ``margin`` and ``incremental_margin`` (against doing nothing, on this
        cart's own random numbers).
    """
    return _outcomes(carts, actions, config or ShopConfig(), _realised_columns)


Model = Callable[[Mapping[str, np.ndarray], Treatments, ShopConfig], dict[str, np.ndarray]]


def _realised_columns(
    facts: Mapping[str, np.ndarray], t: Treatments, config: ShopConfig
) -> dict[str, np.ndarray]:
    out = realise(facts, t, config)
    offset = pd.to_timedelta(np.maximum(out.pop("recovery_offset"), 0), unit="s")
    abandoned_at = pd.to_datetime(pd.Series(facts["abandoned_at"]))
    out["recovered_at"] = (abandoned_at + offset).where(out["recovered"]).to_numpy()
    del out["send_offset"], out["open_offset"]
    return out


def _outcomes(carts: pd.DataFrame, actions: Actions, config: ShopConfig, model: Model) -> pd.DataFrame:
    needed = ["cart_id", *CART_COLUMNS] + (["abandoned_at"] if model is _realised_columns else [])
    missing = [c for c in needed if c not in carts.columns]
    if missing:
        raise ValueError(f"carts: missing columns {missing}")
    facts = {c: carts[c].to_numpy() for c in needed}
    if isinstance(actions, pd.Series):  # one action per cart: parse each distinct one once
        codes, distinct = pd.factorize(actions.reindex(carts.index).map(str))
        chosen = [Action.parse(name) for name in distinct]
        names = np.array([a.name for a in chosen], dtype=object)[codes]
        treatments = Treatments.of(chosen).take(codes)
        return pd.DataFrame(
            {"cart_id": facts["cart_id"], "action": names, **model(facts, treatments, config)}
        )
    listed = [actions] if isinstance(actions, Action | str) else list(actions)
    frames = []
    for item in listed:
        action = item if isinstance(item, Action) else Action.parse(item)
        columns = model(facts, Treatments.repeat(action, len(carts)), config)
        frames.append(pd.DataFrame({"cart_id": facts["cart_id"], "action": action.name, **columns}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cart_id", "action"])

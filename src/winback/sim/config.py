"""The simulator's knobs: the shop's size and rates (:class:`ShopConfig`) and the causal effect sizes of
interventions (:class:`Effects`). Defaults are chosen so the rates match what the field reports; see
:mod:`winback.sim` for the generative model they drive and the rates they produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

CHANNELS: tuple[str, ...] = ("email", "sms", "push")


@dataclass(frozen=True)
class Effects:
    """Effect sizes of the response model (:mod:`winback.sim.response`), on the recovery probability.

    A message only acts once opened. Its lift is the reminder lift at its delay (interpolated on log
    hours between the anchors; positive parts scale with ``0.5 + forgetfulness``, the reactance of a
    too-early message does not), plus ``recommendations_lift`` if it shows products, plus for a coupon of
    ``c``: ``coupon_lift * c * price_sensitivity * (1 + harvest_coupon_boost * harvest_level)``.
    """

    reminder_delays_hours: tuple[float, ...] = (1.0, 6.0, 24.0, 72.0)
    reminder_lifts: tuple[float, ...] = (-0.05, 0.02, 0.06, 0.035)
    recommendations_lift: float = 0.012
    coupon_lift: float = 1.6  # a 15% coupon adds 0.24 for the most price-sensitive, 0 for the least
    harvest_coupon_boost: float = 2.0
    # Natural recovery probability: logistic in the customer's traits, centred on ``natural_recovery``.
    natural_loyalty: float = 1.5
    natural_forgetfulness: float = -1.2
    natural_log_value: float = -0.15
    natural_harvest: float = 1.0  # harvesters who wait for a coupon mostly buy anyway when none comes
    # Delay of a natural recovery: at least ``min_hours``, then a Weibull truncated at ``max_days``.
    recovery_min_hours: float = 0.75
    recovery_scale_hours: float = 30.0
    recovery_shape: float = 0.7
    recovery_max_days: float = 6.0
    # After a send: opened after 1 minute plus a truncated exponential; a click brings the visit.
    open_lag_mean_hours: float = 1.5
    open_lag_max_hours: float = 12.0
    click_without_purchase: float = 0.15
    # Fatigue: each message sent in the previous 7 days adds this multiple of the unsubscribe rate,
    # and shortens the remaining lifetime by this factor (exp(-churn_per_recent_message x count)).
    unsubscribe_fatigue: float = 1.0
    churn_per_recent_message: float = 0.08
    unsubscribe_lifetime_factor: float = 0.5
    # Coupon harvesting: an opened coupon moves the level towards 1 by learning x propensity; the level
    # lowers the in-session purchase log-odds (they abandon to wait) and raises the coupon lift.
    harvest_learning: float = 0.5
    harvest_purchase_drop: float = 2.5


@dataclass(frozen=True)
class ShopConfig:
    """Knobs of the simulated shop; the defaults give a mid-sized web shop.

    Size: an alive customer visits about once a week and a session has about 5 events. Customers churn
    and are only partly replaced, so events per customer-day fall with the length of the run, measured
    with the defaults: 0.56 for 30 days, 0.51 for 90, 0.46 for 180, 0.41 for 365 (17, 15, 14 and 12
    events per customer-month). ``customers * days`` times that figure predicts the count within a few
    percent.

    Parameters
    ----------
    customers, days, start
        Customers in the shop, days simulated, first day (UTC midnight).
    n_products, n_categories
        Catalogue size; ``n_products`` defaults to ``customers / 10`` between 200 and 50,000.
    existing_share, history_days
        Share of customers acquired before ``start`` (up to ``history_days`` before); the rest arrive
        uniformly during the run.
    sessions_per_week
        Mean visits of an average customer while alive (varies by customer and season).
    mean_lifetime_days
        Mean lifetime of an average-loyalty customer (exponential; loyalty scales it 0.4-1.6x).
    views_per_session, cart_rate, purchase_rate, checkout_without_purchase, remove_rate
        Session shape: mean views; share of sessions with an add to cart; share of carts bought in the
        session (for an average customer and cart); share of abandoned carts that started checkout;
        share of multi-item carts that lose an item again.
    natural_recovery
        Recovery probability of an abandoned cart with no action, for an average customer.
    margin_rate, channel_cost
        Gross margin on list price, and cost per message sent.
    consent_rate, open_rate, unsubscribe_rate
        Per channel: share of customers who consented; mean open probability of a message; probability
        that an opened message makes an unfatigued customer unsubscribe from the channel.
    effects
        Causal effect sizes of interventions, see :class:`Effects`.
    """

    customers: int = 2000
    days: int = 180
    start: date = date(2024, 1, 1)
    n_products: int | None = None
    n_categories: int = 24
    existing_share: float = 0.7
    history_days: int = 365
    sessions_per_week: float = 1.0
    mean_lifetime_days: float = 365.0
    views_per_session: float = 4.5
    cart_rate: float = 0.25
    purchase_rate: float = 0.30
    checkout_without_purchase: float = 0.30
    remove_rate: float = 0.15
    natural_recovery: float = 0.14
    margin_rate: float = 0.30
    channel_cost: dict[str, float] = field(
        default_factory=lambda: {"email": 0.001, "sms": 0.04, "push": 0.0005}
    )
    consent_rate: dict[str, float] = field(default_factory=lambda: {"email": 0.90, "sms": 0.30, "push": 0.40})
    open_rate: dict[str, float] = field(default_factory=lambda: {"email": 0.45, "sms": 0.90, "push": 0.60})
    unsubscribe_rate: dict[str, float] = field(
        default_factory=lambda: {"email": 0.004, "sms": 0.012, "push": 0.008}
    )
    currency: str = "USD"
    effects: Effects = field(default_factory=Effects)

    def __post_init__(self) -> None:
        if self.customers < 1 or self.days < 1:
            raise ValueError(f"customers {self.customers}, days {self.days}: expected at least 1 of each")
        for name in ("channel_cost", "consent_rate", "open_rate", "unsubscribe_rate"):
            missing = set(CHANNELS) - set(getattr(self, name))
            if missing:
                raise ValueError(f"{name}: no value for {', '.join(sorted(missing))}")

    @property
    def products(self) -> int:
        """Number of products in the catalogue."""
        return self.n_products or min(max(self.customers // 10, 200), 50_000)

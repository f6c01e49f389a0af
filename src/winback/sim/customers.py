"""The simulated shop's customers: latent traits that drive behaviour, and state that actions change.

Traits (fixed for a customer):

- ``price_sensitivity`` ~ Beta(1.3, 1.7), 0..1: bigger carts are bought less in-session; the only trait
  through which coupons work (their lift is proportional to it).
- ``forgetfulness`` ~ Beta(2, 2.5): lowers natural recovery; scales what a timely reminder adds.
- ``loyalty`` ~ Beta(2, 2): more visits, more carts bought, more natural recovery, longer lifetime.
- ``harvest_propensity``: about 0 for 90% of customers (Beta(1, 40)), high for 10% (Beta(5, 2)); how
  fast a customer learns from opened coupons to abandon carts and wait for the next one.
- Channels: consent per channel (e-mail 90%, SMS 30%, push 40% by default), a preferred channel (e-mail
  60%, SMS 20%, push 20%) and a responsiveness; a message's open probability is
  ``expit(a_channel + 0.8 z + 0.7 [preferred])`` with ``z`` ~ N(0, 1) per customer and ``a_channel``
  solved so the mean open rate is the configured one (e-mail 45%).
- ``utc_offset_hours``: a market (US West, US East, UK, central and eastern Europe, Australia); visits
  follow the local clock. No daylight saving time.
- Category affinities: Dirichlet around the categories' traffic shares (concentration 0.5 per category).
- ``price_tier``: the price level a customer buys at within a category, as ``ln(price / category
  median)``: ``-0.8 (price_sensitivity - 0.43) + N(0, 0.2)`` (about 0.28 across customers; the most
  price-sensitive prefer about 30% below the median, the least about 35% above it). Products are chosen
  by popularity times closeness to it (:mod:`winback.sim.catalogue`). Why: price-sensitive shoppers buy
  the cheaper products of a category, and each shopper has a price level of their own; it is also what
  makes "cheaper substitutes for the price-sensitive" a real preference rather than a rule.
- ``staple``: in each replenishable category (coffee, pet food, skincare: ``REPLENISHABLE`` of the
  catalogue) the product a customer keeps buying, drawn once as any product they would choose. A visit
  to that category goes to the staple with probability ``0.25 + 0.5 loyalty`` (0.5 on average), else to
  a product chosen as usual. Why: repeat buying of the same item is how replenishable goods sell
  (Ehrenberg's repeat-buying studies find about half of a brand's buyers in one period buying it again
  in the next), and it is what "buy it again" recommendations rest on.
- ``visit_rate``: sessions per day while alive, ``sessions_per_week / 7 x Gamma(1.5) x (0.6 + 0.8 loyalty)``.
- ``acquired_at`` and ``churn_at``: existing customers (``existing_share``) were acquired up to
  ``history_days`` before the start and live on for an exponential remaining lifetime; the others
  arrive uniformly during the run. Mean lifetime ``mean_lifetime_days x (0.4 + 1.2 loyalty)``. No
  session starts at or after ``churn_at``.

State (changed by what the shop does): ``harvest_level``, ``unsubscribed_at`` per channel, ``churn_at``
(shortened by message fatigue and unsubscribes, postponed past a recovery visit), and the end of the last
session (so that a user's sessions never overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from winback.sim.catalogue import REPLENISHABLE, Catalogue
from winback.sim.config import CHANNELS, ShopConfig
from winback.sim.ids import prefixed, user_width

DAY = 86_400
#: A time after every simulated one (seconds), for "never".
NEVER = np.int64(2**62)
#: Markets: UTC offsets in hours and their shares of customers.
TIMEZONES = np.array([-8.0, -5.0, 0.0, 1.0, 2.0, 10.0])
TIMEZONE_SHARES = np.array([0.15, 0.30, 0.15, 0.25, 0.05, 0.10])
PREFERRED_SHARES = np.array([0.6, 0.2, 0.2])
RESPONSIVENESS_SD = 0.8
PREFERENCE_BOOST = 0.7
#: Price tier: its slope on price sensitivity (whose mean is 1.3 / 3) and the spread of the rest.
TIER_SLOPE, SENSITIVITY_MEAN, TIER_SD = 0.8, 1.3 / 3.0, 0.2
#: Chance that a visit to a replenishable category goes to the customer's staple: base + slope x loyalty.
STAPLE_BASE, STAPLE_LOYALTY = 0.25, 0.5


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: float) -> float:
    """The inverse of :func:`expit`."""
    return float(np.log(p / (1.0 - p)))


@dataclass
class Customers:
    """Customers as arrays indexed by customer number; times in seconds from the start (UTC midnight)."""

    price_sensitivity: np.ndarray
    forgetfulness: np.ndarray
    loyalty: np.ndarray
    harvest_propensity: np.ndarray
    visit_rate: np.ndarray
    utc_offset: np.ndarray  # hours
    consent: np.ndarray  # (n, 3) bool, in CHANNELS order
    open_probability: np.ndarray  # (n, 3)
    preferred_channel: np.ndarray
    affinity_cdf: np.ndarray  # (n, categories) cumulative category affinities, float32
    price_tier: np.ndarray  # preferred ln(price / category median)
    staple: np.ndarray  # (n, categories) the staple product of each replenishable category, else -1
    acquired_at: np.ndarray
    churn_at: np.ndarray
    initial_churn_at: np.ndarray = field(init=False)
    harvest_level: np.ndarray = field(init=False)
    unsubscribed_at: np.ndarray = field(init=False)  # (n, 3)
    last_end: np.ndarray = field(init=False)  # end of the last placed session

    def __post_init__(self) -> None:
        n = self.size
        self.initial_churn_at = self.churn_at.copy()
        self.harvest_level = np.zeros(n)
        self.unsubscribed_at = np.full((n, len(CHANNELS)), NEVER)
        self.last_end = np.full(n, -NEVER)

    @property
    def size(self) -> int:
        """Number of customers."""
        return int(self.loyalty.size)

    @classmethod
    def generate(
        cls,
        config: ShopConfig,
        catalogue: Catalogue,
        rng: np.random.Generator,
        tastes: np.random.Generator,
    ) -> Customers:
        """Draw ``config.customers`` customers (see the module docstring for the distributions); their
        price tiers and staples from ``tastes``, every other trait from ``rng``."""
        n = config.customers
        loyalty = rng.beta(2.0, 2.0, n)
        harvester = rng.random(n) < 0.10
        harvest = np.where(harvester, rng.beta(5.0, 2.0, n), rng.beta(1.0, 40.0, n))
        visit = config.sessions_per_week / 7 * rng.gamma(1.5, 1 / 1.5, n) * (0.6 + 0.8 * loyalty)
        preferred = rng.choice(len(CHANNELS), size=n, p=PREFERRED_SHARES)
        z = rng.standard_normal(n)
        intercept = np.array(
            [_open_intercept(config.open_rate[c], float(PREFERRED_SHARES[i])) for i, c in enumerate(CHANNELS)]
        )
        is_preferred = preferred[:, None] == np.arange(len(CHANNELS))
        open_probability = expit(intercept + RESPONSIVENESS_SD * z[:, None] + PREFERENCE_BOOST * is_preferred)
        consent = rng.random((n, len(CHANNELS))) < np.array([config.consent_rate[c] for c in CHANNELS])
        alpha = 0.5 * catalogue.category_weight.size * catalogue.category_weight
        affinity = rng.gamma(alpha, size=(n, alpha.size)) + 1e-12
        affinity_cdf = np.cumsum(affinity / affinity.sum(axis=1, keepdims=True), axis=1).astype(np.float32)
        affinity_cdf[:, -1] = 1.0
        existing = rng.random(n) < config.existing_share
        acquired = np.where(
            existing,
            -rng.random(n) * config.history_days * DAY,
            rng.random(n) * config.days * DAY,
        ).astype(np.int64)
        lifetime = rng.exponential(config.mean_lifetime_days * DAY * (0.4 + 1.2 * loyalty))
        churn = np.where(existing, 0, acquired) + lifetime.astype(np.int64)
        sensitivity = rng.beta(1.3, 1.7, n)
        tier = -TIER_SLOPE * (sensitivity - SENSITIVITY_MEAN) + tastes.normal(0.0, TIER_SD, n)
        return cls(
            price_sensitivity=sensitivity,
            forgetfulness=rng.beta(2.0, 2.5, n),
            loyalty=loyalty,
            harvest_propensity=harvest,
            visit_rate=visit,
            utc_offset=rng.choice(TIMEZONES, size=n, p=TIMEZONE_SHARES),
            consent=consent,
            open_probability=open_probability,
            preferred_channel=preferred,
            affinity_cdf=affinity_cdf,
            price_tier=tier,
            staple=_staples(catalogue, tier, tastes),
            acquired_at=acquired,
            churn_at=churn,
        )

    def consented_at(self, users: np.ndarray, at: np.ndarray) -> np.ndarray:
        """(len(users), 3): consented to each channel and not unsubscribed from it before ``at``."""
        return self.consent[users] & (self.unsubscribed_at[users] > at[:, None])

    def user_ids(self) -> np.ndarray:
        """``u000123``-style ids (object array), indexed by customer number."""
        return prefixed("u", np.arange(self.size), user_width(self.size)).to_numpy(zero_copy_only=False)

    def to_frame(
        self, start: date, days: int, category_names: tuple[str, ...], user_ids: np.ndarray
    ) -> pd.DataFrame:
        """One row per customer: latent traits and final state (times as UTC timestamps)."""
        origin = pd.Timestamp(start, tz="UTC")

        def when(seconds: np.ndarray) -> pd.Series:
            never = seconds >= NEVER
            stamps = origin + pd.to_timedelta(np.where(never, 0, seconds), unit="s")
            return pd.Series(stamps).mask(never)

        frame = pd.DataFrame(
            {
                "user_id": user_ids,
                "price_sensitivity": self.price_sensitivity,
                "forgetfulness": self.forgetfulness,
                "loyalty": self.loyalty,
                "harvest_propensity": self.harvest_propensity,
                "harvest_level": self.harvest_level,
                "sessions_per_week": self.visit_rate * 7,
                "utc_offset_hours": self.utc_offset,
                "favourite_category": np.array(category_names)[np.argmax(np.diff(
                    self.affinity_cdf, axis=1, prepend=np.float32(0)), axis=1)],
                "price_tier": self.price_tier,
                "preferred_channel": np.array(CHANNELS)[self.preferred_channel],
            }
        )  # fmt: skip
        for i, channel in enumerate(CHANNELS):
            frame[f"consent_{channel}"] = self.consent[:, i]
            frame[f"open_{channel}"] = self.open_probability[:, i]
            frame[f"unsubscribed_{channel}_at"] = when(self.unsubscribed_at[:, i])
        frame["acquired_at"] = when(self.acquired_at)
        frame["churn_at"] = when(self.churn_at)
        frame["initial_churn_at"] = when(self.initial_churn_at)
        frame["alive_at_end"] = self.churn_at > days * DAY
        return frame


def _staples(catalogue: Catalogue, tier: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(customers, categories): a staple per replenishable category, chosen as any product at the
    customer's price tier; -1 elsewhere."""
    staple = np.full((tier.size, len(catalogue.category_names)), -1, dtype=np.int64)
    tiers = catalogue.tier_index(tier)
    for c, name in enumerate(catalogue.category_names):
        if name in REPLENISHABLE:
            staple[:, c] = catalogue.sample(np.full(tier.size, c), rng.random(tier.size), tiers)
    return staple


def _open_intercept(target: float, preferred_share: float) -> float:
    """The channel intercept ``a`` whose mean open probability over customers is ``target``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()

    def mean_open(a: float) -> float:
        base = weights @ expit(a + RESPONSIVENESS_SD * nodes)
        boosted = weights @ expit(a + PREFERENCE_BOOST + RESPONSIVENESS_SD * nodes)
        return float(preferred_share * boosted + (1 - preferred_share) * base)

    low, high = -15.0, 15.0
    for _ in range(60):  # bisection: mean_open increases in a
        middle = (low + high) / 2
        low, high = (middle, high) if mean_open(middle) < target else (low, middle)
    return (low + high) / 2

"""The simulated shop's fixed world: its catalogue, its customers' latent traits, its calendar.

Every number here is a knob of :class:`ShopConfig` or a documented constant, chosen so that the rates the
shop produces match what the field reports (see :mod:`winback.sim`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np

CHANNEL_NAMES = ("email", "sms", "push")

#: Plausible category names (department.subcategory); a shop uses the first ``n_categories``.
CATEGORY_NAMES = (
    "electronics.audio", "electronics.phones", "home.kitchen", "apparel.shoes", "beauty.skincare",
    "sports.outdoor", "toys.games", "books.fiction", "home.furniture", "apparel.women",
    "apparel.men", "garden.tools", "pets.food", "grocery.coffee", "beauty.fragrance",
    "electronics.computers", "home.decor", "sports.fitness", "kids.clothing", "auto.accessories",
    "health.vitamins", "office.supplies", "music.instruments", "travel.luggage",
)  # fmt: skip

#: Relative traffic by local hour of day (0-23): quiet nights, a lunch bump, an evening peak.
HOURLY = np.array(
    [0.15, 0.08, 0.05, 0.04, 0.04, 0.07, 0.2, 0.45, 0.7, 0.8, 0.85, 0.9,
     1.0, 0.95, 0.85, 0.85, 0.9, 1.0, 1.15, 1.35, 1.5, 1.4, 1.0, 0.5]
)  # fmt: skip
#: Relative traffic by weekday (Monday first) and by month (January first; November/December peak).
WEEKDAY = np.array([1.05, 1.0, 0.98, 0.97, 0.95, 0.95, 1.1])
MONTH = np.array([0.9, 0.85, 0.92, 0.95, 0.97, 0.93, 0.92, 0.95, 1.0, 1.05, 1.45, 1.6])
#: Customers' UTC offsets (hours) and their shares: a shop selling in Europe and the Americas.
TIMEZONES = np.array([-8, -5, 0, 1, 2])
TIMEZONE_SHARES = np.array([0.15, 0.25, 0.2, 0.3, 0.1])


@dataclass(frozen=True)
class ShopConfig:
    """Knobs of the simulated shop. Defaults give a mid-sized web shop.

    ``sessions_per_week`` is the mean for an average customer while alive; with the default lifetimes,
    about 0.45 of customers are alive on a given day, so a run yields roughly
    ``customers * days * 0.16`` sessions and about 5.5 events per session.
    """

    customers: int = 2000
    days: int = 180
    start: date = date(2024, 1, 1)
    n_products: int | None = None  # default: customers / 20, between 200 and 20,000
    n_categories: int = 24
    sessions_per_week: float = 1.5
    mean_lifetime_days: float = 240.0
    history_days: int = 180  # customers may have been acquired this long before ``start``
    cart_session_share: float = 0.24
    idle_minutes: int = 30  # inactivity after which a cart counts as abandoned
    margin_rate: float = 0.30
    channel_cost: dict[str, float] = field(
        default_factory=lambda: {"email": 0.001, "sms": 0.04, "push": 0.0005}
    )
    open_rate: dict[str, float] = field(default_factory=lambda: {"email": 0.45, "sms": 0.90, "push": 0.60})
    consent_rate: dict[str, float] = field(default_factory=lambda: {"email": 0.90, "sms": 0.30, "push": 0.40})
    unsubscribe_rate: dict[str, float] = field(
        default_factory=lambda: {"email": 0.004, "sms": 0.012, "push": 0.008}
    )
    currency: str = "USD"

    @property
    def products(self) -> int:
        return self.n_products or int(np.clip(self.customers // 20, 200, 20_000))


@dataclass
class Catalogue:
    """Products with a category, a price and a power-law popularity; categories with complements.

    Substitutes are products of the same category: a price-sensitive customer who removes an item may
    swap it for a cheaper one (:meth:`cheaper_substitute`). Complements are categories viewed together.
    """

    category: np.ndarray  # product -> category index
    price: np.ndarray
    popularity: np.ndarray  # sums to 1
    category_names: list[str]
    complements: np.ndarray  # category -> 2 complement categories
    # Products sorted by category with cumulative popularity, for fast sampling within a category.
    by_category: np.ndarray
    cum_popularity: np.ndarray
    category_start: np.ndarray  # cumulative popularity where each category's products begin
    category_mass: np.ndarray

    @classmethod
    def generate(cls, config: ShopConfig, rng: np.random.Generator) -> Catalogue:
        n, k = config.products, min(config.n_categories, len(CATEGORY_NAMES))
        category_weight = rng.dirichlet(np.full(k, 2.0))
        category = rng.choice(k, size=n, p=category_weight)
        base_price = np.exp(rng.normal(3.3, 0.7, size=k))  # median category price about $27
        price = np.round(base_price[category] * np.exp(rng.normal(0.0, 0.35, size=n)), 2).clip(0.99)
        rank = rng.permutation(n) + 1
        popularity = 1.0 / rank**1.1
        popularity /= popularity.sum()
        complements = np.stack([(np.arange(k) + rng.integers(1, k, size=k)) % k for _ in range(2)], axis=1)
        order = np.argsort(category, kind="stable")
        cum = np.cumsum(popularity[order])
        mass = np.bincount(category, weights=popularity, minlength=k)
        start = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
        return cls(
            category, price, popularity, list(CATEGORY_NAMES[:k]), complements, order, cum, start, mass
        )

    def cheaper_substitute(
        self, products: np.ndarray, rng: np.random.Generator, tries: int = 4
    ) -> np.ndarray:
        """For each product, the cheapest of a few popular products of its category, if cheaper; else -1."""
        if products.size == 0:
            return products
        candidates = np.stack([self.sample(self.category[products], rng) for _ in range(tries)], axis=1)
        best = candidates[np.arange(products.size), np.argmin(self.price[candidates], axis=1)]
        return np.where(self.price[best] < self.price[products], best, -1)

    def sample(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One product per entry of ``categories``, by popularity within the category."""
        target = (
            self.category_start[categories] + rng.random(categories.size) * self.category_mass[categories]
        )
        index = np.searchsorted(self.cum_popularity, target, side="right").clip(0, self.by_category.size - 1)
        return self.by_category[index]


@dataclass
class Customers:
    """Latent traits (fixed) and state (changed by what the shop does to them)."""

    price_sensitivity: np.ndarray  # 0..1: how much price and coupons matter
    forgetfulness: np.ndarray  # 0..1: share of abandonment that is distraction; reminders work on it
    loyalty: np.ndarray  # 0..1: visits, buying and lifetime
    visit_rate: np.ndarray  # sessions per day while alive
    tz_offset: np.ndarray  # hours from UTC
    consent: np.ndarray  # (n, 3) bool, by CHANNEL_NAMES
    responsiveness: np.ndarray  # (n, 3) multiplier of the channel's open rate
    favourite: np.ndarray  # (n, 2) favourite categories
    acquired_day: np.ndarray  # day index (negative: before the simulated period)
    churn_day: np.ndarray  # first day with no more sessions; shortened by messaging
    harvest_propensity: np.ndarray  # 0 for most; how fast a customer learns to wait for coupons
    # state
    harvest_level: np.ndarray = field(init=False)  # 0..1: learnt coupon harvesting
    unsubscribed: np.ndarray = field(init=False)  # (n, 3) bool
    recent_messages: np.ndarray = field(init=False)  # (n, 7) messages per day, ring buffer by day % 7

    def __post_init__(self) -> None:
        n = self.loyalty.size
        self.harvest_level = np.zeros(n)
        self.unsubscribed = np.zeros((n, 3), dtype=bool)
        self.recent_messages = np.zeros((n, 7), dtype=np.int16)

    @property
    def size(self) -> int:
        return int(self.loyalty.size)

    @classmethod
    def generate(cls, config: ShopConfig, catalogue: Catalogue, rng: np.random.Generator) -> Customers:
        n = config.customers
        loyalty = rng.beta(2.0, 2.0, n)
        visit = rng.gamma(1.2, 1.0 / 1.2, n) * (0.4 + 1.2 * loyalty) * config.sessions_per_week / 7
        lifetime = rng.exponential(config.mean_lifetime_days * (0.4 + 1.2 * loyalty))
        acquired = rng.integers(-config.history_days, config.days, n)
        gone = acquired + lifetime <= 0  # would never be seen: acquire them during the period instead
        acquired[gone] = rng.integers(0, config.days, int(gone.sum()))
        consent = np.stack([rng.random(n) < config.consent_rate[c] for c in CHANNEL_NAMES], axis=1)
        k = len(catalogue.category_names)
        category_share = np.bincount(catalogue.category, minlength=k) / catalogue.category.size
        favourite = np.stack([rng.choice(k, size=n, p=category_share) for _ in range(2)], axis=1)
        harvest = np.where(rng.random(n) < 0.10, rng.uniform(0.3, 0.8, n), 0.0)
        return cls(
            price_sensitivity=rng.beta(2.0, 3.0, n),
            forgetfulness=rng.beta(2.0, 2.5, n),
            loyalty=loyalty,
            visit_rate=visit,
            tz_offset=rng.choice(TIMEZONES, size=n, p=TIMEZONE_SHARES),
            consent=consent,
            responsiveness=rng.beta(4.0, 4.0, (n, 3)) * 2.0,  # mean 1
            favourite=favourite,
            acquired_day=acquired,
            churn_day=acquired + lifetime,
            harvest_propensity=harvest,
        )

    def messages_last_week(self, index: np.ndarray) -> np.ndarray:
        return self.recent_messages[index].sum(axis=1)

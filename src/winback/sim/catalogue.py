"""The simulated shop's products: categories, prices, brands, popularity, complements and substitutes.

- Categories carry a plausible median price; a product's price is lognormal around it (sigma 0.45).
- Traffic shares of categories are Dirichlet; within a category popularity is Zipf (weight 1/rank^1.1),
  so a few products take most views, as in every shop log.
- Brands belong to a department (``electronics``, ``home``...: the part of the category before the dot),
  5 per department, each with a price position (lognormal, sigma 0.35, around the category medians) and
  a share; a product takes a brand by share times how near its price is to the brand's position, so
  brands are budget or premium, as in a real shop. Why: content similarity on brand (the recommender's
  "same brand" reason) needs brands that mean something.
- Price tiers (:data:`TIER_GRID`): within a category a customer chooses by popularity times
  ``exp(-(ln(price / category median) - tier)^2 / (2 x 0.4^2))``, ``tier`` being the customer's preferred
  price level (see :mod:`winback.sim.customers`). Why: in real shops a customer's purchases cluster
  at their own price level within a category, lower for the price-sensitive; with popularity alone every
  customer would pick the same products of a category, and cheaper substitutes could not matter.
- Each category has 1-3 complement categories (browsed after it: a phone, then a case). Each product
  also links 3 complement *products* (:attr:`Catalogue.links`): drawn from its complement categories by
  popularity at the product's own price level, preferring its brand (of 4 draws, the first of the same
  brand if any). Why: complements in a real shop are product-specific (this phone -> these cases, shown
  on its page), which is what co-purchase recommenders find; category-level complements alone leave them
  nothing to find.
- Substitutes are the products of the same category nearest in price; the simulator swaps a product for
  one when a customer would otherwise put an item of an open cart into a new cart (so that a later
  purchase of a cart's item is always that cart's recovery, as the definition of recovery assumes).
- :data:`REPLENISHABLE` categories hold products that are used up and bought again (coffee, pet food,
  skincare); customers keep a staple product in each (see :mod:`winback.sim.customers`).

Brands and links are drawn from their own random generator (``details``), so the products, prices and
popularity are those of a catalogue generated without them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from winback.sim.ids import prefixed

#: Plausible categories (department.subcategory) with a median price in USD.
CATEGORIES: tuple[tuple[str, float], ...] = (
    ("electronics.audio", 80.0), ("electronics.phones", 350.0), ("electronics.computers", 700.0),
    ("electronics.accessories", 25.0), ("home.kitchen", 40.0), ("home.furniture", 250.0),
    ("home.decor", 30.0), ("home.bedding", 60.0), ("apparel.women", 45.0), ("apparel.men", 40.0),
    ("apparel.shoes", 80.0), ("apparel.accessories", 25.0), ("beauty.skincare", 25.0),
    ("beauty.fragrance", 60.0), ("beauty.makeup", 18.0), ("sports.fitness", 45.0),
    ("sports.outdoor", 70.0), ("sports.cycling", 120.0), ("toys.games", 30.0), ("toys.baby", 35.0),
    ("books.fiction", 14.0), ("books.nonfiction", 18.0), ("garden.tools", 35.0), ("garden.plants", 20.0),
    ("pets.food", 30.0), ("pets.accessories", 20.0), ("grocery.coffee", 15.0), ("grocery.snacks", 8.0),
    ("health.vitamins", 20.0), ("office.supplies", 12.0), ("auto.accessories", 30.0),
    ("music.instruments", 200.0),
)  # fmt: skip


#: Categories whose products are used up and bought again, so customers keep a staple in each.
REPLENISHABLE = frozenset(
    {"beauty.skincare", "beauty.makeup", "pets.food", "grocery.coffee", "grocery.snacks",
     "health.vitamins", "office.supplies"}
)  # fmt: skip
#: Price tiers: a preferred price as the log ratio to the category's median price, on a grid (each tier's
#: choice probabilities are computed once; a customer's tier is rounded to the nearest level).
TIER_GRID = np.round(np.arange(-1.2, 1.2001, 0.1), 1)
#: How far (log ratio) from their tier a customer still likes to buy: the width of the Gaussian weight.
PRICE_TOLERANCE = 0.4
#: Brands per department, how spread their price positions are, and how much a product's price says
#: about its brand.
BRANDS_PER_DEPARTMENT = 5
BRAND_POSITION_SD = 0.35
BRAND_PRICE_SD = 0.3
#: Complement products linked from each product, and the draws a link takes to find one of its brand.
LINKS = 3
LINK_DRAWS = 4
_BRAND_STARTS = ("Ar", "Bel", "Cor", "Dun", "El", "Fen", "Gal", "Hol", "Iv", "Jor", "Kel", "Lor", "Mar",
                 "Nor", "Os", "Pim")  # fmt: skip
_BRAND_ENDS = ("ora", "ix", "ven", "ton", "ari")


@dataclass(frozen=True)
class Catalogue:
    """Products (arrays indexed by product number) and categories (arrays indexed by category number)."""

    category: np.ndarray  # product -> category
    price: np.ndarray  # list price, USD
    popularity: np.ndarray  # share of the category's views; sums to 1 within each category
    category_names: tuple[str, ...]
    category_weight: np.ndarray  # share of all views
    complements: np.ndarray  # (categories, 3) complement categories, padded with -1
    n_complements: np.ndarray  # 1-3 per category
    by_category: np.ndarray  # products ordered by category, then price
    rank: np.ndarray  # product -> position in ``by_category``
    category_start: np.ndarray  # (categories + 1) boundaries in ``by_category``
    median: np.ndarray  # (categories,) the plausible median price of each category
    brand: np.ndarray  # product -> brand
    brand_names: tuple[str, ...]
    #: (tiers, products): the probability of each product within its category for a customer of each
    #: tier of :data:`TIER_GRID` (popularity times closeness to the tier)
    tier_share: np.ndarray
    #: along ``by_category`` per tier, flattened: tier x categories + category + cumulative tier share
    tier_cumulative: np.ndarray
    links: np.ndarray  # (products, LINKS) complement products of each product

    @property
    def size(self) -> int:
        """Number of products."""
        return int(self.price.size)

    @property
    def log_price_ratio(self) -> np.ndarray:
        """Each product's ``ln(price / category median)``: its price level within its category."""
        return np.log(self.price / self.median[self.category])

    @classmethod
    def generate(
        cls, n_products: int, n_categories: int, rng: np.random.Generator, details: np.random.Generator
    ) -> Catalogue:
        """A random catalogue; every category gets at least 5 products. ``rng`` draws the products, their
        prices and popularity; ``details`` their brands and complement links."""
        if not 2 <= n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories {n_categories}: expected 2 to {len(CATEGORIES)}")
        if n_products < 5 * n_categories:
            raise ValueError(f"n_products {n_products}: expected at least 5 per category")
        k = n_categories
        names, median = zip(*CATEGORIES[:k], strict=True)
        weight = rng.dirichlet(np.full(k, 3.0))
        extra = rng.multinomial(n_products - 5 * k, weight)
        category = np.repeat(np.arange(k), 5 + extra)
        price = np.round(np.array(median)[category] * rng.lognormal(0.0, 0.45, n_products), 2).clip(0.99)
        by_category = np.lexsort((price, category))
        start = np.concatenate([[0], np.cumsum(5 + extra)])
        # Zipf within each category, in an order unrelated to price.
        position = np.arange(n_products) - start[category]
        order = np.lexsort((rng.random(n_products), category))
        popularity = np.empty(n_products)
        popularity[order] = 1.0 / (position + 1.0) ** 1.1
        popularity /= np.bincount(category, weights=popularity)[category]
        n_complements = rng.integers(1, 4, k)
        others = np.argsort(rng.random((k, k)) + np.eye(k), axis=1)[:, :3]  # never the category itself
        complements = np.where(np.arange(3) < n_complements[:, None], others, -1)
        rank = np.empty(n_products, dtype=np.int64)
        rank[by_category] = np.arange(n_products)
        medians = np.array(median)
        ratio = np.log(price / medians[category])
        brand, brand_names = _brands(names, category, ratio, details)
        tier_share = popularity * np.exp(-0.5 * ((ratio - TIER_GRID[:, None]) / PRICE_TOLERANCE) ** 2)
        tier_share /= np.stack([np.bincount(category, weights=row, minlength=k) for row in tier_share])[
            :, category
        ]
        tier_cumulative = np.concatenate(
            [
                t * k + category[by_category] + _exact_bounds(_segment_cumsum(row[by_category], start), start)
                for t, row in enumerate(tier_share)
            ]
        )
        catalogue = cls(
            category, price, popularity, tuple(names), weight, complements, n_complements,
            by_category, rank, start, medians, brand, brand_names, tier_share, tier_cumulative,
            np.zeros((n_products, LINKS), dtype=np.int64),
        )  # fmt: skip
        return replace(catalogue, links=catalogue._draw_links(details))

    def _draw_links(self, rng: np.random.Generator) -> np.ndarray:
        """Each product's :data:`LINKS` complement products (see the module docstring)."""
        anchor = np.repeat(np.arange(self.size), LINKS)
        into = self.complement(self.category[anchor], rng.random(anchor.size))
        tier = np.repeat(self.tier_index(self.log_price_ratio[anchor]), LINK_DRAWS)
        draws = self.sample(np.repeat(into, LINK_DRAWS), rng.random(anchor.size * LINK_DRAWS), tier).reshape(
            -1, LINK_DRAWS
        )
        same_brand = self.brand[draws] == self.brand[anchor][:, None]
        return draws[np.arange(anchor.size), np.argmax(same_brand, axis=1)].reshape(self.size, LINKS)

    @staticmethod
    def tier_index(log_ratio: np.ndarray) -> np.ndarray:
        """The level of :data:`TIER_GRID` nearest to each preferred price (a log ratio to the median)."""
        step = TIER_GRID[1] - TIER_GRID[0]
        return np.clip(np.rint((log_ratio - TIER_GRID[0]) / step), 0, TIER_GRID.size - 1).astype(np.int64)

    def sample(self, categories: np.ndarray, u: np.ndarray, tiers: np.ndarray) -> np.ndarray:
        """One product per entry of ``categories`` for a customer of each entry's tier (an index into
        :data:`TIER_GRID`), by :attr:`tier_share` (``u`` uniform in [0, 1))."""
        k = self.category_weight.size
        index = np.searchsorted(self.tier_cumulative, tiers * k + categories + u, side="right")
        return self.by_category[np.minimum(index - tiers * self.size, self.size - 1)]

    def complement(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A complement category of each of ``categories`` (``u`` uniform in [0, 1))."""
        pick = (u * self.n_complements[categories]).astype(np.int64)
        return self.complements[categories, pick]

    def substitute(self, products: np.ndarray, step: int) -> np.ndarray:
        """The product ``step`` places away in price within the same category (mirrored at its ends)."""
        position = self.rank[products]
        first = self.category_start[self.category[products]]
        last = self.category_start[self.category[products] + 1] - 1
        target = position + step
        target = np.where((target < first) | (target > last), position - step, target)
        return self.by_category[np.clip(target, first, last)]

    def product_ids(self) -> pa.Array:
        """``p00042``-style ids, indexed by product number."""
        return prefixed("p", np.arange(self.size), width=max(5, len(str(self.size - 1))))

    def to_frame(self) -> pd.DataFrame:
        """One row per product: id, category, brand, price, popularity (share of all product views)."""
        return pd.DataFrame(
            {
                "product_id": self.product_ids().to_numpy(zero_copy_only=False),
                "category": np.array(self.category_names)[self.category],
                "brand": np.array(self.brand_names)[self.brand],
                "price": self.price,
                "popularity": self.popularity * self.category_weight[self.category],
            }
        )


def _segment_cumsum(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each of ``start`` (segment boundaries, last = len(values))."""
    total = np.cumsum(values)
    before = np.concatenate([[0.0], total[start[1:-1] - 1]])
    return total - np.repeat(before, np.diff(start))


def _exact_bounds(cumulative: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``cumulative`` with each segment's last value exactly 1 (exact upper bounds against rounding)."""
    cumulative[start[1:] - 1] = 1.0
    return cumulative


def _brands(
    names: tuple[str, ...], category: np.ndarray, ratio: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each product's brand (and the brand names): brands belong to a department, each with a price
    position and a share; a product's brand is drawn by share x closeness of its price to the position."""
    departments = list(dict.fromkeys(name.split(".")[0] for name in names))
    department = np.array([departments.index(name.split(".")[0]) for name in names])[category]
    b = BRANDS_PER_DEPARTMENT
    position = rng.normal(0.0, BRAND_POSITION_SD, (len(departments), b))
    share = rng.dirichlet(np.full(b, 2.0), len(departments))
    weight = share[department] * np.exp(
        -0.5 * ((ratio[:, None] - position[department]) / BRAND_PRICE_SD) ** 2
    )
    cumulative = np.cumsum(weight, axis=1)
    pick = (cumulative < rng.random(category.size)[:, None] * cumulative[:, -1:]).sum(axis=1)
    brand = department * b + np.minimum(pick, b - 1)
    brand_names = tuple(
        _BRAND_STARTS[d % len(_BRAND_STARTS)] + _BRAND_ENDS[j] + ("" if d < len(_BRAND_STARTS) else str(d))
        for d in range(len(departments))
        for j in range(b)
    )
    return brand, brand_names

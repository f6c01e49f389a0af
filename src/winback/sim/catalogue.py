"""The simulated shop's products: categories, prices, popularity, complements and substitutes.

- Categories carry a plausible median price; a product's price is lognormal around it (sigma 0.45).
- Traffic shares of categories are Dirichlet; within a category popularity is Zipf (weight 1/rank^1.1),
  so a few products take most views, as in every shop log.
- Each category has 1-3 complement categories (browsed after it: a phone, then a case).
- Substitutes are the products of the same category nearest in price; the simulator swaps a product for
  one when a customer would otherwise put an item of an open cart into a new cart (so that a later
  purchase of a cart's item is always that cart's recovery, as the definition of recovery assumes).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    cumulative: np.ndarray  # along ``by_category``: category + cumulative popularity within it

    @property
    def size(self) -> int:
        """Number of products."""
        return int(self.price.size)

    @classmethod
    def generate(cls, n_products: int, n_categories: int, rng: np.random.Generator) -> Catalogue:
        """A random catalogue; every category gets at least 5 products."""
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
        cumulative = category[by_category] + _segment_cumsum(popularity[by_category], start)
        cumulative[start[1:] - 1] = np.arange(1, k + 1)  # exact upper bounds against rounding
        n_complements = rng.integers(1, 4, k)
        others = np.argsort(rng.random((k, k)) + np.eye(k), axis=1)[:, :3]  # never the category itself
        complements = np.where(np.arange(3) < n_complements[:, None], others, -1)
        rank = np.empty(n_products, dtype=np.int64)
        rank[by_category] = np.arange(n_products)
        return cls(
            category, price, popularity, tuple(names), weight, complements, n_complements,
            by_category, rank, start, cumulative,
        )  # fmt: skip

    def sample(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One product per entry of ``categories``, by popularity within it (``u`` uniform in [0, 1))."""
        index = np.searchsorted(self.cumulative, categories + u, side="right")
        return self.by_category[np.minimum(index, self.size - 1)]

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
        """One row per product: id, category, price, popularity (share of all product views)."""
        return pd.DataFrame(
            {
                "product_id": self.product_ids().to_numpy(zero_copy_only=False),
                "category": np.array(self.category_names)[self.category],
                "price": self.price,
                "popularity": self.popularity * self.category_weight[self.category],
            }
        )


def _segment_cumsum(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each of ``start`` (segment boundaries, last = len(values))."""
    total = np.cumsum(values)
    before = np.concatenate([[0.0], total[start[1:-1] - 1]])
    return total - np.repeat(before, np.diff(start))

"""Do customers keep to a price level within a category? The REES46 sample against the simulator.

A product's level is ``ln(price / median price of its category's products)``. For each customer with at
least 3 distinct products, the spread (sd) of their products' levels around their own mean, averaged
over customers, is compared with the spread of all products' levels: a ratio near 1 means customers
choose across the whole price range, below 1 that each keeps to a level of their own. This is the
grounding of the simulator's price tiers (``winback.sim.customers``); run it on the simulator before and
after a change to see what it does.

Run::

    .venv/bin/python bench/price_levels.py [--customers 3000] [--days 120] [--seed 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from winback.sim import simulate

REES46 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rees46_2019-Oct_first1000rows.csv"


def spread(frame: pd.DataFrame, name: str) -> None:
    """Print the two spreads of ``frame`` (columns user_id, product_id, category, price)."""
    products = frame.drop_duplicates("product_id")
    median = products.groupby("category")["price"].median()
    level = np.log(frame["price"] / frame["category"].map(median))
    own = frame.assign(level=level).drop_duplicates(["user_id", "product_id"]).groupby("user_id")["level"]
    stats = own.agg(["mean", "std", "count"])
    stats = stats[stats["count"] >= 3]
    overall = float(np.log(products["price"] / products["category"].map(median)).std())
    within = float(stats["std"].mean())
    print(
        f"{name}: products' level sd {overall:.2f}; {len(stats):,} customers with 3+ products: own sd "
        f"{within:.2f} (ratio {within / overall:.2f}); sd of their mean levels {stats['mean'].std():.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rees = pd.read_csv(REES46)
    rees = rees[rees["price"] > 0].assign(
        category=rees["category_code"].fillna(rees["category_id"].astype(str))
    )
    spread(rees, f"REES46 sample ({len(rees):,} events)")
    events = simulate(customers=args.customers, days=args.days, seed=args.seed).events.to_pandas()
    views = events[events["event_type"] == "view"]
    spread(views, f"simulator {args.customers:,} x {args.days} days (seed {args.seed}), views")


if __name__ == "__main__":
    main()

"""How often customers come back to a product they viewed in an earlier visit: real against simulated.

Usage: ``.venv/bin/python bench/revisits.py [--customers 3000] [--products 300] [--days 120] [--seed 1]``

Visits are split at 30 idle minutes. For each log: the share of a customer's later visits (after their
first) that view a product they viewed in an earlier visit, and the share of purchases of a product the
customer first saw in an earlier visit. Real: the RetailRocket sample in ``../shared/data/``; simulated:
a shop of the simulator. The simulator's visits are independent given each customer's fixed tastes, so its
revisits come from those tastes and its small catalogue; a real shop's from interest that persists from
visit to visit in a catalogue of hundreds of thousands of products. The figures are the starting point for
sizing such persistence in the simulator (see docs/recommend.md, Not yet).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend_eval import RETAILROCKET, simulated
from winback.sim.config import ShopConfig

IDLE_SECONDS = 30 * 60


def revisits(frame: pd.DataFrame) -> dict[str, float | int]:
    """``frame``: user, ts (seconds), item, kind (view / cart / purchase)."""
    f = frame.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    new = (f["user"] != f["user"].shift()) | (f["ts"] - f["ts"].shift() > IDLE_SECONDS)
    f["visit"] = new.cumsum()
    first_visit = f.groupby(["user", "item"])["visit"].transform("min")
    visit_rank = f.groupby("user")["visit"].transform(lambda v: v.rank(method="dense"))
    later = f[visit_rank > 1]
    returning = (first_visit[later.index] < later["visit"]).groupby(later["visit"]).any()
    bought = f[f["kind"] == "purchase"]
    seen_before = first_visit[bought.index] < bought["visit"]
    return {
        "customers": int(f["user"].nunique()),
        "visits": int(f["visit"].nunique()),
        "later visits": len(returning),
        "later visits returning": float(returning.mean()) if len(returning) else float("nan"),
        "purchases": len(bought),
        "purchases seen in an earlier visit": float(seen_before.mean()) if len(bought) else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    raw = pd.read_csv(RETAILROCKET)
    real = pd.DataFrame(
        {
            "user": raw["visitorid"],
            "ts": raw["timestamp"] / 1000,
            "item": raw["itemid"],
            "kind": raw["event"].map({"view": "view", "addtocart": "cart", "transaction": "purchase"}),
        }
    )
    config = ShopConfig(customers=args.customers, days=args.days, n_products=args.products)
    with tempfile.TemporaryDirectory() as tmp:
        split, _ = simulated(config, args.seed, 0, Path(tmp))
    simulated_log = split.train.rename(columns={"user_key": "user", "product_id": "item"})
    shop = f"simulator ({args.customers:,} customers, {args.products} products, {args.days} days)"
    rows = {
        "RetailRocket sample": revisits(real),
        shop: revisits(simulated_log[["user", "ts", "item", "kind"]]),
    }
    table = pd.DataFrame(rows).T
    for counted in ("customers", "visits", "later visits", "purchases"):
        table[counted] = table[counted].astype(int)
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()

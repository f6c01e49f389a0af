"""Demand signals for merchandising: which products are abandoned, at which prices, and how much of that
demand came back.

An abandoned item is a product added to a cart whose session ended without a purchase (one per cart
and product); it is **recovered** when the same customer bought that product within the recovery
window after the cart's last event, else **lost**. Its price is the price it was added at. This is the
cart-side demand a shop's inventory planning never sees: what people wanted and did not buy.
"""

from __future__ import annotations

import itertools

import ibis
import numpy as np
import pandas as pd
from ibis import _

from winback.measure.data import Filters, MeasureData

__all__ = ["abandoned_items", "by_price_band", "top_products"]

_DAY = 86_400.0


def abandoned_items(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """One row per abandoned cart and product of the period: ``product_id``, ``category``, ``price``,
    ``quantity``, ``recovered`` (cached)."""

    def make() -> pd.DataFrame:
        period = data.period(filters)
        columns = ["product_id", "category", "price", "quantity", "recovered"]
        if period is None:
            return pd.DataFrame(columns=columns)
        s = data.tables.sessioned
        # The carts (a table of the engine, computed once) know each cart's end and whether it was
        # bought: a session with an add is a cart, so no pass over every session is needed.
        carts = data.tables.carts_table
        abandoned = carts.filter(carts.abandoned).select(session_key="cart_id", ended="last_event_ts")
        added = s.filter((s.event_type == "add_to_cart") & s.product_id.notnull())
        added = added.filter((added.ts >= period.since.timestamp()) & (added.ts < period.until.timestamp()))
        items = (
            added.join(abandoned, "session_key")
            .group_by(["user_key", "session_key", "product_id"])
            .aggregate(
                category=_.category.arbitrary(),
                price=_.price.max(),
                quantity=ibis.coalesce(_.quantity, 1).sum(),
                ended=_.ended.max(),
            )
        )
        bought = s.filter(s.event_type == "purchase").select(
            bought_user="user_key", bought_product="product_id", bought_at="ts"
        )
        window = data.settings.recovery_window_days * _DAY
        hit = (
            items.join(
                bought,
                [
                    items.user_key == bought.bought_user,
                    items.product_id == bought.bought_product,
                    items.ended < bought.bought_at,
                    bought.bought_at <= items.ended + window,
                ],
            )
            .select("session_key", "product_id")
            .distinct()
        )
        hits = hit.select(hit_session="session_key", hit_product="product_id")
        marked = items.left_join(
            hits, [items.session_key == hits.hit_session, items.product_id == hits.hit_product]
        )
        out = marked.select(
            "product_id", "category", "price", "quantity", recovered=marked.hit_session.notnull()
        )
        return data.source.execute(out)

    return data._cached(("abandoned_items", filters.since, filters.until), make)


def top_products(data: MeasureData, filters: Filters, *, top: int = 15) -> pd.DataFrame:
    """The ``top`` most abandoned products: ``product_id``, ``category``, ``abandoned`` (carts),
    ``units``, ``price`` (median added price), ``recovered`` and ``lost`` carts, ``recovered_share``,
    ``lost_value`` (price x units of the lost ones)."""
    items = abandoned_items(data, filters)
    columns = [
        "product_id",
        "category",
        "abandoned",
        "units",
        "price",
        "recovered",
        "lost",
        "recovered_share",
        "lost_value",
    ]
    if items.empty:
        return pd.DataFrame(columns=columns)
    frame = items.assign(
        lost_value=np.where(items["recovered"], 0.0, items["price"].fillna(0.0) * items["quantity"]),
        recovered=items["recovered"].astype(int),
    )
    out = frame.groupby("product_id").agg(
        category=("category", "first"),
        abandoned=("recovered", "size"),
        units=("quantity", "sum"),
        price=("price", "median"),
        recovered=("recovered", "sum"),
        lost_value=("lost_value", "sum"),
    )
    out["lost"] = out["abandoned"] - out["recovered"]
    out["recovered_share"] = out["recovered"] / out["abandoned"]
    out = out.sort_values(["abandoned", "lost_value"], ascending=False).head(top)
    return out.reset_index()[columns]


def by_price_band(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Abandoned items by price band (bands at round prices): ``band``, ``abandoned``, ``recovered``,
    ``recovered_share``, ``lost_value``."""
    items = abandoned_items(data, filters)
    columns = ["band", "abandoned", "recovered", "recovered_share", "lost_value"]
    priced = items[items["price"].notna()] if not items.empty else items
    if priced.empty:
        return pd.DataFrame(columns=columns)
    edges = [0, 10, 25, 50, 100, 250, 500, 1000, np.inf]
    labels = [f"{a:g}-{b:g}" if np.isfinite(b) else f"{a:g}+" for a, b in itertools.pairwise(edges)]
    band = pd.cut(priced["price"], edges, labels=labels, right=False)
    frame = priced.assign(
        band=band,
        lost_value=np.where(priced["recovered"], 0.0, priced["price"] * priced["quantity"]),
        recovered=priced["recovered"].astype(int),
    )
    out = frame.groupby("band", observed=True).agg(
        abandoned=("recovered", "size"), recovered=("recovered", "sum"), lost_value=("lost_value", "sum")
    )
    out["recovered_share"] = out["recovered"] / out["abandoned"]
    return out.reset_index().astype({"band": str})[columns]

"""REES46 "eCommerce behavior data from multi category store" logs (Kaggle, tens of millions of rows).

``event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session``; event
types ``view``, ``cart``, ``remove_from_cart``, ``purchase``; times like ``2019-10-01 00:00:00 UTC``.
The category is the readable ``category_code`` where present, else the numeric ``category_id``; the
``brand`` column is the canonical brand (and, as before it was one, stays in ``properties`` too).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.tabular import Preset, prepare_table
from winback.events.store import PreparedInput

HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"

PRESET = Preset(
    columns={
        "timestamp": "event_time",
        "event_type": "event_type",
        "product_id": "product_id",
        "category": "category_code",
        "brand": "brand",
        "price": "price",
        "user_id": "user_id",
        "session_id": "user_session",
    },
    event_type_map={"cart": "add_to_cart"},
    fallbacks={"category": ("category_id",)},
)


class Rees46Adapter:
    name = "rees46"
    summary = "REES46 multi-category store logs (event_time,event_type,product_id,...,user_session)"

    def detect(self, head: FileHead) -> bool:
        return head.first_line.strip().lower().replace(" ", "") == HEADER

    def prepare(self, con: duckdb.DuckDBPyConnection, path: Path, options: AdapterOptions) -> PreparedInput:
        prepared = prepare_table(con, path, "csv", options, PRESET)
        prepared.format = self.name
        return prepared

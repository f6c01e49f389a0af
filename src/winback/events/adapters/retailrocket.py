"""RetailRocket e-commerce events (Kaggle, 2.7M events, 2015).

``timestamp,visitorid,event,itemid,transactionid``; timestamps in unix milliseconds; events ``view``,
``addtocart``, ``transaction`` (one row per purchased item, no price). There is no session id: the
store sessionises by the inactivity gap like any other source without one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb

from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.tabular import Preset, prepare_table
from winback.events.store import PreparedInput

HEADER = "timestamp,visitorid,event,itemid,transactionid"

PRESET = Preset(
    columns={
        "timestamp": "timestamp",
        "user_id": "visitorid",
        "event_type": "event",
        "product_id": "itemid",
        "order_id": "transactionid",
    },
    event_type_map={"addtocart": "add_to_cart", "transaction": "purchase"},
)


class RetailRocketAdapter:
    name = "retailrocket"
    summary = "RetailRocket events (timestamp,visitorid,event,itemid,transactionid)"

    def detect(self, head: FileHead) -> bool:
        return head.first_line.strip().lower().replace(" ", "") == HEADER

    def prepare(self, con: duckdb.DuckDBPyConnection, path: Path, options: AdapterOptions) -> PreparedInput:
        if options.timestamp_format == "auto":
            options = replace(options, timestamp_format="unix_ms")
        prepared = prepare_table(con, path, "csv", options, PRESET)
        prepared.format = self.name
        return prepared

"""The store and the tabular adapters on the real samples in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from winback.events import adapters
from winback.events.adapters import AdapterOptions
from winback.events.ingest import ingest_files
from winback.events.stats import event_stats
from winback.events.store import EventStore


def test_rees46_sample_is_detected_mapped_and_idempotent(store: EventStore, data_dir: Path) -> None:
    path = data_dir / "rees46_2019-Oct_first1000rows.csv"
    assert adapters.detect(path).name == "rees46"
    first = ingest_files(store, [path]).as_dict()
    assert (first["ingested"], first["duplicates"], first["rejected"]) == (1000, 0, 0)

    raw = pd.read_csv(path, dtype=str)
    by_type = dict(store.con.execute("SELECT event_type, count(*) FROM events GROUP BY 1").fetchall())
    expected = raw["event_type"].replace({"cart": "add_to_cart"}).value_counts().to_dict()
    assert by_type == expected

    row = store.con.execute(
        "SELECT user_id, session_id, product_id, category, price, currency, properties, timestamp, event_id "
        "FROM events WHERE product_id = '3900821'"
    ).fetchone()
    assert row is not None
    assert row[:6] == (
        "554748717",
        "9333dfbd-b87a-4708-9857-6336556b0fcc",
        "3900821",
        "appliances.environment.water_heater",
        33.20,
        "USD",
    )
    assert '"brand":"aqua"' in row[6]  # kept in properties, as before brand was a canonical field
    assert row[8] == "c300422d5e7e14bce083ead061af4c7a"  # the id this event had before brand existed
    brands = dict(store.con.execute("SELECT product_id, brand FROM events").fetchall())
    assert brands["3900821"] == "aqua"
    assert brands == raw.dropna(subset=["brand"]).set_index("product_id")["brand"].to_dict() | {
        p: None for p in raw.loc[raw["brand"].isna(), "product_id"]
    }
    assert row[7].isoformat() == "2019-10-01T00:00:00+00:00"
    # Rows without a category_code fall back to the numeric category_id.
    no_code = store.con.execute("SELECT category FROM events WHERE product_id = '44600062'").fetchone()
    assert no_code == ("2103807459595387724",)

    again = ingest_files(store, [path]).as_dict()
    assert (again["ingested"], again["duplicates"]) == (0, 1000)
    assert store.count() == 1000


def test_retailrocket_sample_gets_gap_sessions_like_an_independent_count(
    store: EventStore, data_dir: Path
) -> None:
    path = data_dir / "retailrocket_events_sample_1500visitors.csv"
    assert adapters.detect(path).name == "retailrocket"
    result = ingest_files(store, [path]).as_dict()
    # The sample holds one line twice (a double-logged view): stored once, reported as a duplicate.
    assert (result["ingested"], result["duplicates"], result["rejected"]) == (2770, 1, 0)

    raw = pd.read_csv(path).drop_duplicates()
    raw["ts"] = pd.to_datetime(raw["timestamp"], unit="ms", utc=True)
    raw = raw.sort_values(["visitorid", "ts"])
    new_session = raw.groupby("visitorid")["ts"].diff().isna() | (
        raw.groupby("visitorid")["ts"].diff() > pd.Timedelta(minutes=30)
    )
    stats = event_stats(store)
    assert stats["sessions"] == int(new_session.sum())
    assert stats["users"] == raw["visitorid"].nunique()
    names = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
    assert stats["by_type"] == raw["event"].map(names).value_counts().to_dict()
    first = store.con.execute("SELECT min(timestamp) FROM events").fetchone()
    assert first is not None
    assert first[0] == raw["ts"].min().to_pydatetime()
    purchases = store.con.execute("SELECT count(*) FROM events WHERE order_id IS NOT NULL").fetchone()
    assert purchases == (14,)


CDNOW_MAP = {
    "user_id": "customer_id",
    "timestamp": "date",
    "quantity": "number_of_cds",
    "value": "dollar_value",
}


def test_cdnow_master_through_the_generic_whitespace_adapter(store: EventStore, data_dir: Path) -> None:
    path = data_dir / "cdnow" / "CDNOW_master.txt"
    options = AdapterOptions(columns=dict(CDNOW_MAP), event_type="purchase", identical_rows_distinct=True)
    result = ingest_files(store, [path], options=options).as_dict()
    assert result["files"][0]["format"] == "whitespace"
    assert (result["ingested"], result["rejected"]) == (69_659, 0)

    raw = pd.read_csv(path, sep=r"\s+")
    stats = event_stats(store)
    assert stats["users"] == raw["customer_id"].nunique() == 23_570
    assert stats["revenue"] == round(raw["dollar_value"].sum(), 2)
    assert stats["first"] == "1997-01-01T00:00:00+00:00"
    assert stats["last"] == "1998-06-30T00:00:00+00:00"
    # Reloading stays idempotent even though identical rows of the file were kept as distinct purchases.
    again = ingest_files(store, [path], options=options).as_dict()
    assert (again["ingested"], again["duplicates"]) == (0, 69_659)


def test_cdnow_identical_rows_default_to_duplicates(store: EventStore, data_dir: Path) -> None:
    path = data_dir / "cdnow" / "CDNOW_master.txt"
    result = ingest_files(
        store, [path], options=AdapterOptions(columns=dict(CDNOW_MAP), event_type="purchase")
    ).as_dict()
    raw = pd.read_csv(path, sep=r"\s+")
    assert result["ingested"] == len(raw.drop_duplicates())
    assert result["duplicates"] == len(raw) - len(raw.drop_duplicates())


def test_cdnow_sample_without_header_maps_columns_by_position(store: EventStore, data_dir: Path) -> None:
    path = data_dir / "cdnow" / "CDNOW_sample.txt"
    options = AdapterOptions(
        columns={"user_id": "1", "timestamp": "3", "quantity": "4", "value": "5"},
        event_type="purchase",
        identical_rows_distinct=True,
    )
    result = ingest_files(store, [path], fmt="whitespace", options=options).as_dict()
    assert result["ingested"] == 6919
    stats = event_stats(store)
    assert stats["users"] == 2357
    extra = store.con.execute("SELECT properties FROM events LIMIT 1").fetchone()
    assert extra is not None
    assert '"column1"' in extra[0]  # the unmapped id column is kept

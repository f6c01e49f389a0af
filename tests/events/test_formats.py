"""Generic formats, mappings, timestamp forms, and the store's sessions and identities."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winback.events import adapters
from winback.events.adapters import AdapterOptions
from winback.events.ingest import ingest_files
from winback.events.stats import event_stats
from winback.events.store import EventStore


def stored(store: EventStore, cols: str = "user_id, event_type, timestamp") -> list[tuple]:
    return store.con.execute(f"SELECT {cols} FROM events ORDER BY timestamp, user_id").fetchall()


def test_csv_without_header_with_positions_and_event_name_mapping(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "1709287200,v1,pv,i1\n1709287260,v1,cart,i1\n1709287320,v1,buy,i1\n1709287380,v2,hover,i2\n"
    )
    options = AdapterOptions(
        columns={"timestamp": "1", "user_id": "2", "event_type": "3", "product_id": "4"},
        event_type_map={"pv": "view", "cart": "add_to_cart", "buy": "purchase", "hover": "ignore"},
    )
    report = ingest_files(store, [path], options=options).as_dict()
    assert (report["ingested"], report["ignored"], report["rejected"]) == (3, 1, 0)
    assert [r[1] for r in stored(store)] == ["view", "add_to_cart", "purchase"]
    assert stored(store)[0][2] == datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def test_tsv_with_named_mapping_and_a_constant_event_type(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "orders.tsv"
    path.write_text("client\twhen\tamount\n42\t20240301\t19.90\n43\t20240302\t5\n")
    options = AdapterOptions(
        columns={"user_id": "client", "timestamp": "when", "value": "amount"}, event_type="purchase"
    )
    assert adapters.detect(path).name == "tsv"
    ingest_files(store, [path], options=options)
    assert stored(store, "user_id, event_type, timestamp, value") == [
        ("42", "purchase", datetime(2024, 3, 1, tzinfo=UTC), 19.90),
        ("43", "purchase", datetime(2024, 3, 2, tzinfo=UTC), 5.0),
    ]
    assert event_stats(store)["revenue"] == 24.90


def test_parquet_with_typed_columns(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    table = pa.table(
        {
            "ts": pa.array([datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 11, tzinfo=UTC)]),
            "user": ["a", "b"],
            "event": ["view", "purchase"],
            "price": [1.5, 2.0],
            "quantity": [None, 3],
            "colour": ["red", "blue"],
        }
    )
    pq.write_table(table, path)
    ingest_files(store, [path], options=AdapterOptions(columns={"timestamp": "ts", "user_id": "user"}))
    rows = stored(store, "user_id, price, quantity, properties")
    assert rows == [("a", 1.5, None, '{"colour":"red"}'), ("b", 2.0, 3, '{"colour":"blue"}')]


def test_bad_parquet_rows_are_named_by_row_number(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "timestamp": ["2024-01-01", "2024-01-02"],
                "user_id": ["a", "b"],
                "event_type": ["view", "view"],
                "price": [1.0, -1.0],
            }
        ),
        path,
    )
    with pytest.raises(Exception, match=r"events.parquet, row 2: price"):
        ingest_files(store, [path])


def test_generic_json_lines_with_dotted_paths(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"t": "2024-03-01T10:00:00+02:00", "who": {"id": 7}, "kind": "addtocart", "sku": "s1", "extra": 1}\n'
        "\n"
        '{"t": "2024-03-01T10:01:00+02:00", "who": {"id": 7}, "kind": "view", "sku": "s2"}\n'
    )
    options = AdapterOptions(
        columns={"timestamp": "t", "user_id": "who.id", "event_type": "kind", "product_id": "sku"}
    )
    assert adapters.detect(path).name == "jsonl"
    ingest_files(store, [path], options=options)
    rows = stored(store, "user_id, event_type, timestamp, product_id, properties")
    assert rows[0] == ("7", "add_to_cart", datetime(2024, 3, 1, 8, tzinfo=UTC), "s1", '{"extra":1}')
    assert rows[1][4] is None


def test_malformed_json_line_is_named(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u", "event_type": "view"}\n{not json\n'
    )
    with pytest.raises(Exception, match=r"events.jsonl, line 2: \(line\): found '\{not json"):
        ingest_files(store, [path])
    assert store.count() == 0


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("2024-03-01T10:00:00Z", "auto", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01 12:00:00+02:00", "auto", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2019-10-01 10:00:00 UTC", "auto", datetime(2019, 10, 1, 10, tzinfo=UTC)),
        ("20240301", "auto", datetime(2024, 3, 1, tzinfo=UTC)),
        ("1709287200", "auto", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("1709287200500", "auto", datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("1709287200", "unix_s", datetime(2024, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(store: EventStore, tmp_path: Path, text: str, fmt: str, expected: datetime) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"timestamp,user_id,event_type\n{text},u,view\n")
    ingest_files(store, [path], options=AdapterOptions(timestamp_format=fmt))
    assert stored(store)[0][2] == expected


def test_naive_times_are_read_in_the_given_time_zone(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("timestamp,user_id,event_type\n2024-07-01 12:00:00,u,view\n")
    ingest_files(store, [path], options=AdapterOptions(timezone="Europe/Berlin"))
    assert stored(store)[0][2] == datetime(2024, 7, 1, 10, tzinfo=UTC)
    assert store.con.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)


def test_sessions_identities_and_message_events(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "timestamp,user_id,anonymous_id,event_type,product_id,session_id\n"
        "2024-03-01T10:00:00Z,,a1,view,p1,\n"  # anonymous, later identified as u1
        "2024-03-01T10:20:00Z,u1,a1,add_to_cart,p1,\n"  # 20 min later: same session
        "2024-03-01T10:40:00Z,u1,,message_sent,,\n"  # winback's own event: in no session
        "2024-03-01T11:10:00Z,u1,,view,p2,\n"  # 50 min after the last behaviour: new session
        "2024-03-01T11:15:00Z,u2,,view,p3,S9\n"  # the source's session id is kept
        "2024-03-01T13:15:00Z,u2,,purchase,p3,S9\n"
    )
    ingest_files(store, [path])
    rows = store.con.execute(
        "SELECT user_key, event_type, session_key FROM event_sessions ORDER BY timestamp"
    ).fetchall()
    assert [r[0] for r in rows] == ["u1", "u1", "u1", "u1", "u2", "u2"]
    assert rows[0][2] == rows[1][2] == "u1#1"
    assert rows[2][2] is None
    assert rows[3][2] == "u1#2"
    assert rows[4][2] == rows[5][2] == "S9"
    stats = event_stats(store)
    assert (stats["users"], stats["sessions"], stats["carts"], stats["abandoned_carts"]) == (2, 3, 1, 1)
    assert set(stats) >= {
        "events",
        "users",
        "sessions",
        "carts",
        "purchases",
        "revenue",
        "by_type",
        "by_day",
        "first",
        "last",
    }


def test_unknown_format_and_missing_file(store: EventStore, tmp_path: Path) -> None:
    odd = tmp_path / "events.xyz"
    odd.write_text("hello\n")
    with pytest.raises(Exception, match="cannot tell its format"):
        ingest_files(store, [odd])
    with pytest.raises(Exception, match="no such file"):
        ingest_files(store, [tmp_path / "missing.csv"])
    with pytest.raises(Exception, match="--format nope: unknown"):
        ingest_files(store, [odd], fmt="nope")


def test_derived_identity_is_the_same_whatever_the_format(store: EventStore, tmp_path: Path) -> None:
    """The same events as a narrow CSV, a typed Parquet file and JSON Lines are stored once."""
    csv = tmp_path / "e.csv"
    csv.write_text(
        "timestamp,user_id,event_type,product_id,price\n"
        "2024-03-01T10:00:00Z,u1,view,p1,3.50\n"
        "2024-03-01T10:01:00Z,u1,purchase,p1,3.5\n"
    )
    times = [datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 10, 1, tzinfo=UTC)]
    columns = {
        "timestamp": pa.array(times),
        "user_id": ["u1", "u1"],
        "event_type": ["view", "purchase"],
        "product_id": ["p1", "p1"],
        "price": [3.5, 3.5],
        "session_id": pa.array([None, None], pa.string()),
    }
    parquet = tmp_path / "e.parquet"
    pq.write_table(pa.table(columns), parquet)
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(
        '{"timestamp": "2024-03-01T11:00:00+01:00", "user_id": "u1", "event_type": "view", '
        '"product_id": "p1", "price": 3.5}\n'
    )
    assert ingest_files(store, [csv]).as_dict()["ingested"] == 2
    again = ingest_files(store, [parquet, jsonl]).as_dict()
    assert (again["ingested"], again["duplicates"]) == (0, 3)


def test_append_an_arrow_table_of_canonical_events(store: EventStore) -> None:
    from winback.sim import simulate

    events = simulate(customers=200, days=20, seed=4).events
    first = store.append(events, "simulator").as_dict()
    assert (first["ingested"], first["rejected"]) == (events.num_rows, 0)
    assert store.append(events, "simulator").as_dict()["duplicates"] == events.num_rows
    broken = events.drop_columns(["timestamp"])
    with pytest.raises(Exception, match=r"simulator: missing columns \['timestamp'\]"):
        store.append(broken, "simulator")


def test_empty_files_load_nothing(store: EventStore, tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("timestamp,user_id,event_type\n")
    empty_json = tmp_path / "empty.jsonl"
    empty_json.write_text("")
    report = ingest_files(store, [header_only, empty_json]).as_dict()
    assert [(f["format"], f["ingested"], f["rejected"]) for f in report["files"]] == [
        ("csv", 0, 0),
        ("jsonl", 0, 0),
    ]
    assert store.count() == 0


def test_an_unknown_timestamp_format_is_refused(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("timestamp,user_id,event_type\n2024-01-01,u,view\n")
    with pytest.raises(Exception, match="--timestamp-format epoch: expected one of auto, iso"):
        ingest_files(store, [path], options=AdapterOptions(timestamp_format="epoch"))

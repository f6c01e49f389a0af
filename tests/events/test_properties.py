"""A source's own ``properties`` (a Parquet STRUCT or MAP, JSON text in a CSV, an object in JSON Lines)
are the event's properties, with the source's other unmapped columns merged under them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winback.errors import BadInputError
from winback.events.adapters import AdapterOptions
from winback.events.ingest import ingest_files
from winback.events.store import EventStore

HEADER = "timestamp,user_id,event_type,product_id"


def properties(store: EventStore) -> dict[str, object]:
    """user id -> parsed properties (None when the event has none)."""
    rows = store.con.execute("SELECT user_id, properties FROM events").fetchall()
    return {user: json.loads(text) if text is not None else None for user, text in rows}


def test_a_parquet_struct_column_is_the_properties_and_other_columns_merge_under_it(
    store: EventStore, tmp_path: Path
) -> None:
    shape = pa.struct([("color", pa.string()), ("size", pa.int64()), ("channel", pa.string())])
    table = pa.table(
        {
            "timestamp": ["2024-03-01T10:00:00Z", "2024-03-01T10:01:00Z", "2024-03-01T10:02:00Z"],
            "user_id": ["u1", "u2", "u3"],
            "event_type": ["view", "view", "view"],
            "properties": pa.array(
                [{"color": "red", "size": 3, "channel": "email"}, None, {"color": None}], shape
            ),
            "channel": ["web", "app", None],  # not a canonical field: merged in, the column's value loses
        }
    )
    path = tmp_path / "e.parquet"
    pq.write_table(table, path)
    assert ingest_files(store, [path]).as_dict()["ingested"] == 3
    assert properties(store) == {
        "u1": {"channel": "email", "color": "red", "size": 3},
        "u2": {"channel": "app"},  # no properties: the other columns alone
        "u3": {"channel": None, "color": None, "size": None},  # nulls are kept, not dropped
    }
    assert ingest_files(store, [path]).as_dict()["duplicates"] == 3


def test_a_parquet_map_column_is_the_properties(store: EventStore, tmp_path: Path) -> None:
    table = pa.table(
        {
            "timestamp": ["2024-03-01T10:00:00Z", "2024-03-01T10:01:00Z"],
            "user_id": ["u1", "u2"],
            "event_type": ["view", "view"],
            "properties": pa.array([[("b", "2"), ("a", "1")], None], pa.map_(pa.string(), pa.string())),
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    ingest_files(store, [path])
    assert properties(store) == {"u1": {"a": "1", "b": "2"}, "u2": None}  # nothing at all: NULL
    text = store.con.execute("SELECT properties FROM events WHERE user_id = 'u1'").fetchone()
    assert text == ('{"a":"1","b":"2"}',)  # keys sorted, so key order does not change an identity


def test_csv_json_text_properties_and_the_same_from_json_lines_are_one_event(
    store: EventStore, tmp_path: Path
) -> None:
    csv = tmp_path / "e.csv"
    csv.write_text(
        f"{HEADER},properties\n"
        '2024-03-01T10:00:00Z,u1,view,p1,"{ ""size"": 3, ""color"": ""red"" }"\n'
        "2024-03-01T10:01:00Z,u2,view,p2,\n"
    )
    assert ingest_files(store, [csv]).as_dict()["ingested"] == 2
    rows = store.con.execute("SELECT user_id, properties FROM events ORDER BY user_id").fetchall()
    assert rows == [("u1", '{"color":"red","size":3}'), ("u2", None)]
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(
        '{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u1", "event_type": "view", '
        '"product_id": "p1", "properties": {"color": "red", "size": 3}}\n'
    )
    assert ingest_files(store, [jsonl]).as_dict()["duplicates"] == 1


@pytest.mark.parametrize(
    ("bad", "shown"),
    [('"{color: red}"', "{color: red}"), ('"[1, 2]"', "[1, 2]"), ("42", "42"), ('"{""a"":1,""a"":2}"', "")],
)
def test_properties_text_that_is_not_one_json_object_is_a_bad_row(
    store: EventStore, tmp_path: Path, bad: str, shown: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        f'{HEADER},properties\n2024-03-01T10:00:00Z,u1,view,p1,"{{}}"\n2024-03-01T10:01:00Z,u2,view,p2,{bad}\n'
    )
    with pytest.raises(BadInputError) as raised:
        ingest_files(store, [path])
    (detail,) = raised.value.problems
    assert detail.startswith(f"{path}, line 3: properties: found ")
    assert shown in detail
    assert "expected a JSON object" in detail
    assert store.count() == 0  # nothing stored, not even the good row


def test_bad_properties_in_parquet_are_named_by_row_and_mapped_column(
    store: EventStore, tmp_path: Path
) -> None:
    table = pa.table(
        {
            "timestamp": ["2024-03-01T10:00:00Z", "2024-03-01T10:01:00Z"],
            "user_id": ["u1", "u2"],
            "event_type": ["view", "view"],
            "attrs": ['{"ok": true}', "not json"],
        }
    )
    path = tmp_path / "e.parquet"
    pq.write_table(table, path)
    with pytest.raises(BadInputError) as raised:
        ingest_files(store, [path], options=AdapterOptions(columns={"properties": "attrs"}))
    assert raised.value.problems == [
        f"{path}, row 2: properties (attrs): found 'not json', expected a JSON object such as "
        '{"color": "red"} (each key once), or nothing'
    ]
    assert store.count() == 0


def test_json_lines_properties_object_or_text_with_other_keys_merged(
    store: EventStore, tmp_path: Path
) -> None:
    path = tmp_path / "e.jsonl"
    base = '"event_type": "view", "timestamp": "2024-03-01T10:00:00Z"'
    path.write_text(
        f'{{{base}, "user_id": "u1", "properties": {{"color": "red", "page": "home"}}, "page": "cart"}}\n'
        f'{{{base}, "user_id": "u2", "properties": "{{\\"color\\": \\"blue\\"}}"}}\n'
        f'{{{base}, "user_id": "u3", "properties": null, "page": "home"}}\n'
        f'{{{base}, "user_id": "u4", "properties": {{}}}}\n'
    )
    assert ingest_files(store, [path]).as_dict()["ingested"] == 4
    assert properties(store) == {
        "u1": {"color": "red", "page": "home"},  # the properties' own value wins
        "u2": {"color": "blue"},  # JSON text, as an export of the events view holds it
        "u3": {"page": "home"},
        "u4": None,
    }


def test_json_lines_properties_that_are_not_an_object_are_bad_rows(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    base = '"event_type": "view", "timestamp": "2024-03-01T10:00:00Z", "user_id": "u1"'
    path.write_text(
        f'{{{base}, "properties": {{"a": 1}}}}\n'
        f'{{{base}, "properties": "oops"}}\n'
        f'{{{base}, "properties": [1]}}\n'
    )
    with pytest.raises(BadInputError) as raised:
        ingest_files(store, [path])
    expected = 'expected a JSON object such as {"color": "red"}, or nothing'
    assert raised.value.problems == [
        f"{path}, line 2: /properties: found 'oops', {expected}",
        f"{path}, line 3: /properties: found '[1]', {expected}",
    ]
    assert store.count() == 0


def test_files_without_a_properties_column_keep_the_ids_they_had(store: EventStore, tmp_path: Path) -> None:
    """Ids and properties as the version before properties columns were read stored them."""
    csv = tmp_path / "legacy.csv"
    csv.write_text(f"{HEADER},channel,coupon\n2024-03-01T10:00:00Z,u1,view,p1,web,\n")
    jsonl = tmp_path / "legacy.jsonl"
    jsonl.write_text(
        '{"timestamp":"2024-03-01T10:00:00Z","user_id":"u1","event_type":"view","product_id":"p1",'
        '"channel":"web","page":{"url":"/p1"}}\n'
    )
    ingest_files(store, [csv, jsonl])
    rows = store.con.execute("SELECT event_id, properties FROM events ORDER BY batch_id").fetchall()
    assert rows == [
        ("74dfe0a2cfc64213a1461712fae3c1ec", '{"channel":"web","coupon":null}'),
        ("ab30850a2a8d094c28d5b932e4bc0749", '{"channel":"web","page":{"url":"/p1"}}'),
    ]

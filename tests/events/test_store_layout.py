"""How the store keeps events: one table per layout behind ``event_log``, and stores of schema version 1."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from winback.config import Settings
from winback.errors import BadInputError, WinbackError
from winback.events.ingest import ingest_files
from winback.events.store import SCHEMA_VERSION, EventStore

NARROW = (
    "timestamp,user_id,event_type,product_id\n"
    "2024-03-01T10:00:00Z,u1,view,p1\n"
    "2024-03-01T10:05:00Z,u2,view,p2\n"
)
WIDE = (
    "timestamp,user_id,event_type,product_id,session_id,price\n"
    "2024-03-01T10:00:00Z,u1,view,p1,,\n"  # the narrow file's first event: same content, other layout
    "2024-03-01T11:00:00Z,u3,purchase,p3,s9,2.5\n"
)

V1_DDL = """
CREATE TABLE event_log (event_key UHUGEINT NOT NULL, event_id VARCHAR, event_type VARCHAR NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, user_id VARCHAR, anonymous_id VARCHAR, session_id VARCHAR,
    product_id VARCHAR, category VARCHAR, price DOUBLE, quantity INTEGER, order_id VARCHAR, value DOUBLE,
    currency VARCHAR, properties JSON, batch_id INTEGER NOT NULL);
CREATE TABLE ingest_batches (batch_id INTEGER PRIMARY KEY, source VARCHAR NOT NULL, format VARCHAR NOT NULL,
    loaded_at TIMESTAMPTZ NOT NULL, ingested BIGINT NOT NULL, duplicates BIGINT NOT NULL,
    rejected BIGINT NOT NULL, ignored BIGINT NOT NULL, rejects_path VARCHAR);
CREATE TABLE store_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE VIEW events AS SELECT lower(lpad(hex(event_key), 32, '0')) AS event_id, * EXCLUDE (event_key, event_id)
    FROM event_log;
INSERT INTO store_meta VALUES ('schema_version', '1');
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def layout_columns(store: EventStore) -> dict[str, list[str]]:
    rows = store.con.execute(
        "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
        "WHERE starts_with(table_name, 'event_rows_') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {name: cols for name, cols in rows}


def test_a_narrow_file_writes_only_its_columns(store: EventStore, tmp_path: Path) -> None:
    ingest_files(store, [write(tmp_path / "n.csv", NARROW)])
    assert list(layout_columns(store).values()) == [
        ["event_key", "event_type", "timestamp", "user_id", "product_id", "batch_id"]
    ]
    row = store.con.execute("SELECT session_id, price, currency FROM events WHERE user_id = 'u2'").fetchone()
    assert row == (None, None, "USD")


def test_the_oldest_copy_wins_across_layouts(store: EventStore, tmp_path: Path) -> None:
    narrow, wide = write(tmp_path / "n.csv", NARROW), write(tmp_path / "w.csv", WIDE)
    assert ingest_files(store, [narrow]).as_dict()["ingested"] == 2
    report = ingest_files(store, [wide]).as_dict()
    assert (report["ingested"], report["duplicates"]) == (1, 1)
    assert len(layout_columns(store)) == 2
    rows = store.con.execute("SELECT user_id, batch_id, session_id FROM events ORDER BY user_id").fetchall()
    assert rows == [("u1", 1, None), ("u2", 1, None), ("u3", 2, "s9")]


def test_in_one_load_the_first_file_wins_across_layouts(store: EventStore, tmp_path: Path) -> None:
    narrow, wide = write(tmp_path / "n.csv", NARROW), write(tmp_path / "w.csv", WIDE)
    report = ingest_files(store, [wide, narrow]).as_dict()
    assert [(f["ingested"], f["duplicates"]) for f in report["files"]] == [(2, 0), (1, 1)]
    rows = store.con.execute("SELECT user_id, batch_id, session_id FROM events ORDER BY user_id").fetchall()
    assert rows == [("u1", 1, None), ("u2", 2, None), ("u3", 1, "s9")]
    assert ingest_files(store, [narrow, wide]).as_dict()["duplicates"] == 4


def test_a_bad_row_in_a_later_file_stores_nothing_of_the_load(store: EventStore, tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", NARROW)
    bad = write(tmp_path / "bad.csv", NARROW.replace("u2,view", "u2,teleport"))
    with pytest.raises(BadInputError) as info:
        ingest_files(store, [good, bad])
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{bad}, line 3: event_type: found 'teleport'")
    assert store.count() == 0
    assert store.batches() == []


def test_a_version_1_store_is_migrated_in_place_with_the_same_keys(
    settings: Settings, tmp_path: Path
) -> None:
    narrow = write(tmp_path / "n.csv", NARROW)
    with EventStore(settings) as fresh:  # the keys version 2 gives these events
        ingest_files(fresh, [narrow])
        expected = fresh.con.execute("SELECT * FROM event_log ORDER BY user_id").fetchall()
    old_home = tmp_path / "old"
    old_home.mkdir()
    con = duckdb.connect(str(old_home / "events.duckdb"))
    con.execute(V1_DDL)
    con.execute(f"ATTACH '{settings.store_path}' AS v2 (READ_ONLY)")
    con.execute("INSERT INTO event_log SELECT * EXCLUDE (brand) FROM v2.event_log")  # v1 had no brand
    con.execute("INSERT INTO ingest_batches SELECT * FROM v2.ingest_batches")
    con.close()

    old = settings.model_copy(update={"home": old_home})
    with EventStore(old, read_only=True) as store:  # reading needs no migration
        assert store.count() == 2
    with EventStore(old) as store:
        assert store.con.execute("SELECT value FROM store_meta").fetchall() == [(SCHEMA_VERSION,)]
        assert store.con.execute("SELECT * FROM event_log ORDER BY user_id").fetchall() == expected
        report = ingest_files(store, [narrow, write(tmp_path / "w.csv", WIDE)]).as_dict()
        assert (report["ingested"], report["duplicates"]) == (1, 3)
        assert store.con.execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_a_store_from_a_newer_winback_is_refused(settings: Settings) -> None:
    with EventStore(settings):
        pass
    con = duckdb.connect(str(settings.store_path))
    con.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(WinbackError, match="schema version 99, newer than this winback understands"):
        EventStore(settings)


def test_the_default_currency_of_a_load_stays_with_its_events(settings: Settings, tmp_path: Path) -> None:
    with EventStore(settings) as store:
        ingest_files(store, [write(tmp_path / "a.csv", NARROW)])
    later = settings.model_copy(update={"default_currency": "EUR"})
    with EventStore(later) as store:
        ingest_files(store, [write(tmp_path / "b.csv", NARROW.replace("2024-03-01", "2024-03-02"))])
        assert sorted(layout_columns(store)) == ["event_rows_0012_eur", "event_rows_0012_usd"]
        rows = store.con.execute("SELECT batch_id, currency, count(*) FROM events GROUP BY ALL ORDER BY 1")
        assert rows.fetchall() == [(1, "USD", 2), (2, "EUR", 2)]


def column_types(store: EventStore) -> dict[str, str]:
    rows = store.con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE starts_with(table_name, 'event_rows_') "
        "AND column_name IN ('user_id', 'product_id', 'order_id')"
    ).fetchall()
    return dict(rows)


def test_integer_ids_are_stored_as_integers_and_read_as_text(store: EventStore, tmp_path: Path) -> None:
    ints = write(tmp_path / "ints.csv", "timestamp,user_id,event_type,product_id\n1709287200,17,view,-5\n")
    ingest_files(store, [ints])
    assert column_types(store) == {"user_id": "BIGINT", "product_id": "BIGINT"}
    assert store.con.execute("SELECT user_id, product_id FROM events").fetchall() == [("17", "-5")]
    same = write(
        tmp_path / "same.jsonl",
        '{"timestamp": 1709287200, "user_id": "17", "event_type": "view", "product_id": "-5"}\n',
    )
    assert ingest_files(store, [same]).as_dict()["duplicates"] == 1  # the same key as from text


def test_an_id_that_is_not_an_integer_text_after_the_sample_keeps_the_column_text(
    store: EventStore, tmp_path: Path
) -> None:
    rows = [f"{1709287200 + i},{i},view,{i % 50}" for i in range(5000)]
    rows[4321] = "1709291521,0042,view,7"  # not the canonical text of 42: stored as written
    path = write(tmp_path / "late.csv", "timestamp,user_id,event_type,product_id\n" + "\n".join(rows) + "\n")
    report = ingest_files(store, [path]).as_dict()
    assert (report["ingested"], report["rejected"]) == (5000, 0)
    assert column_types(store) == {"user_id": "VARCHAR", "product_id": "VARCHAR"}
    assert store.con.execute("SELECT count(*) FROM events WHERE user_id = '0042'").fetchone() == (1,)
    assert store.con.execute("SELECT count(*) FROM events WHERE user_id = '4321'").fetchone() == (0,)


def test_a_brand_column_is_the_brand_and_stays_among_the_properties(
    store: EventStore, tmp_path: Path
) -> None:
    """``brand`` became a canonical field after files with a brand column had been loaded (into their
    properties, which are part of an event's identity): they keep it there, so their events keep the
    identity they had and a reload still adds nothing."""
    branded = write(tmp_path / "b.csv", "timestamp,user_id,event_type,product_id,brand\n"
                    "2024-03-01T10:00:00Z,u1,view,p1,Acme\n2024-03-01T10:05:00Z,u2,view,p2,\n")  # fmt: skip
    assert ingest_files(store, [branded]).as_dict()["ingested"] == 2
    (columns,) = layout_columns(store).values()
    assert "brand" in columns
    rows = store.con.execute("SELECT user_id, brand, properties FROM events ORDER BY user_id").fetchall()
    assert rows == [("u1", "Acme", '{"brand":"Acme"}'), ("u2", None, '{"brand":null}')]
    assert ingest_files(store, [branded]).as_dict()["duplicates"] == 2

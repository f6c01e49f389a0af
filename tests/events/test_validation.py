"""Bad input: every kind of bad row is named with file, line, field, found and expected; nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from winback.config import load_settings
from winback.errors import BadInputError
from winback.events.adapters import AdapterOptions
from winback.events.ingest import ingest_files
from winback.events.store import EventStore

GOOD = "2024-03-01T10:00:00Z,u1,view,p1,3.50\n"


def write(tmp_path: Path, body: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text("timestamp,user_id,event_type,product_id,price\n" + body)
    return path


@pytest.mark.parametrize(
    ("row", "field", "found", "expected"),
    [
        ("2024-03-01T10:00:00Z,u1,view,p1,-2", "price", "'-2'", "non-negative"),
        ("2024-03-01T10:00:00Z,u1,view,p1,abc", "price", "'abc'", "a number"),
        ("2099-01-01T00:00:00Z,u1,view,p1,1", "timestamp", "2099-01-01", "no later than 24 h from now"),
        ("1971-01-01T00:00:00Z,u1,view,p1,1", "timestamp", "1971-01-01", "after 1990-01-01"),
        ("yesterday,u1,view,p1,1", "timestamp", "'yesterday'", "ISO 8601"),
        ("2024-03-01T10:00:00Z,,purchase,p1,1", "user_id", "(missing)", "user_id or an anonymous_id"),
        ("2024-03-01T10:00:00Z,u1,wishlist,p1,1", "event_type", "'wishlist'", "--event-types"),
        ("2024-03-01T10:00:00Z,u1,add_to_cart,,1", "product_id", "(missing)", "product_id on cart events"),
    ],
)
def test_bad_row_is_named_and_nothing_is_stored(
    store: EventStore, tmp_path: Path, row: str, field: str, found: str, expected: str
) -> None:
    path = write(tmp_path, GOOD + row + "\n" + GOOD.replace("u1", "u2"))
    with pytest.raises(BadInputError) as info:
        ingest_files(store, [path])
    message = str(info.value)
    assert f"{path}, line 3: {field}" in message
    assert found in message
    assert expected in message
    assert "nothing was stored" in message
    assert store.count() == 0


def test_every_bad_row_is_listed_up_to_the_limit(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", error_limit=5)
    path = write(tmp_path, "".join(f"2024-03-01T10:00:{i:02d}Z,u{i},view,p1,-1\n" for i in range(12)))
    with EventStore(settings) as store, pytest.raises(BadInputError) as info:
        ingest_files(store, [path])
    assert "has 12 bad rows" in str(info.value)
    assert len(info.value.problems) == 5
    assert info.value.problems[0].startswith(f"{path}, line 2: price")


def test_one_bad_file_keeps_the_whole_command_out(store: EventStore, tmp_path: Path) -> None:
    good = write(tmp_path, GOOD, "good.csv")
    bad = write(tmp_path, "2024-03-01T10:00:00Z,u1,view,p1,-5\n", "bad.csv")
    with pytest.raises(BadInputError, match=r"bad\.csv has 1 bad rows"):
        ingest_files(store, [good, bad])
    assert store.count() == 0
    assert store.batches() == []


def test_skip_bad_rows_stores_the_good_and_writes_the_bad_with_reasons(
    store: EventStore, tmp_path: Path
) -> None:
    path = write(tmp_path, GOOD + "2024-03-01T10:00:00Z,,purchase,p1,-1\n" + GOOD.replace("u1", "u3"))
    report = ingest_files(store, [path], skip_bad_rows=True, rejects_dir=tmp_path / "rejects").as_dict()
    assert (report["ingested"], report["rejected"]) == (2, 1)
    rejects = Path(report["files"][0]["rejects_path"])
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["line"] == 3
    assert lines[0]["record"] == {
        "timestamp": "2024-03-01T10:00:00Z",
        "user_id": None,
        "event_type": "purchase",
        "product_id": "p1",
        "price": "-1",
    }
    assert any(e.startswith("user_id") for e in lines[0]["errors"])
    assert any(e.startswith("price") for e in lines[0]["errors"])
    assert store.count() == 2


def test_duplicates_within_a_file_and_across_files(store: EventStore, tmp_path: Path) -> None:
    a = write(tmp_path, GOOD + GOOD + "2024-03-01T10:05:00Z,u1,view,p2,1\n", "a.csv")
    b = write(tmp_path, GOOD + "2024-03-01T10:06:00Z,u1,view,p3,1\n", "b.csv")
    report = ingest_files(store, [a, b]).as_dict()
    assert [(f["ingested"], f["duplicates"]) for f in report["files"]] == [(2, 1), (1, 1)]
    assert store.count() == 3


def test_given_event_ids_are_the_identity(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text(
        "event_id,timestamp,user_id,event_type\n"
        "e1,2024-03-01T10:00:00Z,u1,view\n"
        "e1,2024-03-01T10:09:00Z,u1,view\n"  # same id re-sent later: the first copy wins
        "e2,2024-03-01T10:00:00Z,u1,view\n"
    )
    report = ingest_files(store, [path]).as_dict()
    assert (report["ingested"], report["duplicates"]) == (2, 1)
    rows = store.con.execute("SELECT event_id, timestamp FROM events ORDER BY event_id").fetchall()
    assert [r[0] for r in rows] == ["e1", "e2"]
    assert rows[0][1].minute == 0


def test_mapping_errors_name_the_option_and_the_columns(store: EventStore, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(BadInputError, match=r"--map user_id=visitor: no such column; the file has timestamp"):
        ingest_files(store, [path], options=AdapterOptions(columns={"user_id": "visitor"}))
    with pytest.raises(BadInputError, match="'shopper' is not a canonical field"):
        ingest_files(store, [path], options=AdapterOptions(columns={"shopper": "user_id"}))
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("when,user_id,event_type\n2024-01-01,u1,view\n")
    with pytest.raises(BadInputError, match="no timestamp column among when, user_id, event_type"):
        ingest_files(store, [no_time])

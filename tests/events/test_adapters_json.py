"""Segment, GA4 and Shopify JSON Lines adapters: detection, mapping, idempotent reloads, errors, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from winback.errors import BadInputError
from winback.events import adapters
from winback.events.adapters import AdapterOptions
from winback.events.adapters.ga4 import GA4, micros_to_iso
from winback.events.adapters.segment import SEGMENT
from winback.events.adapters.shopify import SHOPIFY
from winback.events.ingest import ingest_files
from winback.events.store import EventStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = {
    "segment": FIXTURES / "segment" / "events.jsonl",
    "ga4": FIXTURES / "ga4" / "events.jsonl",
    "shopify": FIXTURES / "shopify" / "webhooks.jsonl",
}
BAD = {fmt: FIXTURES / fmt / "bad.jsonl" for fmt in GOOD}
ROWS = {"segment": 18, "ga4": 14, "shopify": 9}  # canonical rows of each good file
FORMATS = list(GOOD)

#: What the bad files must say: line number and JSON pointer of each problem (the file name is checked too).
BAD_MESSAGES = {
    "segment": [
        "line 2: /properties/products: found 'G-32, G-41', expected an array of product objects",
        'line 3: (line): found \'{"type": "track"',
        "line 4: price (/properties/products/1/price): found '-5', expected a non-negative amount",
        "line 5: user_id (/userId): found '(missing)', expected a user_id or an anonymous_id",
    ],
    "ga4": [
        "line 2: /items: found 'SKU_20001', expected an array of item objects",
        'line 3: (line): found \'{"event_date"',
        "line 4: price (/items/1/price): found '-4.5', expected a non-negative amount",
        "line 5: user_id (/user_id): found '(missing)'",
        "line 6: timestamp (/event_timestamp): found 'yesterday'",
    ],
    "shopify": [
        "line 2: /line_items: found 'SOCK-01 x1', expected an array of line item objects",
        'line 3: (line): found \'{"topic": "orders/create"',
        "line 4: price (/line_items/1/price): found '-5.00', expected a non-negative amount",
        "line 5: user_id (/customer/id): found '(missing)'",
        "line 6: (line): found 'an object with keys id, email",
    ],
}
#: (good rows, bad rows) of each bad file with --skip-bad-rows.
# (stored, rejected) with --skip-bad-rows: a record is kept whole, so the valid line item of an order
# whose other item is bad is rejected with it.
BAD_SPLIT = {"segment": (2, 5), "ga4": (2, 6), "shopify": (2, 6)}

COLUMNS = (
    "event_id, event_type, timestamp, user_id, anonymous_id, session_id, product_id, category, brand, "
    "price, quantity, order_id, value, currency, properties"
)


def events(store: EventStore, where: str = "true") -> list[dict[str, Any]]:
    cur = store.con.execute(f"SELECT {COLUMNS} FROM events WHERE {where} ORDER BY timestamp, event_id")
    names = [d[0] for d in cur.description or []]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for row in rows:
        row["properties"] = json.loads(row["properties"]) if row["properties"] else {}
    return rows


def pick(row: dict[str, Any], fields: str) -> tuple[Any, ...]:
    """The values of the space-separated ``fields`` of ``row``."""
    return tuple(row[f] for f in fields.split())


def by_type(store: EventStore) -> dict[str, int]:
    return dict(store.con.execute("SELECT event_type, count(*) FROM events GROUP BY 1").fetchall())


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- every format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_detection_picks_the_format_and_only_that_one(fmt: str) -> None:
    for path in (GOOD[fmt], BAD[fmt]):
        assert adapters.detect(path).name == fmt
        head = adapters.read_head(path)
        assert [a.name for a in (SEGMENT, GA4, SHOPIFY) if a.detect(head)] == [fmt]


def test_generic_json_lines_are_not_taken_for_a_specific_format(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u", "event_type": "view", "type": 1}\n'
    )
    assert adapters.detect(path).name == "jsonl"
    path.write_text('{"topic": "sensors/temperature", "payload": {"celsius": 21}}\n')  # an MQTT log, say
    assert adapters.detect(path).name == "jsonl"


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingest_counts_and_reload_adds_nothing(store: EventStore, fmt: str) -> None:
    first = ingest_files(store, [GOOD[fmt]]).as_dict()
    assert pick(first, "ingested duplicates rejected ignored") == (ROWS[fmt], 0, 0, 0)
    assert first["files"][0]["format"] == fmt
    again = ingest_files(store, [GOOD[fmt]]).as_dict()
    assert pick(again, "ingested duplicates rejected") == (0, ROWS[fmt], 0)
    assert store.count() == ROWS[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_file_is_rejected_whole_naming_file_line_and_pointer(store: EventStore, fmt: str) -> None:
    with pytest.raises(BadInputError) as caught:
        ingest_files(store, [BAD[fmt]])
    problems = caught.value.problems
    for expected in BAD_MESSAGES[fmt]:
        assert any(p.startswith(f"{BAD[fmt]}, {expected}") for p in problems), (expected, problems)
    assert store.count() == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_bad_rows_stores_the_good_rows(store: EventStore, fmt: str, tmp_path: Path) -> None:
    report = ingest_files(store, [BAD[fmt]], skip_bad_rows=True, rejects_dir=tmp_path / "rejects").as_dict()
    good, bad = BAD_SPLIT[fmt]
    assert (report["ingested"], report["rejected"]) == (good, bad)
    assert store.count() == good
    rejects = [json.loads(line) for line in Path(report["files"][0]["rejects_path"]).read_text().splitlines()]
    bad_lines = {int(message.split()[1].rstrip(":")) for message in BAD_MESSAGES[fmt]}
    assert {r["line"] for r in rejects} == bad_lines
    siblings = [r for r in rejects if any("a record is kept whole" in e for e in r["errors"])]
    assert len(siblings) == 1
    assert all(not key.startswith("_") for r in rejects for key in r["record"])


@pytest.mark.parametrize(
    ("fmt", "mapping", "ingested", "ignored"),
    [
        # Product Viewed x4 counted as ignored; Products Searched (dropped by default) becomes a view
        ("segment", {"Product Viewed": "ignore", "Products Searched": "view"}, 18 - 4 + 1, 4),
        # the 6 purchase rows ignored; page_view (dropped by default) becomes a view
        ("ga4", {"purchase": "ignore", "page_view": "view"}, 14 - 6 + 1, 6),
        # 3 checkouts/update rows (one inferred from a raw checkout) ignored; orders/paid adds its 2 lines
        ("shopify", {"checkouts/update": "ignore", "orders/paid": "purchase"}, 9 - 3 + 2, 3),
    ],
)
def test_the_users_event_type_mapping_overrides_the_default_choice(
    store: EventStore, fmt: str, mapping: dict[str, str], ingested: int, ignored: int
) -> None:
    report = ingest_files(store, [GOOD[fmt]], options=AdapterOptions(event_type_map=mapping)).as_dict()
    assert (report["ingested"], report["ignored"], report["rejected"]) == (ingested, ignored, 0)


def test_cli_ingest_reports_json_counts_and_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("winback")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "winback.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINBACK_")}
    runs = {  # all at once: each start of the CLI costs about a second
        (fmt, kind): subprocess.Popen(
            [*command, "ingest", str(path), "--json", "--home", str(tmp_path / f"{fmt}-{kind}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for fmt in FORMATS
        for kind, path in (("good", GOOD[fmt]), ("bad", BAD[fmt]))
    }
    results = {}
    for key, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        results[key] = (proc.returncode, out, err)
    for fmt in FORMATS:
        code, out, err = results[fmt, "good"]
        assert code == 0, err
        report = json.loads(out)
        assert (report["ingested"], report["duplicates"], report["rejected"]) == (ROWS[fmt], 0, 0)
        assert report["files"][0]["format"] == fmt
        code, out, err = results[fmt, "bad"]
        assert code == 2, (out, err)
        assert f"{BAD[fmt]}, {BAD_MESSAGES[fmt][0]}" in err


# -- Segment ---------------------------------------------------------------------------------------


def test_segment_rows_follow_the_ecommerce_spec(store: EventStore) -> None:
    ingest_files(store, [GOOD["segment"]])
    assert by_type(store) == {
        "view": 4,
        "add_to_cart": 4,
        "remove_from_cart": 1,
        "checkout_start": 3,
        "purchase": 6,
    }
    rows = {r["event_id"]: r for r in events(store)}
    # identify, page, screen and Products Searched are dropped
    assert not {"msg-a-000", "msg-a-00p", "msg-c-00s", "msg-g-001"} & set(rows)

    viewed = rows["msg-a-001"]
    assert pick(viewed, "event_type user_id anonymous_id session_id") == (
        "view",
        "u-1001",
        "anon-7f3a",
        "s-a-1",
    )
    assert pick(viewed, "product_id category price currency") == (
        "507f1f77bcf86cd799439011",
        "Games",
        18.99,
        "USD",
    )
    assert viewed["timestamp"] == at(2024, 3, 4, 15, 1)
    assert viewed["properties"]["campaign"]["name"] == "spring_sale"
    assert viewed["properties"]["page_url"] == "https://shop.example.com/monopoly"
    assert viewed["properties"]["sku"] == "G-32"
    assert viewed["brand"] == viewed["properties"]["brand"] == "Hasbro"  # a product's brand, kept there too
    assert "userAgent" not in json.dumps(viewed["properties"])  # context is kept selectively
    assert rows["msg-a-002"]["quantity"] == 2
    assert rows["msg-a-002"]["properties"]["cart_id"] == "skdjsidjsdkdj29j"
    assert rows["msg-a-005"]["event_type"] == "remove_from_cart"
    assert rows["msg-b-002"]["event_type"] == "add_to_cart"  # snake_case "product_added"

    order = [rows["msg-a-007:0"], rows["msg-a-007:1"]]
    assert [pick(r, "product_id price quantity brand") for r in order] == [
        ("507f1f77bcf86cd799439011", 18.99, 1, "Hasbro"),
        ("505bd76785ebb509fc183733", 3.0, 2, "Mattel"),
    ]
    for line in order:
        assert pick(line, "event_type order_id value") == ("purchase", "50314b8e9bcf000000000000", None)
        assert line["timestamp"] == datetime(2024, 3, 4, 15, 12, 40, 351000, tzinfo=UTC)  # not sentAt
        props = line["properties"]
        assert pick(props, "total revenue discount coupon") == (27.49, 22.49, 2.5, "hasbros")
        assert pick(props, "tax shipping checkout_id") == (2.0, 3.0, "fksdjfsdjfisjf9sdfjsdfr")
    assert [rows[f"msg-b-003:{i}"]["product_id"] for i in range(3)] == ["p-8812", "p-8813", "p-0007"]
    assert {rows[f"msg-b-003:{i}"]["currency"] for i in range(3)} == {"EUR"}
    assert rows["msg-b-003:2"]["properties"]["item_coupon"] == "FREEWRAP"
    assert [rows[f"msg-a-006:{i}"]["event_type"] for i in range(2)] == ["checkout_start"] * 2

    guest_view = rows["msg-g-002"]
    assert pick(guest_view, "user_id anonymous_id") == (None, "anon-c4d2")
    assert guest_view["timestamp"] == at(2024, 3, 5, 8, 0)  # originalTimestamp 09:00+01:00
    guest_checkout = rows["msg-g-004"]  # no products: one row carrying the value
    assert pick(guest_checkout, "product_id value currency") == (None, 45.0, "GBP")
    totals_only = rows["msg-c-001"]
    assert pick(totals_only, "event_type value order_id") == ("purchase", 100.0, "ORD-2024-0043")
    assert totals_only["properties"]["total"] == 120.0


# -- GA4 -------------------------------------------------------------------------------------------


def test_ga4_rows_follow_the_bigquery_export(store: EventStore) -> None:
    ingest_files(store, [GOOD["ga4"]])
    assert by_type(store) == {
        "view": 2,
        "add_to_cart": 3,
        "remove_from_cart": 1,
        "checkout_start": 2,
        "purchase": 6,
    }
    rows = events(store)
    assert all(len(r["event_id"]) == 32 for r in rows)  # no source id: derived from the content
    assert len({r["event_id"] for r in rows}) == len(rows)

    first = rows[0]  # session_start and page_view before it are dropped
    assert first["event_type"] == "view"
    assert first["timestamp"] == datetime(2024, 3, 1, 10, 0, 30, 123456, tzinfo=UTC)
    assert pick(first, "user_id anonymous_id") == ("u-1001", "1197596843.1709280000")
    assert first["session_id"] == "1197596843.1709280000:1709280000"
    assert pick(first, "product_id category price quantity") == ("SKU_12345", "Apparel", 9.99, 1)
    assert first["brand"] == first["properties"]["item_brand"] == "Google"
    assert first["properties"]["item_name"] == "Stan and Friends Tee"
    assert first["properties"]["page_location"] == "https://shop.example.com/p/stan-tee"
    assert rows[1]["timestamp"] == at(2024, 3, 1, 10, 1)  # event_timestamp as a JSON integer

    checkout = [r for r in rows if r["event_type"] == "checkout_start"]
    assert {r["order_id"] for r in checkout} == {None}  # "(not set)"
    purchase = [r for r in rows if r["order_id"] == "T_12345"]
    assert [pick(r, "product_id price quantity") for r in purchase] == [
        ("SKU_12345", 9.99, 1),
        ("SKU_12346", 20.99, 1),
    ]
    for line in purchase:
        assert pick(line, "event_type currency value") == ("purchase", "USD", None)
        assert line["timestamp"] == at(2024, 3, 1, 10, 5)
        assert line["properties"]["purchase_revenue"] == 30.98
        assert line["properties"]["coupon"] == "SUMMER_FUN"

    anonymous = [r for r in rows if r["anonymous_id"] == "2034591211.1709366400"]
    assert {r["user_id"] for r in anonymous} == {None}
    assert {r["currency"] for r in anonymous} == {"EUR"}
    assert anonymous[0]["category"] is None  # "(not set)"
    order = sorted(pick(r, "product_id price quantity") for r in anonymous if r["order_id"] == "T_67890")
    assert order == [("SKU_20001", 12.5, 2), ("SKU_20002", 2.0, 5), ("SKU_20003", 18.0, 1)]

    (no_items,) = [r for r in rows if r["order_id"] == "T_24680"]
    assert pick(no_items, "user_id product_id value") == ("u-1003", None, 59.0)


def test_ga4_microseconds_become_iso_utc() -> None:
    assert micros_to_iso("1709287230123456") == "2024-03-01T10:00:30.123456Z"
    assert micros_to_iso(1709287260000000) == "2024-03-01T10:01:00.000000Z"
    assert micros_to_iso(1.70928726e15) == "2024-03-01T10:01:00.000000Z"
    assert micros_to_iso("yesterday") == "yesterday"  # left for the SQL rules to reject
    assert micros_to_iso(None) is None


# -- Shopify ---------------------------------------------------------------------------------------


def test_shopify_rows_follow_the_webhooks(store: EventStore) -> None:
    ingest_files(store, [GOOD["shopify"]])
    assert by_type(store) == {"checkout_start": 4, "purchase": 5}
    rows = {r["event_id"]: r for r in events(store)}
    # orders/paid, customers/create and carts/update are dropped
    assert not [i for i in rows if i.startswith(("9d8c7b6a", "1a2b3c4d"))]
    token, cart = "bd6b4c4c7a5e5c9a0f2d7f0e3b7d1a25", "c1-7a2f9b3d8e1f4c6a"

    created = rows["b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:0"]  # a guest's checkouts/create
    assert pick(created, "event_type timestamp") == ("checkout_start", at(2024, 3, 6, 15, 15))
    assert pick(created, "user_id anonymous_id session_id") == (None, cart, None)
    assert pick(created, "product_id price quantity currency brand") == (
        "632910392",
        199.0,
        1,
        "USD",
        "Apple",
    )
    assert created["properties"]["vendor"] == "Apple"  # the line's vendor is its brand, kept there too
    assert created["properties"]["checkout_token"] == token
    assert created["properties"]["sku"] == "IPOD2008PINK"
    assert created["properties"]["abandoned_checkout_url"].startswith(
        "https://shop.example.com/14168/checkouts/"
    )

    updated = [rows[f"f0c3d3b2-6c1d-4a33-9b0e-3d2f1a4b5c6d:{i}"] for i in range(2)]  # now with a customer
    assert {pick(r, "timestamp user_id anonymous_id") for r in updated} == {
        (at(2024, 3, 6, 15, 20), "207119551", cart)  # updated_at
    }
    assert [pick(r, "product_id price quantity") for r in updated] == [
        ("632910392", 199.0, 1),
        ("921728736", 24.5, 2),
    ]

    order = [rows[f"3a1e4f5b-7c8d-4e9f-a0b1-c2d3e4f5a6b7:{i}"] for i in range(2)]  # headers-style wrapper
    for line in order:
        assert pick(line, "event_type order_id user_id") == ("purchase", "450789469", "207119551")
        assert line["timestamp"] == at(2024, 3, 6, 15, 32)
        props = line["properties"]
        assert pick(props, "checkout_token cart_token") == (token, cart)  # what links it to its checkout
        assert pick(props, "total_price total_discounts") == ("409.94", "10.00")
        assert props["discount_codes"] == [{"code": "TENOFF", "amount": "10.00", "type": "fixed_amount"}]
    assert [(r["product_id"], r["price"], r["properties"]["variant_id"]) for r in order] == [
        ("632910392", 199.0, 39072856),
        ("632910392", 199.0, 49148385),
    ]

    raw = [r for r in rows.values() if r["order_id"] == "820982911946154508"]  # a raw order body
    assert len(raw) == 3
    assert {pick(r, "user_id anonymous_id currency timestamp") for r in raw} == {
        ("115310627", None, "CAD", at(2024, 3, 7, 13, 3, 11))
    }
    assert sorted(pick(r, "product_id price quantity") for r in raw) == [
        ("632910393", 22.5, 1),
        ("632910394", 4.0, 3),
        ("788032119674292922", 14.0, 2),
    ]
    guest_token = "7e2c1f0a9b8d4e6f1a2b3c4d5e6f7a8b"  # a raw checkout body, without customer or cart token
    (guest,) = [r for r in rows.values() if r["anonymous_id"] == guest_token]
    assert pick(guest, "event_type user_id timestamp") == ("checkout_start", None, at(2024, 3, 8, 18, 45, 10))

"""Repeat purchases on hand-built logs with known rhythms, against a plain-Python recount, and on the
RetailRocket sample."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winback.errors import BadInputError
from winback.recommend.interactions import with_weights
from winback.recommend.repeat import RepeatPurchases
from winback.recommend.sources import Candidates

DAY = 86_400.0


Row = tuple[str, str, float, str]


def _log(rows: Sequence[Row]) -> pd.DataFrame:
    """``(user, product, day, kind)`` rows; ``day`` may be fractional."""
    frame = pd.DataFrame(rows, columns=["user_key", "product_id", "day", "kind"])
    frame["ts"] = frame.pop("day") * DAY
    return with_weights(frame)


@pytest.fixture
def pets() -> pd.DataFrame:
    """alice buys pet food every 10 days (days 0-30) and shampoo on days 0 (twice) and 20; bob buys
    pet food on days 0 and 14, carol once on day 5; everyone buys a tv once; dave only views."""
    rows: list[Row] = [("alice", "petfood", d, "purchase") for d in (0, 10, 20, 30)]
    rows += [("alice", "shampoo", 0.2, "purchase"), ("alice", "shampoo", 0.7, "purchase")]
    rows += [("alice", "shampoo", 20.5, "purchase"), ("bob", "shampoo", 3, "purchase")]
    rows += [("carol", "shampoo", 4, "purchase")]
    rows += [("bob", "petfood", 0, "purchase"), ("bob", "petfood", 14, "purchase")]
    rows += [("carol", "petfood", 5, "purchase")]
    rows += [(u, "tv", 3 + i, "purchase") for i, u in enumerate(["alice", "bob", "carol", "erin"])]
    rows += [("dave", "petfood", 2, "view"), ("dave", "tv", 2, "cart"), ("erin", "petfood", 6, "view")]
    return _log(rows)


def test_learned_rhythms(pets: pd.DataFrame) -> None:
    model = RepeatPurchases(min_repeat_share=0.1, min_buyers=3).fit(pets)
    products = model.products_
    assert (products.at["petfood", "buyers"], products.at["petfood", "repeat_buyers"]) == (3, 2)
    assert products.at["petfood", "repeat_share"] == pytest.approx(2 / 3)
    assert products.at["petfood", "median_interval_days"] == pytest.approx(12.0)  # median of 10 and 14
    assert products.at["shampoo", "repeat_share"] == pytest.approx(1 / 3)
    assert products.at["shampoo", "median_interval_days"] == pytest.approx(20.0)
    assert (products.at["tv", "buyers"], products.at["tv", "repeat_buyers"]) == (4, 0)
    assert products["median_interval_days"].isna()["tv"]
    assert list(model.replenishable_.index) == ["petfood", "shampoo"]
    assert model.is_replenishable("petfood")
    assert not model.is_replenishable("tv")
    assert not model.is_replenishable("never-bought")
    mine = model.purchases_.set_index(["user_key", "product_id"])
    assert mine.at[("alice", "petfood"), "purchase_days"] == 4
    assert mine.at[("alice", "shampoo"), "purchase_days"] == 2  # two purchases on day 0 are one basket
    assert mine.at[("alice", "shampoo"), "last_ts"] == 20.5 * DAY
    assert mine.at[("carol", "petfood"), "interval_days"] == 12.0  # the product's: she bought once
    assert mine["own_interval_days"].isna()[("carol", "petfood")]
    assert ("dave", "tv") not in mine.index  # a cart is not a purchase
    # stricter thresholds: shampoo's 1 repeat buyer of 3 is not enough, tv has 4 buyers but no repeats
    assert list(RepeatPurchases(min_repeat_share=0.5).fit(pets).replenishable_.index) == ["petfood"]
    assert RepeatPurchases(min_buyers=4).fit(pets).replenishable_.empty


def test_due_at_the_rhythm_with_its_reason(pets: pd.DataFrame) -> None:
    model = RepeatPurchases(spread=0.5).fit(pets)
    recs = model.due("alice", now=40 * DAY)
    assert recs[0].product_id == "petfood"
    assert recs[0].score == pytest.approx(4 / 5)  # kernel 1 at elapsed == interval, times n / (n + 1)
    assert recs[0].reason == "bought every ~10 days, last 10 days ago: due again"
    assert [c.product_id for c in recs] == ["petfood", "shampoo"]  # tv is a one-off: never comes back
    early = {c.product_id: c for c in model.due("alice", now=36 * DAY)}["petfood"]
    assert early.reason == "bought every ~10 days, last 6 days ago: due in 4 days"
    assert early.score == pytest.approx(round(math.exp(-0.5 * (math.log(0.6) / 0.5) ** 2) * 0.8, 6))
    # the kernel is symmetric in log-time: twice the interval late scores as half of it early
    late, soon = ({c.product_id: c.score for c in model.due("alice", now=d * DAY)} for d in (50, 35))
    assert late["petfood"] == pytest.approx(soon["petfood"])
    # carol bought pet food once: the product's 12 days stand in for her rhythm, trusted half as much
    carol = model.due("carol", now=17 * DAY, k=1)[0]
    assert (carol.product_id, carol.score) == ("petfood", 0.5)
    assert carol.reason == "bought once, 12 days ago; its buyers buy it again every ~12 days: due again"
    assert model.due("carol", now=9 * DAY, k=1)[0].reason.endswith("due in 8 days")


def test_the_most_due_comes_first(pets: pd.DataFrame) -> None:
    model = RepeatPurchases().fit(pets)
    # at day 40.5 shampoo (every 20 days, last day 20.5) is exactly due, pet food half a day late
    recs = model.due("alice", now=40.5 * DAY)
    assert [c.product_id for c in recs] == ["petfood", "shampoo"]  # 4 purchases outweigh 2
    scores = {c.product_id: c.score for c in recs}
    assert scores["shampoo"] == pytest.approx(2 / 3)
    assert scores["petfood"] == pytest.approx(round(math.exp(-0.5 * (math.log(1.05) / 0.5) ** 2) * 0.8, 6))
    # at day 33 pet food (3 of 10 days) is too early, shampoo (12.5 of 20) closer to its time
    assert [c.product_id for c in model.due("alice", now=33 * DAY)] == ["shampoo", "petfood"]
    assert len(model.due("alice", now=40 * DAY, k=1)) == 1


def test_exclusions_and_empty_answers(pets: pd.DataFrame) -> None:
    model = RepeatPurchases().fit(pets)
    assert [c.product_id for c in model.due("alice", now=40 * DAY, exclude=["petfood"])] == ["shampoo"]
    none = model.due("alice", now=40 * DAY, exclude=["petfood", "shampoo", "tv"])
    assert isinstance(none, Candidates)
    assert none == []
    assert none.reason == "every product customer alice buys again is excluded"
    for stranger in ("zoe", "dave"):  # dave viewed and carted but never bought
        unknown = model.due(stranger, now=40 * DAY)
        assert unknown == []
        assert unknown.reason == f"unknown customer {stranger}: no purchases yet (cold start)"
    erin = model.due("erin", now=40 * DAY)
    assert erin == []
    assert erin.reason == "customer erin bought nothing that customers buy again regularly"
    before = model.due("alice", now=-5 * DAY)
    assert before == []
    assert before.reason == "everything customer alice buys again is not due yet"
    lapsed = model.due("alice", now=1000 * DAY)  # 97 intervals of pet food, 49 of shampoo: lapsed
    assert lapsed == []
    assert lapsed.reason == "everything customer alice buys again is long overdue"
    assert model.due("alice", now=1000 * DAY, exclude=["petfood"]).reason.endswith("long overdue")
    # milk every day (last day 82) is 20 days late at day 102, a mattress every 100 days 2 days old
    rows: list[Row] = [("fay", "milk", d, "purchase") for d in (80, 81, 82)]
    rows += [("fay", "mattress", d, "purchase") for d in (0, 100)]
    mixed = RepeatPurchases(min_buyers=1).fit(_log(rows)).due("fay", now=102 * DAY)
    assert mixed.reason == "everything customer fay buys again is long overdue or not due yet"


def test_bad_input(pets: pd.DataFrame) -> None:
    model = RepeatPurchases().fit(pets)
    for k in (0, 1001, "3", True, 2.0):
        with pytest.raises(BadInputError, match="--k"):
            model.due("alice", now=40 * DAY, k=k)  # type: ignore[arg-type]
    for now in ("tomorrow", float("nan"), None):
        with pytest.raises(BadInputError, match="now"):
            model.due("alice", now=now)  # type: ignore[arg-type]
    for bad, field in (
        ({"min_repeat_share": 1.5}, "min_repeat_share"),
        ({"min_buyers": 0}, "min_buyers"),
        ({"spread": 0.0}, "spread"),
    ):
        with pytest.raises(BadInputError, match=field):
            RepeatPurchases(**bad).fit(pets)
    with pytest.raises(BadInputError, match="interactions"):
        RepeatPurchases().fit(pets.drop(columns="ts"))
    with pytest.raises(BadInputError, match="DataFrame"):
        RepeatPurchases().fit([1, 2])  # type: ignore[arg-type]


def _random_log(seed: int, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_key": rng.choice([f"u{i}" for i in range(25)], n),
            "product_id": rng.choice([f"p{i}" for i in range(12)], n),
            "ts": rng.uniform(0, 60 * DAY, n).round(),
            "kind": rng.choice(["view", "cart", "purchase"], n, p=[0.3, 0.2, 0.5]),
        }
    )
    return with_weights(frame)


def test_statistics_match_a_plain_recount() -> None:
    frame = _random_log(3)
    model = RepeatPurchases(min_repeat_share=0.3, min_buyers=4).fit(frame)
    days: dict[tuple[str, str], set[int]] = {}
    last: dict[tuple[str, str], float] = {}
    bought = frame[frame["kind"] == "purchase"]
    for user, product, ts in zip(bought["user_key"], bought["product_id"], bought["ts"], strict=True):
        key = (str(user), str(product))
        days.setdefault(key, set()).add(int(float(ts) // DAY))
        last[key] = max(last.get(key, -1.0), float(ts))
    own = {key: statistics.median(np.diff(sorted(d)).tolist()) for key, d in days.items() if len(d) >= 2}
    for p, row in model.products_.iterrows():
        buyers = [key for key in days if key[1] == p]
        repeaters = [key for key in buyers if key in own]
        assert row["buyers"] == len(buyers)
        assert row["repeat_share"] == pytest.approx(len(repeaters) / len(buyers))
        if repeaters:
            assert row["median_interval_days"] == pytest.approx(statistics.median(own[k] for k in repeaters))
        assert row["replenishable"] == (len(buyers) >= 4 and len(repeaters) / len(buyers) >= 0.3)
    assert 0 < len(model.replenishable_) < len(model.products_)
    medians = model.products_["median_interval_days"].to_dict()
    for r in model.purchases_.to_dict("records"):
        key = (str(r["user_key"]), str(r["product_id"]))
        assert r["purchase_days"] == len(days[key])
        assert r["last_ts"] == last[key]
        expected = own.get(key, medians[key[1]])
        assert r["interval_days"] == pytest.approx(expected, nan_ok=True)


def _all_answers(model: RepeatPurchases, users: list[str]) -> list[tuple[str, float, list[tuple]]]:
    return [
        (u, now, [tuple(c) for c in model.due(u, now=now * DAY, k=20)])
        for u in users
        for now in (20.0, 45.0, 70.0)
    ]


@pytest.mark.parametrize("by_time", [True, False])
def test_learn_new_equals_a_full_fit(by_time: bool) -> None:
    frame = _random_log(5)
    if by_time:
        old, new = frame[frame["ts"] < 40 * DAY], frame[frame["ts"] >= 40 * DAY]
    else:  # new purchases older than some of the old ones, and days split between the two parts
        old, new = frame.iloc[::2], frame.iloc[1::2]
    full = RepeatPurchases(min_repeat_share=0.3, min_buyers=4).fit(frame)
    folded = RepeatPurchases(min_repeat_share=0.3, min_buyers=4).fit(old)
    assert not folded.products_.equals(full.products_)
    folded.learn_new(new.iloc[: len(new) // 2]).learn_new(new.iloc[len(new) // 2 :])
    pd.testing.assert_frame_equal(folded.products_, full.products_)
    pd.testing.assert_frame_equal(folded.replenishable_, full.replenishable_)
    pd.testing.assert_frame_equal(folded.purchases_, full.purchases_)
    users = [*sorted(set(frame["user_key"])), "stranger"]
    assert _all_answers(folded, users) == _all_answers(full, users)
    unchanged = folded.learn_new(frame[frame["kind"] == "view"])  # views only: nothing to fold in
    pd.testing.assert_frame_equal(unchanged.purchases_, full.purchases_)
    fresh = RepeatPurchases(min_repeat_share=0.3, min_buyers=4).learn_new(frame)  # not fitted: a fit
    pd.testing.assert_frame_equal(fresh.products_, full.products_)


def test_due_for_a_customer_with_100_purchases_respects_exclusions() -> None:
    """(Query speed is measured by bench/bench_recommend.py, not asserted here.)"""
    rows: list[Row] = [
        (f"fan{b}", f"p{i}", d, "purchase") for b in range(3) for i in range(100) for d in (0, 7)
    ]
    rows += [("me", f"p{i}", float(d), "purchase") for i in range(100) for d in (i % 9, i % 9 + 7 + i % 5)]
    model = RepeatPurchases().fit(_log(rows))
    assert len(model.replenishable_) == 100
    recs = model.due("me", now=20 * DAY, k=10, exclude=["p1", "p2"])
    assert len(recs) == 10
    assert {"p1", "p2"}.isdisjoint(c.product_id for c in recs)


def test_retailrocket_sample_has_no_repeat_purchases(data_dir: Path) -> None:
    """The 1,500-visitor sample holds 14 purchases of 14 distinct (visitor, item) pairs: nobody bought an
    item twice, so nothing is replenishable and every buyer gets an empty list with its reason."""
    raw = pd.read_csv(data_dir / "retailrocket_events_sample_1500visitors.csv")
    kinds = {"view": "view", "addtocart": "cart", "transaction": "purchase"}
    frame = with_weights(
        pd.DataFrame(
            {
                "user_key": raw["visitorid"].astype(str),
                "product_id": raw["itemid"].astype(str),
                "ts": raw["timestamp"] / 1000.0,
                "kind": raw["event"].map(kinds),
            }
        )
    )
    model = RepeatPurchases(min_buyers=1).fit(frame)
    assert len(model.purchases_) == 14
    assert (model.purchases_["purchase_days"] == 1).all()
    assert model.replenishable_.empty
    buyer = str(model.purchases_["user_key"].iloc[0])
    answer = model.due(buyer, now=float(frame["ts"].max()))
    assert answer == []
    assert answer.reason == f"customer {buyer} bought nothing that customers buy again regularly"


def test_learn_new_on_one_product_updates_its_buyers(pets: pd.DataFrame) -> None:
    """carol buys pet food again on day 11: her own 6-day rhythm replaces the product's, the product's
    median moves to 10 (of 10, 14 and 6), and bob's and alice's other products are left as they were."""
    more = _log([("carol", "petfood", 11, "purchase"), ("carol", "petfood", 11.5, "purchase")])
    model = RepeatPurchases().fit(pets)
    shampoo_before = model.products_.loc[["shampoo"]].copy()
    model.learn_new(more)
    full = RepeatPurchases().fit(pd.concat([pets, more], ignore_index=True))
    pd.testing.assert_frame_equal(model.products_, full.products_)
    pd.testing.assert_frame_equal(model.purchases_, full.purchases_)
    assert model.products_.at["petfood", "median_interval_days"] == 10.0
    pd.testing.assert_frame_equal(model.products_.loc[["shampoo"]], shampoo_before)
    carol = model.due("carol", now=17.5 * DAY, k=1)[0]  # 6 days after her last purchase (day 11.5)
    assert (carol.product_id, carol.score) == ("petfood", pytest.approx(2 / 3))
    assert carol.reason == "bought every ~6 days, last 6 days ago: due again"
    for u in ("alice", "bob", "carol", "erin"):
        assert model.due(u, now=30 * DAY) == full.due(u, now=30 * DAY)


def test_learn_new_after_a_fit_without_purchases(pets: pd.DataFrame) -> None:
    views = pets[pets["kind"] == "view"]
    model = RepeatPurchases().fit(views)
    assert model.products_.empty
    assert model.due("dave", now=10 * DAY).reason == "unknown customer dave: no purchases yet (cold start)"
    model.learn_new(pets[pets["kind"] != "view"])
    full = RepeatPurchases().fit(pets)
    pd.testing.assert_frame_equal(model.products_, full.products_)
    pd.testing.assert_frame_equal(model.purchases_, full.purchases_)
    assert model.due("alice", now=40 * DAY) == full.due("alice", now=40 * DAY)

"""The recommender's blends per use, its exclusions, cold start, incremental update and bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from winback.errors import BadInputError
from winback.recommend.affinity import CategoryAffinity
from winback.recommend.interactions import with_weights
from winback.recommend.ranker import Recommender

DAY = 86_400.0
NOW = 100 * DAY

CATALOGUE = {
    "phone": ("electronics.phones", 300.0),
    "phone-lite": ("electronics.phones", 180.0),
    "phone-pro": ("electronics.phones", 600.0),
    "case": ("electronics.accessories", 20.0),
    "charger": ("electronics.accessories", 25.0),
    "kibble": ("pets.food", 30.0),
    "novel": ("books.fiction", 12.0),
    "poems": ("books.fiction", 10.0),
}


def _row(user: str, product: str, kind: str, ts: float, session: str) -> dict[str, object]:
    category, price = CATALOGUE[product]
    return {
        "user_key": user,
        "product_id": product,
        "ts": ts,
        "kind": kind,
        "session_key": session,
        "order_id": None,
        "category": category,
        "price": price,
    }


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    """Phone buyers also buy a case and a charger; readers browse books in five visits and buy two; the
    dogs of u0, u1 and u2 eat kibble bought every 10 days; u9 left a phone in the cart two days ago."""
    rows = []
    for i in range(8):
        user, day = f"u{i}", 10.0 + i
        session = f"s{i}"
        rows += [
            _row(user, "phone", "view", day * DAY, session),
            _row(user, "phone", "cart", day * DAY + 60, session),
        ]
        rows += [_row(user, p, "purchase", day * DAY + 120, session) for p in ("phone", "case", "charger")]
        for n, d in enumerate(range(20, 100, 10) if i < 3 else ()):
            rows.append(_row(user, "kibble", "purchase", (d + i % 3) * DAY, f"k{i}-{n}"))
    for i in range(8, 12):
        rows += [_row(f"u{i}", p, "purchase", (30.0 + i) * DAY, f"b{i}") for p in ("novel", "poems")]
        rows += [_row(f"u{i}", "novel", "view", (20.0 + d) * DAY, f"v{i}-{d}") for d in range(4)]
    rows += [
        _row("u9", "phone-pro", "view", NOW - 2 * DAY, "c9"),
        _row("u9", "phone-pro", "cart", NOW - 2 * DAY + 30, "c9"),
    ]
    rows += [_row("u9", "phone-lite", "view", NOW - 2 * DAY + 90, "c9")]
    return with_weights(pd.DataFrame(rows).sort_values("ts", kind="stable").reset_index(drop=True))


@pytest.fixture(scope="module")
def model(shop: pd.DataFrame) -> Recommender:
    return Recommender(factors=0).fit(shop)


def test_cart_gets_complements_never_its_own_items(model: Recommender) -> None:
    recs = model.for_cart(["phone"], k=3)
    assert [c.product_id for c in recs][:2] == ["case", "charger"]
    assert recs[0].reason.startswith("often bought with phone")
    assert "phone" not in [c.product_id for c in recs]
    # Visits that view a phone view its accessories: complements from visits, never another phone.
    visits = model.complements_.for_items(["phone-pro"], k=3)
    assert not visits  # u9's one visit with it: too few
    complements = model.complements_.for_items(["phone"], k=3)
    assert {c.product_id for c in complements} == {"case", "charger"}
    assert complements[0].reason.startswith("often viewed with phone (100% of its visits")


def test_cart_by_id_and_cheaper_substitutes_for_the_price_sensitive(model: Recommender) -> None:
    assert "c9" in model.carts_
    assert model.carts_["c9"] == ("u9", ["phone-pro"])
    recs = model.for_cart("c9", k=5, cheaper=True)
    assert recs[0].product_id in {"phone", "phone-lite", "case", "charger"}
    reasons = {c.product_id: c.reason for c in recs}
    assert reasons["phone-lite"] == "similar to phone-pro, 70% cheaper"
    assert "phone-pro" not in reasons


def test_winback_excludes_recent_purchases_unless_replenishable(model: Recommender) -> None:
    recs = model.for_user("u0", k=8, now=NOW)
    ids = [c.product_id for c in recs]
    assert model.repeat_.is_replenishable("kibble")
    assert "kibble" in ids  # bought every 10 days, last 10 days ago: due
    assert "phone" in ids  # bought 90 days ago: more than recent_days
    soon = model.for_user("u0", k=8, now=20 * DAY)  # the phone was bought 10 days before
    assert "phone" not in [c.product_id for c in soon]
    assert any(c.reason.startswith("bought every") for c in recs)


def test_readers_get_books_and_phone_buyers_accessories(model: Recommender) -> None:
    reader = [c.product_id for c in model.for_user("u8", k=3, now=NOW + 60 * DAY)]
    assert {"novel", "poems"} <= set(reader)
    assert model.similar("novel", k=1)[0].product_id == "poems"


def test_out_of_stock_products_are_never_proposed(shop: pd.DataFrame) -> None:
    model = Recommender(factors=0).fit(shop, stock={"case": 0, "charger": 5, "poems": False})
    assert "case" not in [c.product_id for c in model.for_cart(["phone"], k=5)]
    assert "poems" not in [c.product_id for c in model.similar("novel", k=5)]
    with pytest.raises(BadInputError, match="stock of product case"):
        Recommender(factors=0).fit(shop, stock={"case": "lots"})


def test_cold_start(model: Recommender, shop: pd.DataFrame) -> None:
    unknown = model.for_user("stranger")
    assert list(unknown) == []
    assert "cold start" in unknown.reason
    assert "unknown cart zzz" in model.for_cart("zzz").reason
    assert "unknown product zzz" in model.similar("zzz").reason
    session = [c.product_id for c in model.for_session(["phone"], k=2)]
    assert session == ["case", "charger"]
    products = pd.DataFrame(
        {"product_id": ["phone-mini"], "category": ["electronics.phones"], "price": [150.0]}
    )
    cold = Recommender(factors=0).fit(shop, products=products).similar("phone-mini", k=1)
    assert cold[0].product_id == "phone-lite"
    assert cold[0].reason == "similar to phone-mini, 20% dearer"


def test_k_out_of_range_is_a_usage_error(model: Recommender) -> None:
    for k in (0, 1001, 2.5):
        with pytest.raises(BadInputError, match="--k"):
            model.for_user("u0", k=k)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="use 'nope'"):
        model.recommend("nope", "u0")


def test_learn_new_updates_histories_carts_and_neighbours(shop: pd.DataFrame) -> None:
    cut = NOW - 3 * DAY
    old, new = shop[shop["ts"] < cut], shop[shop["ts"] >= cut]
    incremental = Recommender(factors=0).fit(old).learn_new(new)
    full = Recommender(factors=0).fit(shop)
    assert incremental.carts_ == full.carts_
    assert incremental.cart_seen_ == full.cart_seen_
    assert incremental.carts_of_ == full.carts_of_
    for product in ("phone", "phone-pro", "kibble"):
        assert incremental.similar(product, k=5) == full.similar(product, k=5)
    for user in ("u0", "u9"):
        a, b = incremental.histories_.of(user), full.histories_.of(user)
        assert a is not None
        assert b is not None
        assert list(a.products) == list(b.products)
        assert np.allclose(a.weights, b.weights)
    bought = with_weights(pd.DataFrame([_row("u9", "phone-pro", "purchase", NOW, "c9")]))
    incremental.learn_new(bought)
    assert "c9" not in incremental.carts_
    assert incremental.carts_of_["u9"] == []
    assert not incremental.left_in_carts("u9", NOW)


def test_winback_brings_back_what_was_left_in_the_cart(model: Recommender) -> None:
    left = model.left_in_carts("u9", NOW)
    assert [c.product_id for c in left] == ["phone-pro"]
    assert left[0].reason == "left in your cart 2 days ago"
    assert left[0].score == pytest.approx(0.5 ** (2 / 3), rel=1e-3)  # halves every 3 days
    recs = model.for_user("u9", k=5, now=NOW)
    assert recs[0].product_id == "phone-pro"
    assert recs[0].reason == "left in your cart 2 days ago"
    # A month and more later the cart is no longer open: nothing comes back from it.
    assert not model.left_in_carts("u9", NOW + 31 * DAY)


def test_an_item_bought_after_it_was_left_does_not_come_back(shop: pd.DataFrame) -> None:
    later = with_weights(pd.DataFrame([_row("u9", "phone-pro", "purchase", NOW - DAY, "other-visit")]))
    model = Recommender(factors=0).fit(pd.concat([shop, later], ignore_index=True))
    assert "c9" in model.carts_  # the session itself was never checked out
    assert not model.left_in_carts("u9", NOW)


def test_recommend_all_and_pickle(model: Recommender) -> None:
    table = model.recommend_all(k=3, now=NOW)
    assert list(table.columns) == ["user_key", "rank", "product_id", "score", "reason"]
    assert table.groupby("user_key")["rank"].max().max() == 3
    assert set(table["user_key"]) == {f"u{i}" for i in range(12)}
    again = pickle.loads(pickle.dumps(model))
    assert again.for_user("u3", k=5, now=NOW) == model.for_user("u3", k=5, now=NOW)


def test_category_affinity_follows_what_a_customer_browses(shop: pd.DataFrame) -> None:
    model = CategoryAffinity(prior=1.0).fit(shop)
    top = model.for_user("u8", k=2)  # the book u8 keeps viewing first, then the other one
    assert [c.product_id for c in top] == ["novel", "poems"]
    assert top[0].reason == "you viewed it 4 times; popular in books.fiction"
    assert top[1].reason == "popular in books.fiction, which you browse"
    # Interest draws: five visits to one category, each its focus, and a few views as strays too.
    profile = model.profile("u8")
    assert profile is not None
    assert list(profile) == ["books.fiction"]
    assert 5.0 <= profile["books.fiction"] <= 6.0
    assert model.for_items(["case"], k=1)[0].product_id == "charger"
    assert "cold start" in model.for_user("nobody").reason
    assert "known category" in model.for_items(["nothing-like-it"]).reason


def test_category_affinity_ranks_a_category_at_the_customers_price_level() -> None:
    """Two customers browse the same category, one among its cheap products, one among its dear ones:
    each is offered the products at their own price level; a newcomer and a shop without prices get
    the plain popular ones."""
    prices = {"cheap": 10.0, "budget": 12.0, "mid": 20.0, "posh": 35.0, "premium": 40.0}
    rows = []
    for n, (user, liked) in enumerate([("thrifty", ["cheap", "budget"]), ("lavish", ["posh", "premium"])]):
        for day in range(4):
            rows += [(user, p, day * DAY + n) for p in liked]
    rows += [(f"v{i}", "mid", 5 * DAY + i) for i in range(8)]  # the most viewed: the mid-priced one
    rows += [("thrifty", "other", 6 * DAY)]
    frame = with_weights(
        pd.DataFrame(rows, columns=["user_key", "product_id", "ts"]).assign(
            kind="view",
            session_key=lambda f: f["user_key"] + "@" + (f["ts"] // DAY).astype(str),
            category=lambda f: np.where(f["product_id"] == "other", "elsewhere", "shoes"),
            price=lambda f: f["product_id"].map(prices).fillna(5.0),
        )
    )
    model = CategoryAffinity(prior=0.0).fit(frame)
    assert model.price_width_ is not None
    assert 0.05 < model.price_width_ < 1.0
    assert [c.product_id for c in model.for_user("thrifty", k=2)] == ["cheap", "budget"]
    assert [c.product_id for c in model.for_user("lavish", k=2)] == ["premium", "posh"]
    thrifty, lavish = model.price_level("thrifty"), model.price_level("lavish")
    assert thrifty is not None
    assert lavish is not None
    assert thrifty < 0 < lavish
    assert [c.product_id for c in model.for_user("v0", k=1)] == ["mid"]
    plain = CategoryAffinity(prior=0.0).fit(frame.assign(price=np.nan))
    assert plain.price_width_ is None
    assert plain.price_level("thrifty") is None
    # Without prices: a newcomer's list is the plain popular one, a customer's starts with what they
    # keep viewing (4 views each of two products; "mid" is the shop's choice).
    assert [c.product_id for c in plain.for_user("v0", k=1)] == ["mid"]
    assert [c.product_id for c in plain.for_user("thrifty", k=2)] == ["budget", "cheap"]
    unpriced = CategoryAffinity(prior=0.0, price_prior=None).fit(frame)
    assert unpriced.price_width_ is None
    assert [c.product_id for c in unpriced.for_user("thrifty", k=2)] == ["budget", "cheap"]


def test_category_affinity_keeps_customers_apart_who_share_a_session_id() -> None:
    """Session ids are a customer's own: "1" of one customer is not "1" of another."""
    frame = with_weights(
        pd.DataFrame(
            {
                "user_key": ["u1", "u2", "u2"],
                "product_id": ["a", "b", "c"],
                "ts": [0.0, 1.0, 2.0],
                "kind": ["view"] * 3,
                "session_key": ["1", "1", "2"],
                "category": ["x", "y", "z"],
            }
        )
    )
    model = CategoryAffinity().fit(frame)
    assert list(model.profile("u1") or {}) == ["x"]
    assert sorted(model.profile("u2") or {}) == ["y", "z"]
    assert model.for_user("u2", k=1)[0].product_id in {"b", "c"}


def test_category_affinity_without_views_has_no_own_views_to_cite() -> None:
    frame = with_weights(
        pd.DataFrame(
            {
                "user_key": ["u1", "u1", "u2"],
                "product_id": ["a", "a", "b"],
                "ts": [0.0, 9e5, 1.0],
                "kind": ["purchase"] * 3,
                "category": ["x", "x", "x"],
            }
        )
    )
    model = CategoryAffinity().fit(frame)
    assert [c.product_id for c in model.for_user("u1", k=2)] == ["a", "b"]  # the shop's choice
    assert all("viewed" not in c.reason for c in model.for_user("u1", k=2))

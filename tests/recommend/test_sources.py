"""Candidate sources on fixture interactions with known answers, bad input, and the sessionised store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from winback.errors import BadInputError
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.recommend.interactions import interactions, time_split, with_weights
from winback.recommend.sources import BasketRules, ContentNeighbours, ItemNeighbours, Popularity

DAY = 86_400.0
NOW = 100 * DAY


def _rows(user: str, items: list[str], kind: str, ts: float, order: str | None = None) -> list[dict]:
    return [
        {
            "user_key": user,
            "product_id": p,
            "kind": kind,
            "ts": ts + i,
            "order_id": order,
            "session_key": None,
        }
        for i, p in enumerate(items)
    ]


@pytest.fixture
def shop() -> pd.DataFrame:
    """``a`` and ``b`` are always bought together; ``c``/``d`` are bought alone; ``x`` is only viewed."""
    rows: list[dict] = []
    for n in range(6):
        rows += _rows(f"u{n}", ["a", "b"], "purchase", NOW - n * DAY, order=f"o{n}")
        rows += _rows(f"u{n}", ["c" if n % 2 else "d"], "purchase", NOW - n * DAY + 100, order=f"p{n}")
        if n < 3:
            rows += _rows(f"u{n}", ["x"], "view", NOW - 50 * DAY)
    frame = with_weights(pd.DataFrame(rows))
    catalogue = {"a": ("home.kitchen", 40.0), "b": ("home.kitchen", 10.0), "c": ("books.fiction", 12.0)}
    catalogue |= {"d": ("books.fiction", 15.0), "x": ("books.fiction", 30.0)}
    frame["category"] = frame["product_id"].map(lambda p: catalogue[p][0])
    frame["price"] = frame["product_id"].map(lambda p: catalogue[p][1])
    return frame


def test_items_bought_together_are_each_others_top_neighbour(shop: pd.DataFrame) -> None:
    model = ItemNeighbours().fit(shop)
    assert model.similar("a", k=1)[0].product_id == "b"
    assert model.similar("b", k=1)[0].product_id == "a"
    top = model.similar("a", k=1)[0]
    assert top.score == pytest.approx(1.0)
    assert top.reason == "chosen by the customers who chose a"
    recs = model.for_items(["a", "c"], k=10)
    assert {c.product_id for c in recs}.isdisjoint({"a", "c"})
    assert [c.score for c in recs] == sorted((c.score for c in recs), reverse=True)
    history = model.for_items(["a", "x"], k=2, weights=[5.0, 1.0], include_query=True)
    assert [c.product_id for c in history] == ["a", "b"]
    assert history[0].reason == "chosen before, and by customers with the same taste"
    assert history[0].score > model.for_items(["a", "x"], k=1, include_query=True)[0].score
    with pytest.raises(BadInputError, match="weights"):
        model.for_items(["a"], weights=[1.0, 2.0])


def test_cosine_matches_implicit(shop: pd.DataFrame) -> None:
    from implicit.nearest_neighbours import CosineRecommender

    model = ItemNeighbours().fit(shop)
    reference = CosineRecommender(K=10)
    reference.fit(sp.csr_matrix(model.user_items_), show_progress=False)
    ids, scores = reference.similar_items(model.item_index_["c"], N=5)
    theirs = {
        str(model.items_[i]): float(s) for i, s in zip(ids, scores, strict=True) if model.items_[i] != "c"
    }
    ours = {c.product_id: c.score for c in model.similar("c", k=5)}
    assert ours.keys() == {p for p, s in theirs.items() if s > 0}
    for p, s in ours.items():
        assert s == pytest.approx(theirs[p], rel=1e-4)


def _random_shop(users: int = 40, products: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for u in range(users):
        chosen = rng.choice(products, size=6, replace=False)
        kinds = rng.choice(["view", "cart", "purchase"], size=6, p=[0.6, 0.25, 0.15])
        for i, (p, kind) in enumerate(zip(chosen, kinds, strict=True)):
            rows += _rows(f"u{u}", [f"p{p}"], str(kind), NOW - i * DAY)
    return with_weights(pd.DataFrame(rows))


def test_each_product_keeps_only_its_closest_neighbours() -> None:
    """Item-kNN's usual pruning: each product keeps its ``neighbours`` strongest similarities (itself
    first, then the closest; of equal ones the first products); a query sums the kept ones."""
    frame = _random_shop()
    full = ItemNeighbours(neighbours=0).fit(frame)
    kept = ItemNeighbours(neighbours=4).fit(frame)
    assert full._cosines.nnz > kept._cosines.nnz == 4 * len(kept.items_)
    for i in range(len(full.items_)):
        row = full._cosines[i]
        strongest = row.indices[np.lexsort((row.indices, -row.data))[:4]]
        assert sorted(kept._cosines[i].indices) == sorted(strongest)
        assert kept._cosines[i, i] == pytest.approx(1.0)  # a product is its own closest
        assert len(kept.similar(str(kept.items_[i]), k=10)) <= 3

    history, weights = ["p1", "p2", "p3", "p5", "p8"], [5.0, 1.0, 3.0, 1.0, 2.0]
    found, scores = kept.query(history, k=10, weights=weights, include_query=True)
    assert len(found) == 10
    rows = [kept.item_index_[p] for p in history]
    np.testing.assert_allclose(scores, kept._cosines[rows].T @ np.array(weights))
    assert [c.product_id for c in found] == [
        str(kept.items_[j]) for j in np.lexsort((np.arange(scores.size), -scores))[: len(found)]
    ]
    for candidate in found:  # the reason names the history item that gave it most
        j = kept.item_index_[candidate.product_id]
        gave = kept._cosines[rows, j].toarray().ravel() * weights
        assert candidate.reason == kept._reason(j, rows[int(np.argmax(gave))])
    with pytest.raises(BadInputError, match="neighbours -1"):
        ItemNeighbours(neighbours=-1).fit(frame)


def test_learn_new_equals_a_full_fit(shop: pd.DataFrame) -> None:
    more = with_weights(
        pd.DataFrame(
            _rows("u0", ["c", "new"], "purchase", NOW + 10) + _rows("u9", ["new", "b"], "cart", NOW + 20)
        )
    )
    full = ItemNeighbours().fit(pd.concat([shop, more]))
    step = ItemNeighbours().fit(shop).learn_new(more)
    order = [step.item_index_[p] for p in full.items_]
    assert (abs(step.cooccurrence_[order][:, order] - full.cooccurrence_) > 1e-9).nnz == 0
    assert step.similar("new", k=3) == full.similar("new", k=3)
    assert step.similar("new", k=1)  # a product unknown before learn_new now has neighbours


def test_rules_for_items_always_bought_together(shop: pd.DataFrame) -> None:
    model = BasketRules().fit(shop)
    rule = model.rules_.query("antecedent == 'a' and consequent == 'b'").iloc[0]
    assert rule["confidence"] == pytest.approx(1.0)
    assert rule["support"] == pytest.approx(6 / 12)  # 6 baskets of a+b, 6 baskets of c or d alone
    assert rule["lift"] == pytest.approx(2.0)
    assert rule["lift"] > 1
    recs = model.for_items(["a"], k=5)
    assert recs[0].product_id == "b"
    assert recs[0].reason == "often bought with a (100% of its baskets, lift 2.0)"
    assert model.for_items(["c"]).reason.startswith("no rules yet")  # c is always bought alone
    assert BasketRules(min_support=0.6).fit(shop).rules_.empty


def test_complements_are_products_of_other_categories_viewed_in_the_same_visits() -> None:
    """A phone's page links its case: visits that view the phone view the case (another category) more
    than the other phones (its own category), which the complements leave out."""
    visits = [["phone", "case"]] * 4 + [["phone", "phone-lite"]] * 6 + [["phone-lite"]] * 2
    rows = [
        {"user_key": f"u{n}", "product_id": p, "ts": n * DAY + i, "kind": "view", "session_key": f"s{n}"}
        for n, visit in enumerate(visits)
        for i, p in enumerate(visit)
    ]
    frame = with_weights(pd.DataFrame(rows))
    frame["category"] = frame["product_id"].map({"phone": "phones", "phone-lite": "phones", "case": "cases"})
    complements = BasketRules(
        kinds=("view",), baskets=("session_key",), across_categories=True, min_count=3
    ).fit(frame)
    pairs = zip(complements.rules_["antecedent"], complements.rules_["consequent"], strict=True)
    assert set(pairs) == {
        ("phone", "case"),
        ("case", "phone"),
    }
    recs = complements.for_items(["phone"], k=3)
    assert [c.product_id for c in recs] == ["case"]
    assert recs[0].reason == "often viewed with phone (40% of its visits, lift 1.2)"
    everything = BasketRules(kinds=("view",), baskets=("session_key",)).fit(frame)
    assert everything.for_items(["phone"], k=1)[0].product_id == "phone-lite"  # in more of its visits
    with pytest.raises(BadInputError, match="baskets"):
        BasketRules(baskets=("cart_id",)).fit(frame)


def test_cold_item_gets_content_neighbours(shop: pd.DataFrame) -> None:
    catalogue = pd.DataFrame(
        {
            "product_id": ["a", "b", "c", "d", "x", "cold"],
            "category": ["home.kitchen"] * 2 + ["books.fiction"] * 4,
            "price": [40.0, 10.0, 12.0, 15.0, 30.0, 15.0],
        }
    )
    assert ItemNeighbours().fit(shop).similar("cold") == []
    content = ContentNeighbours().fit(catalogue)
    recs = content.similar("cold", k=3)
    assert [c.product_id for c in recs] == ["d", "c", "x"]  # same price, 20% cheaper, twice the price
    assert recs[0].reason == "similar to cold, same price"
    assert recs[1].reason == "similar to cold, 20% cheaper"
    assert [c.product_id for c in content.similar("cold", cheaper=True)] == ["c"]
    assert {c.product_id for c in content.similar("a")} == {"b"}


def test_a_product_of_the_same_brand_comes_first_and_says_so() -> None:
    catalogue = pd.DataFrame(
        {
            "product_id": ["phone", "case-a", "case-b", "case-c", "case-d"],
            "category": ["phones"] + ["cases"] * 4,
            "brand": ["Acme", "Acme", "Bolt", None, "Acme"],
            "price": [300.0, 20.0, 20.0, 20.0, 22.0],
        }
    )
    content = ContentNeighbours().fit(catalogue)
    recs = content.similar("case-b", k=3)
    assert [c.product_id for c in recs] == ["case-a", "case-c", "case-d"]  # no brand in common
    assert recs[0].reason == "similar to case-b, same price"
    recs = content.similar("case-a", k=3)
    assert [c.product_id for c in recs] == ["case-d", "case-b", "case-c"]  # same brand, a little dearer
    assert recs[0].reason == "same brand as case-a (Acme), 10% dearer"
    assert recs[0].score == pytest.approx(np.exp(-np.log(1.1) / np.log(1.5)), abs=1e-6)
    assert recs[1].score == pytest.approx(1 / 1.5, abs=1e-6)  # another brand at the same price
    blind = ContentNeighbours(brand_weight=0).fit(catalogue)
    assert [c.product_id for c in blind.similar("case-a", k=1)] == ["case-b"]
    without = ContentNeighbours().fit(catalogue.drop(columns="brand")).similar("case-a", k=1)
    assert without[0].reason == "similar to case-a, same price"
    with pytest.raises(BadInputError, match="brand_weight"):
        ContentNeighbours(brand_weight=-1).fit(catalogue)


def test_popularity_decays_with_age() -> None:
    frame = with_weights(
        pd.DataFrame(
            _rows("u1", ["new"], "purchase", NOW)
            + _rows("u2", ["old"], "purchase", NOW - 7 * DAY)
            + _rows("u3", ["older"], "purchase", NOW - 14 * DAY)
        )
    )
    frame["category"] = ["books.fiction", "books.fiction", "garden.tools"]
    model = Popularity(half_life_days=7).fit(frame)
    assert model.scores_["old"] == pytest.approx(model.scores_["new"] / 2, rel=1e-4)
    assert model.scores_["older"] == pytest.approx(model.scores_["new"] / 4, rel=1e-4)
    top = model.top(k=2)
    assert [c.product_id for c in top] == ["new", "old"]
    assert model.top(category="books.fiction")[0].reason == "popular in books.fiction this week"
    assert [c.product_id for c in model.top(category="garden.tools")] == ["older"]
    assert [c.product_id for c in model.top(category="books.fiction", exclude=["new"])] == ["old"]


def test_unknown_input_gives_an_empty_list_with_a_reason(shop: pd.DataFrame) -> None:
    sources = [ItemNeighbours().fit(shop), BasketRules().fit(shop), ContentNeighbours().fit(shop)]
    for source in sources:
        recs = source.similar("nope")
        assert recs == []
        assert "nope" in recs.reason
    assert Popularity().fit(shop).top(category="nope").reason.startswith("unknown category nope")
    assert ItemNeighbours().fit(shop).for_items([]).reason.startswith("no products given")


@pytest.mark.parametrize("k", [0, -1, 1001, 2.5, "10", True])
def test_k_out_of_range_is_a_usage_error(shop: pd.DataFrame, k: object) -> None:
    model = ItemNeighbours().fit(shop)
    with pytest.raises(BadInputError, match="--k"):
        model.similar("a", k=k)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="--k"):
        Popularity().fit(shop).top(k=k)  # type: ignore[arg-type]


def test_wrong_columns_name_the_column(shop: pd.DataFrame) -> None:
    for model in (ItemNeighbours(), BasketRules(), Popularity()):
        with pytest.raises(BadInputError, match="weight"):
            model.fit(shop.drop(columns="weight"))
    with pytest.raises(BadInputError, match="kind"):
        with_weights(pd.DataFrame({"user_key": ["u"], "product_id": ["p"], "ts": [0.0], "kind": ["like"]}))


def test_interactions_from_the_store(sim_shop) -> None:  # type: ignore[no-untyped-def]
    settings, result = sim_shop
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        everything = interactions(tables)
        span = tables.span()
        cut = span.first + (span.last - span.first) * 0.8
        before = interactions(tables, as_of=cut)
    assert set(everything["kind"]) == {"view", "cart", "purchase"}
    assert everything["weight"].groupby(everything["kind"]).first().to_dict() == {
        "cart": 3.0,
        "purchase": 5.0,
        "view": 1.0,
    }
    assert (before["ts"] < cut.timestamp()).all()
    assert len(before) < len(everything)
    assert set(everything["product_id"]) <= set(result.products["product_id"])
    brands = everything.drop_duplicates("product_id").set_index("product_id")["brand"]
    known = result.products.set_index("product_id")["brand"]
    assert brands.to_dict() == known.reindex(brands.index).to_dict()
    split = time_split(everything, cut)
    assert len(split.train) == len(before)
    assert not split.test.duplicated().any()
    assert set(split.test["user_key"]) <= set(split.train["user_key"])
    model = ItemNeighbours().fit(split.train)
    user = split.test["user_key"].iloc[0]
    recent = split.train[split.train["user_key"] == user]["product_id"].tail(5).tolist()
    assert len(model.for_items(recent, k=10)) == 10
    sizes = np.diff(sp.csr_matrix(model.user_items_).indptr)
    assert (sizes > 0).all()

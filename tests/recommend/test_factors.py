"""ALS factors on a log with two clear taste groups, checked against implicit's own solves and NumPy."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

from winback.errors import BadInputError
from winback.recommend.factors import ALSFactors, _best
from winback.recommend.interactions import with_weights

GARDEN = [f"g{i}" for i in range(10)]
KITCHEN = [f"k{i}" for i in range(10)]


def _group(product_id: str) -> list[str]:
    return GARDEN if product_id.startswith("g") else KITCHEN


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    """30 garden and 30 kitchen customers; each buys 4 products of their group and views 2 more."""
    rng = np.random.default_rng(7)
    rows: list[dict] = []
    for n in range(60):
        user, group = f"u{n}", GARDEN if n % 2 else KITCHEN
        chosen = rng.choice(group, size=6, replace=False)
        for i, p in enumerate(chosen):
            rows.append({"user_key": user, "product_id": p, "ts": float(n * 100 + i), "kind": "view"})
            if i < 4:
                rows.append({"user_key": user, "product_id": p, "ts": n * 100 + i + 0.5, "kind": "purchase"})
    return with_weights(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def model(shop: pd.DataFrame) -> ALSFactors:
    """Twice as many factors as taste groups; a strong ridge keeps 20 products from being overfitted."""
    return ALSFactors(factors=4, regularization=5.0, threads=1, random_state=0).fit(shop)


def test_recommends_unseen_products_of_the_customers_taste_group(
    shop: pd.DataFrame, model: ALSFactors
) -> None:
    for user, history in shop.groupby("user_key")["product_id"]:
        seen = set(history)
        recs = model.for_user(str(user), k=3)
        assert len(recs) == 3
        assert {c.product_id for c in recs} <= set(_group(history.iloc[0])) - seen
        assert [c.score for c in recs] == sorted((c.score for c in recs), reverse=True)
        for c in recs:
            liked = c.reason.removeprefix("fits the taste of your past choices, like ")
            assert liked in seen
    again = model.for_user("u1", k=20, include_seen=True, exclude=["g0"])
    assert "g0" not in {c.product_id for c in again}
    assert any(c.reason == "chosen before, and fits the taste of your past choices" for c in again)


def test_a_new_customers_session_is_folded_in(model: ALSFactors) -> None:
    recs = model.for_items(["g1", "g2", "nope"], k=4, exclude=["g3"])
    assert len(recs) == 4
    assert {c.product_id for c in recs} <= set(GARDEN) - {"g1", "g2", "g3"}
    assert all(c.reason.startswith("fits the taste of your choices, like g") for c in recs)
    cart = model.for_items(["k4"], k=10, weights=[5.0], include_query=True)
    assert {c.product_id for c in cart} == set(KITCHEN)
    assert {c.reason for c in cart if c.product_id == "k4"} == {
        "chosen before, and fits the taste of your choices"
    }


def test_similar_products_are_the_nearest_vectors(model: ALSFactors) -> None:
    recs = model.similar("g0", k=5)
    assert {c.product_id for c in recs} <= set(GARDEN) - {"g0"}
    assert all(c.reason == "often chosen by the same customers as g0" for c in recs)
    unit = model.item_factors_ / np.linalg.norm(model.item_factors_, axis=1, keepdims=True)
    cosine = unit @ unit[model.item_index_["g0"]]
    cosine[model.item_index_["g0"]] = -np.inf
    expected = np.argsort(-cosine, kind="stable")[:5]
    assert [c.product_id for c in recs] == list(model.items_[expected])
    assert [c.score for c in recs] == pytest.approx(cosine[expected], abs=1e-5)


def test_confidence_is_alpha_times_the_summed_weights(shop: pd.DataFrame) -> None:
    fitted = ALSFactors(factors=4, iterations=2, alpha=2.0, threads=1).fit(shop)
    summed = shop.groupby(["user_key", "product_id"])["weight"].sum()
    rows = [fitted.user_index_[u] for u, _ in summed.index]
    cols = [fitted.item_index_[p] for _, p in summed.index]
    assert np.allclose(fitted.user_items_[rows, cols].A1, 2.0 * summed.to_numpy())
    assert fitted.user_items_.nnz == len(summed)
    assert list(fitted.items_) == sorted(GARDEN + KITCHEN)


def test_fold_in_and_ranking_match_implicit(model: ALSFactors) -> None:
    reference = AlternatingLeastSquares(
        factors=model.factors, regularization=model.regularization, num_threads=1
    )
    reference.item_factors = model.item_factors_.copy()
    reference.user_factors = model.user_factors_.copy()
    columns = np.array([model.item_index_[p] for p in ("g1", "g2", "g5")])
    confidences = np.array([1.0, 6.0, 3.0])
    row = sp.csr_matrix(
        (confidences.astype(np.float32), (np.zeros(3, int), columns)), shape=(1, len(model.items_))
    )
    theirs = reference.recalculate_user(0, row)
    assert model.fold_in(columns, confidences) == pytest.approx(theirs, rel=1e-4, abs=1e-6)

    user = model.user_index_["u1"]
    ids, _ = reference.recommend(user, model.user_items_[user], N=3, filter_already_liked_items=True)
    assert [c.product_id for c in model.for_user("u1", k=3)] == list(model.items_[ids])


def test_pickle_round_trip_gives_identical_answers(model: ALSFactors) -> None:
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(restored.item_factors_, model.item_factors_)
    assert restored.for_user("u3", k=5) == model.for_user("u3", k=5)
    assert restored.for_items(["k1", "k2"], k=5) == model.for_items(["k1", "k2"], k=5)
    assert restored.similar("g4", k=5) == model.similar("g4", k=5)


def test_same_seed_same_model_on_all_cores(shop: pd.DataFrame) -> None:
    a = ALSFactors(factors=8, threads=0, random_state=3).fit(shop)
    b = ALSFactors(factors=8, threads=0, random_state=3).fit(shop)
    c = ALSFactors(factors=8, threads=0, random_state=4).fit(shop)
    assert np.array_equal(a.user_factors_, b.user_factors_)
    assert np.array_equal(a.item_factors_, b.item_factors_)
    assert not np.array_equal(a.item_factors_, c.item_factors_)


def test_unknown_customers_and_products_get_a_reason(model: ALSFactors) -> None:
    for answer, reason in [
        (model.for_user("stranger"), "unknown customer stranger: no interactions yet (cold start)"),
        (model.similar("zzz"), "unknown product zzz: no interactions yet (cold start)"),
        (model.for_items(["zzz"]), "unknown product zzz: no interactions yet (cold start)"),
        (model.for_items([]), "no products given (or all weighted 0): nothing to start from"),
    ]:
        assert answer == []
        assert answer.reason == reason


def test_an_empty_log_fits_and_answers_with_reasons() -> None:
    empty = with_weights(pd.DataFrame({"user_key": [], "product_id": [], "ts": [], "kind": []}))
    fitted = ALSFactors().fit(empty)
    assert fitted.for_user("u1") == []
    assert fitted.for_user("u1").reason == "unknown customer u1: no interactions yet (cold start)"
    assert fitted.similar("a") == []
    assert fitted.for_items(["a"]).reason == "unknown product a: no interactions yet (cold start)"


@pytest.mark.parametrize("k", [0, 1001, 2.5, True, "3"])
def test_k_out_of_range_is_bad_input(model: ALSFactors, k: object) -> None:
    with pytest.raises(BadInputError, match="--k"):
        model.for_user("u1", k=k)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="--k"):
        model.for_items(["g1"], k=k)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="--k"):
        model.similar("g1", k=k)  # type: ignore[arg-type]


def test_bad_parameters_and_weights_are_bad_input(shop: pd.DataFrame, model: ALSFactors) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"factors": 0}, "factors"),
        ({"iterations": 1.5}, "iterations"),
        ({"regularization": 0.0}, "regularization"),
        ({"alpha": float("nan")}, "alpha"),
        ({"threads": -1}, "threads"),
    ]
    for params, field in cases:
        with pytest.raises(BadInputError, match=field):
            ALSFactors(**params).fit(shop)
    negative = shop.assign(weight=-1.0)
    with pytest.raises(BadInputError, match="column 'weight'"):
        ALSFactors().fit(negative)
    with pytest.raises(BadInputError, match="weights: expected one per product"):
        model.for_items(["g1", "g2"], weights=[1.0])
    with pytest.raises(BadInputError, match="for product g1"):
        model.for_items(["g1"], weights=[-2.0])


@pytest.mark.parametrize("k", [1, 10, 999, 1000])
def test_sampled_top_k_equals_a_full_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = np.round(rng.standard_normal(20_000), 2).astype(np.float32)  # many ties
    banned = rng.integers(0, scores.size, 50)
    reference = scores.copy()
    reference[banned] = -np.inf
    expected = np.sort(reference[reference > 0])[::-1][:k]
    top = _best(scores.copy(), k, banned)
    assert np.array_equal(reference[top], expected)
    assert not set(top) & set(banned)
    assert [(-reference[j], j) for j in top] == sorted((-reference[j], j) for j in top)

"""The learned ranker of the ``winback`` use: LightGBM's trees served as arrays, learnt from a label
window on a small simulated shop, beside its sources; the fallback to the blend; saved and loaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from winback.config import Settings, load_settings
from winback.errors import BadInputError
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.recommend.interactions import TimeSplit, interactions, time_split, with_weights
from winback.recommend.learned import LearnedRanker
from winback.recommend.ranker import Recommender
from winback.recommend.slate import FEATURES, SOURCES
from winback.recommend.tasks import load_recommender, ranking_metrics, train_recommend
from winback.sim import SimulationResult

DAY = 86_400.0


def _ranking_data(seed: int, groups: int = 60, size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists whose bought items have a high first feature, with missing values in every column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(groups * size, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=len(x)) > 1.2).astype(float)
    x[rng.random(x.shape) < 0.2] = np.nan
    return x, y, np.full(groups, size)


@pytest.mark.parametrize("objective", ["lambdarank", "binary"])
def test_the_ranker_learns_the_signal_and_pickles(objective: str) -> None:
    x, y, groups = _ranking_data(0)
    names = tuple(f"f{i}" for i in range(x.shape[1]))
    ranker = LearnedRanker(objective, n_estimators=40, min_child_samples=10).fit(x, y, groups, names)
    assert ranker.best_iteration_ == 40
    fresh, truth, _ = _ranking_data(1)
    scores = ranker.predict(fresh)
    # It learnt the signal: the items bought score higher, and the first feature counts most.
    assert scores[truth == 1].mean() > scores[truth == 0].mean() + 0.5
    assert max(ranker.importance_, key=ranker.importance_.__getitem__) == "f0"
    again = pickle.loads(pickle.dumps(ranker))
    assert np.array_equal(again.predict(fresh), scores)
    same = LearnedRanker(objective, n_estimators=40, min_child_samples=10).fit(x, y, groups, names)
    assert np.array_equal(same.predict(fresh), scores)  # deterministic
    assert ranker.predict(np.zeros((0, x.shape[1]))).shape == (0,)


def test_the_trees_correct_a_base_feature() -> None:
    """With a base, the score is the base feature (weighted) plus the trees, which learn what it misses."""
    x, y, groups = _ranking_data(3)
    names = tuple(f"f{i}" for i in range(x.shape[1]))
    ranker = LearnedRanker(n_estimators=20, base="f1", base_scale=2.0).fit(x, y, groups, names)
    fresh, _, _ = _ranking_data(4)
    trees = ranker.booster_.predict(fresh, raw_score=True)
    assert np.allclose(ranker.predict(fresh), 2.0 * np.nan_to_num(fresh[:, 1]) + trees)
    with pytest.raises(BadInputError, match="base 'f9'"):
        LearnedRanker(base="f9").fit(x, y, groups, names)


def test_early_stopping_and_bad_settings() -> None:
    x, y, groups = _ranking_data(2)
    names = tuple(f"f{i}" for i in range(x.shape[1]))
    ranker = LearnedRanker(n_estimators=500, early_stopping_rounds=5).fit(
        x[:1600], y[:1600], groups[:40], names, validation=(x[1600:], y[1600:], groups[40:])
    )
    assert 1 <= ranker.best_iteration_ < 500
    with pytest.raises(BadInputError, match="objective 'poisson'"):
        LearnedRanker(objective="poisson").fit(x, y, groups, names)
    with pytest.raises(BadInputError, match="do not match"):
        LearnedRanker().fit(x, y[:-1], groups, names)


@pytest.fixture(scope="module")
def shop_split(sim_shop: tuple[Settings, SimulationResult]) -> TimeSplit:
    """The 600-customer shop of the test run: trained on the first 120 days, tested on the last 30."""
    settings, _ = sim_shop
    with open_source(settings) as source:
        frame = interactions(FeatureTables(source, settings))
    return time_split(frame, float(frame["ts"].max()) - 30 * DAY)


@pytest.fixture(scope="module")
def learned(shop_split: TimeSplit) -> Recommender:
    """Kept whatever it does on the held-out customers (whether it beats the blend on 60 of them is
    chance on a shop this small)."""
    return Recommender(min_customers=30, ranker="learned").fit(shop_split.train)


def _recall(lists: dict[str, list[str]], truth: dict[str, set[str]]) -> float:
    return float(np.mean([ranking_metrics(lists.get(u, []), bought)[0] for u, bought in truth.items()]))


def test_the_ranker_learns_from_a_label_window_and_beats_its_weakest_source(
    learned: Recommender, shop_split: TimeSplit
) -> None:
    assert learned.ranker_ is not None, learned.ranker_reason_
    assert learned.ranker_reason_.startswith("learned ranker from")
    report = learned.ranker_report_
    assert report["learnt_from"] >= 30
    assert 0 < report["candidate_recall"] <= 1
    assert report["held_out"] >= 30 // 5
    assert set(learned.ranker_.features_) == set(FEATURES)
    truth = shop_split.truth()
    at = shop_split.at
    ranked = {u: [c.product_id for c in learned.for_user(u, 10, now=at)] for u in truth}
    sources = {
        "category affinity": {u: [c.product_id for c in learned.affinity_.for_user(u, 10)] for u in truth},
        "basket rules": {
            u: [c.product_id for c in learned.rules_.for_items(_bought(learned, u), 10)] for u in truth
        },
        "popularity": {u: [c.product_id for c in learned.popularity_.top(10)] for u in truth},
    }
    recalls = {name: _recall(lists, truth) for name, lists in sources.items()}
    weakest = min(recalls, key=recalls.__getitem__)
    assert _recall(ranked, truth) > recalls[weakest] + 0.02, (_recall(ranked, truth), recalls)
    # The learned order is not the blend's.
    blend = {u: [c.product_id for c in learned.for_user(u, 10, now=at, learned=False)] for u in truth}
    assert sum(ranked[u] != blend[u] for u in truth) > len(truth) / 4


def test_auto_keeps_the_learned_ranker_only_where_it_beats_the_blend(shop_split: TimeSplit) -> None:
    model = Recommender(min_customers=30, factors=0).fit(shop_split.train)
    report = model.ranker_report_
    beats = report["held_out_recall_learned"] >= report["held_out_recall_blend"]
    assert (model.ranker_ is not None) == beats, model.ranker_reason_
    if not beats:
        assert "did not beat the fixed blend" in model.ranker_reason_


def _bought(model: Recommender, user: str) -> list[str]:
    history = model.histories_.of(user)
    assert history is not None
    return [str(p) for p in history.products[~np.isnan(history.last_bought)]]


def test_each_item_keeps_the_reason_of_the_source_that_proposed_it(
    learned: Recommender, shop_split: TimeSplit
) -> None:
    from winback.recommend.slate import build_slate

    users = sorted(shop_split.truth())[:40]
    for user in users:
        recs = learned.for_user(user, 10, now=shop_split.at)
        assert len(recs) == 10
        assert all(0 < c.score < 1 for c in recs)
        assert [c.score for c in recs] == sorted((c.score for c in recs), reverse=True)
        history = learned.histories_.of(user)
        assert history is not None
        skip = learned._unavailable(history, shop_split.at)
        depth = learned.depth + 10 + len(skip)
        slate = build_slate(learned, user, history, shop_split.at, skip, depth, als_list=learned._als_list())
        for c in recs:
            said = {slate.reasons[s][c.product_id] for s in SOURCES if c.product_id in slate.reasons[s]}
            assert c.reason in said, (user, c)
            assert c.product_id not in skip


def test_the_learned_ranker_is_saved_and_loaded_with_the_model(
    learned: Recommender, shop_split: TimeSplit, tmp_path: Path
) -> None:
    again = pickle.loads(pickle.dumps(learned))
    assert again.ranker_ is not None
    users = sorted(shop_split.truth())[:20]
    for user in users:
        assert again.for_user(user, 10, now=shop_split.at) == learned.for_user(user, 10, now=shop_split.at)


def test_train_recommend_saves_the_ranker_and_says_how_it_ranks(
    sim_shop: tuple[Settings, SimulationResult], tmp_path: Path
) -> None:
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(sim_shop[0].store_path, home / "events.duckdb")
    settings = load_settings(home=home)
    with open_source(settings) as source:
        card = train_recommend(FeatureTables(source, settings))
    model, loaded_card = load_recommender(settings)
    assert loaded_card.params["ranker"] == model.ranker_reason_
    assert card.params["ranker"] == model.ranker_reason_
    assert "ranker" in card.metrics
    user = sorted(model.histories_.index_)[0]
    assert model.for_user(user, 5)  # answers, learned or blended


def test_a_tiny_shop_falls_back_to_the_blend_and_says_why() -> None:
    rows = [
        ("u1", "a", 0.0, "view"),
        ("u1", "a", 60.0, "purchase"),
        ("u2", "b", 40 * DAY, "view"),
        ("u2", "a", 41 * DAY, "purchase"),
        ("u3", "b", 50 * DAY, "purchase"),
    ]
    frame = with_weights(pd.DataFrame(rows, columns=["user_key", "product_id", "ts", "kind"]))
    model = Recommender(factors=0).fit(frame)
    assert model.ranker_ is None
    assert model.ranker_reason_.startswith("fixed blend: too little data to learn a ranker")
    assert "need 50" in model.ranker_reason_
    assert model.for_user("u2", 2) == model.for_user("u2", 2, learned=False)
    blend = Recommender(factors=0, ranker="blend").fit(frame)
    assert blend.ranker_reason_ == "fixed blend (ranker='blend')"
    with pytest.raises(BadInputError, match="ranker 'best'"):
        Recommender(ranker="best").fit(frame)


def test_new_interactions_reach_the_learned_lists(learned: Recommender, shop_split: TimeSplit) -> None:
    """After ``learn_new`` a new customer, unknown to the fitted sources, gets a learned list from the
    sources that know them (their views, the item neighbours), and a product new to the shop is
    scored without features it cannot have."""
    model = pickle.loads(pickle.dumps(learned))
    popular = [c.product_id for c in model.popularity_.top(3)]
    rows = [("newcomer", p, shop_split.at + 60.0 * i, "view") for i, p in enumerate(popular)]
    rows.append(("newcomer", "brand-new-product", shop_split.at + 300.0, "view"))
    model.learn_new(with_weights(pd.DataFrame(rows, columns=["user_key", "product_id", "ts", "kind"])))
    recs = model.for_user("newcomer", 5)
    assert model.ranker_ is not None
    assert len(recs) == 5
    assert all(c.reason for c in recs)


def test_a_recommender_saved_before_the_learned_ranker_still_answers(learned: Recommender) -> None:
    """A pickle of the previous version (no ranker, no cart times in the histories) ranks with the blend."""
    old = pickle.loads(pickle.dumps(learned))
    for name in ("ranker_", "ranker_reason_", "ranker_report_", "item_stats_"):
        delattr(old, name)
    del old.histories_._last_carted
    loaded = pickle.loads(pickle.dumps(old))
    user = sorted(loaded.histories_.index_)[0]
    assert loaded.for_user(user, 5) == learned.for_user(user, 5, learned=False)

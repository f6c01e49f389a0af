"""The evaluation's figures: recall against the baseline's, and how sure that ratio is."""

from __future__ import annotations

import numpy as np
import pandas as pd

from winback.recommend.interactions import TimeSplit
from winback.recommend.tasks import evaluate_lists, ratio_intervals


def test_the_ratio_interval_is_exact_when_every_customer_agrees_and_narrows_with_more_customers() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(1, 4, 200) / 4.0
    exact = ratio_intervals(np.column_stack([base, 2 * base, base]), baseline=2)
    np.testing.assert_allclose(exact, [[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])

    def noisy(n: int) -> tuple[float, float, float]:
        baseline = (rng.random(n) < 0.2).astype(float)
        better = (rng.random(n) < 0.3).astype(float)
        (low, high), _ = ratio_intervals(np.column_stack([better, baseline]), baseline=1)
        return low, better.mean() / baseline.mean(), high

    low, point, high = noisy(600)
    assert low < point < high
    wide = high - low
    low, point, high = noisy(20_000)
    assert low < point < high
    assert high - low < wide / 4  # about 1/sqrt(n): 600 -> 20,000 customers, 5.8 times narrower
    assert np.isnan(ratio_intervals(np.zeros((0, 2)), baseline=1)).all()  # no customers: no interval


def test_evaluate_lists_gives_each_recommender_its_ratio_and_interval() -> None:
    train = pd.DataFrame({"product_id": ["a", "b", "c", "d"], "user_key": ["u1", "u2", "u3", "u4"]})
    test = pd.DataFrame({"user_key": ["u1", "u2", "u3", "u4"], "product_id": ["a", "b", "c", "d"]})
    split = TimeSplit(at=0.0, train=train, test=test)
    lists = {
        "popularity": {u: ["a", "b"] for u in ("u1", "u2", "u3", "u4")},  # right for u1 and u2
        "mine": {"u1": ["a"], "u2": ["b"], "u3": ["c"], "u4": ["x"]},  # right for three of four
    }
    table = evaluate_lists(split, lists, k=2)
    assert table.loc["mine", "recall@2"] == 0.75
    assert table.loc["popularity", "recall@2"] == 0.5
    assert table.loc["mine", "x_popularity"] == 1.5
    assert (table.loc["popularity", "x_low"], table.loc["popularity", "x_high"]) == (1.0, 1.0)
    assert table.loc["mine", "x_low"] <= 1.5 <= table.loc["mine", "x_high"]

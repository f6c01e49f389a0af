"""Shared binary metrics on inputs small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console

from winback.errors import BadInputError
from winback.models.metrics import binary_report, compare, render_comparison

# Two negatives (0.1, 0.4) and two positives (0.35, 0.8).
Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_report_on_four_rows() -> None:
    r = binary_report(Y, P, bins=2)
    assert r["n"] == 4
    assert r["base_rate"] == 0.5
    # positive-negative pairs ranked right: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 (not 0.35 > 0.4): 3 of 4
    assert r["roc_auc"] == pytest.approx(0.75)
    # ranked 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1
    assert r["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert r["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    )
    # top 10% of 4 rows is the single top row, 0.8, a positive: rate 1 / base rate 0.5
    assert r["lift_top_decile"] == pytest.approx(2.0)
    # median edge 0.375: {0.1, 0.35} below, {0.4, 0.8} above
    assert r["calibration"] == [
        {"mean_predicted": pytest.approx(0.225), "observed_rate": 0.5, "count": 2},
        {"mean_predicted": pytest.approx(0.6), "observed_rate": 0.5, "count": 2},
    ]


def test_lift_of_a_larger_share_and_booleans() -> None:
    y = np.array([True, False, True, False, False, False, False, False, False, False])
    p = np.linspace(0.9, 0.0, 10)  # rows ranked as given
    r = binary_report(y, p, top_share=0.3, bins=5)
    # top 3 rows hold 2 of the 2 positives: 2/3 over a base rate of 0.2
    assert r["lift_top_decile"] == pytest.approx((2 / 3) / 0.2)
    assert [b["count"] for b in r["calibration"]] == [2, 2, 2, 2, 2]
    assert [b["observed_rate"] for b in r["calibration"]] == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_perfect_and_reversed_ranking() -> None:
    y = [0, 0, 0, 1, 1]
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert binary_report(y, p)["roc_auc"] == 1.0
    assert binary_report(y, 1 - p)["roc_auc"] == 0.0
    assert binary_report(y, p)["pr_auc"] == 1.0


def test_ties_give_fewer_calibration_bins() -> None:
    r = binary_report([0, 1, 0, 1, 0, 1], [0.5] * 6, bins=10)
    assert r["calibration"] == [{"mean_predicted": 0.5, "observed_rate": 0.5, "count": 6}]
    assert r["roc_auc"] == 0.5


def test_single_class_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="both classes") as err:
        binary_report([1, 1, 1], [0.2, 0.5, 0.9])
    assert "all 3 labels are 1" in str(err.value)
    with pytest.raises(BadInputError, match="both classes"):
        compare([0, 0], {"m": [0.1, 0.2]})


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], "0/1 or boolean"),
        (["a", "b", "a"], [0.1, 0.2, 0.3], "0/1 or boolean"),
        ([0, 1, 1], [0.1, 0.2], "expected 3 scores"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite"),
        ([0, 1, 1], [0.1, 1.5, 0.3], r"probabilities in \[0, 1\]"),
        ([], [], "at least one label"),
    ],
)
def test_bad_inputs_say_what_is_wrong(y: list, p: list, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        binary_report(y, p)


def test_bad_options() -> None:
    with pytest.raises(BadInputError, match="top_share"):
        binary_report(Y, P, top_share=0)
    with pytest.raises(BadInputError, match="bins"):
        binary_report(Y, P, bins=0)


def test_compare_one_row_per_score_and_raw_features_have_no_brier() -> None:
    table = compare(Y, {"model": P, "feature": [3.0, 0.0, 7.0, 9.0], "flipped": [0.9, 0.6, 0.65, 0.2]})
    assert list(table.index) == ["model", "feature", "flipped"]
    assert list(table.columns) == [
        "n",
        "base_rate",
        "roc_auc",
        "pr_auc",
        "brier",
        "log_loss",
        "lift_top_decile",
    ]
    assert table.loc["model", "roc_auc"] == pytest.approx(0.75)
    assert table.loc["model", "brier"] == pytest.approx(0.158125)
    assert table.loc["feature", "roc_auc"] == pytest.approx(1.0)  # 7, 9 above 3, 0
    assert math.isnan(table.loc["feature", "brier"])
    assert math.isnan(table.loc["feature", "log_loss"])
    assert table.loc["flipped", "roc_auc"] == pytest.approx(0.25)
    with pytest.raises(BadInputError, match="at least one named score"):
        compare(Y, {})
    with pytest.raises(BadInputError, match="scores\\['short'\\]"):
        compare(Y, {"short": [0.1]})


def test_render_comparison_prints_every_row() -> None:
    table = compare(Y, {"model": P, "feature": [3.0, 0.0, 7.0, 9.0]})
    console = Console(width=200, record=True)
    console.print(render_comparison(table, title="test", columns=["roc_auc", "brier", "n"]))
    text = console.export_text()
    assert "model" in text
    assert "feature" in text
    assert "0.750" in text
    assert "0.158" in text
    feature_line = next(line for line in text.splitlines() if "feature" in line)
    assert "1.000" in feature_line
    assert "-" in feature_line
    with pytest.raises(BadInputError, match="nope"):
        render_comparison(table, columns=["nope"])

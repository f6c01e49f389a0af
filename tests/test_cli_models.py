"""The model commands as a user runs them: train, evaluate, score, clv fit, warnings; files, JSON and
exit codes, and the published CDNOW estimates reproduced from the command line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from tests.test_cli import run

#: Fader, Hardie & Lee (2005) and Fader & Hardie (2013) on the CDNOW sample, 39-week calibration.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "gamma": 15.44}


def test_clv_fit_reproduces_the_published_cdnow_estimates(tmp_path: Path, data_dir: Path) -> None:
    home = tmp_path / "home"
    sample = data_dir / "cdnow" / "CDNOW_sample.txt"
    loaded = run(
        "ingest", str(sample), "--format", "whitespace", "--no-header", "--event-type", "purchase",
        "--map", "user_id=2", "--map", "timestamp=3", "--map", "quantity=4", "--map", "value=5",
        "--identical-rows", "distinct", "--json", home=home,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    result = run("clv", "fit", "--calibration-end", "1997-09-30", "--time-unit", "week", "--json", home=home)
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    estimates = {**fit["bgnbd"], **fit["gamma_gamma"]}
    for name, published in PUBLISHED.items():
        assert estimates[name] == pytest.approx(published, rel=0.01), name
    assert fit["bgnbd"]["log_likelihood"] == pytest.approx(-9582.4, abs=1.0)
    assert fit["customers"] == 2357
    assert fit["repeat_buyers"] == 946
    text = run("clv", "fit", "--calibration-end", "1997-09-30", home=home)
    assert "r = 0.2426" in text.stdout
    assert "repeat purchases forecast" in text.stdout


@pytest.fixture(scope="module")
def shop_home(shop_copy: Callable[[str], Path]) -> Path:
    return shop_copy("cli-models")


def test_train_evaluate_score_and_warnings(shop_home: Path, tmp_path: Path) -> None:
    trained = run("train", "all", "--horizon", "30d", "--json", home=shop_home)
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    cards = result["trained"]
    assert [c["name"] for c in cards] == ["abandonment", "churn", "clv", "segments", "recommend"]
    assert result["skipped"] == {}
    assert all((shop_home / "models" / c["name"] / c["version"] / "card.json").exists() for c in cards)

    evaluated = run("evaluate", "churn", "--horizon", "30d", home=shop_home)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "LightGBM + P(alive)" in evaluated.stdout
    assert "recency alone" in evaluated.stdout

    carts_file = tmp_path / "carts.csv"
    scored = run("score", "abandonment", "--out", str(carts_file), home=shop_home)
    assert scored.returncode == 0, scored.stderr
    assert "riskiest carts" in scored.stdout
    carts = pd.read_csv(carts_file)
    assert {"cart_id", "user_id", "abandon_probability", "reasons"} <= set(carts.columns)

    customers_file = tmp_path / "customers.parquet"
    scored = run("score", "churn", "--out", str(customers_file), "--json", home=shop_home)
    assert scored.returncode == 0, scored.stderr
    summary = json.loads(scored.stdout)
    customers = pd.read_parquet(customers_file)
    assert summary["rows"] == len(customers) > 100
    assert list(customers.columns[:8]) == [
        "user_id", "churn_probability", "p_alive", "expected_purchases", "expected_value", "clv", "severity",
        "segment",
    ]  # fmt: skip
    assert customers.reasons.str.len().gt(0).all()

    warned = run("warnings", "--json", home=shop_home)
    assert warned.returncode == 0, warned.stderr
    assert json.loads(warned.stdout)["counts"]["customers"] > 0


def test_train_all_trains_what_the_history_allows(shop_home: Path) -> None:
    """140 days of outcomes leave nothing to learn churn from in 150 days; the other models still train."""
    result = run("train", "all", "--horizon", "140d", home=shop_home)
    assert result.returncode == 0, result.stderr
    assert "churn: not trained: too little history" in result.stdout
    assert "abandonment: version" in result.stdout
    assert "segments: version" in result.stdout


def test_bad_requests_exit_2_with_a_message(shop_home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    cases = [
        (("score", "churn", "--out", str(tmp_path / "x.csv")), empty, "no event store"),
        (("train", "churn", "--as-of", "1990-01-01"), shop_home, "outside the data"),
        (("evaluate", "churn", "--horizon", "soon"), shop_home, "--horizon 'soon'"),
        (("evaluate", "churn", "--horizon", "400d"), shop_home, "--horizon 400d is longer than the data"),
        (("evaluate", "clv", "--as-of", "2024-05-01", "--horizon", "90d"), shop_home, "runs past the end"),
        (("train", "rfm"), shop_home, "expected one of abandonment, churn, clv, segments"),
        (("train", "churn", "--horizon", "140d"), shop_home, "too little history to train churn"),
        (("train", "clv", "--engine", "hadoop"), shop_home, "--engine hadoop"),
        (("score", "clv", "--out", str(tmp_path / "x.txt")), shop_home, ".parquet or .csv"),
    ]
    for args, home, message in cases:
        result = run(*args, home=home)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(shop_home / "events.duckdb", fresh / "events.duckdb")
    untrained = run("score", "segments", "--out", str(tmp_path / "s.csv"), home=fresh)
    assert untrained.returncode == 2
    assert "train one first with `winback train segments`" in untrained.stderr
    assert not (tmp_path / "s.csv").exists()

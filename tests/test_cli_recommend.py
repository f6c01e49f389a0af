"""The recommendation commands as a user runs them: train, evaluate, recommend for a customer, a cart
and a product, the batch file, cold start, JSON and exit codes."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from tests.test_cli import run

from winback.config import Settings
from winback.sim import SimulationResult


@pytest.fixture(scope="module")
def trained_home(shop_copy: Callable[[str], Path]) -> Path:
    home = shop_copy("cli-recommend")
    trained = run("train", "recommend", "--json", home=home)
    assert trained.returncode == 0, trained.stderr
    card = json.loads(trained.stdout)
    assert card["name"] == "recommend"
    assert (home / "models" / "recommend" / card["version"] / "model.pkl").exists()
    split = card["metrics"]["time_split"]
    assert split["winback"]["recall@10"] > split["random"]["recall@10"]
    # How the `winback` use is ranked, and why: learned on this shop, or the blend with the reason.
    assert card["params"]["ranker"].startswith(("learned ranker from", "fixed blend: "))
    assert "candidate_recall" in card["metrics"]["ranker"]
    return home


def test_recommend_for_a_customer_a_cart_and_a_product(
    trained_home: Path, sim_shop: tuple[Settings, SimulationResult]
) -> None:
    result = sim_shop[1]
    buyer = str(result.customers["user_id"].iloc[0])
    shown = run("recommend", "--user", buyer, "--k", "5", "--json", home=trained_home)
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["user"] == buyer
    assert [r["rank"] for r in answer["recommendations"]] == [1, 2, 3, 4, 5]
    known = set(result.products["product_id"])
    assert all(r["product_id"] in known and r["reason"] for r in answer["recommendations"])

    product = str(result.products.sort_values("popularity").iloc[-1]["product_id"])
    similar = run("recommend", "--product", product, "--k", "3", home=trained_home)
    assert similar.returncode == 0, similar.stderr
    lines = similar.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("1. p")

    cheaper = json.loads(
        run("recommend", "--product", product, "--cheaper", "--json", home=trained_home).stdout
    )
    price = dict(zip(result.products["product_id"], result.products["price"], strict=True))
    assert all(price[r["product_id"]] < price[product] for r in cheaper["recommendations"])
    assert all("cheaper" in r["reason"] for r in cheaper["recommendations"])

    again = run("train", "recommend", "--json", home=trained_home)  # a second version becomes current
    assert again.returncode == 0, again.stderr
    model_dir = trained_home / "models" / "recommend"
    assert len([p for p in model_dir.iterdir() if p.is_dir()]) >= 2


def test_recommend_for_an_open_cart(trained_home: Path) -> None:
    from winback.config import load_settings
    from winback.models.registry import load_model

    model, _ = load_model(load_settings(home=trained_home), "recommend")
    cart_id, (_, items) = next(iter(model.carts_.items()))
    shown = json.loads(run("recommend", "--cart", cart_id, "--json", home=trained_home).stdout)
    ids = [r["product_id"] for r in shown["recommendations"]]
    assert len(ids) == 10
    assert not set(ids) & set(items)  # never the cart's own items


def test_batch_file_has_one_row_per_customer_and_rank(trained_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    done = run("recommend", "--all-users", "--k", "3", "--out", str(out), home=trained_home)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["user_key", "rank", "product_id", "score", "reason"]
    assert not table.duplicated(["user_key", "rank"]).any()
    assert table["rank"].between(1, 3).all()
    assert f"{len(table):,} rows" in done.stdout


def test_unknown_ids_give_an_empty_list_with_the_reason(trained_home: Path) -> None:
    for option, value, reason in (
        ("--user", "nobody", "unknown customer nobody"),
        ("--cart", "no-such-cart", "unknown cart no-such-cart"),
        ("--product", "p-new", "unknown product p-new"),
    ):
        shown = run("recommend", option, value, "--json", home=trained_home)
        assert shown.returncode == 0, shown.stderr
        answer = json.loads(shown.stdout)
        assert answer["recommendations"] == []
        assert reason in answer["reason"]
        assert "cold start" in answer["reason"] or option == "--cart"


def test_evaluate_recommend_prints_the_baselines(trained_home: Path) -> None:
    shown = run("evaluate", "recommend", home=trained_home)
    assert shown.returncode == 0, shown.stderr
    for name in ("winback", "popularity", "random", "recall@10", "x popularity", "95% interval"):
        assert name in shown.stdout
    assert "1.00 - 1.00" in shown.stdout  # popularity against itself


def test_bad_requests_are_usage_errors(trained_home: Path, tmp_path: Path) -> None:
    cases = [
        (("recommend", "--user", "u1", "--k", "0"), "--k"),
        (("recommend", "--user", "u1", "--k", "1001"), "--k"),
        (("recommend",), "give exactly one of --user, --cart, --product or --all-users"),
        (("recommend", "--user", "u1", "--product", "p1"), "got --user, --product"),
        (("recommend", "--all-users"), "give --out FILE"),
        (("recommend", "--all-users", "--out", str(tmp_path / "r.txt")), ".parquet or .csv"),
    ]
    for args, message in cases:
        result = run(*args, home=trained_home)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    untrained = run("recommend", "--user", "u1", home=fresh)
    assert untrained.returncode == 2
    assert "train one first with `winback train recommend`" in untrained.stderr


def _saved_copy(trained_home: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A home with a copy of the trained models, and the current recommender's version directory."""
    home = tmp_path / "home"
    shutil.copytree(trained_home / "models", home / "models")
    version = (home / "models" / "recommend" / "current").read_text().strip()
    return home, home / "models" / "recommend" / version


def _refused_with_the_way_out(home: Path) -> None:
    old = run("recommend", "--user", "u000001", home=home)
    assert old.returncode == 2
    assert "retrain it with `winback train recommend`" in old.stderr


def test_a_recommender_saved_before_brand_is_refused_with_the_way_out(
    trained_home: Path, tmp_path: Path
) -> None:
    """A model saved by an earlier winback, trained on interactions without ``brand``: retrain, no crash."""
    home, saved = _saved_copy(trained_home, tmp_path)
    card = json.loads((saved / "card.json").read_text())
    card["features"] = [f for f in card["features"] if f != "brand"]
    (saved / "card.json").write_text(json.dumps(card))
    _refused_with_the_way_out(home)


def test_a_recommender_saved_before_own_views_is_refused_with_the_way_out(
    trained_home: Path, tmp_path: Path
) -> None:
    """A model whose category affinity predates the customers' own views: retrain, no crash."""
    home, saved = _saved_copy(trained_home, tmp_path)
    model = pickle.loads((saved / "model.pkl").read_bytes())
    for name in ("within_prior_", "_own"):
        delattr(model.affinity_, name)
    (saved / "model.pkl").write_bytes(pickle.dumps(model))
    _refused_with_the_way_out(home)

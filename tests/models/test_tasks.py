"""Train, evaluate and score every model on a stored simulated shop, through winback's own pipeline:
time splits that do not leak, saved models with cards, scores with reasons, and clear refusals."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from winback.config import Settings, load_settings
from winback.errors import BadInputError
from winback.events.store import EventStore
from winback.features.carts import CART_FEATURES
from winback.features.customers import CUSTOMER_FEATURES
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models import tasks
from winback.models.registry import load_card, load_model
from winback.sim import ShopConfig, SimulationResult, simulate

HORIZON = 30


@pytest.fixture(scope="module")
def shop(sim_shop: tuple[Settings, SimulationResult], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private copy of the simulated shop's store: these tests write models into its home."""
    settings, _ = sim_shop
    home = tmp_path_factory.mktemp("tasks") / "home"
    home.mkdir()
    shutil.copy(settings.store_path, home / "events.duckdb")
    return load_settings(home=home)


@pytest.fixture
def tables(shop: Settings) -> Iterator[FeatureTables]:
    with open_source(shop) as source:
        yield FeatureTables(source, shop)


def test_abandonment_time_split_does_not_leak(tables: FeatureTables) -> None:
    as_of = tasks.default_eval_as_of(tables)
    split = tasks._cart_split(tables, as_of, with_test=True)
    carts = tables.carts().set_index("cart_id")
    idle = tables.settings.abandon_idle_minutes * 60
    train_carts = carts.loc[split.train.cart_id.unique()]
    test_carts = carts.loc[split.test.cart_id.unique()]
    assert (train_carts.last_event_ts + idle < as_of.timestamp()).all()
    assert (test_carts.started_ts >= as_of.timestamp()).all()
    assert (split.train.ts < as_of.timestamp()).all()
    assert len(test_carts) > 100
    assert set(split.train.cart_id).isdisjoint(split.test.cart_id)


def test_evaluate_abandonment_reports_model_and_baselines(tables: FeatureTables) -> None:
    result = tasks.evaluate_abandonment(tables)
    assert result["test_carts"] > 100
    for view in ("every cart state", "at the first add"):
        table = result[view]
        assert set(table) == {"LightGBM (calibrated)", "logistic regression", "past abandonment rate"}
        for metrics in table.values():
            assert 0.3 < metrics["roc_auc"] < 1.0
            assert 0.0 < metrics["base_rate"] < 1.0
    # calibrated: the predicted abandonment rate is close to the observed one, bin by bin on average
    bins = result["calibration"]
    predicted = np.average([b["mean_predicted"] for b in bins], weights=[b["count"] for b in bins])
    observed = np.average([b["observed_rate"] for b in bins], weights=[b["count"] for b in bins])
    assert abs(predicted - observed) < 0.08


def test_evaluate_churn_beats_p_alive_and_is_calibrated(tables: FeatureTables) -> None:
    result = tasks.evaluate_churn(tables, None, HORIZON)
    auc = {name: m["roc_auc"] for name, m in result["metrics"].items()}
    assert auc["LightGBM + P(alive)"] > 0.62
    assert auc["LightGBM + P(alive)"] > auc["1 - P(alive) (BG/NBD)"] + 0.1
    assert result["metrics"]["LightGBM + P(alive)"]["brier"] < 0.25
    # training used only outcomes that ended by the split
    assert pd.Timestamp(result["train_features_as_of"]) + pd.Timedelta(days=HORIZON) <= pd.Timestamp(
        result["as_of"]
    )


def test_evaluate_clv_forecasts_the_next_month(tables: FeatureTables) -> None:
    result = tasks.evaluate_clv(tables, None, HORIZON)
    purchases = result["purchases"]
    assert purchases["actual"] > 50
    assert abs(purchases["BG/NBD"] / purchases["actual"] - 1) < 0.25
    # customers who bought more often before buy more often after, in truth and in the forecast
    rows = result["by_frequency"]
    assert rows[-1]["actual"] > rows[0]["actual"]
    assert rows[-1]["bgnbd"] > rows[0]["bgnbd"]


def test_train_saves_cards_and_scores_carry_reasons(tables: FeatureTables, shop: Settings) -> None:
    cards = [
        tasks.train_abandonment(tables),
        tasks.train_churn(tables, None, HORIZON),
        tasks.train_clv(tables, None, HORIZON),
        tasks.train_segments(tables, None),
    ]
    for card in cards:
        saved = json.loads((shop.models_dir / card.name / card.version / "card.json").read_text())
        assert saved["version"] == card.version
        assert (shop.models_dir / card.name / "current").read_text().strip() == card.version
        assert saved["features"] == list(CART_FEATURES if card.name == "abandonment" else CUSTOMER_FEATURES)
        assert saved["libraries"]["lightgbm"]
        assert saved["train_window"][1] == card.as_of
    assert load_card(shop, "clv").metrics["bgnbd"]["r"] > 0
    # every card holds a time-split evaluation made inside its own training window
    for card in cards[:3]:
        evaluation = card.metrics["time_split"]
        assert pd.Timestamp(evaluation["as_of"]) < pd.Timestamp(card.as_of)
    assert "LightGBM + P(alive)" in cards[1].metrics["time_split"]["metrics"]

    carts = tasks.score_abandonment(tables)
    assert list(carts.columns[:2]) == ["cart_id", "user_id"]
    assert carts.abandon_probability.between(0, 1).all()
    assert carts.abandon_probability.is_monotonic_decreasing
    assert carts.reasons.str.len().gt(0).all()
    assert set(carts.state) <= {"open", "abandoned"}

    customers = tasks.score_customers(tables, None, require="churn")
    assert list(customers.columns) == list(tasks.CUSTOMER_SCORE_COLUMNS)
    assert customers.user_id.is_unique
    assert customers.churn_probability.between(0, 1).all()
    assert customers.p_alive.between(0, 1).all()
    assert (customers.clv >= 0).all()
    assert (customers.severity >= 0).all()
    assert customers.severity.is_monotonic_decreasing
    assert customers.segment.notna().all()
    assert customers.cluster.str.match(r"\d+: ").all()
    assert customers.reasons.str.contains(r"\([+-]\d").all()


def test_a_model_trained_on_other_features_is_refused(tables: FeatureTables, shop: Settings) -> None:
    tasks.train_segments(tables, None)
    with pytest.raises(
        BadInputError, match=r"trained on other features.*new: \['extra'\].*winback train segments"
    ):
        load_model(shop, "segments", features=[*CUSTOMER_FEATURES, "extra"])


def test_time_arguments_and_untrained_models_are_refused(
    tmp_path: Path, sim_shop: tuple[Settings, SimulationResult]
) -> None:
    settings = load_settings(home=tmp_path / "home")
    (tmp_path / "home").mkdir()
    shutil.copy(sim_shop[0].store_path, settings.store_path)
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        with pytest.raises(
            BadInputError,
            match=r"no abandonment model in .*: train one first with `winback train abandonment`",
        ):
            tasks.score_abandonment(tables)
        with pytest.raises(BadInputError, match="no churn model"):
            tasks.score_customers(tables, None, require="churn")
        with pytest.raises(BadInputError, match="outside the data"):
            tasks.train_abandonment(tables, pd.Timestamp("2030-01-01", tz="UTC"))
        with pytest.raises(BadInputError, match="runs past the end of the data"):
            tasks.evaluate_churn(tables, pd.Timestamp("2024-05-01", tz="UTC"), 90)
        with pytest.raises(BadInputError, match="too little history to train churn"):
            tasks.train_churn(tables, pd.Timestamp("2024-01-20", tz="UTC"), HORIZON)
        # an outcome window that runs past the last event by hours is refused, not read as churn
        last = tables.span().last
        with pytest.raises(BadInputError, match="runs past the end of the data"):
            tasks.evaluate_churn(tables, last.floor("D") + pd.Timedelta(hours=20), 1)
        tasks.train_segments(tables, None)
        with pytest.raises(BadInputError, match="no customer had bought before"):
            tasks.score_customers(tables, tables.span().first + pd.Timedelta(hours=1), require="segments")


def _tiny_shop(tmp_path: Path, customers: int, days: int) -> Settings:
    result = simulate(seed=5, config=ShopConfig(customers=customers, days=days))
    settings = load_settings(home=tmp_path / f"home-{customers}")
    with EventStore(settings) as store:
        store.append(result.events, source="tiny")
    return settings


def test_a_small_shop_gets_a_model_that_says_it_fell_back(tmp_path: Path) -> None:
    settings = _tiny_shop(tmp_path, customers=20, days=90)
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        card = tasks.train_abandonment(tables)
        with pytest.raises(BadInputError, match="too little history") as churn:
            tasks.train_churn(tables, None, HORIZON)
    assert card.notes
    assert "fitted LogisticBaseline instead of LightGBM" in card.notes[0]
    assert "need at least 20" in str(churn.value)


def test_a_tiny_shop_gets_clear_messages(tmp_path: Path) -> None:
    settings = _tiny_shop(tmp_path, customers=5, days=30)
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        with pytest.raises(BadInputError, match=r"abandonment model: \d+ carts ended .*need at least 30"):
            tasks.train_abandonment(tables)
        with pytest.raises(BadInputError, match="too few customers to segment"):
            tasks.train_segments(tables, None)
        with pytest.raises(BadInputError, match="too little history for CLV"):
            tasks.evaluate_clv(tables, None, 7)


def test_purchases_without_an_order_id_are_orders_of_their_own(tmp_path: Path) -> None:
    rows = [
        {
            "event_type": "purchase",
            "timestamp": pd.Timestamp(f"2024-01-{d:02d}", tz="UTC").to_pydatetime(),
            "user_id": "u1",
            "price": 10.0,
            "quantity": 1,
        }
        for d in (1, 5, 9)
    ]
    settings = load_settings(home=tmp_path / "home")
    with EventStore(settings) as store:
        store.append(pa.Table.from_pylist(rows), source="orders")
    with open_source(settings) as source:
        customers = FeatureTables(source, settings).customers(pd.Timestamp("2024-01-10", tz="UTC"))
    assert customers.orders.tolist() == [3]
    assert customers.bg_frequency.tolist() == [2]

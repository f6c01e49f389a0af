"""What customers choose within a category: price tiers, brands, linked complements and staples, and the
view probabilities (``view_shares``) the recommender's oracle uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from winback.sim import ShopConfig, SimulationResult, simulate
from winback.sim.catalogue import REPLENISHABLE, Catalogue
from winback.sim.customers import Customers
from winback.sim.sessions import view_shares
from winback.sim.shop import _Run

CONFIG = ShopConfig(customers=1500, days=90)


@pytest.fixture(scope="module")
def shop() -> tuple[SimulationResult, _Run]:
    """The shop, and its catalogue and customers as they were before the first day."""
    return simulate(seed=3, config=CONFIG), _Run(CONFIG, 3, None)


@pytest.fixture(scope="module")
def events(shop: tuple[SimulationResult, _Run]) -> pd.DataFrame:
    result, run = shop
    columns = ["event_type", "user_id", "session_id", "product_id", "category", "timestamp"]
    frame = result.events.select(columns).to_pandas()
    frame = frame[frame["product_id"].notna()].copy()
    ids = run.catalogue.product_ids().to_numpy(zero_copy_only=False)
    frame["p"] = frame["product_id"].map({p: i for i, p in enumerate(ids)})
    return frame


def test_price_sensitive_customers_buy_the_cheaper_products_of_a_category(
    shop: tuple[SimulationResult, _Run], events: pd.DataFrame
) -> None:
    result, run = shop
    catalogue = run.catalogue
    bought = events[events["event_type"] == "purchase"]
    level = pd.Series(catalogue.log_price_ratio[bought["p"]]).groupby(bought["user_id"].to_numpy()).mean()
    sensitivity = result.customers.set_index("user_id").loc[level.index, "price_sensitivity"]
    assert np.corrcoef(sensitivity, level)[0, 1] < -0.2
    tier = result.customers["price_tier"]
    assert np.corrcoef(result.customers["price_sensitivity"], tier)[0, 1] < -0.5
    # A customer's products spread less than the category's around their own level (REES46: 0.73).
    views = events[events["event_type"] == "view"].drop_duplicates(["user_id", "p"])
    levels = pd.Series(catalogue.log_price_ratio[views["p"]], index=views["user_id"].to_numpy())
    own = levels.groupby(level=0).std()[levels.groupby(level=0).size() >= 3].mean()
    assert 0.6 < own / catalogue.log_price_ratio.std() < 0.85


def test_brands_belong_to_a_department_and_have_a_price_position(shop: tuple[SimulationResult, _Run]) -> None:
    products = shop[0].products
    assert products["brand"].notna().all()
    department = products["category"].str.split(".").str[0]
    assert (department.groupby(products["brand"]).nunique() == 1).all()
    level = pd.Series(shop[1].catalogue.log_price_ratio)
    within = level - level.groupby(products["brand"]).transform("mean")
    assert 1 - within.var() / level.var() > 0.3  # brands are budget or premium
    assert set(shop[0].events["brand"].drop_null().unique().to_pylist()) <= set(products["brand"])


def test_a_complement_view_often_goes_to_a_product_linked_to_the_one_before(
    shop: tuple[SimulationResult, _Run], events: pd.DataFrame
) -> None:
    links = shop[1].catalogue.links
    views = events[events["event_type"] == "view"].sort_values(["session_id", "timestamp"], kind="stable")
    before = views.groupby("session_id")["p"].shift(1)
    pairs = views.assign(before=before).dropna(subset=["before"])
    before_ = pairs["before"].astype(int).to_numpy()
    linked = (links[before_] == pairs["p"].to_numpy()[:, None]).any(axis=1)
    shuffled = np.random.default_rng(0).permutation(before_)
    by_chance = (links[shuffled] == pairs["p"].to_numpy()[:, None]).any(axis=1)
    assert linked.mean() > 0.06
    assert by_chance.mean() < linked.mean() / 3


def test_customers_keep_buying_their_staples(
    shop: tuple[SimulationResult, _Run], events: pd.DataFrame
) -> None:
    run = shop[1]
    names = run.catalogue.category_names
    assert any(name in REPLENISHABLE for name in names)
    staple = run.people.staple
    replenishable = [i for i, name in enumerate(names) if name in REPLENISHABLE]
    assert (staple[:, replenishable] >= 0).all()
    assert (np.delete(staple, replenishable, axis=1) == -1).all()
    assert (run.catalogue.category[staple[:, replenishable]] == replenishable).all()
    bought = events[(events["event_type"] == "purchase") & events["category"].isin(REPLENISHABLE)]
    user = bought["user_id"].map({u: i for i, u in enumerate(run.user_ids)}).to_numpy()
    category = bought["category"].map({n: i for i, n in enumerate(names)}).to_numpy()
    share = (staple[user, category] == bought["p"].to_numpy()).mean()
    assert 0.35 < share < 0.75  # 0.25 + 0.5 loyalty of the visits, a few swapped out of open carts


def test_view_shares_are_the_views_the_simulator_draws(
    shop: tuple[SimulationResult, _Run], events: pd.DataFrame
) -> None:
    """Expected views per product (each customer's view_shares times their views) against the views
    logged, for the cheapest and dearest thirds of customers by price tier."""
    run = shop[1]
    views = events[events["event_type"] == "view"]
    counts = views.groupby("user_id").size()
    users = counts.index.map({u: i for i, u in enumerate(run.user_ids)}).to_numpy()
    shares = view_shares(run.people, run.catalogue, users, CONFIG.views_per_session)
    assert np.allclose(shares.sum(axis=1), 1.0)
    tier = run.people.price_tier[users]
    expected_price = {}
    for name, mine in (("low", tier < np.quantile(tier, 1 / 3)), ("high", tier > np.quantile(tier, 2 / 3))):
        expected = (shares[mine] * counts.to_numpy()[mine, None]).sum(axis=0)
        theirs = views.loc[views["user_id"].isin(counts.index[mine]), "p"]
        logged = np.bincount(theirs, minlength=expected.size)
        assert np.corrcoef(expected, logged)[0, 1] > 0.98, name
        big = expected > 200
        assert np.mean(np.abs(logged[big] / expected[big] - 1)) < 0.12, name
        expected_price[name] = expected @ run.catalogue.log_price_ratio / expected.sum()
    assert expected_price["low"] < expected_price["high"] - 0.05


def test_tastes_have_their_own_random_streams() -> None:
    """Brands, links, tiers and staples are drawn apart from the rest: other draws leave everything else as
    it was, so a shop keeps its products, prices and customers' other traits."""
    one = Catalogue.generate(300, 12, np.random.default_rng(1), np.random.default_rng(2))
    two = Catalogue.generate(300, 12, np.random.default_rng(1), np.random.default_rng(3))
    for name in ("category", "price", "popularity", "complements", "tier_share"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert not np.array_equal(one.brand, two.brand)
    assert not np.array_equal(one.links, two.links)
    config = ShopConfig(customers=400)
    a = Customers.generate(config, one, np.random.default_rng(4), np.random.default_rng(5))
    b = Customers.generate(config, one, np.random.default_rng(4), np.random.default_rng(6))
    for name in ("price_sensitivity", "loyalty", "affinity_cdf", "visit_rate", "churn_at"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.price_tier, b.price_tier)

"""The loop a shop runs on its own data: a randomised decision log, outcomes read back from the event log
(`winback outcomes`), the uplift policy trained on them (`winback train policy`) and planning with it
(`winback plan --policy uplift`). The shop is the simulator run under the randomising policy, so what
the log says can be checked against what the simulator knows happened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tests.decide.test_evaluate import SMALL_LOG
from tests.test_cli import run

from winback.config import Settings, load_settings
from winback.decide.catalogue import load_catalogue
from winback.decide.evaluate import LoggedShop, logged_shop
from winback.decide.learn import load_policy, train_policy
from winback.decide.log import DecisionLog
from winback.decide.outcomes import no_orders, observe, record_outcomes
from winback.decide.plan import UPLIFT_MISSING
from winback.errors import BadInputError
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models import tasks

CATALOGUE = load_catalogue()


@pytest.fixture(scope="module")
def shop() -> LoggedShop:
    return logged_shop(3, 1500, 60, logged_actions=SMALL_LOG)


def _decisions(shop: LoggedShop) -> pd.DataFrame:
    """The shop's randomised decisions as `winback plan` logs them (decided at abandonment)."""
    c = shop.carts
    contexts = [
        json.dumps({"abandoned_at": at.timestamp(), "value": v, "n_items": n,
                    "consent": [ch for ch in ("email", "sms", "push") if row[f"consent_{ch}"]]})
        for at, v, n, (_, row) in zip(c["abandoned_at"], c["value"], c["n_items"], c.iterrows(), strict=True)
    ]  # fmt: skip
    return pd.DataFrame(
        {"decided_at": c["abandoned_at"], "cart_id": c["cart_id"], "user_id": c["user_id"],
         "policy": "random", "version": "sim", "action": c["action"], "propensity": c["propensity"],
         "holdout": False, "reasons": [[] for _ in range(len(c))], "context": contexts}
    )  # fmt: skip


@pytest.fixture(scope="module")
def home(shop: LoggedShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop's events and its decision log with outcomes recorded."""
    home = tmp_path_factory.mktemp("learn") / "home"
    settings = load_settings(home=home)
    with EventStore(settings) as store:
        store.append(shop.shop.events, source="simulated")
    with DecisionLog(settings) as log:
        log.append(_decisions(shop))
    return home


def test_outcomes_are_read_back_from_the_event_log(shop: LoggedShop, home: Path, tmp_path: Path) -> None:
    home = Path(shutil.copytree(home, tmp_path / "home"))
    settings = load_settings(home=home)
    with DecisionLog(settings) as log, open_source(settings) as source:
        report = record_outcomes(log, source.events, CATALOGUE)
        again = record_outcomes(log, source.events, CATALOGUE)
        logged = log.read()
    assert report.recorded > 1000
    assert report.waiting > 0  # the last week's decisions wait for their window to close
    assert again.recorded == 0
    assert again.waiting == report.waiting
    truth = shop.carts.set_index("cart_id")
    done = logged[logged["outcome_observed_at"].notna()].set_index("cart_id")
    assert len(done) == report.recorded
    recovered = truth.loc[done.index, "recovered"].astype(bool)
    # Every cart the simulator recovered is seen recovered: the recovering order lies in the window.
    assert done.loc[recovered, "recovered"].all()
    # The log also counts other orders of the customer within the week (attribution, not causation).
    assert done["recovered"].mean() > recovered.mean()
    both = done["recovered"] & recovered
    value = truth.loc[both[both].index, "value"]
    assert done.loc[both, "revenue"].sum() == pytest.approx(value.sum(), rel=0.05)
    coupons = done["action"].str.startswith("coupon")
    assert (done.loc[~coupons, "discount"] == 0).all()
    true_discount = truth.loc[done.index, "discount"].sum()
    assert done["discount"].sum() == pytest.approx(true_discount, rel=0.2)
    expected = CATALOGUE.default_margin * done["revenue"] - done["discount"]
    assert (done["margin"] - expected).abs().max() <= 0.01


def test_an_order_counts_once_it_follows_the_decision_within_the_window() -> None:
    at = pd.Timestamp("2024-05-01T12:00", tz="UTC")
    decisions = pd.DataFrame(
        {"decision_id": ["d1", "d2", "d3"], "user_id": ["u1", "u2", "u3"], "decided_at": [at] * 3,
         "action": ["coupon10/email/24h", "nothing", "reminder/email/24h"]}
    )  # fmt: skip
    orders = pd.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "order_id": ["o1", "o2", "o3"],
         "ordered_at": [at + pd.Timedelta(days=2), at - pd.Timedelta(hours=1), at + pd.Timedelta(days=8)],
         "revenue": [100.0, 50.0, 70.0], "coupon": [True, False, False]}
    )  # fmt: skip
    out = observe(decisions, orders, CATALOGUE, window_days=7).set_index("decision_id")
    assert out.loc["d1"].to_dict() == {
        "recovered": True, "revenue": 100.0, "discount": 10.0,
        "margin": round(CATALOGUE.default_margin * 100 - 10, 2),
    }  # fmt: skip
    assert not out.loc["d2", "recovered"]  # ordered before the decision
    assert not out.loc["d3", "recovered"]  # after the window
    assert out.loc["d3", "revenue"] == 0.0


def _trained(home: Path, tmp_path: Path) -> Settings:
    home = Path(shutil.copytree(home, tmp_path / "home"))
    settings = load_settings(home=home)
    with DecisionLog(settings) as log, open_source(settings) as source:
        record_outcomes(log, source.events, CATALOGUE)
    return settings


def test_the_policy_trained_on_the_log_plans_carts(shop: LoggedShop, home: Path, tmp_path: Path) -> None:
    settings = _trained(home, tmp_path)
    with open_source(settings) as source:
        card = train_policy(settings, source.events.to_pyarrow())
    assert card.name == "policy"
    assert card.metrics["decisions"] > 1000
    assert set(card.metrics["per_action"]) == set(SMALL_LOG)
    policy = load_policy(settings, CATALOGUE)
    assert policy.version == card.version
    test = shop.carts[shop.test].head(200).reset_index(drop=True)
    features = shop.features[shop.test].head(200).reset_index(drop=True)
    decisions = policy.decide_batch(features.assign(value=test["value"]), list(policy.treatments))
    assert {d.policy for d in decisions} == {"uplift"}
    assert all(d.propensity == 1.0 for d in decisions)
    assert {d.action.name for d in decisions} <= set(SMALL_LOG)
    messaged = [d for d in decisions if d.action.is_message]
    assert all(d.expected_profit is not None and d.expected_profit > 0 for d in messaged)

    # As a user runs it: `winback plan --policy uplift` with the abandonment model and a consent file.
    with open_source(settings) as source:
        tasks.train("abandonment", FeatureTables(source, settings), None, 30)
    consent = tmp_path / "consent.csv"
    customers = shop.shop.customers
    pd.DataFrame(
        {"user_id": customers.user_id, "email": customers.consent_email, "sms": customers.consent_sms,
         "push": customers.consent_push}
    ).to_csv(consent, index=False)  # fmt: skip
    out = tmp_path / "plan.csv"
    last = shop.carts["abandoned_at"].max()
    as_of = (last - pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    done = run("plan", "--policy", "uplift", "--consent", str(consent), "--as-of", as_of, "--out", str(out),
               "--json", home=settings.home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["policy"] == "uplift"
    assert summary["carts"] > 0
    plan = pd.read_csv(out)
    assert (plan["subject"] == "cart").all()  # at-risk customers are left to the flows, with a note
    assert set(plan["action"]) <= set(SMALL_LOG)
    planned = plan[~plan["holdout"] & (plan["action"] != "nothing")]
    assert (planned["expected_profit"] > 0).all()


def test_training_says_what_the_log_lacks(home: Path, tmp_path: Path) -> None:
    settings = load_settings(home=Path(shutil.copytree(home, tmp_path / "home")))
    with open_source(settings) as source, pytest.raises(BadInputError, match="winback outcomes"):
        train_policy(settings, source.events.to_pyarrow())  # no outcome recorded yet
    done = run("plan", "--policy", "uplift", "--out", str(tmp_path / "p.csv"), home=settings.home)
    assert done.returncode == 2
    assert UPLIFT_MISSING.split(":")[0] in done.stderr
    done = run("outcomes", "--window-days", "0", home=settings.home)
    assert done.returncode == 2
    assert "--window-days 0" in done.stderr
    done = run("outcomes", "--json", home=settings.home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recorded"] > 1000


@pytest.mark.slow
def test_the_detector_decides_with_the_trained_policy(shop: LoggedShop, home: Path, tmp_path: Path) -> None:
    """`winback detect --policy uplift`: the policy trained on the log decides live carts, its features
    computed from the customers' events in the service."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from winback.act.outbox import write_transaction
    from winback.events.model import Event
    from winback.serve.db import decisions, make_engine, upgrade
    from winback.serve.detect import Detector
    from winback.serve.ingest import store_events
    from winback.serve.profiles import ProfileUpdate, upsert_profiles

    settings = _trained(home, tmp_path)
    with open_source(settings) as source:
        card = train_policy(settings, source.events.to_pyarrow())
    service = load_settings(home=settings.home, database_url=f"sqlite:///{tmp_path / 'state.db'}")
    engine = make_engine(service.state_url)
    upgrade(engine)
    people = [str(u) for u in shop.shop.customers.user_id.head(30)]
    at = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    store_events(engine, [Event.model_validate(
        {"event_id": f"live-{u}", "event_type": "add_to_cart", "user_id": u, "session_id": f"live-{u}",
         "product_id": "p1", "price": 60.0, "timestamp": at.isoformat()}) for u in people])  # fmt: skip
    with write_transaction(engine) as connection:
        upsert_profiles(connection, [ProfileUpdate(u, {"email": f"{u}@example.com"}, {"email": (True, at)})
                                     for u in people])  # fmt: skip
    detector = Detector(engine, service, policy="uplift", holdout_share=0.0, recommend=False,
                        outcomes_every=0, clock=lambda: at + timedelta(minutes=31))  # fmt: skip
    assert detector.tick() == (30, 30)
    detector.close()
    with engine.connect() as connection:
        made = pd.DataFrame(connection.execute(sa.select(decisions)).mappings().all())
    engine.dispose()
    assert set(made["policy"]) == {"uplift"}
    assert set(made["version"]) == {card.version}
    assert (made["propensity"] == 1.0).all()
    assert set(made["action"]) <= set(SMALL_LOG)
    messaged = made[made["action"] != "nothing"]
    assert (messaged["expected_profit"] > 0).all()
    assert {json.loads(c)["consent"][0] for c in made["context"]} == {"email"}


def test_no_order_at_all_leaves_every_decision_unrecovered() -> None:
    """Regression: an empty orders frame, typed (`no_orders`) or not (columns only, as it once was), is
    joined without pandas 3's merge_asof refusing its object ids or its time unit."""
    at = pd.Timestamp("2024-05-01T12:00", tz="UTC")
    decisions = pd.DataFrame(
        {"decision_id": ["d1", "d2"], "user_id": ["u1", "u2"], "decided_at": [at] * 2,
         "action": ["coupon10/email/24h", "nothing"]}
    )  # fmt: skip
    untyped = pd.DataFrame(columns=["user_id", "order_id", "ordered_at", "revenue", "coupon"])
    for orders in (no_orders(), untyped):
        out = observe(decisions, orders, CATALOGUE, window_days=7)
        assert out["decision_id"].tolist() == ["d1", "d2"]
        assert not out["recovered"].any()
        assert out[["revenue", "discount", "margin"]].to_numpy().sum() == 0.0

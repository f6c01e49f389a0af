"""The report's fast paths give the numbers of the straightforward computations they replace, on a small
shop that ran winback with a holdout (real DuckDB stores and decision log)."""

from __future__ import annotations

import bisect
import math
import shutil

import duckdb
import ibis
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from winback.config import Settings, load_settings
from winback.events.store import EventStore
from winback.features.carts import CART_FEATURES, line_value, recovery_pairs
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.measure import demand, health
from winback.measure.data import SEGMENTS, Filters, MeasureData
from winback.models import tasks
from winback.models.metrics import auc_margin
from winback.models.registry import load_model


def _segments_one_by_one(settings: Settings, decisions: pd.DataFrame) -> list[str]:
    """Each decision's segment by counting, in pandas, its customer's orders strictly before it."""
    with EventStore(settings, read_only=True) as store:
        orders = store.con.execute(
            "SELECT coalesce(user_id, 'anonymous:' || anonymous_id) AS user_id, min(timestamp) AS at "
            "FROM event_log WHERE event_type = 'purchase' "
            "GROUP BY 1, coalesce(order_id, CAST(timestamp AS VARCHAR))"
        ).df()
    times = {user: sorted(group["at"]) for user, group in orders.groupby("user_id")}
    out = []
    for user, decided in zip(decisions["user_id"], decisions["decided_at"], strict=True):
        before = bisect.bisect_left(times.get(user, []), decided)  # orders strictly before the decision
        out.append(SEGMENTS[0] if before == 0 else SEGMENTS[1] if before <= 2 else SEGMENTS[2])
    return out


def test_decisions_read_with_segments_in_one_query(measured_shop: Settings) -> None:
    with duckdb.connect(str(measured_shop.home / "decisions.duckdb"), read_only=True) as con:
        logged = con.execute(
            "SELECT decision_id, recovered FROM decisions ORDER BY decided_at, decision_id"
        ).df()
    with MeasureData(measured_shop) as data:
        frame = data.all_decisions()
    assert frame["decision_id"].tolist() == logged["decision_id"].tolist()
    assert frame["recovered"].dtype == "boolean"
    assert frame["recovered"].isna().sum() == logged["recovered"].isna().sum()
    expected = _segments_one_by_one(measured_shop, frame)
    assert frame["segment"].tolist() == expected
    assert len(set(expected)) == 3  # the shop has customers of every segment: the check bites
    decided = pd.to_datetime(frame["decided_at"], utc=True).dt.tz_localize(None)
    weeks = decided.dt.to_period("W-SUN").dt.start_time.dt.strftime("%Y-%m-%d")
    assert frame["week"].tolist() == weeks.tolist()


def _carts_over_every_session(sessioned: ibis.Table) -> ibis.Table:
    """Carts the straightforward way: every session aggregated, those without an add dropped after."""
    t = sessioned.mutate(money=line_value(sessioned), qty=ibis.coalesce(sessioned.quantity, 1))
    adds, removes = t.event_type == "add_to_cart", t.event_type == "remove_from_cart"
    per = t.group_by(["user_key", "session_key"]).aggregate(
        started_ts=t.ts.min(where=adds),
        last_event_ts=t.ts.max(),
        n_items=(t.qty * adds.cast("int64") - t.qty * removes.cast("int64")).sum(),
        value=(t.money * adds.cast("int64") - t.money * removes.cast("int64")).sum(),
        purchased=(t.event_type == "purchase").any(),
    )
    per = per.filter(per.started_ts.notnull())
    ended = per.select("session_key", "purchased", ended="last_event_ts")
    recovered = recovery_pairs(sessioned, ended, 7).select("cart").distinct()
    joined = per.left_join(recovered, per.session_key == recovered.cart)
    return joined.select(
        cart_id=joined.session_key,
        user_key=joined.user_key,
        started_ts=joined.started_ts,
        last_event_ts=joined.last_event_ts,
        n_items=joined.n_items,
        value=joined.value,
        abandoned=~joined.purchased,
        abandoned_ts=ibis.ifelse(joined.purchased, ibis.null("float64"), joined.last_event_ts + 1800.0),
        recovered=joined.cart.notnull(),
    )


def _abandoned_items_over_every_session(data: MeasureData) -> pd.DataFrame:
    """Abandoned items the straightforward way: each session's end and purchase from all its events."""
    s = data.tables.sessioned
    per_session = s.group_by("session_key").aggregate(
        ended=s.ts.max(), purchased=(s.event_type == "purchase").any()
    )
    added = s.filter((s.event_type == "add_to_cart") & s.product_id.notnull())
    items = (
        added.join(per_session.filter(~per_session.purchased), "session_key")
        .group_by(["user_key", "session_key", "product_id"])
        .aggregate(
            category=lambda t: t.category.arbitrary(),
            price=lambda t: t.price.max(),
            quantity=lambda t: ibis.coalesce(t.quantity, 1).sum(),
            ended=lambda t: t.ended.max(),
        )
    )
    bought = s.filter(s.event_type == "purchase").select(
        bought_user="user_key", bought_product="product_id", bought_at="ts"
    )
    hit = items.join(
        bought,
        [
            items.user_key == bought.bought_user,
            items.product_id == bought.bought_product,
            items.ended < bought.bought_at,
            bought.bought_at <= items.ended + 7 * 86_400.0,
        ],
    ).select(hit_session="session_key", hit_product="product_id")
    marked = items.left_join(
        hit.distinct(), [items.session_key == hit.hit_session, items.product_id == hit.hit_product]
    )
    out = marked.select("product_id", "price", "quantity", recovered=marked.hit_session.notnull())
    return data.source.execute(out)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_carts_and_demand_from_the_carted_sessions_only(measured_shop: Settings) -> None:
    """Carts aggregated over the sessions with an add only, and demand signals read from the carts,
    equal the aggregation over every session."""
    with MeasureData(measured_shop) as data:
        fast = data.tables.carts()
        plain = data.source.execute(
            _carts_over_every_session(data.tables.sessioned).order_by(["started_ts", "cart_id"])
        )
        pd.testing.assert_frame_equal(fast, plain)
        assert fast["recovered"].any()
        items = demand.abandoned_items(data, Filters())
        expected = _abandoned_items_over_every_session(data)
        assert len(items) > 100
        pd.testing.assert_frame_equal(_sorted(items.drop(columns="category")), _sorted(expected))


@pytest.fixture(scope="module")
def trained_shop(measured_shop: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the measured shop with abandonment and churn models trained 25 days before its end,
    so outcomes have come since their cut (and the churn horizon, 14 days, has passed for some)."""
    settings = load_settings(home=tmp_path_factory.mktemp("trained") / "home")
    shutil.copytree(measured_shop.home, settings.home, ignore=shutil.ignore_patterns("models", "tmp"))
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        cut = tables.span().last - pd.Timedelta(days=25)
        tasks.train("abandonment", tables, cut, 14)
        tasks.train("churn", tables, cut, 14)
    return settings


def _straightforward_abandonment_auc(data: MeasureData, cut: pd.Timestamp) -> tuple[float, int]:
    """The AUC at the first add of every cart started after the cut, from every cart's snapshots."""
    model, _ = load_model(data.settings, "abandonment", features=list(CART_FEATURES))
    period = data.period(Filters())
    assert period is not None
    snaps = data.tables.cart_snapshots(active_since=cut - pd.Timedelta(days=health.DRIFT_DAYS))
    carts = data.tables.carts().set_index("cart_id")
    started = snaps["cart_id"].map(carts["started_ts"])
    ended = snaps["cart_id"].map(carts["last_event_ts"] + 30 * 60.0)
    fresh = snaps[(started >= cut.timestamp()) & (ended <= period.until.timestamp())]
    first = fresh.drop_duplicates("cart_id", keep="first")
    p = model.predict_proba(first[list(CART_FEATURES)])[:, 1]
    return float(roc_auc_score(first["abandoned"], p)), len(first)


def test_model_health_on_samples(trained_shop: Settings) -> None:
    """Unsampled (fewer outcomes than the sample), model health gives the figures of every cart and
    customer; sampled, the same within its stated margin, and it says so."""
    with MeasureData(trained_shop) as data:
        data.period(Filters())
        found = {h.name: h for h in health.model_health(data, Filters())}
        cut = pd.Timestamp(found["abandonment"].trained_to)
        auc, n = _straightforward_abandonment_auc(data, cut)
        whole = found["abandonment"]
        assert (whole.n, whole.sampled_from) == (n, None)
        assert whole.auc == pytest.approx(auc, abs=1e-12)
        assert whole.auc_margin is not None
        assert 0 < whole.auc_margin < 0.2
        churn = found["churn"]
        assert churn.n > 100
        assert churn.sampled_from is None
        assert churn.auc is not None
        small = {h.name: h for h in health.model_health(data, Filters(), sample=n // 2)}
    sampled = small["abandonment"]
    assert (sampled.n, sampled.sampled_from) == (n // 2, n)
    assert sampled.auc is not None
    assert sampled.auc_margin is not None
    assert abs(sampled.auc - auc) < 2 * sampled.auc_margin
    assert small["churn"].sampled_from == churn.n
    assert "customers drawn at random" in sampled.drift_sample
    # the drift of a sample names the same most-drifted features as the drift of everyone
    assert set(sampled.drift["feature"].head(3)) & set(whole.drift["feature"].head(3))


def test_the_hanley_mcneil_margin_covers_the_auc() -> None:
    """AUCs measured on 400 draws from two known score distributions fall within their stated 95%
    margin of the true AUC about 95% of the time."""
    rng = np.random.default_rng(1)
    true_auc = 0.5 + 0.5 * math.erf(0.8 / 2)  # binormal, means 0.8 apart, unit variances
    covered = 0
    for _ in range(400):
        positives, negatives = rng.normal(0.8, 1, 120), rng.normal(0, 1, 280)
        scores = np.concatenate([positives, negatives])
        labels = np.r_[np.ones(120), np.zeros(280)]
        auc = roc_auc_score(labels, scores)
        covered += abs(auc - true_auc) <= auc_margin(auc, 120, 280)
    assert 0.92 <= covered / 400 <= 0.985

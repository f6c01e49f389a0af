"""The figures of docs/models.md, "Early warnings, measured", on the simulator.

The rhythm and activity-drop warnings and the cart-time thresholds on the ``sim_shop`` fixture of
``tests/conftest.py`` (600 customers x 150 days, seed 11) as of 2024-04-30 and 2024-04-01, against the
simulator's true churn; shop-anomaly false alarms on five normal simulated logs; and the injected lost
day of ``tests/models/test_warnings.py`` (a 3,000-customer, 12-week shop whose purchases of 2024-03-13
were deleted). ``tests/models/test_warnings.py`` asserts the thresholds; this prints the figures.

Run::

    .venv/bin/python bench/warnings_figures.py
"""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from winback.config import Settings, load_settings
from winback.events.store import EventStore
from winback.features.engine import open_source
from winback.features.tables import FeatureTables
from winback.models.warnings import (
    CartTimeWarnings,
    RhythmWarnings,
    ShopAnomalies,
    cart_times,
    daily_activity,
    daily_metrics,
    purchase_moments,
)
from winback.sim import ShopConfig, simulate

LOST_DAY = date(2024, 3, 13)


def stored(events: pa.Table, home: Path) -> Settings:
    settings = load_settings(home=home)
    with EventStore(settings) as store:
        store.append(events, source="simulated")
    return settings


def rhythm(settings: Settings, churn_at: pd.Series, as_of: pd.Timestamp) -> None:
    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        purchases, activity, carts = purchase_moments(tables, as_of), daily_activity(tables, as_of), None
        if as_of == pd.Timestamp("2024-04-30", tz="UTC"):
            carts = cart_times(tables, as_of)
    for model in (RhythmWarnings(), RhythmWarnings(prior=None)):
        model.fit(purchases, activity, as_of=as_of)
        out = model.predict(purchases, activity, as_of=as_of)
        out["churned"] = (churn_at.reindex(out.user_key) <= as_of).to_numpy()
        judged = out[out.rhythm_days.notna()]
        flagged, rest = judged[judged.overdue], judged[~judged.overdue]
        print(
            f"as of {as_of.date()}, prior {model.prior_}: threshold {model.threshold_:.2f}x, gap ratio "
            f"quantiles {model.gap_ratio_quantiles_}, {model.n_customers_} customers with 3+ purchase days"
        )
        print(
            f"  overdue {len(flagged)} of {len(judged)}: {flagged.churned.mean():.1%} truly churned; "
            f"not overdue {len(rest)}: {rest.churned.mean():.1%} "
            f"({flagged.churned.mean() / rest.churned.mean():.1f}x)"
        )
        if model.prior is not None:
            dropped = out[out.activity_drop]
            steady = out[~out.activity_drop & (out.events_prev_30d >= model.min_previous_events)]
            print(
                f"  activity drop (cut {model.activity_cut_:.2f}x, {model.n_activity_} ratios): "
                f"{len(dropped)}, {dropped.churned.mean():.1%} churned; steady {steady.churned.mean():.1%}"
            )
    if carts is not None:
        model = CartTimeWarnings().fit(carts)
        print(f"cart-time thresholds, value bands {model.band_edges_.round(2).tolist()}:")
        print(
            model.thresholds_[["kind", "purchased_carts", "median_minutes", "threshold_minutes"]]
            .round(1)
            .to_string()
        )


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    shop = simulate(seed=11, config=ShopConfig(customers=600, days=150))
    settings = stored(shop.events, tmp / "shop")
    churn_at = shop.customers.set_index("user_id").churn_at
    for as_of in ("2024-04-30", "2024-04-01"):
        rhythm(settings, churn_at, pd.Timestamp(as_of, tz="UTC"))

    alarms = total = 0
    for seed, customers, days in (
        (11, 600, 150),
        (12, 600, 150),
        (5, 3000, 84),
        (6, 3000, 84),
        (3, 2000, 120),
    ):
        logged = stored(
            simulate(seed=seed, config=ShopConfig(customers=customers, days=days)).events, tmp / f"a{seed}"
        )
        with open_source(logged) as source:
            out = ShopAnomalies().detect(daily_metrics(FeatureTables(source, logged)))
        alarms, total = alarms + int(out.anomaly.sum()), total + len(out)
        for row in out[out.anomaly].itertuples():
            print(
                f"  flagged in a normal log (seed {seed}): {row.day} {row.metric} {row.value} z = {row.z:.1f}"
            )
    print(f"shop anomalies, false alarms: {alarms} of {total:,} day-metrics")

    events = simulate(seed=5, config=ShopConfig(customers=3000, days=84)).events
    day = pc.floor(pc.divide(pc.cast(pc.cast(events["timestamp"], pa.int64()), pa.float64()), 86_400e6))
    lost = pc.and_(
        pc.equal(events["event_type"], "purchase"),
        pc.equal(day, float(pd.Timestamp(LOST_DAY, tz="UTC").timestamp() // 86_400)),
    )
    injected = stored(events.filter(pc.invert(lost)), tmp / "injected")
    with open_source(injected) as source:
        out = ShopAnomalies().detect(daily_metrics(FeatureTables(source, injected)))
    print(f"the lost day {LOST_DAY}:")
    print(out[out.day == LOST_DAY][["metric", "value", "expected", "z", "anomaly"]].round(2).to_string())
    print(f"largest |z| on every other day: {out[out.day != LOST_DAY].z.abs().max():.1f}")


if __name__ == "__main__":
    main()

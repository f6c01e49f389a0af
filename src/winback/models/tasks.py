"""Train, evaluate and score each model on the feature tables: what the ``winback`` commands run.

Every evaluation is a time split: fit on what was known before ``as_of``, test on what happened after.

- Abandonment: trained on the states of carts that had ended before ``as_of``, tested on carts started
  after it, at every state and at the first add; beside a logistic regression and the customer's past
  abandonment rate.
- Churn: features as of ``as_of - horizon`` (and two earlier moments, 14 days apart) with labels from
  the horizon after each, which ends by ``as_of`` (so training never sees the test period), tested on
  features as of ``as_of`` and the horizon after it; beside BG/NBD's ``1 - P(alive)``, its expected
  purchases, and recency alone.
- CLV: BG/NBD + Gamma-Gamma fitted on the history before ``as_of``; the forecast of purchases over the
  horizon after it against what customers actually did, beside "the same rate as before".
- Segments: RFM scores and k-means clusters of the customers as of ``as_of``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from winback.errors import BadInputError
from winback.features.carts import CART_FEATURES, line_value
from winback.features.customers import CUSTOMER_FEATURES
from winback.features.tables import FeatureTables
from winback.models.abandonment import AbandonmentModel, LogisticBaseline
from winback.models.churn import ChurnModel, bg_summary
from winback.models.clv import (
    BetaGeoModel,
    ConvergenceError,
    GammaGammaModel,
    customer_lifetime_value,
    rfm_summary,
)
from winback.models.metrics import binary_report, compare
from winback.models.registry import MODEL_NAMES, ModelCard, load_card, load_model, save_model
from winback.models.segments import CustomerClusters, rfm_scores
from winback.recommend.tasks import train_recommend

#: Fewest examples a model is trained on before it refuses (a message says what is missing).
MIN_CARTS = 30
MIN_CUSTOMERS = 20
#: Churn trains on customers as of several moments (each with its own horizon of outcomes), this many
#: days apart: more rows for small shops, and patterns that hold across moments (measured: +0.05 AUC on
#: a 600-customer simulated shop, +0.01 on 20,000 customers, against one moment).
CHURN_SNAPSHOTS = 3
CHURN_STEP_DAYS = 14
#: Share of the data's time span before the default evaluation cut.
EVAL_SHARE = 0.8
#: Customer features the clusters are built on (readable in a profile).
CLUSTER_FEATURES = ["recency_days", "orders", "avg_order_value", "events_30d", "abandon_rate", "tenure_days"]
CLUSTER_WORDS = {
    "recency_days": ("recent buyers", "lapsed buyers"),
    "orders": ("few orders", "many orders"),
    "avg_order_value": ("small baskets", "big baskets"),
    "events_30d": ("quiet lately", "active lately"),
    "abandon_rate": ("decisive", "cart abandoners"),
    "tenure_days": ("new", "long-standing"),
}

CART_WORDS: dict[str, str] = {
    "events_so_far": "events in the session so far",
    "views_so_far": "products viewed in the session",
    "adds_so_far": "items added",
    "removes_so_far": "items removed",
    "items_in_cart": "items in the cart",
    "cart_value": "cart value",
    "mean_item_price": "price per item",
    "checkout_started": "checkout started",
    "minutes_in_session": "minutes in the session",
    "minutes_in_cart": "minutes since the first add",
    "minutes_since_previous_event": "minutes since the previous event",
    "hour": "hour of day (UTC)",
    "weekday": "weekday",
    "past_sessions": "earlier visits",
    "past_carts": "earlier carts",
    "past_abandoned": "earlier abandoned carts",
    "past_abandon_rate": "share of earlier carts abandoned",
    "past_recoveries": "earlier carts recovered",
    "past_orders": "earlier orders",
    "past_revenue": "earlier spend",
    "days_since_last_purchase": "days since the last purchase",
    "days_since_first_seen": "days since first visit",
    "discount_share": "share of orders with a coupon",
    "price_vs_usual": "price vs the customer's usual",
}
CUSTOMER_WORDS: dict[str, str] = {
    "orders": "orders so far",
    "revenue": "spend so far",
    "avg_order_value": "average order value",
    "recency_days": "days since the last purchase",
    "tenure_days": "days since the first purchase",
    "days_since_first_seen": "days since first visit",
    "days_since_last_event": "days since the last visit",
    "events_7d": "events in the last 7 days",
    "events_30d": "events in the last 30 days",
    "events_90d": "events in the last 90 days",
    "events_prev_90d": "events 90-180 days ago",
    "sessions_30d": "visits in the last 30 days",
    "sessions_prev_30d": "visits 30-60 days ago",
    "purchases_90d": "orders in the last 90 days",
    "purchases_prev_90d": "orders 90-180 days ago",
    "activity_trend_30d": "activity vs the month before",
    "carts": "carts",
    "abandoned_carts": "abandoned carts",
    "abandon_rate": "share of carts abandoned",
    "discount_share": "share of orders with a coupon",
    "distinct_products": "distinct products bought",
    "bg_frequency": "repeat purchase days",
    "bg_recency": "age at the last purchase (days)",
    "bg_T": "days since the first purchase",
    "bg_monetary": "average repeat spend",
    "p_alive": "P(alive) from the purchase rhythm",
    "bg_expected_purchases": "expected orders in the horizon (BG/NBD)",
}


def _number(value: Any) -> str:
    x = float(value)
    if x.is_integer():
        return f"{int(x):,}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _phrases(words: dict[str, str]) -> dict[str, Any]:
    """``describe`` mapping for ``reasons``: the feature's words with the row's value."""

    def phrase(text: str) -> Any:
        def describe(value: Any) -> str:
            if value is None or pd.isna(value):
                return f"{text}: none"
            return (
                f"{text} {_number(value)}"
                if isinstance(value, (int, float, np.number))
                else f"{text} {value}"
            )

        return describe

    described: dict[str, Any] = {name: phrase(text) for name, text in words.items()}
    described["checkout_started"] = lambda v: "checkout started" if v else "no checkout yet"
    return described


def default_eval_as_of(
    tables: FeatureTables, horizon_days: int | None = None, *, until: pd.Timestamp | None = None
) -> pd.Timestamp:
    """Where a time split of the data up to ``until`` (default: all of it) cuts without ``--as-of``."""
    first, last = tables.span().first, until or tables.span().last
    if horizon_days is not None:
        as_of = (last - timedelta(days=horizon_days)).floor("D")
        if as_of <= first:
            days = (last - first).days
            raise BadInputError(
                f"--horizon {horizon_days}d is longer than the data ({days} days, {first.date()} to "
                f"{last.date()}): there is nothing to learn from before it; choose a shorter --horizon"
            )
        return as_of
    cut = first + (last - first) * EVAL_SHARE
    return cut.floor("h") if cut.floor("h") > first else cut


def _save(
    tables: FeatureTables, name: str, model: Any, as_of: pd.Timestamp, features: tuple[str, ...], **card: Any
) -> ModelCard:
    """Save ``model`` trained on the history before ``as_of`` with its card (what else it needs: ``card``)."""
    return save_model(
        tables.settings,
        model,
        ModelCard(
            name=name,
            features=list(features),
            as_of=as_of.isoformat(),
            train_window=(tables.span().first.isoformat(), as_of.isoformat()),
            engine=tables.source.engine,
            **card,
        ),
    )


def _evaluation_for_card(evaluate: Any, notes: list[str]) -> dict[str, Any]:
    """A time-split evaluation within the training window, for the model's card (with its calibration and
    CLV-by-frequency tables, which the report's model health shows); on too little history the card says
    why there is none instead."""
    try:
        result = evaluate()
    except BadInputError as exc:
        notes.append(f"not evaluated: {exc}")
        return {}
    return {k: v for k, v in result.items() if k != "model"}


def _metrics_dict(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {str(name): {str(k): round(float(v), 4) for k, v in row.items()} for name, row in frame.iterrows()}


# -- abandonment --------------------------------------------------------------------------------------


@dataclass
class CartSplit:
    train: pd.DataFrame
    test: pd.DataFrame


def _cart_split(
    tables: FeatureTables, as_of: pd.Timestamp, *, with_test: bool, until: pd.Timestamp | None = None
) -> CartSplit:
    """Training states of carts ended before ``as_of``; with ``with_test``, the states of carts started
    after it and ended by ``until`` (default: the end of the data)."""
    idle = tables.settings.abandon_idle_minutes * 60.0
    snaps = tables.cart_snapshots()
    carts = tables.carts().set_index("cart_id")
    ended = carts.last_event_ts + idle
    cut = as_of.timestamp()
    train = snaps[snaps.cart_id.map(ended).lt(cut)]
    n_train = train.cart_id.nunique()
    if n_train < MIN_CARTS or train.abandoned.nunique() < 2:
        raise BadInputError(
            f"too little history to train the abandonment model: {n_train} carts ended before "
            f"{as_of.isoformat()} (need at least {MIN_CARTS}, both abandoned and bought ones)"
        )
    test = snaps.iloc[0:0]
    if with_test:
        done = (until or tables.span().last).timestamp()
        keep = snaps.cart_id.map(carts.started_ts).ge(cut) & snaps.cart_id.map(ended).le(done)
        test = snaps[keep]
        if test.cart_id.nunique() < MIN_CARTS or test.abandoned.nunique() < 2:
            raise BadInputError(
                f"too few carts after {as_of.isoformat()} to evaluate on ({test.cart_id.nunique()}): "
                "choose an earlier --as-of"
            )
    return CartSplit(train.reset_index(drop=True), test.reset_index(drop=True))


def fit_abandonment(
    train: pd.DataFrame, random_state: int = 0, threads: int | None = None
) -> AbandonmentModel:
    """Trees on every training state, unweighted, calibrated on the latest states, on ``threads``
    (default: every core; one-row predictions still run on one thread, which is faster for them).

    Weighting each cart once (1 / its number of states) looks fairer but miscalibrates: bought carts
    have more states (checkout, more views), so their early states weigh less and the model then
    overstates abandonment at the first add (measured 0.75 against 0.69 on the simulator); unweighted,
    each state is calibrated as the state a live cart is scored in.
    """
    n_jobs = threads or os.cpu_count() or 1
    return AbandonmentModel(random_state=random_state, n_jobs=n_jobs).fit(
        train[list(CART_FEATURES)], train.abandoned, time_order=train.ts
    )


def train_abandonment(tables: FeatureTables, as_of: pd.Timestamp | None = None) -> ModelCard:
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    split = _cart_split(tables, as_of, with_test=False)
    model = fit_abandonment(split.train, threads=tables.settings.threads)
    notes = [model.fallback_] if model.fallback_ else []
    evaluation = _evaluation_for_card(lambda: evaluate_abandonment(tables, until=as_of), notes)
    return _save(
        tables,
        "abandonment",
        model,
        as_of,
        CART_FEATURES,
        params=model.get_params(),
        metrics={
            "train_carts": int(split.train.cart_id.nunique()),
            "train_states": len(split.train),
            "time_split": evaluation,
        },
        notes=notes,
    )


def evaluate_abandonment(
    tables: FeatureTables, as_of: pd.Timestamp | None = None, *, until: pd.Timestamp | None = None
) -> dict[str, Any]:
    """The time split at ``as_of`` of the data up to ``until`` (default: all of it)."""
    as_of = as_of or default_eval_as_of(tables, until=until)
    tables.check_as_of(as_of)
    split = _cart_split(tables, as_of, with_test=True, until=until)
    model = fit_abandonment(split.train, threads=tables.settings.threads)
    columns = list(CART_FEATURES)
    baseline = LogisticBaseline().fit(split.train[columns], split.train.abandoned)
    prior_rate = float(split.train.abandoned.mean())
    results: dict[str, Any] = {
        "model": "abandonment",
        "as_of": as_of.isoformat(),
        "train_carts": int(split.train.cart_id.nunique()),
        "test_carts": int(split.test.cart_id.nunique()),
        "fallback": model.fallback_,
    }
    first_add = split.test.drop_duplicates("cart_id", keep="first")
    for label, rows in (("every cart state", split.test), ("at the first add", first_add)):
        X = rows[columns]  # noqa: N806
        table = compare(
            rows.abandoned,
            {
                "LightGBM (calibrated)": model.predict_proba(X)[:, 1],
                "logistic regression": baseline.predict_proba(X)[:, 1],
                "past abandonment rate": rows.past_abandon_rate.fillna(prior_rate).to_numpy(),
            },
        )
        results[label] = _metrics_dict(table)
    results["calibration"] = _calibration_table(
        first_add.abandoned, model.predict_proba(first_add[columns])[:, 1]
    )
    return results


def _calibration_table(y: pd.Series, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    return list(binary_report(np.asarray(y), p, bins=bins)["calibration"])


def score_abandonment(
    tables: FeatureTables, as_of: pd.Timestamp | None = None, *, within_hours: float = 24.0
) -> pd.DataFrame:
    """Carts not bought by ``as_of`` whose latest event lies within ``within_hours`` before it, scored at
    that latest state: ``cart_id, user_id, abandon_probability, minutes_idle, state, reasons``."""
    model, _ = load_model(tables.settings, "abandonment", features=list(CART_FEATURES))
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    since = as_of - timedelta(hours=within_hours)
    snaps = tables.cart_snapshots(as_of=as_of, active_since=since)
    latest = snaps.drop_duplicates("cart_id", keep="last")
    latest = latest[latest.abandoned & (latest.ts >= since.timestamp())]
    latest = latest.reset_index(drop=True)
    out = pd.DataFrame(
        {
            "cart_id": latest.cart_id,
            "user_id": latest.user_key,
            "last_event_at": pd.to_datetime(latest.ts, unit="s", utc=True),
            "cart_value": latest.cart_value,
            "items_in_cart": latest.items_in_cart,
        }
    )
    if latest.empty:
        return out.assign(abandon_probability=[], minutes_idle=[], state=[], reasons=[])
    X = latest[list(CART_FEATURES)]  # noqa: N806
    idle = (as_of.timestamp() - latest.ts) / 60.0
    out["abandon_probability"] = model.predict_proba(X)[:, 1]
    out["minutes_idle"] = idle.round(1)
    out["state"] = np.where(idle >= tables.settings.abandon_idle_minutes, "abandoned", "open")
    out["reasons"] = model.reasons(X, top=3, describe=_phrases(CART_WORDS))
    return out.sort_values("abandon_probability", ascending=False, kind="stable").reset_index(drop=True)


# -- churn --------------------------------------------------------------------------------------------


def _labelled_customers(
    tables: FeatureTables, as_of: pd.Timestamp, horizon_days: int, what: str
) -> pd.DataFrame:
    frame = tables.customers(as_of, horizon_days)
    if len(frame) < MIN_CUSTOMERS or frame.churned.nunique() < 2:
        raise BadInputError(
            f"too little history for {what}: {len(frame)} customers had bought before {as_of.date()} "
            f"(need at least {MIN_CUSTOMERS}, some of whom bought again within {horizon_days} days and some "
            "not)"
        )
    return frame


def _churn_training(
    tables: FeatureTables, as_of: pd.Timestamp, horizon_days: int
) -> tuple[pd.Timestamp, ChurnModel, int]:
    """The churn model trained on features as of ``as_of - horizon`` (and up to two earlier moments),
    labelled by the horizon after each; also that first moment and how many moments were used."""
    start = as_of - timedelta(days=horizon_days)
    if start <= tables.span().first + timedelta(days=14):
        raise BadInputError(
            f"too little history to train churn with a {horizon_days}-day horizon before {as_of.date()}: "
            f"the data starts {tables.span().first.date()}, and training needs {horizon_days} days of "
            "outcomes plus at least 14 days of history before them; use a shorter --horizon or a later "
            "--as-of"
        )
    frames = [_labelled_customers(tables, start, horizon_days, "the churn model")]
    for k in range(1, CHURN_SNAPSHOTS):  # earlier moments add rows where they have enough history
        moment = start - timedelta(days=CHURN_STEP_DAYS * k)
        if moment <= tables.span().first + timedelta(days=14):
            break
        try:
            frames.insert(0, _labelled_customers(tables, moment, horizon_days, "the churn model"))
        except BadInputError:
            break
    train = pd.concat(frames, ignore_index=True)
    model = ChurnModel(horizon_days=horizon_days, random_state=0).fit(
        train[list(CUSTOMER_FEATURES)], train.churned
    )
    return start, model, len(frames)


def train_churn(tables: FeatureTables, as_of: pd.Timestamp | None, horizon_days: int) -> ModelCard:
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    start, model, _ = _churn_training(tables, as_of, horizon_days)
    notes = [model.classifier_.fallback_] if model.classifier_.fallback_ else []
    evaluation = _evaluation_for_card(lambda: evaluate_churn(tables, None, horizon_days, until=as_of), notes)
    return _save(
        tables,
        "churn",
        model,
        as_of,
        CUSTOMER_FEATURES,
        params={**model.get_params(), "horizon_days": horizon_days, "features_as_of": start.isoformat()},
        metrics={"bgnbd": model.bgnbd_.params_, "time_split": evaluation},
        notes=notes,
    )


def evaluate_churn(
    tables: FeatureTables, as_of: pd.Timestamp | None, horizon_days: int, *, until: pd.Timestamp | None = None
) -> dict[str, Any]:
    as_of = as_of or default_eval_as_of(tables, horizon_days, until=until)
    tables.check_as_of(as_of, horizon_days)
    start, model, moments = _churn_training(tables, as_of, horizon_days)
    test = _labelled_customers(tables, as_of, horizon_days, "evaluating churn")
    X = test[list(CUSTOMER_FEATURES)]  # noqa: N806
    table = compare(
        test.churned,
        {
            "LightGBM + P(alive)": model.predict_proba(X)[:, 1],
            "1 - P(alive) (BG/NBD)": 1 - model.p_alive(X),
            "BG/NBD expected purchases (fewer = churn)": -model.expected_purchases(X, horizon_days),
            "recency alone": test.recency_days.to_numpy(),
        },
    )
    return {
        "model": "churn",
        "as_of": as_of.isoformat(),
        "horizon_days": horizon_days,
        "train_features_as_of": start.isoformat(),
        "train_rows": int(model.bgnbd_.n_customers_),
        "train_moments": moments,
        "test_customers": len(test),
        "churn_rate": round(float(test.churned.mean()), 4),
        "fallback": model.classifier_.fallback_,
        "metrics": _metrics_dict(table),
        "calibration": _calibration_table(test.churned, model.predict_proba(X)[:, 1]),
    }


# -- CLV ----------------------------------------------------------------------------------------------


@dataclass
class CustomerValue:
    """BG/NBD + Gamma-Gamma fitted on one history, in days: what ``clv`` saves."""

    bgnbd: BetaGeoModel
    spend: GammaGammaModel
    horizon_days: int
    discount_rate: float

    def predict(self, customers: pd.DataFrame) -> pd.DataFrame:
        summary = bg_summary(customers)
        f, r, t = summary.frequency, summary.recency, summary["T"]
        purchases = self.bgnbd.expected_purchases(self.horizon_days, f, r, t)
        spend = self.spend.conditional_expected_average_profit(f, summary.monetary_value)
        steps = max(1, round(self.horizon_days / (365.25 / 12)))
        clv = customer_lifetime_value(
            self.bgnbd, self.spend, summary, horizon=steps, freq="month", discount_rate=self.discount_rate
        )
        gap = self.bgnbd.expected_time_to_next_purchase(f, r, t, max_time=10 * 365.0)
        as_of = pd.Timestamp(customers.attrs.get("as_of", pd.Timestamp.now(tz="UTC")))
        next_order = [as_of + timedelta(days=float(g)) if np.isfinite(g) else pd.NaT for g in gap]
        return pd.DataFrame(
            {
                "p_alive": self.bgnbd.p_alive(f, r, t),
                "expected_purchases": purchases,
                "expected_value": purchases * spend,
                "clv": np.asarray(clv),
                "expected_next_order": pd.to_datetime(pd.Series(next_order), utc=True),
            },
            index=customers.index,
        )


def _maximum_likelihood(model: type[BetaGeoModel] | type[GammaGammaModel], data: pd.DataFrame) -> Any:
    """The plain ML fit, else (on odd or small data that will not converge) a lightly penalised one."""
    try:
        return model().fit(data)
    except ConvergenceError:
        return model(penalizer_coef=0.001).fit(data)


def fit_customer_value(customers: pd.DataFrame, horizon_days: int, discount_rate: float) -> CustomerValue:
    summary = bg_summary(customers)
    bgnbd = _maximum_likelihood(BetaGeoModel, summary)
    spend = _maximum_likelihood(
        GammaGammaModel, summary[(summary.frequency > 0) & (summary.monetary_value > 0)]
    )
    return CustomerValue(bgnbd, spend, horizon_days, discount_rate)


def train_clv(
    tables: FeatureTables, as_of: pd.Timestamp | None, horizon_days: int, discount_rate: float = 0.1
) -> ModelCard:
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    customers = tables.customers(as_of)
    model = fit_customer_value(customers, horizon_days, discount_rate)
    notes: list[str] = []
    evaluation = _evaluation_for_card(lambda: evaluate_clv(tables, None, horizon_days, until=as_of), notes)
    return _save(
        tables,
        "clv",
        model,
        as_of,
        CUSTOMER_FEATURES,
        params={"horizon_days": horizon_days, "discount_rate": discount_rate, "time_unit": "day"},
        metrics={
            "bgnbd": model.bgnbd.params_,
            "gamma_gamma": model.spend.params_,
            "customers": len(customers),
            "time_split": evaluation,
        },
        notes=notes,
    )


def evaluate_clv(
    tables: FeatureTables, as_of: pd.Timestamp | None, horizon_days: int, *, until: pd.Timestamp | None = None
) -> dict[str, Any]:
    as_of = as_of or default_eval_as_of(tables, horizon_days, until=until)
    tables.check_as_of(as_of, horizon_days)
    customers = tables.customers(as_of, horizon_days)
    if len(customers) < MIN_CUSTOMERS:
        raise BadInputError(
            f"too little history for CLV: {len(customers)} customers bought before {as_of.date()}"
        )
    model = fit_customer_value(customers, horizon_days, 0.0)
    predicted = model.predict(customers)
    actual = customers.purchases_in_horizon.to_numpy(dtype=float)
    naive = (customers.bg_frequency / customers.bg_T.clip(lower=1.0) * horizon_days).to_numpy()
    by_frequency = (
        pd.DataFrame(
            {
                "repeat purchase days before": customers.bg_frequency.clip(upper=7),
                "actual": actual,
                "BG/NBD": predicted.expected_purchases.to_numpy(),
                "same rate as before": naive,
            }
        )
        .groupby("repeat purchase days before")
        .agg(
            customers=("actual", "size"),
            actual=("actual", "mean"),
            bgnbd=("BG/NBD", "mean"),
            naive=("same rate as before", "mean"),
        )
        .round(4)
    )
    return {
        "model": "clv",
        "as_of": as_of.isoformat(),
        "horizon_days": horizon_days,
        "customers": len(customers),
        "bgnbd": model.bgnbd.params_,
        "gamma_gamma": model.spend.params_,
        "purchases": {
            "actual": round(float(actual.sum()), 1),
            "BG/NBD": round(float(predicted.expected_purchases.sum()), 1),
            "same rate as before": round(float(naive.sum()), 1),
        },
        "mae_per_customer": {
            "BG/NBD": round(float(np.abs(predicted.expected_purchases - actual).mean()), 4),
            "same rate as before": round(float(np.abs(naive - actual).mean()), 4),
        },
        "by_frequency": by_frequency.reset_index().to_dict(orient="records"),
    }


def clv_fit(
    tables: FeatureTables,
    calibration_end: pd.Timestamp,
    *,
    time_unit: str = "week",
    observation_end: pd.Timestamp | None = None,
) -> dict[str, Any]:
    """BG/NBD and Gamma-Gamma on the store's purchases up to ``calibration_end`` (lifetimes' summary:
    repeat purchase days, in ``time_unit``), and the forecast of the period after it against actual."""
    end = observation_end or tables.span().last
    tables.check_as_of(calibration_end)
    if end <= calibration_end:
        raise BadInputError(
            f"--observation-end {end.date()} must come after --calibration-end {calibration_end.date()}"
        )
    s = tables.sessioned
    purchases = s.filter(s.event_type == "purchase").select("user_key", "timestamp", value=line_value(s))
    tx = tables.source.execute(purchases)
    summary = rfm_summary(
        tx,
        customer_col="user_key",
        value_col="value",
        observation_end=end,
        calibration_end=calibration_end,
        time_unit=time_unit,  # type: ignore[arg-type]
    )
    bgnbd = BetaGeoModel().fit(summary)
    spend = GammaGammaModel().fit(summary[summary.frequency > 0])
    duration = float(summary.duration_holdout.iloc[0])
    forecast = bgnbd.expected_purchases(duration, summary.frequency, summary.recency, summary["T"])
    return {
        "calibration_end": str(calibration_end.date()),
        "observation_end": str(end.date()),
        "time_unit": time_unit,
        "customers": len(summary),
        "repeat_buyers": int((summary.frequency > 0).sum()),
        "bgnbd": {**bgnbd.params_, "log_likelihood": round(bgnbd.log_likelihood_, 2)},
        "gamma_gamma": spend.params_,
        "holdout": {
            "length": duration,
            "actual_repeat_purchases": float(summary.frequency_holdout.sum()),
            "forecast_repeat_purchases": round(float(forecast.sum()), 1),
        },
    }


# -- segments -----------------------------------------------------------------------------------------


def train_segments(tables: FeatureTables, as_of: pd.Timestamp | None) -> ModelCard:
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    customers = tables.customers(as_of)
    if len(customers) < MIN_CUSTOMERS:
        raise BadInputError(f"too few customers to segment: {len(customers)} bought before {as_of.date()}")
    clusters = CustomerClusters(random_state=0, feature_words=CLUSTER_WORDS).fit(
        customers[CLUSTER_FEATURES].fillna(0.0)
    )
    return _save(
        tables,
        "segments",
        clusters,
        as_of,
        CUSTOMER_FEATURES,
        params={"cluster_features": CLUSTER_FEATURES, "n_clusters": clusters.n_clusters_},
        metrics={"silhouette": {str(k): round(v, 4) for k, v in clusters.silhouette_scores_.items()}},
    )


# -- every model by name ------------------------------------------------------------------------------


def train(name: str, tables: FeatureTables, as_of: pd.Timestamp | None, horizon_days: int) -> ModelCard:
    """Train and save the model called ``name`` (one of ``registry.MODEL_NAMES``); its card."""
    if name == "abandonment":
        return train_abandonment(tables, as_of)
    if name == "churn":
        return train_churn(tables, as_of, horizon_days)
    if name == "clv":
        return train_clv(tables, as_of, horizon_days)
    if name == "segments":
        return train_segments(tables, as_of)
    if name == "recommend":
        return train_recommend(tables, as_of)
    if name == "policy":
        from winback.decide.learn import train_policy

        return train_policy(tables.settings, tables.source.events.to_pyarrow(), as_of)
    raise BadInputError(f"model {name!r}: expected one of {', '.join(MODEL_NAMES)}")


# -- customer scores ----------------------------------------------------------------------------------

CUSTOMER_SCORE_COLUMNS = (
    "user_id",
    "churn_probability",
    "p_alive",
    "expected_purchases",
    "expected_value",
    "clv",
    "severity",
    "segment",
    "cluster",
    "expected_next_order",
    "reasons",
)


def score_customers(tables: FeatureTables, as_of: pd.Timestamp | None, *, require: str) -> pd.DataFrame:
    """One row per customer who has bought: every trained customer model's output, the ``require``-d one
    mandatory (a clear error if it was never trained), the others filled where they exist."""
    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    customers = tables.customers(as_of)
    if customers.empty:
        raise BadInputError(f"no customer had bought before {as_of.isoformat()}: there is nobody to score")
    customers.attrs["as_of"] = as_of
    out = pd.DataFrame({"user_id": customers.user_key})
    available = {}
    for name in ("churn", "clv", "segments"):
        try:
            load_card(tables.settings, name)
        except BadInputError:
            if name == require:
                raise
            continue
        available[name] = load_model(tables.settings, name, features=list(CUSTOMER_FEATURES))[0]
    X = customers[list(CUSTOMER_FEATURES)]  # noqa: N806
    if "clv" in available:
        out = out.join(available["clv"].predict(customers))
    if "churn" in available:
        churn: ChurnModel = available["churn"]
        out["churn_probability"] = churn.predict_proba(X)[:, 1]
        out["severity"] = out.churn_probability * churn.value_if_retained(X, churn.horizon_days)
        out["reasons"] = churn.reasons(X, top=3, describe=_phrases(CUSTOMER_WORDS))
        if "p_alive" not in out:
            out["p_alive"] = churn.p_alive(X)
    if "segments" in available:
        rfm = rfm_scores(bg_summary(customers).set_index(customers.user_key)).reindex(customers.user_key)
        out["segment"] = rfm.segment.astype(str).to_numpy()
        clusters: CustomerClusters = available["segments"]
        labels = clusters.profile_["label"]
        ids = clusters.predict(customers[CLUSTER_FEATURES].fillna(0.0))
        out["cluster"] = [f"{i}: {labels.iloc[i]}" for i in ids]
    for column in CUSTOMER_SCORE_COLUMNS:
        if column not in out:
            out[column] = None
    order = {"churn": "severity", "clv": "clv"}.get(require, "user_id")
    ascending = require == "segments"
    return (
        out[list(CUSTOMER_SCORE_COLUMNS)]
        .sort_values(order, ascending=ascending, kind="stable")
        .reset_index(drop=True)
    )


# -- early warnings -----------------------------------------------------------------------------------


def early_warnings(
    tables: FeatureTables, as_of: pd.Timestamp | None = None, *, recent_days: int = 14
) -> dict[str, pd.DataFrame]:
    """Customers off their rhythm, open carts past their kind's time, and abnormal days in the last
    ``recent_days``: each learned from the history before ``as_of`` (see :mod:`winback.models.warnings`).

    A part that has too little history to learn from is left out with the reason in ``notes``.
    """
    from winback.models import warnings as w

    as_of = as_of or tables.span().last + timedelta(seconds=1)
    tables.check_as_of(as_of)
    found: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    try:
        purchases, activity = w.purchase_moments(tables, as_of), w.daily_activity(tables, as_of)
        rhythm = (
            w.RhythmWarnings().fit(purchases, activity, as_of=as_of).predict(purchases, activity, as_of=as_of)
        )
        found["customers"] = rhythm[rhythm.overdue | rhythm.activity_drop].reset_index(drop=True)
    except BadInputError as exc:
        notes.append(f"customers: {exc}")
    try:
        model = w.CartTimeWarnings().fit(w.cart_times(tables, as_of))
        carts = model.predict(w.open_carts(tables, as_of), as_of=as_of)
        found["carts"] = carts[carts.overdue].reset_index(drop=True)
        found["cart_thresholds"] = model.thresholds_
    except BadInputError as exc:
        notes.append(f"carts: {exc}")
    try:
        days = w.ShopAnomalies().detect(w.daily_metrics(tables, as_of))
        recent = pd.to_datetime(days.day) >= (as_of - timedelta(days=recent_days)).tz_convert(None).floor("D")
        found["shop"] = days[days.anomaly & recent.to_numpy()].reset_index(drop=True)
    except BadInputError as exc:
        notes.append(f"shop: {exc}")
    found["notes"] = pd.DataFrame({"note": notes})
    return found

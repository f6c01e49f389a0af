"""Model health: are the deployed models still right, and has what they see moved?

For each deployed model (the registry's current version):

- **quality on recent outcomes**: the abandonment model scored at the first add of the carts started
  after its training cut and ended by the end of the period; the churn model on the customers as of
  ``until - horizon`` when that is after its cut (their horizon has passed). ROC-AUC and a calibration
  table (deciles of the prediction). A model trained on data up to now has no such outcomes yet: then
  the figures of its card (the time split within its training window) are shown, labelled as such.
- **feature drift**: the population stability index of each feature between the 30 days before the
  model's cut (what it learnt from) and the last 30 days of the period (what it scores now), on
  deciles of the reference. :data:`PSI_WATCH` (0.1) and :data:`PSI_ALERT` (0.25) are the usual
  thresholds: under 0.1 stable, 0.1-0.25 worth watching, above 0.25 the population has moved and the
  model should be retrained (``winback retrain``).

**Samples.** A large shop has hundreds of thousands of recent outcomes, and computing every cart's
snapshots or every customer's features twice more costs more than the rest of the report. So each
figure is measured on a seeded random sample of at most :data:`HEALTH_SAMPLE` (10,000) carts or
customers (all of them when there are fewer): the AUC comes with its 95% margin (Hanley and McNeil's
standard error, :func:`winback.models.metrics.auc_margin`; about ±0.01 at 10,000), and a PSI on 10,000
per side moves by a few thousandths from one sample to another, far below the 0.1 threshold. The
drift's carts are every cart of customers drawn at random (:func:`_carts_of_customers`), which reads
half the history a sample of carts does. Features are computed only from the sampled customers'
events, which gives each of them exactly the features the whole shop's computation would (features
are per customer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import ibis
import numpy as np
import pandas as pd

from winback.errors import BadInputError
from winback.features.carts import CART_FEATURES, cart_snapshots
from winback.features.customers import CUSTOMER_FEATURES, customer_features
from winback.measure.data import Filters, MeasureData, Period
from winback.models.metrics import auc_margin, binary_report
from winback.models.registry import ModelCard, load_model

__all__ = [
    "HEALTH_SAMPLE",
    "PSI_ALERT",
    "PSI_WATCH",
    "ModelHealth",
    "abandonment_health",
    "churn_health",
    "model_health",
    "psi",
]

PSI_WATCH = 0.10
PSI_ALERT = 0.25
#: Days of features on each side of the drift comparison.
DRIFT_DAYS = 30
#: Fewest recent outcomes (with both classes) to judge a model on.
MIN_OUTCOMES = 30
#: Carts or customers each figure is measured on at most (a seeded random sample beyond).
HEALTH_SAMPLE = 10_000


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float | None:
    """Population stability index of ``recent`` against ``reference`` on the reference's quantile bins
    (missing values are a bin of their own); None when either side is empty.

    >>> round(psi(np.arange(1000.0), np.arange(1000.0)), 6)
    0.0
    """
    reference, recent = np.asarray(reference, dtype=float), np.asarray(recent, dtype=float)
    if reference.size == 0 or recent.size == 0:
        return None
    known = reference[np.isfinite(reference)]
    edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])) if known.size else np.array([])

    def shares(values: np.ndarray) -> np.ndarray:
        finite = np.isfinite(values)
        counts = np.bincount(np.searchsorted(edges, values[finite], side="right"), minlength=edges.size + 1)
        return np.append(counts, (~finite).sum()) / values.size

    p, q = np.clip(shares(reference), 1e-4, None), np.clip(shares(recent), 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class ModelHealth:
    """One deployed model's health."""

    name: str
    version: str | None = None
    trained_to: str | None = None
    source: str = ""  # what the quality figures are measured on
    n: int = 0
    auc: float | None = None
    auc_margin: float | None = None  # half-width of its 95% interval (Hanley-McNeil)
    sampled_from: int | None = None  # the outcomes n was sampled from, when it is a sample
    drift_sample: str = ""  # what the drift was measured on, when sampled
    calibration: list[dict[str, float]] = field(default_factory=list)
    drift: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["feature", "psi", "status"]))
    status: str = "not trained"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "trained_to": self.trained_to,
            "source": self.source,
            "n": self.n,
            "auc": self.auc,
            "auc_margin": self.auc_margin,
            "sampled_from": self.sampled_from,
            "drift_sample": self.drift_sample,
            "calibration": self.calibration,
            "drift": self.drift.to_dict("records"),
            "status": self.status,
            "notes": self.notes,
        }


def _drift(reference: pd.DataFrame, recent: pd.DataFrame, features: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for feature in features:
        value = psi(
            pd.to_numeric(reference[feature], errors="coerce").to_numpy(dtype=float),
            pd.to_numeric(recent[feature], errors="coerce").to_numpy(dtype=float),
        )
        if value is None:
            continue
        status = "retrain" if value > PSI_ALERT else "watch" if value > PSI_WATCH else "stable"
        rows.append({"feature": feature, "psi": value, "status": status})
    frame = pd.DataFrame(rows, columns=["feature", "psi", "status"])
    return frame.sort_values("psi", ascending=False, ignore_index=True)


def _sample(keys: pd.Series, size: int) -> list[str]:
    """At most ``size`` of the distinct ``keys``, a seeded random sample (the same on every run)."""
    distinct = pd.Series(sorted(set(keys.astype(str))), dtype=object)
    return (distinct.sample(size, random_state=0) if len(distinct) > size else distinct).tolist()


def _carts_of_customers(carts: pd.DataFrame, size: int) -> list[str]:
    """About ``size`` of ``carts``: all the carts of customers drawn in a seeded random order until
    their carts number ``size``. Per cart this reads about half the events a sample of carts does (a
    random cart more often belongs to a customer with a long history, all of which its snapshots read),
    and every cart is as likely to be drawn: fine for the drift, not for an AUC, whose margin assumes
    independent outcomes."""
    if len(carts) <= size:
        return carts["cart_id"].astype(str).tolist()
    order = pd.Series(sorted(set(carts["user_key"].astype(str)))).sample(frac=1, random_state=0)
    per_customer = carts.groupby(carts["user_key"].astype(str)).size().reindex(order.to_numpy())
    drawn = int(np.searchsorted(per_customer.cumsum().to_numpy(), size)) + 1
    chosen = set(order.iloc[:drawn])
    return carts.loc[carts["user_key"].astype(str).isin(chosen), "cart_id"].astype(str).tolist()


def _of_customers(data: MeasureData, users: list[str]) -> ibis.Table:
    """The sessionised events of ``users`` only: what their carts' snapshots and their own customer
    features are computed from (the same values as from every event, since both are per customer)."""
    s = data.tables.sessioned
    return s.semi_join(ibis.memtable(pd.DataFrame({"user_key": sorted(set(users))})), "user_key")


def _buyers(data: MeasureData, before: pd.Timestamp) -> pd.Series:
    """The customers with a purchase before ``before``: the population of the customer mart then."""
    s = data.tables.sessioned
    bought = s.filter((s.event_type == "purchase") & (s.ts < before.timestamp())).select("user_key")
    return data.source.execute(bought.distinct().order_by("user_key"))["user_key"]


def _customers(
    data: MeasureData, as_of: pd.Timestamp, size: int, horizon_days: int | None = None
) -> tuple[pd.DataFrame, int]:
    """Customer features as of ``as_of`` of a sample of at most ``size`` of the customers who had
    bought by then, and how many there were."""
    buyers = _buyers(data, as_of)
    chosen = _sample(buyers, size)
    expr = customer_features(_of_customers(data, chosen), as_of.timestamp(), horizon_days)
    return data.source.execute(expr.order_by("user_key")).reset_index(drop=True), len(buyers)


def _judged(health: ModelHealth, y: np.ndarray, p: np.ndarray) -> None:
    """AUC (with its margin) and calibration of predictions ``p`` of outcomes ``y``."""
    report = binary_report(y, p)
    positives = int(np.asarray(y, dtype=bool).sum())
    health.n, health.auc, health.calibration = len(y), report["roc_auc"], list(report["calibration"])
    health.auc_margin = auc_margin(report["roc_auc"], positives, len(y) - positives)


def _status(health: ModelHealth) -> str:
    worst = health.drift["status"].tolist()
    if "retrain" in worst:
        return "retrain: features have drifted"
    if "watch" in worst:
        return "watch: some features are drifting"
    return "ok"


def _from_card(health: ModelHealth, card: ModelCard, auc_of: Any) -> None:
    """Quality figures from the card's time split, when no outcomes have come since training."""
    split = card.metrics.get("time_split") or {}
    health.source = (
        f"its card: the time split at {str(split.get('as_of', '?'))[:10]} within its training window"
    )
    auc = auc_of(split)
    health.auc = float(auc) if auc is not None else None
    health.calibration = list(split.get("calibration") or [])
    health.notes.append(
        f"no outcomes yet after its training cut ({card.as_of[:10]}): the figures are its card's; "
        "they are measured on recent outcomes once those are in the log"
    )


def _deployed(
    data: MeasureData, filters: Filters, task: str, features: Sequence[str]
) -> tuple[ModelHealth, tuple[Any, ModelCard, Period] | None]:
    """The health record of ``task``'s deployed model, and (model, card, period), or None when there is
    no model (the note says why) or no data in the period."""
    health = ModelHealth(task)
    period = data.period(filters)
    try:
        model, card = load_model(data.settings, task, features=list(features))
    except BadInputError as error:
        health.notes.append(str(error))
        return health, None
    health.version, health.trained_to = card.version, card.as_of
    if period is None:
        health.status = "no data"
        return health, None
    return health, (model, card, period)


def abandonment_health(data: MeasureData, filters: Filters, *, sample: int = HEALTH_SAMPLE) -> ModelHealth:
    """The abandonment model's health (see the module docstring): on at most ``sample`` carts for
    its quality and on each side of the drift."""
    health, deployed = _deployed(data, filters, "abandonment", CART_FEATURES)
    if deployed is None:
        return health
    model, card, period = deployed
    cut = pd.Timestamp(card.as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    start = min(cut, period.until) - timedelta(days=DRIFT_DAYS)
    carts = data._cached(("carts",), data.tables.carts)
    idle = data.settings.abandon_idle_minutes * 60.0
    # Carts with snapshots since `start` (their last event is after it), then those of each use.
    active = carts[carts["last_event_ts"] >= start.timestamp()]
    ended = active["last_event_ts"] + idle
    fresh = active[(active["started_ts"] >= cut.timestamp()) & (ended <= period.until.timestamp())]

    def overlapping(since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
        """Carts with a snapshot that may fall in [since, until): their span meets it."""
        return active[
            (active["started_ts"] < until.timestamp()) & (active["last_event_ts"] >= since.timestamp())
        ]

    windows = {
        "reference": (cut - timedelta(days=DRIFT_DAYS), cut),
        "recent": (period.until - timedelta(days=DRIFT_DAYS), period.until),
    }
    chosen = {"fresh": _sample(fresh["cart_id"], sample)}
    candidates = {name: overlapping(*bounds) for name, bounds in windows.items()}
    chosen.update({name: _carts_of_customers(found, sample) for name, found in candidates.items()})
    wanted = set().union(*chosen.values())
    users = carts.loc[carts["cart_id"].isin(wanted), "user_key"].tolist()
    expr = cart_snapshots(
        _of_customers(data, users),
        recovery_window_days=data.settings.recovery_window_days,
        active_since=start.timestamp(),
    )
    snaps = data.source.execute(
        expr.filter(
            expr.cart_id.isin(ibis.memtable(pd.DataFrame({"cart_id": sorted(wanted)})).cart_id)
        ).order_by(["ts", "cart_id", "events_so_far"])
    )
    first = snaps[snaps["cart_id"].isin(chosen["fresh"])].drop_duplicates("cart_id", keep="first")
    if len(first) >= MIN_OUTCOMES and first["abandoned"].nunique() == 2:
        p = model.predict_proba(first[list(CART_FEATURES)])[:, 1]
        _judged(health, first["abandoned"].to_numpy(), p)
        if len(fresh) > sample:
            health.sampled_from = len(fresh)
            health.source = (
                f"a random sample of {len(first):,} of the {len(fresh):,} carts started after its cut, "
                "at the first add"
            )
        else:
            health.source = f"{len(first):,} carts started after its cut, at the first add"
    else:
        _from_card(
            health,
            card,
            lambda s: (s.get("at the first add") or {}).get("LightGBM (calibrated)", {}).get("roc_auc"),
        )
    sides = {}
    for name, (since, until) in windows.items():
        rows = snaps[snaps["cart_id"].isin(chosen[name])]
        sides[name] = rows[(rows["ts"] >= since.timestamp()) & (rows["ts"] < until.timestamp())]
    health.drift = _drift(sides["reference"], sides["recent"], CART_FEATURES)
    if any(len(found) > sample for found in candidates.values()):
        health.drift_sample = (
            f"the snapshots of about {sample:,} carts on each side (every cart of customers drawn at random)"
        )
    if period.until - timedelta(days=DRIFT_DAYS) < cut:
        health.notes.append("the last 30 days overlap its training window: drift shows once newer data comes")
    health.status = _status(health)
    return health


def churn_health(data: MeasureData, filters: Filters, *, sample: int = HEALTH_SAMPLE) -> ModelHealth:
    """The churn model's health (see the module docstring): on at most ``sample`` customers for its
    quality and on each side of the drift."""
    health, deployed = _deployed(data, filters, "churn", CUSTOMER_FEATURES)
    if deployed is None:
        return health
    model, card, period = deployed
    horizon = int(card.params.get("horizon_days", data.settings.churn_horizon_days))
    cut = pd.Timestamp(card.as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    moment = period.until - timedelta(days=horizon)
    tested = False
    if moment >= cut:
        test, population = _customers(data, moment, sample, horizon)
        if len(test) >= MIN_OUTCOMES and test["churned"].nunique() == 2:
            p = model.predict_proba(test[list(CUSTOMER_FEATURES)])[:, 1]
            _judged(health, test["churned"].to_numpy(), p)
            scope = (
                f"a random sample of {len(test):,} of the {population:,}"
                if population > sample
                else (f"{len(test):,}")
            )
            health.sampled_from = population if population > sample else None
            health.source = f"{scope} customers as of {moment:%Y-%m-%d}, churn over the {horizon} days after"
            tested = True
    if not tested:
        _from_card(
            health, card, lambda s: (s.get("metrics") or {}).get("LightGBM + P(alive)", {}).get("roc_auc")
        )
    reference_at = pd.Timestamp(card.params.get("features_as_of") or cut - timedelta(days=horizon))
    span = data.span()
    reference_at = max(reference_at, span[0] + timedelta(days=1)) if span else reference_at
    reference_at = reference_at.tz_convert("UTC") if reference_at.tzinfo else reference_at.tz_localize("UTC")
    reference, before = _customers(data, reference_at, sample)
    # Every customer as of the end of the period is what the at-risk list scores: its table is shared.
    everyone = data.tables.customers(period.until)
    now = len(everyone)
    recent = everyone.sample(sample, random_state=0) if now > sample else everyone
    health.drift = _drift(reference, recent, CUSTOMER_FEATURES)
    if max(before, now) > sample:
        health.drift_sample = f"a random sample of {sample:,} customers on each side"
    health.status = _status(health)
    return health


def model_health(data: MeasureData, filters: Filters, *, sample: int = HEALTH_SAMPLE) -> list[ModelHealth]:
    """The health of every deployed model that has one (abandonment, churn), each figure on at most
    ``sample`` carts or customers."""
    return [abandonment_health(data, filters, sample=sample), churn_health(data, filters, sample=sample)]


def clv_check(data: MeasureData) -> dict[str, Any] | None:
    """Predicted against actual purchases of the CLV model's time split (its card), or None."""
    try:
        from winback.models.registry import load_card

        card = load_card(data.settings, "clv")
    except BadInputError:
        return None
    split = card.metrics.get("time_split") or {}
    if not split.get("purchases"):
        return None
    return {"version": card.version, **split}

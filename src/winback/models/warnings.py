"""Early warnings: customers off their own rhythm, carts in the cart too long, and abnormal shop days.

Every threshold is learned from the shop's own history, never hard-coded:

- :class:`RhythmWarnings` (per customer). *Overdue*: the days since the last purchase divided by the
  customer's own rhythm (their mean gap between purchase days, shrunk towards the shop's typical gap by
  BG/NBD's Gamma prior on the purchase rate), flagged past the ``quantile`` (0.9) of the same ratio
  measured on completed gaps in history ("a gap this long relative to one's rhythm happened before a
  return only 10% of the time"). *Activity drop*: events in the last 30 days against the 30 days before,
  flagged below the ``activity_quantile`` (0.1) of that ratio among customers at earlier moments.
- :class:`CartTimeWarnings` (per cart). The ``quantile`` (0.95) of the time from first add to purchase
  among purchased carts of the same kind (value band x new or returning customer); a live cart past it
  is flagged. Kinds with few purchased carts use the pooled threshold. ``thresholds_`` is the tidy
  table the real-time service can use as its idle threshold.
- :class:`ShopAnomalies` (per day). Daily abandonment rate, checkout starts and orders against the median
  of the same weekday in the trailing weeks, with a robust (MAD) z-score on a variance-stabilised scale
  whose sampling noise is 1, so a quiet shop's noise is not flagged.

The ``*_ts`` columns are epoch seconds (floats), as in :mod:`winback.features`. The functions
:func:`purchase_moments`, :func:`daily_activity`, :func:`cart_times`, :func:`open_carts` and
:func:`daily_metrics` build the estimators' inputs from :class:`~winback.features.tables.FeatureTables`
on either engine.

Examples
--------
>>> import pandas as pd
>>> days = pd.Timestamp("2024-01-01", tz="UTC").timestamp() + 86_400 * pd.Series(range(0, 200, 10))
>>> buys = pd.concat([pd.DataFrame({"user_key": f"u{i}", "ts": days + 3_600 * i}) for i in range(25)])
>>> late = pd.DataFrame({"user_key": "late", "ts": days[:5]})  # every 10 days, then nothing
>>> model = RhythmWarnings(prior=None).fit(pd.concat([buys, late]), as_of="2024-07-20")
>>> row = model.predict(pd.concat([buys, late]), as_of="2024-07-20").set_index("user_key").loc["late"]
>>> bool(row.overdue), row.warning
(True, 'no purchase for 161 days; usually every 10 days (16.1x, past the usual 1.0x)')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import ibis
import numpy as np
import pandas as pd
from ibis import _
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from winback.errors import BadInputError
from winback.features.carts import carts as carts_expr
from winback.features.carts import line_value
from winback.features.tables import FeatureTables, parse_time
from winback.models.clv import BetaGeoModel, ModelNotFittedError

__all__ = [
    "CartTimeWarnings",
    "RhythmWarnings",
    "ShopAnomalies",
    "cart_times",
    "daily_activity",
    "daily_metrics",
    "open_carts",
    "purchase_moments",
]

_DAY = 86_400.0
#: MAD to standard deviation of a normal distribution.
_MAD_SD = 1.4826
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

Moment = str | datetime | pd.Timestamp | float


# ---------------------------------------------------------------------------------------------------
# Inputs from the feature tables
# ---------------------------------------------------------------------------------------------------


def _epoch(as_of: Moment | None, option: str = "as_of") -> float | None:
    """Epoch seconds of a moment (a date or date-time, UTC unless it says otherwise, or epoch seconds)."""
    if as_of is None:
        return None
    if isinstance(as_of, bool):
        raise BadInputError(f"{option} {as_of!r}: expected a date or date-time such as 2024-05-01")
    if isinstance(as_of, int | float):
        return float(as_of)
    return float(parse_time(as_of, option).timestamp())


def _before(tables: FeatureTables, as_of: Moment | None) -> ibis.Table:
    at = _epoch(as_of)
    s = tables.sessioned
    return s if at is None else s.filter(s.ts < at)


def purchase_moments(tables: FeatureTables, as_of: Moment | None = None) -> pd.DataFrame:
    """Each customer's purchase days before ``as_of``: ``user_key`` and ``ts`` (first purchase of the day).

    Purchases are counted per UTC day, as BG/NBD counts them (``bg_frequency``): two orders on one day
    are one purchase occasion, so a basket split into two orders is not a one-minute "gap".
    """
    s = _before(tables, as_of)
    p = s.filter(s.event_type == "purchase")
    p = p.mutate(day=(p.ts / _DAY).floor().cast("int64"))
    out = p.group_by(["user_key", "day"]).aggregate(ts=p.ts.min()).select("user_key", "ts")
    return tables.source.execute(out.order_by(["user_key", "ts"])).reset_index(drop=True)


def daily_activity(tables: FeatureTables, as_of: Moment | None = None) -> pd.DataFrame:
    """Behaviour events per customer and UTC day before ``as_of``.

    Columns: ``user_key``, ``day`` (days since 1970-01-01, UTC) and ``events``.
    """
    s = _before(tables, as_of)
    s = s.mutate(day=(s.ts / _DAY).floor().cast("int64"))
    out = s.group_by(["user_key", "day"]).aggregate(events=s.count())
    return tables.source.execute(out.order_by(["user_key", "day"])).reset_index(drop=True)


def cart_times(tables: FeatureTables, as_of: Moment | None = None) -> pd.DataFrame:
    """One row per cart started before ``as_of``, seen with the events before it.

    Columns: ``cart_id`` (session key), ``user_key``, ``first_add_ts``, ``last_event_ts``,
    ``purchase_ts`` (first purchase of the session, null if none yet), ``cart_value`` (added minus
    removed money before the purchase) and ``returning`` (the customer had bought before the first add).
    """
    s = _before(tables, as_of)
    t = s.mutate(money=line_value(s))
    per = t.group_by(["user_key", "session_key"]).aggregate(
        first_add_ts=t.ts.min(where=t.event_type == "add_to_cart"),
        last_event_ts=t.ts.max(),
        purchase_ts=t.ts.min(where=t.event_type == "purchase"),
    )
    per = per.filter(per.first_add_ts.notnull())
    lines = t.join(per.select("session_key", cut="purchase_ts"), "session_key")
    lines = lines.filter(lines.cut.isnull() | (lines.ts < lines.cut))
    sign = ibis.cases(
        (lines.event_type == "add_to_cart", 1.0), (lines.event_type == "remove_from_cart", -1.0), else_=0.0
    )
    value = lines.group_by("session_key").aggregate(cart_value=(lines.money * sign).sum())
    first_buy = (
        t.filter(t.event_type == "purchase").group_by("user_key").aggregate(first_purchase_ts=_.ts.min())
    )
    joined = per.join(value, "session_key").left_join(first_buy, "user_key")
    out = joined.select(
        cart_id=joined.session_key,
        user_key=joined.user_key,
        first_add_ts=joined.first_add_ts,
        last_event_ts=joined.last_event_ts,
        purchase_ts=joined.purchase_ts,
        cart_value=joined.cart_value,
        returning=ibis.coalesce(joined.first_purchase_ts < joined.first_add_ts, False),
    )
    return tables.source.execute(out.order_by(["first_add_ts", "cart_id"])).reset_index(drop=True)


def open_carts(tables: FeatureTables, as_of: Moment, *, idle_minutes: float | None = None) -> pd.DataFrame:
    """Carts live at ``as_of``: started, not bought, and with an event in the last ``idle_minutes``.

    ``idle_minutes`` defaults to the settings' abandonment idle time (30 minutes): a cart idle longer
    than that is already abandoned by definition. Pass ``math.inf`` for every cart not bought yet.
    The columns are those of :func:`cart_times`, ready for :meth:`CartTimeWarnings.predict`.
    """
    at = _epoch(as_of)
    assert at is not None
    idle = float(tables.settings.abandon_idle_minutes if idle_minutes is None else idle_minutes)
    c = cart_times(tables, at)
    live = c.purchase_ts.isna() & (at - c.last_event_ts <= idle * 60.0)
    return c[live].reset_index(drop=True)


def daily_metrics(tables: FeatureTables, as_of: Moment | None = None) -> pd.DataFrame:
    """Shop totals per complete UTC day before ``as_of`` (default: the end of the data).

    Columns: ``day`` (a date), ``weekday`` (0 = Monday), ``carts`` (started that day), ``abandoned``,
    ``abandonment_rate``, ``checkout_starts`` (events), ``orders`` (distinct orders). Days without any
    event inside the span are rows of zeros; the last, incomplete day is left out.
    """
    at = _epoch(as_of)
    s = _before(tables, at)
    settings = tables.settings
    c = carts_expr(
        s, idle_minutes=settings.abandon_idle_minutes, recovery_window_days=settings.recovery_window_days
    )
    c = c.mutate(day=(c.started_ts / _DAY).floor().cast("int64"))
    per_cart = c.group_by("day").aggregate(carts=c.count(), abandoned=c.abandoned.cast("int64").sum())
    e = s.mutate(day=(s.ts / _DAY).floor().cast("int64"), order_key=ibis.coalesce(s.order_id, s.event_id))
    per_event = e.group_by("day").aggregate(
        checkout_starts=(e.event_type == "checkout_start").cast("int64").sum(),
        orders=e.order_key.nunique(where=e.event_type == "purchase"),
        last_ts=e.ts.max(),
    )
    ev = tables.source.execute(per_event)
    ca = tables.source.execute(per_cart)
    if ev.empty:
        raise BadInputError("daily metrics: no events before as_of; load events first with `winback ingest`")
    end = at if at is not None else float(ev.last_ts.max()) + 1.0
    last_day = math.floor(end / _DAY) - 1  # the day containing `end` is incomplete
    days = pd.DataFrame({"day_number": np.arange(int(ev.day.min()), last_day + 1, dtype="int64")})
    out = days.merge(ev.drop(columns="last_ts").rename(columns={"day": "day_number"}), "left", "day_number")
    out = out.merge(ca.rename(columns={"day": "day_number"}), "left", "day_number")
    for column in ("carts", "abandoned", "checkout_starts", "orders"):
        out[column] = out[column].fillna(0).astype("int64")
    out["abandonment_rate"] = out.abandoned / out.carts.where(out.carts > 0)
    stamps = pd.to_datetime(out.day_number * int(_DAY), unit="s", utc=True)
    out.insert(0, "day", stamps.dt.date)
    out.insert(1, "weekday", stamps.dt.day_of_week.astype("int64"))
    return out[["day", "weekday", "carts", "abandoned", "abandonment_rate", "checkout_starts", "orders"]]


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------


def _require(frame: Any, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise BadInputError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadInputError(f"{what} lacks the columns {missing} (has {list(frame.columns)})")


def _check_quantile(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise BadInputError(f"{name} {value!r}: expected a quantile strictly between 0 and 1")


def _seconds(values: pd.Series, column: str) -> NDArray[np.float64]:
    """Epoch seconds of a column of floats or timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        return np.asarray((stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds(), dtype=float)
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"column {column!r}: expected epoch seconds or timestamps") from exc


def _weighted_quantile(values: NDArray[np.float64], weights: NDArray[np.float64], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    index = int(np.searchsorted(cum, q * cum[-1] - 1e-12))
    return float(values[order][min(index, len(values) - 1)])


def _check_fitted(model: BaseEstimator, attribute: str) -> None:
    if not hasattr(model, attribute):
        raise ModelNotFittedError(f"{type(model).__name__} is not fitted yet; call fit(...) first")


def _days(value: float) -> str:
    return f"{value:.0f} day" + ("" if round(value) == 1 else "s")


# ---------------------------------------------------------------------------------------------------
# Customers: rhythm and activity
# ---------------------------------------------------------------------------------------------------


class RhythmWarnings(BaseEstimator):
    """Customers past their own purchase rhythm, and customers whose activity dropped.

    **Rhythm.** A customer's rhythm after ``k`` gaps between purchase days summing to ``S`` days is
    ``(alpha + S) / (r + k)``: their own mean gap, shrunk towards the shop's typical gap by BG/NBD's
    Gamma(r, alpha) prior on the purchase rate (the posterior mean rate given the purchases, inverted).
    With two or three purchases the raw mean is mostly noise; the prior counts as ``r`` gaps of
    ``alpha / r`` days. It deliberately conditions on the history up to the last purchase only, not on
    the silence since: BG/NBD's own expected time to the next purchase grows with the silence (it
    folds in the chance that the customer has left), so a yardstick that lengthens as the customer
    stays away would blunt the very warning it should raise. ``prior=None`` uses the raw mean gap.

    **Overdue.** ``overdue_ratio`` = days since the last purchase / rhythm. ``fit`` measures the same ratio
    for every completed gap in the history (each gap against the rhythm of the gaps before it, each
    customer weighted once) and learns ``threshold_``, its ``quantile``. Customers with at least one gap
    past it are flagged; single buyers have no rhythm and are never flagged (their ratio is NaN).
    Completed gaps are those that ended before ``as_of``: long gaps are under-represented in a short
    history, so the threshold errs low (more warnings) on shops with little history.

    **Activity drop.** ``activity_ratio`` = (events in the last 30 days + 1) / (events in the 30 days
    before + 1), the customer features' ``activity_trend_30d``. ``fit`` learns ``activity_cut_``, its
    ``activity_quantile`` among buyers with at least ``min_previous_events`` previous events at
    ``history_moments`` earlier moments (30, 60, ... days before ``as_of``). Customers with a previous
    level below ``min_previous_events`` are not judged.

    Parameters
    ----------
    quantile : float, default 0.9
        Quantile of historical gap ratios above which a customer is overdue.
    activity_quantile : float, default 0.1
        Quantile of historical activity ratios below which activity dropped.
    prior : {"bgnbd", None}, default "bgnbd"
        Shrink the rhythm towards BG/NBD's prior (falls back to ``None``, saying so in ``prior_``, when
        BG/NBD cannot be fitted).
    min_customers : int, default 20
        Fewer customers with three or more purchase days (at least one gap to compare with an earlier
        one) is refused as too little history.
    min_previous_events : int, default 5
        Previous 30-day level below which activity is not judged.
    history_moments : int, default 3
        Earlier moments, 30 days apart, at which the activity ratio is measured in ``fit``.

    Attributes
    ----------
    threshold_ : float
        Learned overdue ratio.
    activity_cut_ : float
        Learned activity ratio (NaN when ``fit`` had no activity).
    prior_ : dict or None
        ``{"r", "alpha"}`` of the BG/NBD fit (days), or None.
    prior_note_ : str
        How the rhythm was computed, in words.
    n_gaps_, n_customers_, n_activity_ : int
        Gap ratios and customers behind ``threshold_``, and activity ratios behind ``activity_cut_``.
    gap_ratio_quantiles_ : dict
        Quantiles 0.5, 0.75, 0.9, 0.95 of the historical gap ratio.
    """

    def __init__(
        self,
        *,
        quantile: float = 0.9,
        activity_quantile: float = 0.1,
        prior: Literal["bgnbd"] | None = "bgnbd",
        min_customers: int = 20,
        min_previous_events: int = 5,
        history_moments: int = 3,
    ) -> None:
        self.quantile = quantile
        self.activity_quantile = activity_quantile
        self.prior = prior
        self.min_customers = min_customers
        self.min_previous_events = min_previous_events
        self.history_moments = history_moments

    # -- inputs -------------------------------------------------------------------------------------

    @staticmethod
    def _purchase_days(purchases: pd.DataFrame, at: float) -> pd.DataFrame:
        """Purchase occasions before ``at``: one per customer and UTC day, sorted, with ``gap`` in days."""
        _require(purchases, ["user_key", "ts"], "purchases")
        p = pd.DataFrame(
            {"user_key": purchases["user_key"].to_numpy(), "ts": _seconds(purchases["ts"], "ts")}
        )
        if p.user_key.isna().any() or p.ts.isna().any():
            raise BadInputError("purchases: user_key and ts must not be null")
        p = p[p.ts < at]
        p["day"] = np.floor(p.ts / _DAY).astype("int64")
        p = p.sort_values(["user_key", "ts"]).drop_duplicates(["user_key", "day"]).reset_index(drop=True)
        p["gap"] = p.groupby("user_key").ts.diff() / _DAY
        return p

    def _rhythm(self, gap_sum: NDArray[np.float64], n_gaps: NDArray[np.float64]) -> NDArray[np.float64]:
        r, alpha = (0.0, 0.0) if self.prior_ is None else (self.prior_["r"], self.prior_["alpha"])
        with np.errstate(divide="ignore", invalid="ignore"):
            rhythm = (alpha + gap_sum) / (r + n_gaps)
        return np.where(n_gaps > 0, rhythm, np.nan)

    def _fit_prior(self, p: pd.DataFrame, at: float) -> None:
        self.prior_: dict[str, float] | None = None
        if self.prior is None:
            self.prior_note_ = "own mean gap between purchase days"
            return
        if self.prior != "bgnbd":
            raise BadInputError(f"prior {self.prior!r}: expected 'bgnbd' or None")
        per = p.groupby("user_key").day.agg(["count", "min", "max"])
        summary = pd.DataFrame(
            {
                "frequency": per["count"] - 1.0,
                "recency": (per["max"] - per["min"]).astype(float),
                "T": (math.floor(at / _DAY) - per["min"]).astype(float),
            }
        )
        try:
            bg = BetaGeoModel(penalizer_coef=0.001).fit(summary)
        except BadInputError as exc:  # ConvergenceError and too-little-data alike
            self.prior_note_ = f"own mean gap between purchase days (BG/NBD prior unavailable: {exc})"
            return
        self.prior_ = {"r": bg.params_["r"], "alpha": bg.params_["alpha"]}
        self.prior_note_ = (
            f"own mean gap shrunk towards BG/NBD's prior (r = {bg.params_['r']:.3g}, "
            f"alpha = {bg.params_['alpha']:.3g} days: worth {bg.params_['r']:.2g} gaps of "
            f"{bg.params_['alpha'] / bg.params_['r']:.0f} days)"
        )

    # -- fit ----------------------------------------------------------------------------------------

    def fit(
        self, purchases: pd.DataFrame, activity: pd.DataFrame | None = None, *, as_of: Moment
    ) -> RhythmWarnings:
        """Learn the overdue threshold (and the activity cut) from the history before ``as_of``.

        Parameters
        ----------
        purchases : DataFrame
            ``user_key`` and ``ts`` (epoch seconds or timestamps) of purchases, as from
            :func:`purchase_moments`; rows at or after ``as_of`` are ignored.
        activity : DataFrame, optional
            ``user_key``, ``day`` (epoch day) and ``events``, as from :func:`daily_activity`. Without
            it only the rhythm is learned.
        as_of : date, date-time or epoch seconds
            The end of the history.

        Returns
        -------
        RhythmWarnings
            ``self``.
        """
        _check_quantile(self.quantile, "quantile")
        _check_quantile(self.activity_quantile, "activity_quantile")
        at = _epoch(as_of)
        assert at is not None
        p = self._purchase_days(purchases, at)
        self._fit_prior(p, at)
        # each completed gap against the rhythm of the gaps before it
        g = p.dropna(subset=["gap"]).copy()
        g["k"] = g.groupby("user_key").cumcount()  # gaps before this one
        g["s"] = g.groupby("user_key").gap.cumsum() - g.gap
        g = g[g.k > 0]
        n_customers = int(g.user_key.nunique())
        if n_customers < self.min_customers:
            raise BadInputError(
                f"rhythm warnings need at least {self.min_customers} repeat buyers with three or more "
                f"purchase days before {pd.Timestamp(at, unit='s', tz='UTC').date()}; found {n_customers}"
            )
        ratio = g.gap.to_numpy() / self._rhythm(g.s.to_numpy(float), g.k.to_numpy(float))
        weight = 1.0 / g.groupby("user_key").gap.transform("size").to_numpy(float)
        self.threshold_ = _weighted_quantile(ratio, weight, self.quantile)
        self.gap_ratio_quantiles_ = {
            q: round(_weighted_quantile(ratio, weight, q), 3) for q in (0.5, 0.75, 0.9, 0.95)
        }
        self.n_gaps_ = len(g)
        self.n_customers_ = n_customers
        self.activity_cut_ = float("nan")
        self.n_activity_ = 0
        if activity is not None:
            ratios = []
            for k in range(1, self.history_moments + 1):
                moment = at - 30.0 * k * _DAY
                frame = self._activity(p[p.ts < moment], activity, moment)
                ratios.append(frame.loc[frame.judged, "activity_ratio"].to_numpy(float))
            values = np.concatenate(ratios) if ratios else np.array([])
            if len(values) < self.min_customers:
                raise BadInputError(
                    f"activity warnings need at least {self.min_customers} buyers with "
                    f"{self.min_previous_events}+ events in a 30-day window at the {self.history_moments} "
                    f"moments 30 days apart before as_of; found {len(values)}"
                )
            self.activity_cut_ = float(np.quantile(values, self.activity_quantile, method="inverted_cdf"))
            self.n_activity_ = len(values)
        self.as_of_ = at
        return self

    def _activity(self, p: pd.DataFrame, activity: pd.DataFrame, at: float) -> pd.DataFrame:
        """Recent and previous 30-day events of the buyers in ``p`` (whole UTC days up to ``at``'s day)."""
        _require(activity, ["user_key", "day", "events"], "activity")
        today = math.floor(at / _DAY)
        day = np.asarray(activity["day"], dtype="int64")
        recent = (day > today - 30) & (day <= today)
        previous = (day > today - 60) & (day <= today - 30)
        events = np.asarray(activity["events"], dtype=float)
        frame = pd.DataFrame(
            {
                "user_key": activity["user_key"].to_numpy(),
                "events_30d": np.where(recent, events, 0.0),
                "events_prev_30d": np.where(previous, events, 0.0),
            }
        )
        per = frame.groupby("user_key")[["events_30d", "events_prev_30d"]].sum()
        buyers = pd.Index(p.user_key.unique(), name="user_key")
        per = per.reindex(buyers, fill_value=0.0).reset_index()
        per["activity_ratio"] = (per.events_30d + 1.0) / (per.events_prev_30d + 1.0)
        per["judged"] = per.events_prev_30d >= self.min_previous_events
        return per

    # -- predict ------------------------------------------------------------------------------------

    def predict(
        self, purchases: pd.DataFrame, activity: pd.DataFrame | None = None, *, as_of: Moment
    ) -> pd.DataFrame:
        """Warnings for every customer who bought before ``as_of``.

        Returns
        -------
        DataFrame
            One row per customer: ``user_key``, ``purchases`` (purchase days), ``days_since_last_purchase``,
            ``rhythm_days``, ``overdue_ratio``, ``overdue``, ``events_30d``, ``events_prev_30d``,
            ``activity_ratio``, ``activity_drop`` and ``warning`` (plain words; empty when neither flag is
            raised). Sorted by ``overdue_ratio``, largest first.
        """
        _check_fitted(self, "threshold_")
        at = _epoch(as_of)
        assert at is not None
        p = self._purchase_days(purchases, at)
        per = p.groupby("user_key").agg(
            purchases=("ts", "size"), last_ts=("ts", "max"), gap_sum=("gap", "sum"), n_gaps=("gap", "count")
        )
        out = pd.DataFrame(index=per.index)
        out["purchases"] = per.purchases.astype("int64")
        out["days_since_last_purchase"] = (at - per.last_ts) / _DAY
        out["rhythm_days"] = self._rhythm(per.gap_sum.to_numpy(float), per.n_gaps.to_numpy(float))
        out["overdue_ratio"] = out.days_since_last_purchase / out.rhythm_days
        out["overdue"] = (out.overdue_ratio > self.threshold_).fillna(False).astype(bool)
        if activity is not None and not math.isnan(self.activity_cut_):
            act = self._activity(p, activity, at).set_index("user_key")
            out["events_30d"] = act.events_30d.astype("int64")
            out["events_prev_30d"] = act.events_prev_30d.astype("int64")
            out["activity_ratio"] = act.activity_ratio
            out["activity_drop"] = act.judged & (act.activity_ratio < self.activity_cut_)
        else:
            out["events_30d"] = pd.NA
            out["events_prev_30d"] = pd.NA
            out["activity_ratio"] = np.nan
            out["activity_drop"] = False
        out["activity_drop"] = out.activity_drop.astype(bool)
        out["warning"] = [self._words(row) for row in out.itertuples()]
        out = out.reset_index().sort_values("overdue_ratio", ascending=False, na_position="last")
        return out.reset_index(drop=True)

    def _words(self, row: Any) -> str:
        parts = []
        if row.overdue:
            parts.append(
                f"no purchase for {_days(row.days_since_last_purchase)}; usually every "
                f"{_days(row.rhythm_days)} ({row.overdue_ratio:.1f}x, past the usual {self.threshold_:.1f}x)"
            )
        if row.activity_drop:
            parts.append(
                f"{row.events_30d} events in the last 30 days, down from {row.events_prev_30d} "
                f"({row.activity_ratio:.2f}x, below the usual low of {self.activity_cut_:.2f}x)"
            )
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Carts: time in cart
# ---------------------------------------------------------------------------------------------------


class CartTimeWarnings(BaseEstimator):
    """Live carts that have been in the cart longer than carts of their kind usually take to be bought.

    A cart's kind is its value band (the cart value's ``n_bands``-quantiles among purchased carts,
    named low / mid / high for three bands) and whether the customer had bought before (new or
    returning): six kinds by default, each with a threshold a shop owner can read. The threshold of a
    kind is the ``quantile`` of the minutes from the first add to the purchase among purchased carts of
    that kind; a kind with fewer than ``min_carts_per_kind`` purchased carts uses the pooled threshold of
    all purchased carts (``pooled`` says so in ``thresholds_``).

    Parameters
    ----------
    quantile : float, default 0.95
        Quantile of the time to purchase beyond which a live cart is flagged.
    n_bands : int, default 3
        Value bands.
    min_carts_per_kind : int, default 30
        Purchased carts a kind needs for its own threshold.
    min_carts : int, default 50
        Purchased carts ``fit`` needs at all.

    Attributes
    ----------
    thresholds_ : DataFrame
        One row per kind plus ``all``: ``kind``, ``value_band``, ``customer``, ``value_from``,
        ``value_to``, ``purchased_carts``, ``threshold_minutes``, ``median_minutes``, ``pooled``.
    band_edges_ : ndarray
        Inner edges of the value bands.
    pooled_threshold_ : float
        Threshold of all purchased carts (minutes).
    """

    def __init__(
        self, *, quantile: float = 0.95, n_bands: int = 3, min_carts_per_kind: int = 30, min_carts: int = 50
    ) -> None:
        self.quantile = quantile
        self.n_bands = n_bands
        self.min_carts_per_kind = min_carts_per_kind
        self.min_carts = min_carts

    def _band_names(self) -> list[str]:
        return ["low", "mid", "high"] if self.n_bands == 3 else [f"band {i + 1}" for i in range(self.n_bands)]

    @staticmethod
    def _returning(X: pd.DataFrame) -> NDArray[np.bool_]:  # noqa: N803
        if "returning" in X.columns:
            return np.asarray(X["returning"].fillna(False), dtype=bool)
        return np.asarray(X["past_orders"].fillna(0) > 0, dtype=bool)

    def _kinds(self, X: pd.DataFrame) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:  # noqa: N803
        values = np.asarray(X["cart_value"].fillna(0.0), dtype=float)
        band = np.asarray(self._band_names(), dtype=object)[
            np.searchsorted(self.band_edges_, values, "right")
        ]
        customer = np.where(self._returning(X), "returning", "new").astype(object)
        return band, customer, band + " value, " + customer

    def fit(self, X: pd.DataFrame, y: None = None) -> CartTimeWarnings:  # noqa: N803
        """Learn each kind's threshold from the purchased carts in ``X``.

        Parameters
        ----------
        X : DataFrame
            Carts as from :func:`cart_times`: ``first_add_ts``, ``purchase_ts`` (carts without one are
            skipped) or ``minutes_to_purchase``; ``cart_value``; ``returning`` or ``past_orders``.
        y : None
            Ignored.

        Returns
        -------
        CartTimeWarnings
            ``self``.
        """
        _check_quantile(self.quantile, "quantile")
        if not isinstance(self.n_bands, int) or self.n_bands < 1:
            raise BadInputError(f"n_bands {self.n_bands!r}: expected a positive whole number")
        _require(X, ["cart_value"], "carts")
        if "minutes_to_purchase" in X.columns:
            minutes = np.asarray(X["minutes_to_purchase"], dtype=float)
        else:
            _require(X, ["first_add_ts", "purchase_ts"], "carts (or give minutes_to_purchase)")
            minutes = (
                _seconds(X["purchase_ts"], "purchase_ts") - _seconds(X["first_add_ts"], "first_add_ts")
            ) / 60
        if "returning" not in X.columns and "past_orders" not in X.columns:
            raise BadInputError("carts lack the columns ['returning'] (or past_orders)")
        bought = X[~np.isnan(minutes)]
        minutes = minutes[~np.isnan(minutes)]
        if len(bought) < self.min_carts:
            raise BadInputError(
                f"cart time warnings need at least {self.min_carts} purchased carts; found {len(bought)}"
            )
        if (minutes < 0).any():
            raise BadInputError("carts: purchase_ts before first_add_ts in some rows")
        values = np.asarray(bought["cart_value"].fillna(0.0), dtype=float)
        inner = np.quantile(values, np.arange(1, self.n_bands) / self.n_bands)
        self.band_edges_ = np.asarray(inner, dtype=float)
        band, customer, _ = self._kinds(bought)
        self.pooled_threshold_ = float(np.quantile(minutes, self.quantile))
        rows = []
        bounds = [-np.inf, *self.band_edges_.tolist(), np.inf]
        for b, name in enumerate(self._band_names()):
            for who in ("new", "returning"):
                mask = (band == name) & (customer == who)
                n = int(mask.sum())
                own = n >= self.min_carts_per_kind
                rows.append(
                    {
                        "kind": f"{name} value, {who}",
                        "value_band": name,
                        "customer": who,
                        "value_from": bounds[b],
                        "value_to": bounds[b + 1],
                        "purchased_carts": n,
                        "threshold_minutes": float(np.quantile(minutes[mask], self.quantile))
                        if own
                        else self.pooled_threshold_,
                        "median_minutes": float(np.median(minutes[mask])) if n else float("nan"),
                        "pooled": not own,
                    }
                )
        rows.append(
            {
                "kind": "all",
                "value_band": "all",
                "customer": "all",
                "value_from": -np.inf,
                "value_to": np.inf,
                "purchased_carts": len(minutes),
                "threshold_minutes": self.pooled_threshold_,
                "median_minutes": float(np.median(minutes)),
                "pooled": True,
            }
        )
        self.thresholds_ = pd.DataFrame(rows)
        self.n_carts_ = len(minutes)
        return self

    def predict(self, X: pd.DataFrame, *, as_of: Moment | None = None) -> pd.DataFrame:  # noqa: N803
        """Flag live carts past their kind's threshold.

        Parameters
        ----------
        X : DataFrame
            Live carts with ``cart_value`` and ``returning`` (or ``past_orders``), and the time in cart:
            ``first_add_ts`` with ``as_of`` (as from :func:`open_carts`), or ``minutes_in_cart`` (as in
            :meth:`FeatureTables.cart_snapshots` rows; with ``as_of`` and ``ts`` it is advanced to
            ``as_of``).
        as_of : date, date-time or epoch seconds, optional
            The moment of scoring.

        Returns
        -------
        DataFrame
            ``cart_id`` and ``user_key`` (when given), ``kind``, ``minutes_in_cart``,
            ``threshold_minutes``, ``overdue`` and ``warning``.
        """
        _check_fitted(self, "thresholds_")
        _require(X, ["cart_value"], "carts")
        if "returning" not in X.columns and "past_orders" not in X.columns:
            raise BadInputError("carts lack the columns ['returning'] (or past_orders)")
        at = _epoch(as_of)
        if "minutes_in_cart" in X.columns:
            minutes = np.asarray(X["minutes_in_cart"], dtype=float)
            if at is not None and "ts" in X.columns:
                minutes = minutes + (at - _seconds(X["ts"], "ts")) / 60.0
        elif "first_add_ts" in X.columns and at is not None:
            minutes = (at - _seconds(X["first_add_ts"], "first_add_ts")) / 60.0
        else:
            raise BadInputError("carts: give minutes_in_cart, or first_add_ts together with as_of")
        _, _, kind = self._kinds(X)
        table = self.thresholds_.set_index("kind")
        threshold = table.threshold_minutes.reindex(kind).to_numpy(float)
        out = pd.DataFrame({c: X[c].to_numpy() for c in ("cart_id", "user_key") if c in X.columns})
        out["kind"] = kind
        out["cart_value"] = np.asarray(X["cart_value"], dtype=float)
        out["minutes_in_cart"] = minutes
        out["threshold_minutes"] = threshold
        out["overdue"] = minutes > threshold
        pooled = table.pooled.reindex(kind).to_numpy(bool)
        out["warning"] = [
            self._words(m, t, k, p) if o else ""
            for m, t, k, p, o in zip(minutes, threshold, kind, pooled, out.overdue, strict=True)
        ]
        return out

    def _words(self, minutes: float, threshold: float, kind: str, pooled: bool) -> str:
        share = f"{self.quantile:.0%}"
        which = "all bought carts" if pooled else f"bought {kind.replace(', ', ' carts of ')} customers"
        return f"in the cart for {minutes:.0f} min; {share} of {which} were bought within {threshold:.0f} min"


# ---------------------------------------------------------------------------------------------------
# Shop: daily anomalies
# ---------------------------------------------------------------------------------------------------

#: Metrics :class:`ShopAnomalies` watches, with how they read in a sentence.
_METRIC_WORDS = {
    "abandonment_rate": "abandonment rate",
    "checkout_starts": "checkout starts",
    "orders": "orders",
}


class ShopAnomalies(BaseEstimator):
    """Days whose abandonment rate, checkout starts or orders are far from the same weekday's norm.

    The norm of a day is the median of the same weekday over the previous ``weeks`` weeks (at least
    ``min_weeks``), which follows weekly seasonality and slow trends. Distance is a robust z-score,
    ``(h(value) - median h) / scale``, on Anscombe's variance-stabilised scale where sampling noise is
    known: counts through ``h(x) = 2 sqrt(x + 3/8)`` (Poisson noise has standard deviation about 1
    there), the abandonment rate of ``n`` carts through ``h = 2 asin(sqrt((x + 3/8) / (n + 3/4)))``
    (binomial noise about ``1 / sqrt(n)``). ``scale`` is the larger of 1.4826 x the MAD of the trailing
    values and ``noise_floor`` x that sampling noise, times ``sqrt(1 + pi / (2 weeks))`` for the noise of
    the median itself. The floor is what keeps a quiet shop, whose few orders vary a lot by chance, or a
    run of near-identical weeks, from turning every small wobble into an anomaly. A day is flagged when
    ``|z| > threshold``.

    Parameters
    ----------
    threshold : float, default 3.5
        Robust z beyond which a day is flagged.
    weeks : int, default 8
        Trailing same weekdays the norm uses.
    min_weeks : int, default 4
        Fewest trailing same weekdays a day needs to be judged.
    noise_floor : float, default 1.0
        Floor of the scale, in units of sampling noise.
    metrics : sequence of str, default ("abandonment_rate", "checkout_starts", "orders")
        Columns of the daily table to watch (counts, or ``abandonment_rate`` with ``carts``).

    Attributes
    ----------
    norms_ : DataFrame
        From :meth:`fit`: per weekday and metric, the norm for the next such day: ``weekday``,
        ``metric``, ``expected``, ``center``, ``mad_scale`` (both on the stabilised scale) and ``weeks``.
    """

    def __init__(
        self,
        *,
        threshold: float = 3.5,
        weeks: int = 8,
        min_weeks: int = 4,
        noise_floor: float = 1.0,
        metrics: Sequence[str] = ("abandonment_rate", "checkout_starts", "orders"),
    ) -> None:
        self.threshold = threshold
        self.weeks = weeks
        self.min_weeks = min_weeks
        self.noise_floor = noise_floor
        self.metrics = metrics

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _h(metric: str, d: pd.DataFrame) -> NDArray[np.float64]:
        """Anscombe's variance-stabilised value: sampling noise has standard deviation about 1 (counts)
        or ``1 / sqrt(carts)`` (the abandonment rate)."""
        if metric == "abandonment_rate":
            n = np.asarray(d["carts"], dtype=float)
            x = np.asarray(d[metric], dtype=float) * n
            with np.errstate(invalid="ignore"):
                share = np.clip((x + 0.375) / (n + 0.75), 0.0, 1.0)
            return np.where(n > 0, 2.0 * np.arcsin(np.sqrt(share)), np.nan)
        values = np.asarray(d[metric], dtype=float)
        return 2.0 * np.sqrt(np.maximum(values, 0.0) + 0.375)

    @staticmethod
    def _h_inverse(metric: str, value: float) -> float:
        if metric == "abandonment_rate":
            return float(np.sin(value / 2.0) ** 2)
        return float(max((value / 2.0) ** 2 - 0.375, 0.0))

    def _prepare(self, daily: pd.DataFrame) -> pd.DataFrame:
        if self.min_weeks < 2 or self.weeks < self.min_weeks:
            raise BadInputError(
                f"min_weeks {self.min_weeks}, weeks {self.weeks}: expected 2 <= min_weeks <= weeks"
            )
        metrics = list(self.metrics)
        needed = ["day", *metrics]
        if "abandonment_rate" in metrics:
            needed.append("carts")
        _require(daily, needed, "daily metrics")
        d = daily.copy()
        d["day"] = pd.to_datetime(d["day"]).dt.normalize()
        if d.day.dt.tz is not None:
            d["day"] = d.day.dt.tz_localize(None)
        if d.day.duplicated().any():
            raise BadInputError("daily metrics: one row per day expected; some days repeat")
        d = d.sort_values("day").reset_index(drop=True)
        d["weekday"] = d.day.dt.day_of_week
        return d

    def _too_few(self, d: pd.DataFrame) -> BadInputError:
        span_days = 0 if d.empty else int((d.day.max() - d.day.min()).days) + 1
        return BadInputError(
            f"shop anomalies need at least {self.min_weeks} weeks of daily history before a day to judge it "
            f"({self.min_weeks} earlier days of the same weekday); found {span_days / 7:.1f} weeks "
            f"({span_days} days)"
        )

    def _noise(self, metric: str, d: pd.DataFrame) -> NDArray[np.float64]:
        if metric == "abandonment_rate":
            carts = np.asarray(d["carts"], dtype=float)
            with np.errstate(divide="ignore"):
                return 1.0 / np.sqrt(np.where(carts > 0, carts, np.nan))
        return np.ones(len(d))

    # -- fit / predict ------------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: None = None) -> ShopAnomalies:  # noqa: N803
        """Learn each weekday's norm for the days after ``X``, a daily table (from :func:`daily_metrics`)."""
        d = self._prepare(X)
        rows = []
        for metric in self.metrics:
            for weekday in range(7):
                h = self._h(metric, d)[d.weekday.to_numpy() == weekday]
                h = h[~np.isnan(h)][-self.weeks :]
                if len(h) < self.min_weeks:
                    raise self._too_few(d)
                center = float(np.median(h))
                rows.append(
                    {
                        "weekday": weekday,
                        "metric": metric,
                        "expected": self._h_inverse(metric, center),
                        "center": center,
                        "mad_scale": _MAD_SD * float(np.median(np.abs(h - center))),
                        "weeks": len(h),
                    }
                )
        self.norms_ = pd.DataFrame(rows)
        self.last_day_ = d.day.max()
        return self

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        """Score new days against the norms learned in :meth:`fit` (one row per day and metric)."""
        _check_fitted(self, "norms_")
        d = self._prepare(X)
        norms = self.norms_.set_index(["metric", "weekday"])
        frames = []
        for metric in self.metrics:
            n = norms.loc[metric].reindex(d.weekday)
            frames.append(
                self._score(
                    metric, d, n.center.to_numpy(float), n.mad_scale.to_numpy(float), n.weeks.to_numpy()
                )
            )
        return self._finish(frames)

    def detect(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        """Score every day of a daily history against its own trailing same weekdays (no fit needed).

        Days with fewer than ``min_weeks`` earlier same weekdays are not scored; if no day can be,
        :class:`~winback.errors.BadInputError` says how much history there is.
        """
        d = self._prepare(X)
        frames = []
        for metric in self.metrics:
            center = np.full(len(d), np.nan)
            mad = np.full(len(d), np.nan)
            weeks = np.zeros(len(d), dtype="int64")
            every = self._h(metric, d)
            for _weekday, group in d.groupby("weekday"):
                idx = group.index.to_numpy()
                h = every[idx]
                for j in range(len(idx)):
                    past = h[max(0, j - self.weeks) : j]
                    past = past[~np.isnan(past)]
                    if len(past) < self.min_weeks:
                        continue
                    c = float(np.median(past))
                    center[idx[j]] = c
                    mad[idx[j]] = _MAD_SD * float(np.median(np.abs(past - c)))
                    weeks[idx[j]] = len(past)
            judged = ~np.isnan(center)
            frames.append(self._score(metric, d[judged], center[judged], mad[judged], weeks[judged]))
        if all(f.empty for f in frames):
            raise self._too_few(d)
        return self._finish(frames)

    def _score(
        self, metric: str, d: pd.DataFrame, center: NDArray[np.float64], mad: NDArray[np.float64], weeks: Any
    ) -> pd.DataFrame:
        value = d[metric].to_numpy(float)
        # the norm is itself a median of `weeks` noisy days: its variance is pi / 2 / weeks of theirs
        uncertainty = np.sqrt(1.0 + np.pi / (2.0 * np.maximum(np.asarray(weeks, dtype=float), 1.0)))
        scale = np.maximum(mad, self.noise_floor * self._noise(metric, d)) * uncertainty
        z = (self._h(metric, d) - center) / scale
        expected = np.array([self._h_inverse(metric, c) for c in center])
        return pd.DataFrame(
            {
                "day": d.day.dt.date.to_numpy(),
                "weekday": d.weekday.to_numpy(),
                "metric": metric,
                "value": value,
                "expected": expected,
                "z": z,
                "weeks": np.asarray(weeks, dtype="int64"),
            }
        )

    def _finish(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        out = pd.concat([f for f in frames if not f.empty], ignore_index=True)
        out = out[~np.isnan(out.z.to_numpy(float))]
        out["direction"] = np.where(out.z > 0, "above", "below")
        out["anomaly"] = np.abs(out.z) > self.threshold
        out["phrase"] = [self._words(row) for row in out.itertuples()]
        return out.sort_values(["day", "metric"]).reset_index(drop=True)

    def _words(self, row: Any) -> str:
        name = _METRIC_WORDS.get(row.metric, row.metric.replace("_", " "))
        rate = row.metric == "abandonment_rate"

        def show(v: float) -> str:
            return f"{v:.0%}" if rate else f"{v:,.0f}"

        weekday = _WEEKDAYS[int(row.weekday)]
        verdict = f"far {row.direction} the norm" if row.anomaly else "within the usual range"
        return (
            f"{name} {show(row.value)} on {weekday} {row.day}; usually {show(row.expected)} on {weekday}s "
            f"(median of the previous {row.weeks}): z = {row.z:+.1f}, {verdict}"
        )

"""The shop's KPIs over time, from the event store and the decision log.

Each function takes a :class:`~winback.measure.data.MeasureData` and :class:`~winback.measure.data.
Filters` and returns a DataFrame per time bucket (:func:`bucket`: weeks for periods up to
:data:`WEEKLY_UP_TO_DAYS`, else months; buckets start on Mondays / the 1st, UTC). Rates are None where
their denominator is 0, never NaN or infinite. Definitions (DESIGN.md):

- **carts**: a cart is a session with an add; abandoned when it ends without a purchase; recovered when
  the customer buys one of its items within the recovery window (:func:`winback.features.carts.carts`);
  ``revenue_recovered`` is the recovered carts' value. Recovery here is every recovery, with or without
  a message.
- **natural vs incremental recovery** (:func:`recovery_over_time`): the holdout's recovery rate is what
  happens with no message (natural); the treated minus the holdout is what the messages added.
- **orders**: purchases grouped by order id; ``aov`` revenue per order; ``repeat_rate`` the share of the
  bucket's buyers who had ordered before.
- **messages** (:func:`messages_over_time`): ``message_sent`` / ``message_opened`` / ``message_clicked`` /
  ``unsubscribed`` events per channel (their ``channel`` property); opens, clicks and unsubscribes per
  message sent; ``conversion`` the share of the decisions on that channel whose customer ordered within
  the window (from the decision log).
- **discount** (:func:`discount_return`): coupons redeemed by treated customers, and the incremental
  margin (after those discounts) of the coupon actions against the holdout: the return on the spend.
- **cohorts** (:func:`cohort_retention`): customers by the month of their first order; the share who
  ordered in each later month.
- **churn** (:func:`churn_over_time`): at each month's start, of the customers who ordered in the
  ``horizon`` days before it, the share with no order in the ``horizon`` days after it (only months
  whose horizon has passed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from winback.decide.actions import CHANNELS, Action
from winback.errors import BadInputError
from winback.measure.data import Filters, MeasureData
from winback.measure.experiments import compare

__all__ = [
    "WEEKLY_UP_TO_DAYS",
    "at_risk_customers",
    "bucket",
    "carts_over_time",
    "churn_over_time",
    "cohort_retention",
    "discount_return",
    "funnel",
    "messages_over_time",
    "orders",
    "orders_over_time",
    "recovery_over_time",
]

#: Periods up to this long are shown week by week, longer ones month by month.
WEEKLY_UP_TO_DAYS = 120


def bucket(data: MeasureData, filters: Filters) -> str:
    """``"week"`` or ``"month"``: the time bucket of the period's series."""
    period = data.period(filters)
    return "week" if period is None or period.days <= WEEKLY_UP_TO_DAYS else "month"


def _start(times: pd.Series, unit: str) -> pd.Series:
    """Each time's bucket start as a ``YYYY-MM-DD`` label (labelled once per distinct day: a log has
    millions of times and a few hundred days)."""
    days = pd.to_datetime(times, utc=True).dt.tz_localize(None).dt.floor("D")
    codes, distinct = pd.factorize(days)
    periods = pd.Series(distinct).dt.to_period("W-SUN" if unit == "week" else "M")
    labels = periods.dt.start_time.dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    return pd.Series(labels[codes] if len(labels) else [], index=times.index, dtype=str)


def _rate(numerator: pd.Series, denominator: pd.Series) -> list[float | None]:
    return [float(n) / float(d) if d else None for n, d in zip(numerator, denominator, strict=True)]


def funnel(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Visits, carts, checkouts and orders of the period, then abandoned and recovered carts: ``stage``
    and ``count``."""
    period = data.period(filters)
    if period is None:
        return pd.DataFrame(columns=["stage", "count"])
    events = data.tables.sessioned
    events = events.filter((events.ts >= period.since.timestamp()) & (events.ts < period.until.timestamp()))
    # One row per session, then sums: one hash table instead of four distinct counts.
    sessions = events.group_by("session_key").aggregate(
        carts=(events.event_type == "add_to_cart").any().cast("int64"),
        checkouts=(events.event_type == "checkout_start").any().cast("int64"),
        bought=(events.event_type == "purchase").any().cast("int64"),
    )
    counts = data.source.execute(
        sessions.aggregate(
            visits=sessions.count(),
            carts=sessions.carts.sum(),
            checkouts=sessions.checkouts.sum(),
            bought=sessions.bought.sum(),
        )
    )
    row = tuple(int(counts[c].iloc[0] or 0) for c in ("visits", "carts", "checkouts", "bought"))
    visits, carts, checkouts, bought = row if row else (0, 0, 0, 0)
    cart_table = data.carts(filters)
    abandoned = int(cart_table["abandoned"].sum()) if len(cart_table) else 0
    recovered = int((cart_table["abandoned"] & cart_table["recovered"]).sum()) if len(cart_table) else 0
    return pd.DataFrame(
        {
            "stage": [
                "visits",
                "carts",
                "checkouts",
                "visits with an order",
                "abandoned carts",
                "recovered carts",
            ],
            "count": [int(visits), int(carts), int(checkouts), int(bought), abandoned, recovered],
        }
    )


def carts_over_time(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Per bucket: ``carts``, ``abandoned``, ``abandonment_rate``, ``recovered``, ``recovery_rate`` (of
    abandoned carts), ``revenue_recovered``."""
    carts = data.carts(filters)
    columns = [
        "bucket",
        "carts",
        "abandoned",
        "abandonment_rate",
        "recovered",
        "recovery_rate",
        "revenue_recovered",
    ]
    if carts.empty:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(
        {
            "bucket": _start(carts["started_at"], bucket(data, filters)),
            "abandoned": carts["abandoned"].astype(bool),
            "recovered": (carts["abandoned"] & carts["recovered"]).astype(bool),
            "value": carts["value"].astype(float).fillna(0.0),
        }
    )
    frame["value_recovered"] = frame["value"].where(frame["recovered"], 0.0)
    out = frame.groupby("bucket", sort=True).agg(
        carts=("abandoned", "size"),
        abandoned=("abandoned", "sum"),
        recovered=("recovered", "sum"),
        revenue_recovered=("value_recovered", "sum"),
    )
    out["abandonment_rate"] = _rate(out["abandoned"], out["carts"])
    out["recovery_rate"] = _rate(out["recovered"], out["abandoned"])
    return out.reset_index()[columns]


def recovery_over_time(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Per week of decisions: recovery rate with the policy (``treated``), in the holdout (``natural``),
    their difference (``incremental``) with its interval, and the customers of each arm."""
    decisions = data.decisions(filters)
    columns = [
        "week",
        "treated",
        "natural",
        "incremental",
        "ci_low",
        "ci_high",
        "customers_treated",
        "customers_control",
    ]
    if decisions.empty:
        return pd.DataFrame(columns=columns)
    table = compare(decisions, "week", metrics=("recovery",))
    table = table[
        [
            "group",
            "treated",
            "control",
            "difference",
            "ci_low",
            "ci_high",
            "customers_treated",
            "customers_control",
        ]
    ]
    return table.set_axis(columns, axis=1)


def orders(data: MeasureData) -> pd.DataFrame:
    """Every order of the log: ``user_id``, ``ordered_at``, ``revenue`` (line items, else the order's
    value), ``coupon`` (whether it used one), oldest first (cached)."""

    def read() -> pd.DataFrame:
        return data.con.execute(
            """
            SELECT coalesce(user_id, 'anonymous:' || anonymous_id) AS user_id,
                   min(timestamp) AS ordered_at,
                   coalesce(sum(price * coalesce(quantity, 1)), max(value), 0) AS revenue,
                   bool_or(coalesce(json_extract_string(properties, '$.coupon') IS NOT NULL, false))
                       AS coupon
            FROM event_log WHERE event_type = 'purchase'
            GROUP BY 1, coalesce(order_id, CAST(timestamp AS VARCHAR))
            ORDER BY ordered_at
            """
        ).df()

    return data._cached(("orders",), read)


def orders_over_time(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Per bucket: ``orders``, ``revenue``, ``aov``, ``customers`` (who ordered) and ``repeat_rate``
    (the share of them who had ordered before)."""
    period = data.period(filters)
    every = orders(data)
    columns = ["bucket", "orders", "revenue", "aov", "customers", "repeat_rate"]
    if period is None or every.empty:
        return pd.DataFrame(columns=columns)
    first = every.groupby("user_id")["ordered_at"].min()
    at = pd.to_datetime(every["ordered_at"], utc=True)
    chosen = every[(at >= period.since) & (at < period.until)].copy()
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    chosen["bucket"] = _start(chosen["ordered_at"], bucket(data, filters))
    chosen["returning"] = chosen["ordered_at"] > chosen["user_id"].map(first)
    grouped = chosen.groupby("bucket", sort=True)
    out = grouped.agg(
        orders=("revenue", "size"), revenue=("revenue", "sum"), customers=("user_id", "nunique")
    )
    returning = chosen[chosen["returning"]].groupby("bucket")["user_id"].nunique()
    out["aov"] = _rate(out["revenue"], out["orders"])
    out["repeat_rate"] = _rate(returning.reindex(out.index).fillna(0), out["customers"])
    return out.reset_index()[columns]


def messages_over_time(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Per bucket and channel: ``sent``, ``opened``, ``clicked``, ``unsubscribed``, ``open_rate``,
    ``click_rate``, ``unsubscribe_rate`` (per message sent) and ``conversion`` (decisions on the channel
    whose customer ordered within the window)."""
    period = data.period(filters)
    columns = [
        "bucket",
        "channel",
        "sent",
        "opened",
        "clicked",
        "unsubscribed",
        "open_rate",
        "click_rate",
        "unsubscribe_rate",
        "conversion",
        "decisions",
    ]
    if period is None:
        return pd.DataFrame(columns=columns)
    unit = bucket(data, filters)
    counts = data.con.execute(
        f"""
        SELECT CAST(date_trunc('{unit}', timestamp) AS DATE) AS bucket,
               coalesce(json_extract_string(properties, '$.channel'), 'unknown') AS channel,
               count(*) FILTER (event_type = 'message_sent') AS sent,
               count(*) FILTER (event_type = 'message_opened') AS opened,
               count(*) FILTER (event_type = 'message_clicked') AS clicked,
               count(*) FILTER (event_type = 'unsubscribed') AS unsubscribed
        FROM event_log
        WHERE event_type IN ('message_sent', 'message_opened', 'message_clicked', 'unsubscribed')
          AND timestamp >= ? AND timestamp < ?
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        [period.since.to_pydatetime(), period.until.to_pydatetime()],
    ).df()
    counts["bucket"] = pd.to_datetime(counts["bucket"]).dt.strftime("%Y-%m-%d")
    if filters.channel:
        counts = counts[counts["channel"] == filters.channel]
    decisions = data.decisions(filters)
    if not decisions.empty:
        messaged = ~decisions["holdout"] & (decisions["channel"] != "none")
        sent = decisions.loc[messaged, ["decided_at", "channel", "recovered"]]  # not every column
        sent["bucket"] = _start(sent["decided_at"], unit)
        converted = sent.groupby(["bucket", "channel"]).agg(
            decisions=("recovered", "size"), recovered=("recovered", "sum")
        )
        counts = counts.merge(converted.reset_index(), on=["bucket", "channel"], how="outer")
    else:
        counts["decisions"], counts["recovered"] = 0, 0
    counts = counts.fillna(
        {c: 0 for c in ("sent", "opened", "clicked", "unsubscribed", "decisions", "recovered")}
    )
    for name, numerator in (
        ("open_rate", "opened"),
        ("click_rate", "clicked"),
        ("unsubscribe_rate", "unsubscribed"),
    ):
        counts[name] = _rate(counts[numerator], counts["sent"])
    counts["conversion"] = _rate(counts["recovered"], counts["decisions"])
    return counts.sort_values(["bucket", "channel"]).reset_index(drop=True)[columns]


def channel_totals(messages: pd.DataFrame) -> pd.DataFrame:
    """:func:`messages_over_time` summed over the period, one row per channel."""
    columns = [
        "channel",
        "sent",
        "opened",
        "clicked",
        "unsubscribed",
        "decisions",
        "open_rate",
        "click_rate",
        "unsubscribe_rate",
        "conversion",
    ]
    if messages.empty:
        return pd.DataFrame(columns=columns)
    frame = messages.assign(
        recovered=[(c or 0.0) * d for c, d in zip(messages["conversion"], messages["decisions"], strict=True)]
    )
    sums = frame.groupby("channel")[
        ["sent", "opened", "clicked", "unsubscribed", "decisions", "recovered"]
    ].sum()
    sums["open_rate"] = _rate(sums["opened"], sums["sent"])
    sums["click_rate"] = _rate(sums["clicked"], sums["sent"])
    sums["unsubscribe_rate"] = _rate(sums["unsubscribed"], sums["sent"])
    sums["conversion"] = _rate(sums["recovered"], sums["decisions"])
    return sums.reset_index()[columns]


def discount_return(data: MeasureData, filters: Filters) -> dict[str, Any]:
    """The period's coupons: ``decisions`` with a coupon, ``discount`` redeemed, ``incremental_margin``
    of those decisions against the holdout (after the discount) with its interval, and ``return``
    (incremental margin per unit of discount; None without discount or holdout)."""
    decisions = data.decisions(filters)
    empty: dict[str, Any] = {
        "decisions": 0,
        "discount": 0.0,
        "incremental_margin": None,
        "ci_low": None,
        "ci_high": None,
        "return": None,
        "warning": "",
    }
    if decisions.empty:
        return empty
    with_coupon = {a: Action.parse(str(a)).coupon > 0 for a in decisions["action"].unique()}
    coupon = decisions["action"].map(with_coupon).astype(bool)  # parsed once per distinct action
    if not coupon.any():
        return empty
    # every coupon decision against the holdout customers who could have received one (on any channel)
    reachable = decisions[[f"consent_{c}" for c in CHANNELS]].any(axis=1)
    compared = (decisions["holdout"] & reachable) | (coupon & ~decisions["holdout"])
    chosen = decisions.loc[compared, [c for c in decisions.columns if c in _COMPARED]]
    row = compare(chosen, "all", metrics=("margin",)).iloc[0]
    discount = float(decisions.loc[coupon & ~decisions["holdout"], "discount"].sum())
    incremental, low, high = (
        None if v is None or pd.isna(v) else float(v)
        for v in (row["incremental"], row["incremental_low"], row["incremental_high"])
    )
    return {
        "decisions": int(coupon.sum()),
        "discount": discount,
        "incremental_margin": incremental,
        "ci_low": low,
        "ci_high": high,
        "return": incremental / discount if discount and incremental is not None else None,
        "warning": str(row["warning"]),
    }


#: The columns :func:`compare` reads for the whole group ("all"): a filter copies only these.
_COMPARED = frozenset(("user_id", "customer", "holdout", "all", "recovered", "revenue", "margin", "discount",
                       "attributed"))  # fmt: skip


def cohort_retention(data: MeasureData, filters: Filters) -> pd.DataFrame:
    """Customers by month of first order (cohorts starting in the period): ``cohort``, ``customers``,
    and for each month after (``month`` 0, 1, ...) the ``retention`` (share who ordered that month),
    up to the end of the period. Long format, one row per cohort and month."""
    period = data.period(filters)
    every = orders(data)
    columns = ["cohort", "customers", "month", "retention"]
    if period is None or every.empty:
        return pd.DataFrame(columns=columns)
    at = pd.to_datetime(every["ordered_at"], utc=True).dt.tz_localize(None)
    month = at.dt.year * 12 + at.dt.month - 1  # months counted from year 0: differences are offsets
    first = month.groupby(every["user_id"]).transform("min")
    frame = pd.DataFrame({"user_id": every["user_id"], "cohort": first, "offset": month - first})
    last = period.until.tz_localize(None) - pd.Timedelta(seconds=1)
    start, end = period.since.year * 12 + period.since.month - 1, last.year * 12 + last.month - 1
    frame = frame[
        (frame["cohort"] >= start) & (frame["cohort"] <= end) & (frame["cohort"] + frame["offset"] <= end)
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    sizes = frame.groupby("cohort")["user_id"].nunique()
    active = frame.groupby(["cohort", "offset"])["user_id"].nunique().reset_index()
    active["customers"] = active["cohort"].map(sizes)
    active["retention"] = active["user_id"] / active["customers"]
    active["cohort"] = [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in active["cohort"]]
    return active.rename(columns={"offset": "month"})[columns].reset_index(drop=True)


def churn_over_time(data: MeasureData, filters: Filters, horizon_days: int) -> pd.DataFrame:
    """At each month start in the period whose ``horizon_days`` have passed by the last event:
    ``month``, ``active`` (customers who ordered in the horizon before it), ``churned`` (of them, with no
    order in the horizon after), ``churn_rate``."""
    period, span = data.period(filters), data.span()
    every = orders(data)
    columns = ["month", "active", "churned", "churn_rate"]
    if period is None or span is None or every.empty:
        return pd.DataFrame(columns=columns)
    at = pd.to_datetime(every["ordered_at"], utc=True)
    horizon = pd.Timedelta(days=horizon_days)
    customer = pd.factorize(every["user_id"])[0]  # sets of integer codes, not of strings
    rows = []
    for start in pd.date_range(period.since.ceil("D"), period.until, freq="MS", tz="UTC"):
        if start + horizon > span[1]:
            break
        before = np.unique(customer[((at >= start - horizon) & (at < start)).to_numpy()])
        after = np.unique(customer[((at >= start) & (at < start + horizon)).to_numpy()])
        if len(before):
            churned = len(np.setdiff1d(before, after, assume_unique=True))
            rows.append(
                {
                    "month": f"{start:%Y-%m-%d}",
                    "active": len(before),
                    "churned": churned,
                    "churn_rate": churned / len(before),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def at_risk_customers(data: MeasureData, filters: Filters, *, top: int = 15) -> pd.DataFrame:
    """The ``top`` customers with the most at stake at the end of the period (churn probability x the
    value they would bring if retained, as ``winback score churn`` ranks them): ``user_id``,
    ``churn_probability``, ``clv``, ``severity``, ``reasons``. Only the shown rows are explained (the
    reasons cost far more than the scores). BadInputError when no churn model is trained."""
    from winback.features.customers import CUSTOMER_FEATURES
    from winback.models.registry import load_model
    from winback.models.tasks import CUSTOMER_WORDS, _phrases

    period = data.period(filters)
    if period is None:
        raise BadInputError("no events: nobody to score")
    churn, _ = load_model(data.settings, "churn", features=list(CUSTOMER_FEATURES))
    customers = data.tables.customers(period.until)
    if customers.empty:
        raise BadInputError(f"no customer had bought before {period.until:%Y-%m-%d}: nobody to score")
    x = customers[list(CUSTOMER_FEATURES)]
    probability = churn.predict_proba(x)[:, 1]
    severity = probability * churn.value_if_retained(x, churn.horizon_days)
    order = np.argsort(-severity, kind="stable")[:top]
    chosen = customers.iloc[order]
    out = pd.DataFrame(
        {
            "user_id": chosen["user_key"].to_numpy(),
            "churn_probability": probability[order],
            "severity": severity[order],
            "reasons": churn.reasons(
                chosen[list(CUSTOMER_FEATURES)], top=3, describe=_phrases(CUSTOMER_WORDS)
            ),
        }
    )
    try:
        clv, _ = load_model(data.settings, "clv", features=list(CUSTOMER_FEATURES))
        chosen = chosen.copy()
        chosen.attrs["as_of"] = period.until
        out["clv"] = clv.predict(chosen)["clv"].to_numpy()
    except BadInputError:
        out["clv"] = None
    out.attrs["scored"] = len(customers)
    return out


def finite(value: Any) -> bool:
    """Whether ``value`` is a real number to show (not None, NaN or infinite)."""
    return value is not None and isinstance(value, int | float | np.number) and bool(np.isfinite(value))

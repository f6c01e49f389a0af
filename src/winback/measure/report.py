"""The report: one self-contained HTML page a manager reads in five minutes, built from sections that
the dashboard reuses.

Each section is a function ``(data, filters) -> Section`` (:data:`SECTIONS`, in the page's order): it
reads what it needs from :class:`~winback.measure.data.MeasureData` through the data functions of
:mod:`.experiments`, :mod:`.kpis`, :mod:`.health` and :mod:`.demand`, and renders an HTML fragment
(tables, sentences, and plotly charts as ``<div>`` + ``<script>`` that need plotly.js on the page).
:func:`render_page` puts sections into a page; :func:`write_report` writes the whole report with
plotly.js inlined, so it opens with no network.

Bad input is said in words where the chart or table would be (an empty period, no holdout, no sends,
no trained model), and every number goes through :func:`number`, :func:`money` or :func:`percent`,
which print a dash for a missing value: the page never shows NaN or infinity.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup

from winback.config import Settings
from winback.decide.catalogue import Catalogue
from winback.errors import BadInputError
from winback.files import written_atomically
from winback.measure import demand, experiments, health, kpis
from winback.measure.data import Filters, MeasureData

__all__ = [
    "SECTIONS",
    "ReportResult",
    "Section",
    "at_risk_section",
    "build_sections",
    "demand_section",
    "headline_lines",
    "holdout_section",
    "kpi_section",
    "model_health_section",
    "money",
    "number",
    "percent",
    "policy_section",
    "render_page",
    "segment_section",
    "summary_section",
    "write_report",
]

#: Decisions the off-policy section evaluates at most (a seeded sample beyond), to keep the report fast.
OPE_SAMPLE = 50_000
#: What a missing value shows as.
DASH = "\N{EN DASH}"
_COLOURS = {
    "treated": "#1f77b4",
    "control": "#ff7f0e",
    "good": "#2ca02c",
    "bad": "#d62728",
    "grey": "#7f7f7f",
}


# --------------------------------------------------------------------------- formatting


def _finite(value: Any) -> bool:
    if value is None or isinstance(value, bool | str):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number(value: Any, spec: str = ",.0f") -> str:
    """``value`` formatted, or a dash when it is missing, NaN or infinite."""
    return format(float(value), spec) if _finite(value) else DASH


def money(value: Any, currency: str = "", *, signed: bool = False) -> str:
    """An amount with its currency (``+`` on gains when ``signed``); a dash when missing."""
    if not _finite(value):
        return DASH
    text = format(float(value), "+,.2f" if signed else ",.2f")
    return f"{text} {currency}".strip()


def percent(value: Any, digits: int = 1, *, signed: bool = False) -> str:
    """A share as a percentage (points with ``signed``); a dash when missing."""
    if not _finite(value):
        return DASH
    return format(float(value) * 100, f"{'+' if signed else ''}.{digits}f") + ("%" if not signed else " pts")


def _interval(low: Any, high: Any, fmt: Callable[[Any], str]) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if _finite(low) and _finite(high) else DASH


def _note(text: str, kind: str = "note") -> str:
    return f'<p class="{kind}">{html.escape(text)}</p>'


def _table(columns: Sequence[str], rows: Sequence[tuple[Any, ...]], *, numeric_from: int = 1) -> str:
    """An HTML table (cells escaped; columns from ``numeric_from`` right-aligned)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{html.escape(str(cell))}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _clean(values: Any) -> list[Any]:
    """Plot values with missing ones as None (plotly leaves a gap)."""
    return [float(v) if _finite(v) else None for v in values]


_FIGURES = {"n": 0}


def _chart(figure: Any, height: int = 320) -> str:
    """A plotly figure as a fragment (needs plotly.js on the page)."""
    _FIGURES["n"] += 1
    figure.update_layout(
        height=height,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
        font={"size": 12},
    )
    fragment: str = figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"chart-{_FIGURES['n']}",
        config={"displayModeBar": False, "responsive": True},
    )
    return f'<div class="chart">{fragment}</div>'


# --------------------------------------------------------------------------- sections


@dataclass
class Section:
    """One part of the report or of a dashboard page."""

    id: str
    title: str
    html: str
    data: dict[str, Any] = field(default_factory=dict)  # headline figures, for the terminal and JSON


def _no_decisions(data: MeasureData, filters: Filters) -> str | None:
    """Why the period has nothing to compare, in words; None when it has."""
    if data.period(filters) is None:
        return "The event store is empty: load events with `winback ingest` first."
    if data.all_decisions().empty:
        return (
            "No decision log: winback has not decided anything for this shop yet, so there is nothing to "
            "measure. Plan with `winback plan` (it keeps a permanent holdout) and record outcomes with "
            "`winback outcomes` once their window has closed."
        )
    decisions = data.decisions(filters)
    waiting = data.waiting(filters)
    if decisions.empty:
        extra = f" ({waiting:,} decisions still inside their attribution window)" if waiting else ""
        return f"No decisions with a recorded outcome in this period{extra}: nothing to measure yet."
    if not decisions["holdout"].any():
        return (
            "No holdout in this period: every decision was treated, so there is no control group and what "
            "the messages changed cannot be measured (attributed numbers are not a measure). Keep the "
            "permanent holdout on: `winback plan --holdout-share 0.1`."
        )
    if decisions["holdout"].all():
        return (
            "Every decision of this period is in the holdout: nothing was sent, so there is no effect "
            "to measure."
        )
    return None


def summary_section(data: MeasureData, filters: Filters) -> Section:
    """The headline: the incremental margin with its interval and the discount it cost, beside the
    attributed revenue; and the period's key figures."""
    period = data.period(filters)
    if period is None:
        return Section(
            "summary", "Summary", _note("The event store is empty: load events with `winback ingest` first.")
        )
    currency = data.currency()
    carts = data.carts(filters)
    parts = []
    figures: dict[str, Any] = {"period": period.label(), "currency": currency}
    why = _no_decisions(data, filters)
    found = None if why else experiments.headline(data.decisions(filters))
    if found is not None and found.margin is not None:
        verb = "recovered" if found.margin >= 0 else "lost"
        interval = _interval(found.ci_low, found.ci_high, lambda v: money(v, currency))
        attributed = money(found.attributed_revenue, currency)
        parts.append(
            f'<p class="headline">From {period.since:%Y-%m-%d} to {period.until:%Y-%m-%d} winback {verb} '
            f"<b>{money(abs(found.margin), currency)}</b> of margin that would otherwise have been "
            f"{'lost' if found.margin >= 0 else 'kept'} (95% CI {interval}), "
            f"for <b>{money(found.discount, currency)}</b> of discount.</p>"
        )
        parts.append(
            f"<p>A vendor's dashboard would have attributed <b>{attributed}</b> "
            f"of revenue to the messages (every order after one); against the randomised holdout of "
            f"{found.customers_control:,} customers they added {money(found.incremental_revenue, currency)}"
            f" of revenue ({found.decisions_treated:,} decisions for {found.customers_treated:,} customers "
            "were treated). Margin is after discounts and message costs.</p>"
        )
        if found.warning:
            parts.append(_note(f"Read with care: {found.warning}.", "warning"))
        figures.update(
            incremental_margin=found.margin,
            ci_low=found.ci_low,
            ci_high=found.ci_high,
            discount=found.discount,
            attributed_revenue=found.attributed_revenue,
            incremental_revenue=found.incremental_revenue,
            warning=found.warning,
        )
    else:
        parts.append(
            _note(why or "Too few decisions to measure the effect of winback in this period.", "warning")
        )
    abandoned = int(carts["abandoned"].sum()) if len(carts) else 0
    recovered = int((carts["abandoned"] & carts["recovered"]).sum()) if len(carts) else 0
    tiles = [
        ("carts", number(len(carts))),
        ("abandoned", percent(abandoned / len(carts)) if len(carts) else DASH),
        ("abandoned carts recovered", percent(recovered / abandoned) if abandoned else DASH),
        ("decisions measured", number(len(data.decisions(filters)) if not data.all_decisions().empty else 0)),
        ("waiting for outcomes", number(data.waiting(filters))),
    ]
    parts.append(
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="value">{html.escape(v)}</div>'
            f'<div class="label">{html.escape(k)}</div></div>'
            for k, v in tiles
        )
        + "</div>"
    )
    figures.update(carts=len(carts), abandoned=abandoned, recovered=recovered)
    return Section("summary", "Summary", "".join(parts), figures)


def kpi_section(data: MeasureData, filters: Filters) -> Section:
    """The KPIs over time: funnel, carts, recovery against the control, orders, channels, discount,
    cohorts, churn, CLV."""
    import plotly.graph_objects as go

    period = data.period(filters)
    if period is None:
        return Section("kpis", "KPIs", _note("No events: nothing to show."))
    currency = data.currency()
    parts = []
    stages = kpis.funnel(data, filters)
    if stages["count"].sum() == 0:
        parts.append(_note("No shopping sessions in this period: no funnel."))
    else:
        shop = stages.iloc[:4]
        figure = go.Figure(go.Funnel(y=shop["stage"], x=shop["count"], textinfo="value+percent initial"))
        figure.update_layout(title="Funnel: visits to orders")
        parts.append(_chart(figure, 280))
    carts = kpis.carts_over_time(data, filters)
    unit = kpis.bucket(data, filters)
    recovery = kpis.recovery_over_time(data, filters)
    if recovery.empty:
        parts.append(
            _note("Recovery against the control: " + (_no_decisions(data, filters) or "no decisions."))
        )
    else:
        figure = go.Figure()
        figure.add_scatter(
            x=recovery["week"],
            y=_clean(recovery["treated"]),
            name="with winback (treated)",
            line={"color": _COLOURS["treated"]},
        )
        figure.add_scatter(
            x=recovery["week"],
            y=_clean(recovery["natural"]),
            name="holdout (natural recovery)",
            line={"color": _COLOURS["control"], "dash": "dash"},
        )
        if len(carts):
            figure.add_scatter(
                x=carts["bucket"],
                y=_clean(carts["recovery_rate"]),
                name="all abandoned carts",
                line={"color": _COLOURS["grey"], "dash": "dot"},
                visible="legendonly",
            )
        figure.update_layout(
            title="Recovery over time: treated against the holdout (the control line)",
            yaxis={"tickformat": ".0%"},
        )
        parts.append(_chart(figure))
    if carts.empty:
        parts.append(_note("No carts in this period."))
    else:
        rows: list[tuple[Any, ...]] = [
            (
                r.bucket,
                number(r.carts),
                percent(r.abandonment_rate),
                number(r.recovered),
                percent(r.recovery_rate),
                money(r.revenue_recovered, currency),
            )
            for r in carts.itertuples()
        ]
        parts.append(f"<h3>Carts by {unit}</h3>")
        parts.append(
            _table(
                [unit, "carts", "abandoned", "recovered carts", "recovery rate", "revenue recovered"], rows
            )
        )
    orders = kpis.orders_over_time(data, filters)
    if not orders.empty:
        rows = [
            (
                r.bucket,
                number(r.orders),
                money(r.revenue, currency),
                money(r.aov, currency),
                number(r.customers),
                percent(r.repeat_rate),
            )
            for r in orders.itertuples()
        ]
        parts.append(f"<h3>Orders by {unit}</h3>")
        parts.append(
            _table([unit, "orders", "revenue", "average order value", "customers", "repeat buyers"], rows)
        )
    channels = kpis.channel_totals(kpis.messages_over_time(data, filters))
    parts.append("<h3>Channels</h3>")
    if channels.empty or channels["sent"].sum() == 0:
        parts.append(
            _note(
                "No messages sent in this period (no message_sent events): no open, click or "
                "unsubscribe rates."
            )
        )
    else:
        rows = [
            (
                r.channel,
                number(r.sent),
                percent(r.open_rate),
                percent(r.click_rate),
                percent(r.unsubscribe_rate, 2),
                percent(r.conversion),
            )
            for r in channels.itertuples()
        ]
        parts.append(
            _table(
                ["channel", "sent", "opened", "clicked", "unsubscribed", "ordered within the window"], rows
            )
        )
    coupons = kpis.discount_return(data, filters)
    parts.append("<h3>Discount</h3>")
    if not coupons["decisions"]:
        parts.append(_note("No coupons were given in this period."))
    else:
        spent = money(coupons["discount"], currency)
        gained = money(coupons["incremental_margin"], currency, signed=True)
        interval = _interval(coupons["ci_low"], coupons["ci_high"], lambda v: money(v, currency))
        ratio = number(coupons["return"], ".2f")
        parts.append(
            f"<p>{coupons['decisions']:,} coupon decisions; {spent} of discount redeemed; their incremental "
            f"margin after it {gained} (95% CI {interval}): {ratio} of margin per unit of discount.</p>"
        )
        if coupons["warning"]:
            parts.append(_note(f"Read with care: {coupons['warning']}.", "warning"))
    cohorts = kpis.cohort_retention(data, filters)
    if cohorts.empty:
        parts.append(_note("No first orders in this period: no cohorts."))
    else:
        grid = cohorts.pivot(index="cohort", columns="month", values="retention")
        z = [[v if _finite(v) else None for v in row] for row in grid.to_numpy()]
        figure = go.Figure(
            go.Heatmap(
                z=z,
                x=[f"month {m}" for m in grid.columns],
                y=list(grid.index),
                colorscale="Blues",
                zmin=0,
                zmax=1,
                texttemplate="%{z:.0%}",
                hovertemplate="cohort %{y}, %{x}: %{z:.1%}<extra></extra>",
            )
        )
        figure.update_layout(
            title="Retention by monthly cohort (share who ordered in each later month)",
            yaxis={"autorange": "reversed", "type": "category"},  # "2024-03" are labels, not dates
        )
        parts.append(_chart(figure, 120 + 28 * len(grid)))
    horizon = _churn_horizon(data)
    churn = kpis.churn_over_time(data, filters, horizon)
    parts.append(f"<h3>Churn (no order within {horizon} days)</h3>")
    if churn.empty:
        parts.append(
            _note(f"No month of this period has {horizon} days of data after it yet: no churn rate.")
        )
    else:
        rows = [
            (r.month, number(r.active), number(r.churned), percent(r.churn_rate)) for r in churn.itertuples()
        ]
        parts.append(
            _table(
                ["month", f"customers who ordered in the {horizon} days before", "churned", "churn rate"],
                rows,
            )
        )
    clv = health.clv_check(data)
    parts.append("<h3>Predicted against actual customer value</h3>")
    if clv is None:
        parts.append(_note("No CLV model with an evaluation (`winback train clv`)."))
    else:
        p = clv["purchases"]
        parts.append(
            f"<p>The CLV model's time split at {str(clv.get('as_of'))[:10]}: over the next "
            f"{clv.get('horizon_days')} "
            f"days {number(clv.get('customers'))} customers made {number(p.get('actual'))} purchases; BG/NBD "
            f"predicted {number(p.get('BG/NBD'), ',.1f')}, the same rate as before "
            f"{number(p.get('same rate as before'), ',.1f')}.</p>"
        )
        rows = [
            (
                number(r.get("repeat purchase days before"), "g"),
                number(r.get("customers")),
                number(r.get("actual"), ".3f"),
                number(r.get("bgnbd"), ".3f"),
            )
            for r in clv.get("by_frequency") or []
        ]
        if rows:
            parts.append(
                _table(
                    ["repeat purchase days before", "customers", "actual purchases", "predicted (BG/NBD)"],
                    rows,
                )
            )
    return Section("kpis", "KPIs", "".join(parts))


def _churn_horizon(data: MeasureData) -> int:
    """The deployed churn model's horizon, else the settings'."""
    try:
        from winback.models.registry import load_card

        return int(
            load_card(data.settings, "churn").params.get("horizon_days") or data.settings.churn_horizon_days
        )
    except BadInputError:
        return int(data.settings.churn_horizon_days)


def _comparison_table(table: pd.DataFrame, currency: str, metrics: Sequence[str]) -> str:
    rows = []
    for r in table[table["metric"].isin(metrics)].to_dict("records"):
        is_money = r["metric"] in ("revenue", "margin")
        fmt: Callable[[Any], str] = (lambda v: money(v, currency)) if is_money else percent
        diff = (
            money(r["difference"], currency, signed=True)
            if is_money
            else percent(r["difference"], signed=True)
        )
        interval = _interval(
            r["ci_low"],
            r["ci_high"],
            (lambda v: money(v, currency, signed=True)) if is_money else (lambda v: percent(v, signed=True)),
        )
        rows.append(
            (
                r["group"],
                r["label"],
                fmt(r["treated"]),
                fmt(r["control"]),
                diff,
                interval,
                money(r["attributed"], currency) if r["attributed"] is not None else "",
                f"{r['customers_treated']:,} / {r['customers_control']:,}",
                r["method"],
                r["warning"],
            )
        )
    return _table(
        [
            "group",
            "metric",
            "treated",
            "holdout",
            "difference",
            "95% CI",
            "attributed (vendor count)",
            "customers",
            "interval",
            "note",
        ],
        rows,
        numeric_from=2,
    )


def holdout_section(data: MeasureData, filters: Filters) -> Section:
    """Treated against the holdout: overall, by flow, action, channel and week, and uplift by decile."""
    import plotly.graph_objects as go

    why = _no_decisions(data, filters)
    if why:
        return Section("holdout", "Holdout comparison", _note(why, "warning"))
    decisions = data.decisions(filters)
    currency = data.currency()
    parts = [
        "<p>Treated decisions against the randomised holdout (customers winback never messages). "
        "The difference "
        "is what winback's decisions changed; the attributed column is what a vendor would report "
        "(revenue of "
        "every order after a message), shown so the gap is visible. Intervals: delta-method Welch over "
        "customers for rates and money per decision, Newcombe's score interval for conversion.</p>"
    ]
    for by, title, metrics in (
        ("all", "All decisions", tuple(experiments.METRICS)),
        ("policy", "By flow (policy)", ("recovery", "margin")),
        ("action", "By action", ("recovery", "revenue", "margin")),
        ("channel", "By channel", ("recovery", "margin")),
        ("week", "By week", ("recovery", "margin")),
    ):
        table = experiments.compare(decisions, by, metrics=metrics)
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if by == "channel" and (table["group"] == "none").all():
            parts.append(_note("No messages were sent in this period: every treated decision was 'nothing'."))
        parts.append(_comparison_table(table, currency, metrics))
    score: str | None = next(
        (c for c in ("abandon_probability", "churn_probability", "value") if decisions[c].notna().any()), None
    )
    deciles = experiments.uplift_by_decile(decisions, score) if score else pd.DataFrame()
    if deciles.empty:
        parts.append(_note("No score known for both arms: no uplift by decile."))
    else:
        figure = go.Figure()
        colours = [
            _COLOURS["good"] if _finite(v) and v >= 0 else _COLOURS["bad"] for v in deciles["margin_uplift"]
        ]
        figure.add_bar(
            x=[f"{d}" for d in deciles["decile"]],
            y=_clean(deciles["margin_uplift"]),
            marker_color=colours,
            name="margin per decision, treated - holdout",
            customdata=np.column_stack([deciles["low"], deciles["high"]]),
            hovertemplate="decile %{x} (%{customdata[0]:.2f} to %{customdata[1]:.2f}): "
            "%{y:.2f}<extra></extra>",
        )
        names = {"abandon_probability": "P(abandon)", "churn_probability": "P(churn)", "value": "cart value"}
        label = names[str(score)]
        figure.update_layout(
            title=f"Uplift by decile of {label}: margin per decision, treated minus holdout",
            xaxis={"title": f"decile of {label} (1 = lowest)"},
        )
        parts.append(_chart(figure))
    return Section("holdout", "Holdout comparison", "".join(parts))


def policy_section(data: MeasureData, filters: Filters) -> Section:
    """What each static flow, doing nothing and the logged policies would earn per decision, off-policy
    from the log (:func:`winback.decide.plan.evaluate_log`)."""
    from winback.decide.plan import evaluate_log

    if data.all_decisions().empty or data.decisions(filters).empty:
        return Section("policies", "Policies", _note(_no_decisions(data, filters) or "No decisions."))
    decisions = data.decisions(filters)
    sampled = len(decisions) > OPE_SAMPLE
    log = decisions.sample(OPE_SAMPLE, random_state=0) if sampled else decisions
    try:
        rows, notes = evaluate_log(
            log.assign(context=data.contexts(log["decision_id"])), data.catalogue, n_boot=100
        )
    except BadInputError as error:
        return Section("policies", "Policies", _note(str(error), "warning"))
    currency = data.currency()
    table = [
        (
            r["name"],
            r["estimator"].upper(),
            money(r["profit_per_cart"], currency, signed=True),
            _interval(r["ci_low"], r["ci_high"], lambda v: money(v, currency, signed=True)),
            number(r["effective_sample_size"]),
            "; ".join(r["warnings"]),
        )
        for r in rows
    ]
    parts = [
        "<p>What each policy would have earned per decision, more than doing nothing, estimated off-policy "
        "from this period's decisions and their propensities (doubly robust where it can; 'logged' is what "
        "the policies that decided actually earned). Off-policy estimates need randomised decisions to be "
        "trusted: a log of one static flow can only judge that flow.</p>",
        _table(
            ["policy", "estimator", "profit per decision", "95% CI", "effective decisions", "warnings"], table
        ),
    ]
    if sampled:
        notes.append(f"estimated on a random sample of {OPE_SAMPLE:,} of the {len(decisions):,} decisions")
    parts += [_note(n) for n in notes]
    return Section("policies", "Policies", "".join(parts))


def segment_section(data: MeasureData, filters: Filters) -> Section:
    """Treated against the holdout per customer segment (orders before the decision)."""
    why = _no_decisions(data, filters)
    if why:
        return Section("segments", "Segments", _note(why, "warning"))
    table = experiments.compare(
        data.decisions(filters), "segment", metrics=("recovery", "conversion", "margin")
    )
    intro = "<p>Segments by the customer's orders before each decision.</p>"
    return Section(
        "segments",
        "Segments",
        intro + _comparison_table(table, data.currency(), ("recovery", "conversion", "margin")),
    )


def at_risk_section(data: MeasureData, filters: Filters, *, top: int = 15) -> Section:
    """The customers most worth keeping at the end of the period (churn probability x value)."""
    period = data.period(filters)
    if period is None:
        return Section("at-risk", "At-risk customers", _note("No events: nobody to score."))
    try:
        scored = kpis.at_risk_customers(data, filters, top=top)
    except BadInputError as error:
        return Section("at-risk", "At-risk customers", _note(f"Not scored: {error}"))
    currency = data.currency()
    rows = [
        (
            r.user_id,
            number(r.churn_probability, ".2f"),
            money(r.clv, currency),
            money(r.severity, currency),
            r.reasons or DASH,
        )
        for r in scored.itertuples()
    ]
    total = int(scored.attrs.get("scored", len(scored)))
    intro = (
        f"<p>{total:,} customers scored as of {period.until:%Y-%m-%d}; the {len(scored)} with the most at "
        "stake (churn probability x the value they would bring if retained).</p>"
    )
    table = _table(["customer", "P(churn)", "CLV", "at stake", "why"], rows)
    return Section("at-risk", "At-risk customers", intro + table, {"scored": total})


def model_health_section(data: MeasureData, filters: Filters) -> Section:
    """AUC and calibration of the deployed models on recent outcomes, and feature drift (PSI)."""
    import plotly.graph_objects as go

    parts = [
        "<p>Drift is the population stability index of each feature between the "
        f"{health.DRIFT_DAYS} days before "
        f"the model's training cut and the last {health.DRIFT_DAYS} days: under {health.PSI_WATCH} "
        "stable, above "
        f"{health.PSI_ALERT} retrain (`winback retrain`).</p>"
    ]
    found = health.model_health(data, filters) if data.period(filters) is not None else []
    figures: dict[str, Any] = {}
    for h in found:
        parts.append(f"<h3>{html.escape(h.name)}</h3>")
        if h.version is None:
            parts.append(_note("; ".join(h.notes) or "not trained"))
            continue
        figures[h.name] = {"status": h.status, "auc": h.auc, "auc_margin": h.auc_margin, "n": h.n}
        margin = (
            f" \N{PLUS-MINUS SIGN} {number(h.auc_margin, '.3f')} (95%, Hanley\N{EN DASH}McNeil)"
            if _finite(h.auc_margin)
            else ""
        )
        parts.append(
            f"<p>Version {html.escape(h.version)}, trained on data to {html.escape(str(h.trained_to)[:10])}: "
            f"<b>{html.escape(h.status)}</b>. ROC-AUC {number(h.auc, '.3f')}{html.escape(margin)} on "
            f"{html.escape(h.source)}.</p>"
        )
        if h.sampled_from:
            parts.append(
                _note(
                    f"Measured on a random sample of {h.n:,} of {h.sampled_from:,} outcomes, to keep the "
                    "report fast: the margin says how far the AUC of all of them may be."
                )
            )
        parts += [_note(n) for n in h.notes]
        if h.calibration:
            predicted = [c["mean_predicted"] for c in h.calibration]
            observed = [c["observed_rate"] for c in h.calibration]
            figure = go.Figure()
            figure.add_scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                name="perfect",
                line={"color": _COLOURS["grey"], "dash": "dot"},
            )
            figure.add_scatter(
                x=_clean(predicted),
                y=_clean(observed),
                mode="lines+markers",
                name="deciles",
                line={"color": _COLOURS["treated"]},
            )
            figure.update_layout(
                title=f"Calibration of the {h.name} model",
                xaxis={"title": "predicted", "range": [0, 1]},
                yaxis={"title": "observed", "range": [0, 1]},
            )
            parts.append(_chart(figure, 300))
        else:
            parts.append(_note("No calibration table: the model's card has none and no outcomes came since."))
        if h.drift.empty:
            parts.append(_note("No features on one side of the drift comparison: no drift measured."))
        else:
            rows = [(r.feature, number(r.psi, ".3f"), r.status) for r in h.drift.head(8).itertuples()]
            parts.append(_table(["feature (most drifted first)", "PSI", "status"], rows))
            if h.drift_sample:
                parts.append(
                    _note(
                        f"Drift measured on {h.drift_sample}, to keep the report fast: at 10,000 per "
                        "side a PSI moves by a few thousandths from one sample to another, far below "
                        "the thresholds."
                    )
                )
    return Section("model-health", "Model health", "".join(parts), figures)


def demand_section(data: MeasureData, filters: Filters) -> Section:
    """The most abandoned products, price bands, recovered against lost demand."""
    import plotly.graph_objects as go

    if data.period(filters) is None:
        return Section("demand", "Demand signals", _note("No events."))
    currency = data.currency()
    products = demand.top_products(data, filters)
    if products.empty:
        return Section(
            "demand", "Demand signals", _note("No abandoned carts in this period: no demand signals.")
        )
    rows = [
        (
            r.product_id,
            r.category or DASH,
            number(r.abandoned),
            money(r.price, currency),
            number(r.recovered),
            number(r.lost),
            percent(r.recovered_share),
            money(r.lost_value, currency),
        )
        for r in products.itertuples()
    ]
    parts = [
        "<p>What shoppers wanted and left in abandoned carts: the cart-side demand inventory planning lacks. "
        "Recovered: the customer bought the product within the recovery window; lost: they did not.</p>",
        _table(
            [
                "product",
                "category",
                "abandoned carts",
                "median price",
                "recovered",
                "lost",
                "recovered share",
                "lost value",
            ],
            rows,
        ),
    ]
    bands = demand.by_price_band(data, filters)
    if not bands.empty:
        figure = go.Figure()
        figure.add_bar(x=bands["band"], y=bands["recovered"], name="recovered", marker_color=_COLOURS["good"])
        figure.add_bar(
            x=bands["band"],
            y=bands["abandoned"] - bands["recovered"],
            name="lost",
            marker_color=_COLOURS["bad"],
        )
        figure.update_layout(
            barmode="stack", title=f"Abandoned items by price ({currency})", xaxis={"title": "price band"}
        )
        parts.append(_chart(figure))
    return Section("demand", "Demand signals", "".join(parts))


#: The report's sections in order: (id, function).
SECTIONS: tuple[tuple[str, Callable[[MeasureData, Filters], Section]], ...] = (
    ("summary", summary_section),
    ("kpis", kpi_section),
    ("holdout", holdout_section),
    ("policies", policy_section),
    ("segments", segment_section),
    ("at-risk", at_risk_section),
    ("model-health", model_health_section),
    ("demand", demand_section),
)


def build_sections(data: MeasureData, filters: Filters, only: Sequence[str] | None = None) -> list[Section]:
    """The report's sections (or the ``only`` ones), in order."""
    return [make(data, filters) for name, make in SECTIONS if only is None or name in only]


# --------------------------------------------------------------------------- the page

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 16px 40px; color: #222; line-height: 1.45; }
header { border-bottom: 2px solid #1f77b4; margin-bottom: 8px; }
h1 { font-size: 1.5em; margin: 16px 0 4px; }
h2 { font-size: 1.25em; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin: 20px 0 6px; }
nav a { margin-right: 12px; font-size: 0.9em; }
.headline { font-size: 1.2em;}
.note { color: #555;}
.warning { color: #8a4b00; background: #fff4e0; padding: 6px 10px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px;}
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.tile .value { font-size: 1.3em; font-weight: 600; } .tile .label { font-size: 0.85em; color: #555; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 0.85em; margin: 6px 0; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top;}
td.num { text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } .chart { width: 100%; }
footer { margin-top: 40px; font-size: 0.8em; color: #777; }
</style>
{{ head }}
</head>
<body>
<header><h1>{{ title }}</h1><p class="note">{{ subtitle }}</p>
{% if links %}{{ links }}{% else %}
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>{% endif %}</header>
{% for s in sections %}<section id="{{ s.id }}"><h2>{{ s.title }}</h2>{{ s.html }}</section>
{% endfor %}
<footer>{{ footer }}</footer>
</body>
</html>
"""


def render_page(
    sections: Sequence[Section],
    *,
    title: str,
    subtitle: str = "",
    footer: str = "",
    head: str = "",
    links: str = "",
) -> str:
    """A whole HTML page of ``sections``; ``head`` is put in ``<head>`` as is (the plotly.js script:
    inline for the report, a served file for the dashboard); ``links``, if given, replaces the header's
    links to the sections (the dashboard's pages, filters and logout)."""
    env = Environment(autoescape=True)
    page = env.from_string(_PAGE)
    shown = [Section(s.id, s.title, Markup(s.html), s.data) for s in sections]
    return page.render(
        title=title,
        subtitle=subtitle,
        footer=footer,
        sections=shown,
        head=Markup(head),
        links=Markup(links),
    )


def inline_plotly() -> str:
    """plotly.js as an inline ``<script>`` (about 4.8 MB): the report opens with no network."""
    from plotly.offline import get_plotlyjs

    return f'<script id="plotly-js" type="text/javascript">{get_plotlyjs()}</script>'


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    path: Path
    period: str
    sections: list[Section]
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        return next((s.data for s in self.sections if s.id == "summary"), {})


def write_report(
    settings: Settings, filters: Filters, out: Path, *, catalogue: Catalogue | None = None
) -> ReportResult:
    """Write the report of ``filters`` to ``out`` (one self-contained HTML file, written atomically)."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise BadInputError(f"--out {out}: expected an .html file name")
    started = time.perf_counter()
    with MeasureData(settings, catalogue=catalogue) as data:
        period = data.period(filters)
        sections = build_sections(data, filters)
        label = period.label() if period else "no data"
        scope = "".join(
            f", {k} {v}" for k, v in (("flow", filters.policy), ("channel", filters.channel)) if v
        )
        page = render_page(
            sections,
            title="winback report",
            subtitle=f"{label}{scope}; event store {settings.store_path}",
            footer="Incremental figures come from the randomised holdout; attributed ones are labelled "
            "as such. Generated by winback.",
            head=inline_plotly(),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return ReportResult(out, label, sections, time.perf_counter() - started)


def headline_lines(summary: dict[str, Any]) -> list[str]:
    """The report's headline numbers as lines for the terminal."""
    currency = summary.get("currency", "")
    if summary.get("incremental_margin") is None:
        return [
            "no incremental figures: no decisions with outcomes and a holdout in this period (see the report)"
        ]
    low, high = summary.get("ci_low"), summary.get("ci_high")
    interval = f"[{low:,.2f}, {high:,.2f}]" if low is not None and high is not None else "(no interval)"
    lines = [
        f"incremental margin {summary['incremental_margin']:+,.2f} {currency}, 95% CI {interval}, "
        f"for {summary['discount']:,.2f} {currency} of discount",
        f"attributed revenue (what a vendor would report) {summary['attributed_revenue']:,.2f} {currency}; "
        f"incremental revenue {summary.get('incremental_revenue') or 0:+,.2f} {currency}",
    ]
    if summary.get("warning"):
        lines.append(f"note: {summary['warning']}")
    return lines

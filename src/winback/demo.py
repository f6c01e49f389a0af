"""``make demo`` / ``winback demo``: the main job, end to end, on a simulated shop.

Stages so far: simulate a shop with known truth that ran winback's randomising policy with a 10%
holdout, validate and store its events and decisions (idempotently: a second run adds nothing),
summarise the store, show what the simulator knows that no real log can (what each intervention would
have done for the abandoned carts), train every model, show the products three recovery messages would
carry, compare policies, and write the report of what the decisions changed against the holdout. Last,
the live loop (winback.demo_live): the service's processes on a small shop's time-compressed event
stream, from carts abandoned to a purchase attributed to its e-mail (skipped without Redis).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from winback.config import Settings, load_settings
from winback.decide.actions import Action
from winback.demo_live import LiveOptions, run_live
from winback.errors import BadInputError
from winback.events.stats import event_stats, render_stats
from winback.events.store import EventStore
from winback.measure.simulated import simulate_with_holdout
from winback.progress import reporter
from winback.sim import ShopConfig, expected_outcomes, write_events, write_truth

#: The interventions the demo prices against the simulator's truth.
SHOWCASE = (
    "nothing",
    "reminder/email/1h",
    "reminder/email/24h",
    "reminder+recs/email/24h",
    "coupon10/email/24h",
    "coupon15/sms/1h",
)


def run_demo(
    settings: Settings,
    *,
    customers: int,
    days: int,
    seed: int,
    show: bool = True,
    live: bool = True,
    live_only: bool = False,
    live_options: LiveOptions | None = None,
) -> dict[str, Any]:
    """Run every stage; print as it goes when ``show``; return a JSON-ready summary. ``live`` adds the
    live loop (:mod:`winback.demo_live`) as the last stage, ``live_only`` runs it alone."""
    console = Console(quiet=not show, highlight=False, width=None if sys.stdout.isatty() else 110)
    if live_only:
        console.rule("[bold]winback demo: the live loop")
        started = time.perf_counter()
        alone: dict[str, Any] = {"live": run_live(settings, console, seed=seed, options=live_options)}
        alone["seconds"] = {"live": round(time.perf_counter() - started, 1)}
        return alone
    interactive = show and sys.stderr.isatty()
    demo_dir = settings.home / "demo"
    shop_file, truth_dir = demo_dir / "shop.parquet", demo_dir / "truth"
    timings: dict[str, float] = {}

    console.rule("[bold]winback demo")
    console.print(
        f"1. simulating {customers:,} customers over {days} days (seed {seed}); winback decides "
        "every abandoned\n"
        "   cart at random among the actions its customer consented to, 10% of customers held out"
    )
    started = time.perf_counter()
    with reporter(interactive) as progress:
        progress.stage("", "simulating days")
        logged = simulate_with_holdout(
            seed, ShopConfig(customers=customers, days=days), progress=progress.advance
        )
    result = logged.shop
    write_events(result.events, shop_file)
    truth = write_truth(result, truth_dir)
    timings["simulate"] = time.perf_counter() - started
    console.print(f"   {result.events.num_rows:,} events in {timings['simulate']:.1f} s -> {shop_file}")

    console.print("2. validating and storing them in the embedded event store")
    started = time.perf_counter()
    # The simulated events straight from memory, through the same validation as a file: the Parquet
    # reader loses the JSON ``properties`` (message channels, coupons) that measurement reads.
    with EventStore(settings) as store, reporter(interactive, store.con):
        report = store.append(result.events, source=str(shop_file)).as_dict()
    recorded = _log_decisions(settings, logged.decisions)
    timings["ingest"] = time.perf_counter() - started
    console.print(
        f"   {report['ingested']:,} ingested, {report['duplicates']:,} duplicates, "
        f"{report['rejected']:,} rejected in {timings['ingest']:.1f} s"
        + ("  (a rerun adds nothing: every event was already stored)" if not report["ingested"] else "")
    )
    console.print(
        f"   {len(logged.decisions):,} decisions in the decision log, {recorded:,} given their outcome "
        f"-> {settings.home / 'decisions.duckdb'}"
    )

    console.print("3. what is in the store")
    with EventStore(settings, read_only=True) as store:
        stats = event_stats(store)
    render_stats(stats, settings.store_path, console)

    console.print("4. what each action would have done for these abandoned carts (the simulator's truth)")
    actions = [Action.parse(name) for name in SHOWCASE]
    outcomes = expected_outcomes(result.carts, actions, result.config)
    per_action = outcomes.groupby("action", sort=False)[
        ["p_recover", "discount", "incremental_margin"]
    ].mean()
    table = Table(
        "action",
        "recovered",
        "discount / cart",
        "incremental margin / cart",
        title_justify="left",
        title=f"{len(result.carts):,} abandoned carts, margin {result.config.margin_rate:.0%}",
    )
    for name, row in per_action.iterrows():
        table.add_row(
            str(name),
            f"{row['p_recover']:.1%}",
            f"{row['discount']:.2f}",
            f"{row['incremental_margin']:+.3f}",
        )
    console.print(table)
    console.print(
        "   Reminders within the hour lose sales; coupons mostly pay people who would have bought anyway."
    )

    console.print(
        "5. predicting: which carts will be abandoned, who is drifting away, what each customer is worth"
    )
    started = time.perf_counter()
    horizon = demo_horizon(days)
    predictions = _predict(settings, console, horizon)
    timings["predict"] = time.perf_counter() - started

    started = time.perf_counter()
    policies = _decide(console, customers=customers, days=days, seed=seed)
    timings["decide"] = time.perf_counter() - started

    started = time.perf_counter()
    measured = _measure(settings, console)
    timings["report"] = time.perf_counter() - started

    live_summary: dict[str, Any] | None = None
    if live:
        started = time.perf_counter()
        live_summary = run_live(settings, console, seed=seed, options=live_options, number="9")
        timings["live"] = time.perf_counter() - started

    summary = {
        "home": str(settings.home),
        "store": str(settings.store_path),
        "events_file": str(shop_file),
        "truth": {k: str(v) for k, v in truth.items()},
        "ingest": {k: report[k] for k in ("ingested", "duplicates", "rejected")},
        "stats": {k: v for k, v in stats.items() if k != "by_day"},
        "actions": {
            str(name): {k: round(float(v), 4) for k, v in row.items()} for name, row in per_action.iterrows()
        },
        "predictions": predictions,
        "policies": policies,
        "report": measured,
        "live": live_summary,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    console.rule("[bold]summary")
    console.print(
        f"Simulated {customers:,} customers for {days} days: {result.events.num_rows:,} events, "
        f"{stats['carts']:,} carts ({stats['abandonment_rate']:.0%} abandoned),\n"
        f"{stats['purchases']:,} orders worth {stats['revenue']:,.0f} {'/'.join(stats['currencies'])}.\n"
        f"Results:\n"
        f"  event store      {settings.store_path}   (winback events stats --home {settings.home})\n"
        f"  simulated log    {shop_file}\n"
        f"  latent truth     {truth_dir}/ ({', '.join(path.name for path in truth.values())})\n"
        f"  models           {settings.models_dir}   (winback evaluate churn --horizon {horizon}d"
        f" --home {settings.home})\n"
        f"  scores           {', '.join(predictions['files'].values()) or 'none (too little history)'}\n"
        f"  report           {measured['out']}   (winback report --home {settings.home} --out report.html)\n"
        + "".join(f"     {line}\n" for line in measured["headline"])
        + (
            f"  live loop        {live_summary['home']}/ (state.db, logs/)\n"
            if live_summary and "home" in live_summary
            else ""
        )
        + f"Next: load your own events with `winback ingest FILE --home {settings.home}` (see README)."
    )
    return summary


def _recovery_messages(settings: Settings, carts: Any, console: Console) -> list[dict[str, Any]]:
    """The products three recovery messages would carry: for the riskiest open carts the recommender
    knows (else any three), complements and substitutes, each with its reason."""
    from winback.recommend.tasks import load_recommender

    model, _ = load_recommender(settings)
    order = list(carts["cart_id"]) if carts is not None else []
    chosen = [c for c in order if c in model.carts_][:3] or list(model.carts_)[:3]
    console.print("6. the products three recovery messages would carry (winback recommend --cart ID)")
    messages = []
    for cart_id in chosen:
        user, items = model.carts_[cart_id]
        found = model.for_cart(cart_id, k=3)
        price = "cheaper substitutes, " if model.price_sensitive(user) else ""
        console.print(f"   cart {cart_id} ({', '.join(items[:3])}; {price}customer {user}):")
        for c in found:
            console.print(f"     {c.product_id}  {c.reason}")
        if not found:
            console.print(f"     nothing: {found.reason}")
        messages.append(
            {"cart_id": cart_id, "user": user, "items": items, "products": [c._asdict() for c in found]}
        )
    return messages


#: The policies the demo compares: the static flows shops run today, the uplift policy, the oracle.
DEMO_POLICIES = ("static-10h", "static-1h-24h-72h", "coupon-everyone", "uplift", "oracle")


def _decide(console: Console, *, customers: int, days: int, seed: int) -> list[dict[str, Any]]:
    """The static flows against the uplift policy on a shop of the demo's size, judged by the
    simulator's truth on later carts than the uplift policy learned from (see docs/decide.md)."""
    from winback.decide.evaluate import simulate_policies

    console.print(
        "7. deciding: the static flows against the uplift policy, learned from a randomised decision log of\n"
        "   the first two thirds of a shop like this one, judged on its later carts by the simulator's truth"
    )
    try:
        table = simulate_policies(DEMO_POLICIES, customers=customers, days=days, seeds=(seed,))
    except BadInputError as exc:
        console.print(f"   skipped: {exc}")
        return []
    rows = [
        {str(k): (float(v) if isinstance(v, int | float) else v) for k, v in row.items()}
        for row in table[["name", "profit_per_cart", "ci_low", "ci_high", "n_test"]].to_dict("records")
    ]
    result = Table(
        "policy", "incremental profit / cart", "95% interval", title_justify="left",
        title=f"{int(rows[0]['n_test']):,} later abandoned carts" if rows else "",
    )  # fmt: skip
    for row in rows:
        interval = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        result.add_row(str(row["name"]), f"{row['profit_per_cart']:+.3f}", interval)
    console.print(result)
    by_name = {row["name"]: row["profit_per_cart"] for row in rows}
    static = max(by_name[n] for n in DEMO_POLICIES[:3])
    if static > 0 and by_name.get("oracle", 0) > 0:
        console.print(
            f"   uplift earns {by_name['uplift'] / static:.2f}x the best static flow and "
            f"{by_name['uplift'] / by_name['oracle']:.0%} of the oracle (it knows each cart's true effects)"
        )
    return rows


def _log_decisions(settings: Settings, decisions: Any) -> int:
    """The simulated shop's decisions into the home's decision log (idempotent), and their outcomes from
    the stored events as `winback outcomes` records them; how many outcomes were recorded now."""
    from winback.decide.catalogue import load_catalogue
    from winback.decide.log import DecisionLog
    from winback.decide.outcomes import record_outcomes
    from winback.features.engine import open_source

    with DecisionLog(settings) as log, open_source(settings) as source:
        log.append(decisions)
        window = settings.recovery_window_days
        return record_outcomes(log, source.events, load_catalogue(), window_days=window).recorded


def _measure(settings: Settings, console: Console) -> dict[str, Any]:
    """Write the report of the whole simulated period and print its headline."""
    from winback.measure.data import Filters
    from winback.measure.report import headline_lines, write_report

    console.print("8. measuring: what winback's decisions changed against the holdout, and the report")
    result = write_report(settings, Filters(), settings.home / "demo" / "report.html")
    headline = headline_lines(result.summary)
    for line in headline:
        console.print(f"   {line}")
    console.print(f"   report ({result.seconds:.1f} s) -> {result.path}")
    return {"out": str(result.path), "headline": headline, **result.summary}


def demo_horizon(days: int) -> int:
    """Churn and CLV horizon of a demo of ``days``: 30 days when the log leaves room to train and test
    on 30-day outcomes (the demo's 180 days do; 90-day outcomes would not), less for shorter logs."""
    return min(30, max(7, days // 5))


def _predict(settings: Settings, console: Console, horizon: int) -> dict[str, Any]:
    """Train every model on the stored history (each card holds a time-split evaluation), score, explain.

    A stage the history is too short for is skipped with its reason, as a user's command would say it.
    """
    from winback.features.engine import open_source
    from winback.features.tables import FeatureTables
    from winback.models import tasks
    from winback.models.registry import EVENT_MODELS
    from winback.models.report import render_scores, write_table

    scores_dir = settings.home / "demo" / "scores"
    files = {"carts": scores_dir / "carts.parquet", "customers": scores_dir / "customers.parquet"}
    done: dict[str, Any] = {"horizon_days": horizon, "skipped": {}, "files": {}}

    def attempt(stage: str, work: Any) -> Any:
        try:
            return work()
        except BadInputError as exc:
            done["skipped"][stage] = str(exc)
            console.print(f"   skipped {stage}: {exc}")
            return None

    with open_source(settings) as source:
        tables = FeatureTables(source, settings)
        trained = {
            name: attempt(f"{name} model", lambda name=name: tasks.train(name, tables, None, horizon))
            for name in EVENT_MODELS
        }
        # every card carries the time-split evaluation made within its training window
        abandonment = trained["abandonment"].metrics.get("time_split") if trained["abandonment"] else None
        if abandonment:
            auc = {name: row["roc_auc"] for name, row in abandonment["at the first add"].items()}
            done["abandonment_auc_first_add"] = auc
            console.print(
                f"   abandonment (split at {abandonment['as_of'][:10]}, {abandonment['test_carts']:,} test "
                f"carts): ROC-AUC at the first add {auc['LightGBM (calibrated)']:.3f}, logistic "
                f"{auc['logistic regression']:.3f}, past abandonment rate {auc['past abandonment rate']:.3f}"
            )
        churn = trained["churn"].metrics.get("time_split") if trained["churn"] else None
        if churn:
            auc = {name: row["roc_auc"] for name, row in churn["metrics"].items()}
            done["churn_auc"] = auc
            console.print(
                f"   churn within {horizon} days (split at {churn['as_of'][:10]}, "
                f"{churn['test_customers']:,} customers, {churn['churn_rate']:.0%} churned): "
                f"ROC-AUC {auc['LightGBM + P(alive)']:.3f}, "
                f"BG/NBD {auc['BG/NBD expected purchases (fewer = churn)']:.3f}, "
                f"recency {auc['recency alone']:.3f}"
            )
        for card in trained.values():
            for note in card.notes if card else []:
                console.print(f"   note ({card.name}): {note}")
        done["trained"] = [name for name, card in trained.items() if card]
        if trained["abandonment"]:
            carts = tasks.score_abandonment(tables)
            write_table(carts, files["carts"])
            done["files"]["carts"] = str(files["carts"])
            render_scores("abandonment", carts, console, top=3)
        if trained["churn"]:
            customers = tasks.score_customers(tables, None, require="churn")
            write_table(customers, files["customers"])
            done["files"]["customers"] = str(files["customers"])
            render_scores("churn", customers, console, top=3)
        warnings = tasks.early_warnings(tables)
    counts = {k: len(v) for k, v in warnings.items() if k in ("customers", "carts", "shop")}
    done["warnings"] = counts
    console.print(
        f"   early warnings: {counts.get('customers', 0):,} customers off their rhythm, "
        f"{counts.get('carts', 0):,} open carts in the cart too long, "
        f"{counts.get('shop', 0):,} abnormal shop days"
    )
    if trained["recommend"]:
        done["messages"] = _recovery_messages(settings, carts if trained["abandonment"] else None, console)
    return done


def main() -> None:
    """``python -m winback.demo``: the demo with its defaults (what ``make demo`` runs)."""
    run_demo(load_settings(), customers=20_000, days=180, seed=7)


if __name__ == "__main__":
    main()

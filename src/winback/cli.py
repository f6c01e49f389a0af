"""The ``winback`` command. Exit codes: 0 success, 2 bad input or usage, 1 anything else."""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from winback.config import Settings, load_settings
from winback.errors import BadInputError, WinbackError
from winback.events.adapters import ADAPTERS, AdapterOptions
from winback.events.ingest import ingest_files
from winback.events.normalize import TIMESTAMP_FORMATS
from winback.events.stats import event_stats, render_stats
from winback.events.store import EventStore
from winback.models.registry import EVENT_MODELS, MODEL_NAMES
from winback.progress import reporter, wanted

app = typer.Typer(
    name="winback",
    help="winback: win back online shoppers. Events in, abandonment and churn out, incremental margin.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
events_app = typer.Typer(help="Look at the event store.", no_args_is_help=True)
app.add_typer(events_app, name="events")

out = Console(width=None if sys.stdout.isatty() else 110)
err = Console(stderr=True, soft_wrap=True)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", envvar="WINBACK_HOME", help="Where winback keeps its state [default: ./.winback]."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]


def _settings(home: Path | None) -> Settings:
    try:
        return load_settings(home=home)
    except ValueError as exc:
        raise BadInputError(f"invalid configuration: {exc}") from exc


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            key, sep, target = part.partition("=")
            if not sep or not key.strip() or not target.strip():
                raise BadInputError(
                    f"{option} {value!r}: expected NAME=VALUE pairs, e.g. {option} pv=view,buy=purchase"
                )
            pairs[key.strip()] = target.strip()
    return pairs


def _mapping_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"--mapping {path}: {exc}") from exc
    allowed = {"columns", "event_types", "event_type", "timestamp_format", "timezone", "header", "delimiter"}
    unknown = set(data) - allowed
    if unknown:
        raise BadInputError(
            f"--mapping {path}: unknown keys {sorted(unknown)}; expected some of {sorted(allowed)}"
        )
    return data


@app.command(
    epilog="Examples:\n\n"
    "  winback ingest ../shared/data/rees46_2019-Oct_first1000rows.csv\n\n"
    "  winback ingest log.tsv --map user_id=visitorid --map timestamp=event_time "
    "--event-types pv=view,cart=add_to_cart,buy=purchase\n\n"
    "  winback ingest CDNOW_master.txt --format whitespace --event-type purchase --map user_id=customer_id "
    "--map timestamp=date --map quantity=number_of_cds --map value=dollar_value "
    "--identical-rows distinct --json",
)
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Event files (CSV, TSV, text, Parquet, JSON Lines).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"Source format: {', '.join(ADAPTERS)} [default: detect]")
    ] = None,
    mapping: Annotated[
        list[str] | None, typer.Option("--map", help="FIELD=COLUMN (a name or 1-based position); repeatable.")
    ] = None,
    mapping_file: Annotated[
        Path | None, typer.Option("--mapping", help="TOML file with [columns], [event_types] and options.")
    ] = None,
    event_types: Annotated[
        list[str] | None,
        typer.Option("--event-types", help="Source event names: pv=view,buy=purchase,x=ignore"),
    ] = None,
    event_type: Annotated[
        str | None, typer.Option("--event-type", help="One event type for every row (a transaction log).")
    ] = None,
    timestamp_format: Annotated[str, typer.Option(help=f"One of {', '.join(TIMESTAMP_FORMATS)}.")] = "auto",
    timezone: Annotated[str, typer.Option(help="Time zone of timestamps written without an offset.")] = "UTC",
    header: Annotated[
        bool | None, typer.Option("--header/--no-header", help="Whether the first line names the columns.")
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Column separator of a CSV [default: sniffed].")
    ] = None,
    identical_rows: Annotated[
        str,
        typer.Option(
            help="Identical rows of one file are one event logged twice ('duplicate') or 'distinct'."
        ),
    ] = "duplicate",
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Store good rows; write bad ones with reasons to a file.")
    ] = False,
    rejects_dir: Annotated[
        Path | None, typer.Option(help="Where --skip-bad-rows writes rejected rows [default: HOME/rejects].")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Load event files into the store: validated, de-duplicated, all or nothing.

    Reloading a file adds nothing (its events count as duplicates). A file with bad rows is rejected
    whole with every bad row named, unless --skip-bad-rows.
    """
    settings = _settings(home)
    options = AdapterOptions(
        timestamp_format=timestamp_format,
        timezone=timezone,
        header=header,
        delimiter=delimiter,
        event_type=event_type,
    )
    if mapping_file:
        spec = _mapping_file(mapping_file)
        options.columns.update({str(k): str(v) for k, v in spec.get("columns", {}).items()})
        options.event_type_map.update({str(k): str(v) for k, v in spec.get("event_types", {}).items()})
        for key in ("event_type", "timestamp_format", "timezone", "header", "delimiter"):
            if key in spec:
                setattr(options, key, spec[key])
    options.columns.update(_pairs(mapping or [], "--map"))
    options.event_type_map.update(_pairs(event_types or [], "--event-types"))
    if identical_rows not in ("duplicate", "distinct"):
        raise BadInputError(f"--identical-rows {identical_rows}: expected 'duplicate' or 'distinct'")
    options.identical_rows_distinct = identical_rows == "distinct"
    with EventStore(settings) as store, reporter(wanted(json_output), store.con) as progress:
        report = ingest_files(
            store,
            paths,
            fmt=fmt,
            options=options,
            skip_bad_rows=skip_bad_rows,
            rejects_dir=rejects_dir,
            on_stage=progress.stage,
        )
    result = report.as_dict()
    if json_output:
        _print_json(result)
        return
    for f in result["files"]:
        line = (
            f"{f['source']} ({f['format']}): {f['ingested']:,} ingested, {f['duplicates']:,} duplicates, "
            f"{f['rejected']:,} rejected"
        )
        if f["ignored"]:
            line += f", {f['ignored']:,} ignored"
        print(line)
        if f["rejects_path"]:
            print(f"  rejected rows and their reasons: {f['rejects_path']}")
    print(f"store: {settings.store_path}")


@events_app.command(
    "stats",
    epilog="Examples:\n\n  winback events stats\n\n  winback events stats --json | jq .by_type",
)
def events_stats(home: HomeOption = None, json_output: JsonOption = False) -> None:
    """Summarise the store: events by type and day, users, sessions, carts, purchases, revenue."""
    settings = _settings(home)
    with EventStore(settings, read_only=True) as store:
        stats = event_stats(store)
    if json_output:
        _print_json(stats)
        return
    render_stats(stats, settings.store_path, out)


@app.command(
    epilog="Examples:\n\n"
    "  winback simulate --customers 5000 --days 180 --seed 7 --out shop.parquet --truth truth/\n\n"
    "  winback simulate --customers 500 --days 60 --out shop.csv --json",
)
def simulate(
    out_path: Annotated[Path, typer.Option("--out", help="Event log to write: .parquet or .csv.")],
    customers: Annotated[int, typer.Option(min=1, help="Customers in the shop.")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Days of behaviour to simulate.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same shop.")] = 0,
    start: Annotated[str, typer.Option(help="First simulated day (YYYY-MM-DD).")] = "2024-01-01",
    truth: Annotated[
        Path | None,
        typer.Option(help="Directory for the latent truth: customers, carts and cart_sessions (.parquet)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Simulate a shop: months of views, carts, abandonment, purchases and returns, with known truth.

    Customers have latent price sensitivity, forgetfulness, loyalty, channel consent, time zone and a
    lifetime that ends. About 70% of carts are abandoned and 10-20% of those come back on their own.
    The Python API (winback.sim) also says what each customer would do under every intervention.
    """
    from datetime import date

    from winback.sim import ShopConfig, write_events, write_truth
    from winback.sim import simulate as run_simulation
    from winback.sim.output import check_events_path

    try:
        first_day = date.fromisoformat(start)
    except ValueError as exc:
        raise BadInputError(f"--start {start}: expected a date as YYYY-MM-DD") from exc
    check_events_path(out_path)
    config = ShopConfig(customers=customers, days=days, start=first_day)
    with reporter(wanted(json_output)) as progress:
        progress.stage("", "simulating days")
        result = run_simulation(seed=seed, config=config, progress=progress.advance)
        progress.stage(str(out_path), "writing")
        write_events(result.events, out_path)
        truth_paths = write_truth(result, truth) if truth else {}
    summary = simulation_summary(result)
    summary["out"] = str(out_path)
    summary["truth"] = {k: str(v) for k, v in truth_paths.items()}
    if json_output:
        _print_json(summary)
        return
    print(
        f"simulated {customers:,} customers over {days} days (seed {seed}): {summary['events']:,} events, "
        f"{summary['carts_abandoned']:,} abandoned carts, {summary['natural_recovery_rate']:.1%} recovered "
        "with no action"
    )
    print(f"events: {out_path}")
    for name, path in truth_paths.items():
        print(f"truth ({name}): {path}")


def simulation_summary(result: Any) -> dict[str, Any]:
    """Headline numbers of a simulation (``winback.sim.SimulationResult``)."""
    carts = result.carts
    counts = result.events.group_by("event_type").aggregate([("event_type", "count")]).to_pylist()
    return {
        "events": result.events.num_rows,
        "customers": len(result.customers),
        "by_type": {r["event_type"]: r["event_type_count"] for r in counts},
        "carts_abandoned": len(carts),
        "natural_recovery_rate": round(float(carts["recovered"].mean()), 4) if len(carts) else None,
        "customers_alive_at_end": int(result.customers["alive_at_end"].sum()),
    }


@app.command(
    epilog="Examples:\n\n  winback demo\n\n"
    "  winback demo --customers 20000 --days 365 --home /tmp/winback-demo\n\n"
    "  winback demo --live-only",
)
def demo(
    customers: Annotated[int, typer.Option(min=1, help="Customers in the simulated shop.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days of behaviour.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    live: Annotated[
        bool,
        typer.Option(
            "--live/--no-live",
            help="End with the live loop: winback serve, consume, detect and worker on a small shop's "
            "event stream (needs Redis at WINBACK_REDIS_URL; skipped with a message without it).",
        ),
    ] = True,
    live_only: Annotated[
        bool, typer.Option("--live-only", help="Run the live loop alone (about a minute).")
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run the main job end to end on a simulated shop and summarise what it did and where it is; then
    the live loop of the service on a small shop's event stream."""
    from winback.demo import run_demo

    summary = run_demo(
        _settings(home), customers=customers, days=days, seed=seed, show=not json_output,
        live=live or live_only, live_only=live_only,
    )  # fmt: skip
    if json_output:
        _print_json(summary)


# -- models ------------------------------------------------------------------------------------------

EngineOption = Annotated[
    str, typer.Option("--engine", help="Where features are computed: duckdb (the store) or spark.")
]
CatalogueOption = Annotated[
    Path | None, typer.Option("--catalogue", help="Action catalogue (TOML); default: the packaged one.")
]
AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="Moment of the time split or the scores (ISO date or date-time, UTC)."),
]
HorizonOption = Annotated[
    str | None, typer.Option("--horizon", help="Churn/CLV horizon, e.g. 90d or 12w [default: 90d].")
]


@contextmanager
def _feature_tables(settings: Settings, engine: str) -> Iterator[Any]:
    from winback.features.engine import open_source
    from winback.features.tables import FeatureTables

    with open_source(settings, engine) as source:
        yield FeatureTables(source, settings)


def _as_of(value: str | None) -> Any:
    from winback.features.tables import parse_time

    return parse_time(value) if value else None


def _horizon(value: str | None, settings: Settings) -> int:
    from winback.features.tables import parse_horizon

    return parse_horizon(value) if value else settings.churn_horizon_days


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise BadInputError(f"{what} {value!r}: expected one of {', '.join(allowed)}")
    return value


@app.command(
    epilog="Examples:\n\n  winback train all\n\n  winback train abandonment --as-of 2024-05-01\n\n"
    "  winback train churn --horizon 30d --engine spark --json",
)
def train(
    model: Annotated[
        str,
        typer.Argument(
            help="abandonment, churn, clv, segments, recommend, policy (from the decision log) or all "
            "(those from the event log)."
        ),
    ],
    as_of: AsOfOption = None,
    horizon: HorizonOption = None,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Train a model on the history before --as-of (default: all of it) and save it with its card.

    Cards (version, training window, features, metrics, library versions) are in HOME/models/NAME/.
    """
    from winback.models import tasks

    names = EVENT_MODELS if model == "all" else (_choice(model, (*MODEL_NAMES, "all"), "model"),)
    settings = _settings(home)
    days = _horizon(horizon, settings)
    cards: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}  # with `all`, a model the history is too short for does not stop the rest
    with _feature_tables(settings, engine) as tables, reporter(wanted(json_output)) as progress:
        moment = _as_of(as_of)
        for name in names:
            progress.stage(name, "training")
            try:
                card = tasks.train(name, tables, moment, days)
            except BadInputError as exc:
                if model != "all":
                    raise
                skipped[name] = str(exc)
                continue
            cards.append(card.as_dict())
    if not cards:
        raise BadInputError("no model could be trained", [f"{k}: {v}" for k, v in skipped.items()])
    if json_output:
        _print_json({"trained": cards, "skipped": skipped} if model == "all" else cards[0])
        return
    for name, reason in skipped.items():
        print(f"{name}: not trained: {reason}")
    for done in cards:
        line = f"{done['name']}: version {done['version']}, trained on {done['train_window'][0][:10]} .. "
        print(line + f"{done['as_of'][:19]} ({done['engine']}) -> {settings.models_dir / done['name']}")
        for note in done["notes"]:
            print(f"  note: {note}")


@app.command(
    epilog="Examples:\n\n  winback evaluate abandonment\n\n"
    "  winback evaluate churn --as-of 2024-04-01 --horizon 30d\n\n  winback evaluate clv --json",
)
def evaluate(
    model: Annotated[str, typer.Argument(help="abandonment, churn, clv or recommend.")],
    as_of: AsOfOption = None,
    horizon: HorizonOption = None,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Evaluate a model on a time split: fit before --as-of, test after it, baselines beside it.

    Default --as-of: 80% into the data (abandonment), or the horizon before its end (churn, CLV).
    """
    from winback.models import tasks
    from winback.models.report import render_evaluation
    from winback.recommend.tasks import evaluate_recommend, render_recommend_evaluation

    _choice(model, ("abandonment", "churn", "clv", "recommend"), "model")
    settings = _settings(home)
    with _feature_tables(settings, engine) as tables, reporter(wanted(json_output)) as progress:
        progress.stage(model, "evaluating")
        moment = _as_of(as_of)
        if model == "abandonment":
            result = tasks.evaluate_abandonment(tables, moment)
        elif model == "churn":
            result = tasks.evaluate_churn(tables, moment, _horizon(horizon, settings))
        elif model == "recommend":
            result = evaluate_recommend(tables, moment)
        else:
            result = tasks.evaluate_clv(tables, moment, _horizon(horizon, settings))
    if json_output:
        _print_json(result)
        return
    if model == "recommend":
        render_recommend_evaluation(result)
        return
    render_evaluation(result, out)


@app.command(
    epilog="Examples:\n\n  winback score abandonment --out carts.csv\n\n"
    "  winback score churn --as-of 2024-06-01 --out customers.parquet --json",
)
def score(
    model: Annotated[str, typer.Argument(help="abandonment, churn, clv or segments.")],
    out_path: Annotated[Path, typer.Option("--out", help="Scores to write: .parquet or .csv.")],
    as_of: AsOfOption = None,
    top: Annotated[int, typer.Option(min=0, help="Rows to show on the terminal.")] = 5,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Score carts or customers with the trained model, one row each, with reasons.

    abandonment: carts not bought by --as-of and active in the 24 h before it (cart_id, user_id,
    abandon_probability, reasons, ...); churn, clv, segments: customers who have bought (user_id,
    churn_probability, p_alive, expected_purchases, expected_value, clv, segment, reasons, ...).
    """
    from winback.models import tasks
    from winback.models.report import render_scores, write_table

    _choice(model, ("abandonment", "churn", "clv", "segments"), "model")
    write_table(None, out_path)  # refuse a bad file name before the work
    settings = _settings(home)
    with _feature_tables(settings, engine) as tables, reporter(wanted(json_output)) as progress:
        progress.stage(model, "scoring")
        moment = _as_of(as_of)
        if model == "abandonment":
            scores = tasks.score_abandonment(tables, moment)
        else:
            scores = tasks.score_customers(tables, moment, require=model)
    write_table(scores, out_path)
    if json_output:
        _print_json(
            {"rows": len(scores), "out": str(out_path), "top": scores.head(top).to_dict(orient="records")}
        )
        return
    render_scores(model, scores, out, top=top)
    print(f"{len(scores):,} rows -> {out_path}")


@app.command(
    "warnings",
    epilog="Examples:\n\n  winback warnings\n\n  winback warnings --as-of 2024-05-01 --json",
)
def warnings_command(
    as_of: AsOfOption = None,
    recent_days: Annotated[int, typer.Option(min=1, help="Shop anomalies of the last N days.")] = 14,
    top: Annotated[int, typer.Option(min=0, help="Rows to show of each kind.")] = 10,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Early warnings: customers off their own purchase rhythm or suddenly quiet, open carts in the cart
    longer than carts of their kind that were bought, and shop days far off their weekday norm.

    Every threshold is learned from the history before --as-of; nothing needs training first.
    """
    from winback.models import tasks

    settings = _settings(home)
    with _feature_tables(settings, engine) as tables, reporter(wanted(json_output)) as progress:
        progress.stage("", "learning thresholds")
        found = tasks.early_warnings(tables, _as_of(as_of), recent_days=recent_days)
    if json_output:
        shown = {k: v if k == "cart_thresholds" else v.head(top) for k, v in found.items()}
        counts = {k: len(v) for k, v in found.items()}
        _print_json({k: v.to_dict(orient="records") for k, v in shown.items()} | {"counts": counts})
        return
    titles = {
        "customers": "customers off their rhythm",
        "carts": "carts in the cart too long",
        "shop": "shop days",
    }
    column = {"customers": "warning", "carts": "warning", "shop": "phrase"}
    for kind, title in titles.items():
        if kind not in found:
            continue
        frame = found[kind]
        print(f"{title}: {len(frame):,}")
        for _, row in frame.head(top).iterrows():
            who = row.get("user_key", row.get("day", ""))
            print(f"  {who}: {row[column[kind]]}")
    for note in found["notes"].note:
        print(f"not computed: {note}")


KOption = Annotated[int, typer.Option("--k", min=1, max=1000, help="Products per list (1 to 1000).")]


@app.command(
    epilog="Examples:\n\n  winback recommend --user u00042\n\n  winback recommend --cart u00042#3 --k 5\n\n"
    "  winback recommend --product p00017 --json\n\n  winback recommend --all-users --out recs.csv",
)
def recommend(
    user: Annotated[str | None, typer.Option("--user", help="A customer: what they may buy next.")] = None,
    cart: Annotated[
        str | None, typer.Option("--cart", help="An open cart (its id): complements, substitutes.")
    ] = None,
    product: Annotated[str | None, typer.Option("--product", help="A product: similar products.")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="Every known customer, to --out.")] = False,
    k: KOption = 10,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="With --all-users: .parquet or .csv.")
    ] = None,
    cheaper: Annotated[
        bool, typer.Option("--cheaper", help="Only cheaper substitutes or similar products.")
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Products for a customer, a cart or a product, each with its reason, from the trained recommender
    (`winback train recommend`). Unknown ids get an empty list and the reason (cold start)."""
    import pandas as pd

    from winback.models.report import write_table
    from winback.recommend.tasks import load_recommender, recommendations_table

    asked = [name for name, value in (("--user", user), ("--cart", cart), ("--product", product)) if value]
    if all_users:
        asked.append("--all-users")
    if len(asked) != 1:
        raise BadInputError(
            f"give exactly one of --user, --cart, --product or --all-users (got {', '.join(asked) or 'none'})"
        )
    if all_users and out_path is None:
        raise BadInputError("--all-users writes one row per customer and rank: give --out FILE")
    if out_path is not None:
        write_table(None, out_path)  # refuse a bad file name before the work
    model, card = load_recommender(_settings(home))
    if all_users:
        assert out_path is not None
        with reporter(wanted(json_output)) as progress:
            progress.stage("recommend", f"{len(model.histories_):,} customers")
            table = model.recommend_all(k)
        write_table(table, out_path)
        summary = {"rows": len(table), "customers": int(table["user_key"].nunique()), "out": str(out_path)}
        if json_output:
            _print_json(summary | {"model_version": card.version})
        else:
            print(f"{summary['rows']:,} rows for {summary['customers']:,} customers -> {out_path}")
        return
    if user:
        key, value, found = "user", user, model.for_user(user, k)
    elif cart:
        key, value, found = "cart", cart, model.for_cart(cart, k, cheaper=True if cheaper else None)
    else:
        key, value, found = "product", str(product), model.similar(str(product), k, cheaper=cheaper)
    rows = recommendations_table(found, key, value)
    if out_path is not None:
        write_table(pd.DataFrame(rows, columns=[key, "rank", "product_id", "score", "reason"]), out_path)
    if json_output:
        _print_json(
            {
                key: value,
                "k": k,
                "recommendations": rows,
                "reason": found.reason,
                "model_version": card.version,
            }
        )
        return
    if not rows:
        print(f"no recommendations for {key} {value}: {found.reason}")
        return
    for row in rows:
        print(f"{row['rank']:>3}. {row['product_id']}  {row['reason']}")


clv_app = typer.Typer(help="Customer lifetime value (BG/NBD + Gamma-Gamma).", no_args_is_help=True)
app.add_typer(clv_app, name="clv")


@clv_app.command(
    "fit",
    epilog="Examples:\n\n  winback clv fit --calibration-end 1997-09-30 --time-unit week --json",
)
def clv_fit(
    calibration_end: Annotated[str, typer.Option(help="Last day of the calibration period.")],
    time_unit: Annotated[str, typer.Option(help="week or day.")] = "week",
    observation_end: Annotated[
        str | None, typer.Option(help="End of the holdout period [default: the last event].")
    ] = None,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Fit BG/NBD and Gamma-Gamma on the purchases up to --calibration-end; print the parameters and
    the forecast of repeat purchases after it against the actual number."""
    from winback.features.tables import parse_time
    from winback.models import tasks

    _choice(time_unit, ("week", "day"), "--time-unit")
    settings = _settings(home)
    with _feature_tables(settings, engine) as tables:
        result = tasks.clv_fit(
            tables,
            parse_time(calibration_end, "--calibration-end"),
            time_unit=time_unit,
            observation_end=parse_time(observation_end, "--observation-end") if observation_end else None,
        )
    if json_output:
        _print_json(result)
        return
    bg, gg, hold = result["bgnbd"], result["gamma_gamma"], result["holdout"]
    print(
        f"{result['customers']:,} customers ({result['repeat_buyers']:,} repeat buyers), calibration to "
        f"{result['calibration_end']}, time unit {time_unit}"
    )
    print(
        f"BG/NBD       r = {bg['r']:.4f}, alpha = {bg['alpha']:.4f}, a = {bg['a']:.4f}, b = {bg['b']:.4f}"
        f"  (log-likelihood {bg['log_likelihood']:,.1f})"
    )
    print(f"Gamma-Gamma  p = {gg['p']:.4f}, q = {gg['q']:.4f}, gamma = {gg['gamma']:.4f}")
    print(
        f"holdout ({hold['length']:g} {time_unit}s to {result['observation_end']}): "
        f"{hold['forecast_repeat_purchases']:,.1f} repeat purchases forecast, "
        f"{hold['actual_repeat_purchases']:,.0f} actual"
    )


# -- decide ------------------------------------------------------------------------------------------

SIMULATED_POLICIES = (
    "static-10h", "static-1h-24h-72h", "coupon-everyone", "uplift", "bandit", "fitted-q", "oracle",
)  # fmt: skip


@app.command(
    epilog="Examples:\n\n  winback plan --consent consent.csv --out plan.csv\n\n"
    "  winback plan --policy coupon-everyone --budget 500 --consent consent.parquet --out plan.parquet\n\n"
    "  winback plan --policy random --consent consent.csv --holdout 0.1 --out plan.csv --json\n\n"
    "Consent file (CSV or Parquet): user_id, and email / sms / push (true or false), optionally "
    "utc_offset_minutes (e.g. 120 for UTC+2).",
)
def plan(
    out_path: Annotated[Path, typer.Option("--out", help="Plan to write: .parquet or .csv, one row each.")],
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="static-10h, static-1h-24h-72h, coupon-everyone (or another flow of the catalogue), "
            "random (randomised, exact propensities) or uplift.",
        ),
    ] = "static-10h",
    budget: Annotated[
        float | None,
        typer.Option(
            help="Discount this plan may give (coupon face value); 0: no coupons (default: no limit)."
        ),
    ] = None,
    catalogue_path: CatalogueOption = None,
    consent_path: Annotated[
        Path | None,
        typer.Option(
            "--consent",
            help="CSV/Parquet: user_id, email, sms, push, optional utc_offset_minutes; "
            "without it: no messages.",
        ),
    ] = None,
    holdout: Annotated[
        float, typer.Option(help="Share of customers held out as control (never messaged).")
    ] = 0.10,
    at_risk: Annotated[
        float,
        typer.Option(
            "--at-risk", help="Share of customers most at stake (churn severity) to plan for; 0: none."
        ),
    ] = 0.10,
    as_of: AsOfOption = None,
    top: Annotated[int, typer.Option(min=0, help="Rows to show on the terminal.")] = 5,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Decide for every abandoned cart (and the customers most at risk): action, channel, send time,
    coupon, recommended products, propensity and reasons; holdout customers are listed as control.

    Every decision passes the guardrails (consent, frequency caps, quiet hours, the largest coupon, the
    budget) and is logged in HOME/decisions.duckdb; planning the same moment again adds nothing. Needs
    a trained abandonment model (`winback train abandonment`); at-risk customers need churn, '+recs'
    messages the recommender.
    """
    from winback.models.report import write_table

    write_table(None, out_path)  # refuse bad options before the work (and before the heavier imports)
    if budget is not None and not budget >= 0:
        raise BadInputError(f"--budget {budget:g}: expected an amount of 0 or more (0: no coupons)")
    from winback.decide.catalogue import load_catalogue
    from winback.decide.holdout import in_holdout

    in_holdout([], holdout)
    catalogue = load_catalogue(catalogue_path)
    from winback.decide.plan import load_chooser, load_consent, run_plan

    settings = _settings(home)
    load_chooser(settings, policy, catalogue)  # an unknown policy, or uplift without a model, before the work
    consent = load_consent(consent_path) if consent_path else None
    with _feature_tables(settings, engine) as tables, reporter(wanted(json_output)) as progress:
        result = run_plan(
            settings, tables, policy=policy, catalogue=catalogue, budget=budget, consent=consent,
            as_of=_as_of(as_of), holdout_share=holdout, at_risk_share=at_risk, on_stage=progress.stage,
        )  # fmt: skip
    table = result.plan.table
    write_table(table, out_path)
    summary = result.summary() | {"out": str(out_path)}
    if json_output:
        shown = table.head(top).assign(send_at=table["send_at"].head(top).map(lambda v: _iso(v) or None))
        _print_json(summary | {"top": shown.astype(object).where(shown.notna(), None).to_dict("records")})
        return
    print(
        f"plan as of {summary['as_of']}, policy {result.policy} (version {result.version}): "
        f"{result.carts:,} abandoned carts, {result.customers:,} at-risk customers"
    )
    for action, count in summary["actions"].items():
        print(f"  {action:<28} {count:>7,}")
    print(
        f"  holdout (control, nothing): {summary['holdout']:,}; coupons: {summary['coupons']:,} "
        f"(face value {summary['discount_reserved']:,.2f}"
        + (f" of a {budget:,.2f} budget)" if budget is not None else ", no budget)")
    )
    if top and len(table):
        from rich.table import Table

        grid = Table(title="first decisions", show_lines=False)
        for column in ("cart", "customer", "action", "send at", "recommended", "why"):
            grid.add_column(column, overflow="fold")
        for _, row in table.head(top).iterrows():
            grid.add_row(
                str(row["cart_id"] or "-"), str(row["user_id"]), str(row["action"]),
                _iso(row["send_at"])[:16] or "-", str(row["recommended"] or "-"), str(row["reasons"]),
            )  # fmt: skip
        out.print(grid)
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"{summary['logged']:,} new decisions logged -> {summary['log']}")
    print(f"{len(table):,} rows -> {out_path}")


@app.command(
    epilog="Examples:\n\n  winback outcomes\n\n  winback outcomes --window-days 3 --json",
)
def outcomes(
    window_days: Annotated[
        float | None,
        typer.Option(
            "--window-days",
            help="Days after a decision in which an order counts (default: WINBACK_RECOVERY_WINDOW_DAYS, 7).",
        ),
    ] = None,
    catalogue_path: CatalogueOption = None,
    engine: EngineOption = "duckdb",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Record what each logged decision led to, once its attribution window has closed: the customer's
    first order within --window-days (recovered, revenue, the coupon's discount if the order used one,
    margin). Holdout decisions get theirs too: they are the comparison. Decisions still in their window
    wait for a later run; those already recorded are left as they are.
    """
    from winback.decide.catalogue import load_catalogue
    from winback.decide.log import DecisionLog
    from winback.decide.outcomes import record_outcomes

    catalogue = load_catalogue(catalogue_path)
    settings = _settings(home)
    days = float(settings.recovery_window_days) if window_days is None else window_days
    with _feature_tables(settings, engine) as tables, DecisionLog(settings) as log:
        report = record_outcomes(log, tables.source.events, catalogue, window_days=days)
        path = log.path
    if json_output:
        _print_json(report.__dict__ | {"log": str(path)})
        return
    print(
        f"{report.recorded:,} decisions given their outcome ({report.recovered:,} followed by an order "
        f"within {days:g} days; revenue {report.revenue:,.2f}, discount {report.discount:,.2f}); "
        f"{report.waiting:,} still inside their window -> {path}"
    )


@app.command(
    epilog="Examples:\n\n  winback report --out report.html\n\n"
    "  winback report --since 2024-05-01 --until 2024-06-01 --out may.html --json",
)
def report(
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write (self-contained).")] = Path(
        "report.html"
    ),
    since: Annotated[
        str | None, typer.Option("--since", help="Start of the period (default: the first event).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="End of the period (default: the last event).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--flow", help="Only the decisions of this flow (policy).")
    ] = None,
    channel: Annotated[
        str | None, typer.Option("--channel", help="Only the decisions on email, sms or push.")
    ] = None,
    catalogue_path: CatalogueOption = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write the report: what winback's decisions changed against the holdout (with 95% intervals, beside
    the attributed numbers), KPIs, policies, segments, at-risk customers, model health and demand signals,
    as one HTML file that opens with no network. Missing data is said in words where its chart would be.
    """
    from winback.decide.catalogue import load_catalogue
    from winback.measure.data import Filters
    from winback.measure.report import headline_lines, write_report

    filters = Filters.parse(since, until, policy, channel)
    catalogue = load_catalogue(catalogue_path)
    settings = _settings(home)
    result = write_report(settings, filters, out, catalogue=catalogue)
    summary = result.summary
    if json_output:
        _print_json({"out": str(result.path), "seconds": round(result.seconds, 1), **summary})
        return
    print(f"report of {result.period} -> {result.path} ({result.seconds:.1f} s)")
    for line in headline_lines(summary):
        print(f"  {line}")


@app.command(
    epilog="Examples:\n\n  winback retrain abandonment\n\n  winback retrain all --json",
)
def retrain(
    model: Annotated[str, typer.Argument(help="abandonment, churn, or all (both).")],
    holdout_days: Annotated[
        int, typer.Option("--holdout-days", help="Days of carts at the end held out to compare on.")
    ] = 14,
    horizon: HorizonOption = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Retrain on fresh data, keeping the deployed model if the new one is worse on the same holdout (the
    last --holdout-days of carts; the churn horizon for churn). A model trained after the holdout starts
    cannot be compared fairly and is left as it is, with the reason.
    """
    from winback.models.retrain import RETRAINABLE
    from winback.models.retrain import retrain as run_retrain

    if holdout_days < 1:
        raise BadInputError(f"--holdout-days {holdout_days}: expected at least 1 day")
    names = RETRAINABLE if model == "all" else (_choice(model, (*RETRAINABLE, "all"), "model"),)
    settings = _settings(home)
    days = _horizon(horizon, settings) if horizon else None
    results = []
    with _feature_tables(settings, "duckdb") as tables:
        for name in names:
            results.append(run_retrain(name, tables, holdout_days=holdout_days, horizon_days=days).as_dict())
    if json_output:
        _print_json(results if model == "all" else results[0])
        return
    for r in results:
        verdict = f"replaced by {r['version']}" if r["replaced"] else "kept (the new one is worse)"
        print(
            f"{r['name']}: on {r['holdout']}: deployed {r['deployed_version']} ROC-AUC "
            f"{r['deployed_auc']:.3f}, "
            f"retrained {r['candidate_auc']:.3f}: {verdict}"
        )


def _iso(value: Any) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def _seeds(values: list[str]) -> list[int]:
    seeds: list[int] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    seeds.append(int(part))
                except ValueError:
                    raise BadInputError(f"--seeds {value!r}: expected integers, e.g. --seeds 0,1,2") from None
    return seeds


policies_app = typer.Typer(help="Compare policies: off the decision log, or against the simulator.")
app.add_typer(policies_app, name="policies")


@policies_app.command(
    "evaluate",
    epilog="Examples:\n\n  winback policies evaluate\n\n  winback policies evaluate --estimator dr --json\n\n"
    "  winback policies evaluate --simulate\n\n"
    "  winback policies evaluate --simulate --customers 5000 --days 120 --seeds 0,1 --json",
)
def policies_evaluate(
    simulate_truth: Annotated[
        bool, typer.Option("--simulate", help="Score against simulated shops' truth instead of the log.")
    ] = False,
    customers: Annotated[int, typer.Option(min=1, help="--simulate: customers per shop.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="--simulate: days per shop.")] = 180,
    seeds: Annotated[
        list[str] | None, typer.Option("--seeds", help="--simulate: one shop per seed, e.g. 0,1,2.")
    ] = None,
    policy_names: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="--simulate: policies to score (repeatable); default: static-10h, static-1h-24h-72h, "
            "coupon-everyone, uplift, oracle.",
        ),
    ] = None,
    estimators: Annotated[
        list[str] | None,
        typer.Option(
            "--estimator",
            help="From the log: ips, snips, dr, direct (repeatable); default: ips, snips, dr.",
        ),
    ] = None,
    catalogue_path: CatalogueOption = None,
    n_boot: Annotated[int, typer.Option(min=1, help="Bootstrap resamples of the intervals.")] = 500,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Incremental profit per cart of each policy, with 95% intervals.

    From the decision log (HOME/decisions.duckdb): the static flows and doing nothing off-policy (IPS,
    SNIPS, DR) and the logged policy itself, from the decisions whose outcomes are recorded. With
    --simulate: the truth on simulated shops, learned policies trained on an earlier randomised period
    and scored on later carts, with the off-policy estimate beside it (ope_estimate).
    """
    import math

    from winback.decide.catalogue import load_catalogue

    catalogue = load_catalogue(catalogue_path)
    settings = _settings(home)
    if simulate_truth:
        from winback.decide.evaluate import POLICIES, simulate_policies

        chosen = [_choice(p, POLICIES, "--policy") for p in (policy_names or SIMULATED_POLICIES)]
        seed_list = _seeds(seeds) if seeds else [0, 1, 2]
        if not seed_list:
            raise BadInputError("--seeds: expected at least one seed")
        with reporter(wanted(json_output)) as progress:
            progress.stage("", f"simulating {len(seed_list)} shops")
            table = simulate_policies(
                chosen, customers, days, seed_list, catalogue=catalogue, threads=settings.threads or 1,
                n_boot=n_boot, progress=lambda line: progress.stage("", line),
            )  # fmt: skip
        rows = [
            {
                "name": r["name"],
                "profit_per_cart": r["profit_per_cart"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "ope_estimate": None if math.isnan(r["ope_estimate"]) else r["ope_estimate"],
                "margin_per_cart": r["margin_per_cart"],
                "coupon_share": r["coupon_share"],
                "seeds": int(r["seeds"]),
                "n_test": int(r["n_test"]),
            }
            for r in table.to_dict("records")
        ]
        if json_output:
            _print_json(rows)
            return
        print(
            f"true incremental profit per abandoned cart, {len(seed_list)} simulated shops of {customers:,} "
            f"customers x {days} days (seeds {', '.join(map(str, seed_list))}), {rows[0]['n_test']:,} "
            "test carts each"
        )
        _render_policies(rows, "ope_estimate", "off-policy")
        print(
            "   static-1h-24h-72h is scored as its whole 3-step flow; fitted-q plans multi-step flows, the "
            "bandit learns online over the test carts"
        )
        print(
            "   the learned policies see only the event log and a randomised decision log of an earlier "
            "period, never the simulator's truth"
        )
        return
    from winback.decide.log import DecisionLog
    from winback.decide.plan import evaluate_log

    with DecisionLog(settings, read_only=True) as log:
        decisions = log.read()
        path = log.path
    found, notes = evaluate_log(
        decisions, catalogue, estimators=estimators or ("ips", "snips", "dr"), n_boot=n_boot
    )
    if json_output:
        _print_json(found)
        return
    n = found[0]["n"]
    print(
        f"off-policy estimates from {path}: {n:,} decisions with outcomes; profit per decision over "
        "doing nothing"
    )
    _render_policies(
        [r | {"shown": r["estimator"]} for r in found], "margin_per_decision", "margin / decision"
    )
    for row in found:
        for warning in dict.fromkeys(w for e in row["estimates"].values() for w in e["warnings"]):
            print(f"warning ({row['name']}): {warning}")
    for note in notes:
        print(f"note: {note}")


def _render_policies(rows: list[dict[str, Any]], extra: str, extra_title: str) -> None:
    from rich.table import Table

    grid = Table()
    grid.add_column("policy")
    if any("shown" in r for r in rows):
        grid.add_column("estimator")
    for title in ("profit / cart", "95% interval", extra_title):
        grid.add_column(title, justify="right")
    for r in rows:
        interval = f"{r['ci_low']:+.3f} .. {r['ci_high']:+.3f}"
        side = "-" if r.get(extra) is None else f"{r[extra]:+.3f}"
        cells = [
            r["name"],
            *([r["shown"]] if "shown" in r else []),
            f"{r['profit_per_cart']:+.3f}",
            interval,
            side,
        ]
        grid.add_row(*cells)
    out.print(grid)


@app.command(
    epilog="Examples:\n\n  winback serve\n\n"
    "  WINBACK_DATABASE_URL=postgresql+psycopg://db/winback winback serve --port 8080"
)
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (uvicorn workers).")] = 1,
    home: HomeOption = None,
) -> None:
    """Run the service: the HTTP API (OpenAPI at /docs), its state in WINBACK_DATABASE_URL (default:
    SQLite in the home), migrated on start. Refuses the default secret outside development."""
    import uvicorn

    from winback.config import check_production
    from winback.serve.main import create_app

    settings = _settings(home)
    check_production(settings)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    create_app(settings)  # migrate once, before the workers start
    import os

    os.environ["WINBACK_HOME"] = str(settings.home)
    uvicorn.run(
        "winback.serve.main:app_from_environment", factory=True, host=host, port=port, workers=workers
    )


keys_app = typer.Typer(help="API keys of the service: create (shown once) and revoke.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create", epilog="Examples:\n\n  winback keys create --scope write --label shopify")
def keys_create(
    scope: Annotated[str, typer.Option(help="read, write (also read) or admin (everything).")],
    label: Annotated[str, typer.Option(help="What the key is for.")] = "",
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    from winback.serve.db import state_engine
    from winback.serve.keys import check_scope, create_key

    check_scope(scope)
    with state_engine(_settings(home)) as engine:
        token, key = create_key(engine, scope, label)
    if json_output:
        _print_json({"key": token, "key_id": key.key_id, "scope": key.scope, "label": key.label})
        return
    print(token)
    err.print(f"key {key.key_id} ({key.scope}): store it now, it is not shown again", highlight=False)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after wbk_).")],
    home: HomeOption = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    from winback.serve.db import state_engine
    from winback.serve.keys import revoke

    with state_engine(_settings(home)) as engine:
        if not revoke(engine, key_id):
            raise BadInputError(f"key {key_id}: no such active key")
    print(f"key {key_id} revoked")


@app.command(
    epilog="Examples:\n\n  winback consume\n\n"
    "  WINBACK_REDIS_URL=redis://cache:6379/0 winback consume --batch 20000 --consumer node-1\n\n"
    "  winback consume --once --json"
)
def consume(
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Entries per XREADGROUP (one transaction).")
    ] = 10_000,
    block_ms: Annotated[
        int, typer.Option("--block-ms", min=0, help="How long one read waits for new entries.")
    ] = 1_000,
    once: Annotated[bool, typer.Option("--once", help="Exit when the stream has nothing new.")] = False,
    consumer: Annotated[
        str | None,
        typer.Option(
            help="This consumer's name in the group [default: host-pid]; keep it stable "
            "across restarts to re-read its own pending entries at once."
        ),
    ] = None,
    claim_idle_ms: Annotated[
        int | None,
        typer.Option(min=1, help="Claim others' entries pending this long [WINBACK_REDIS_CLAIM_IDLE_MS]."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve Prometheus metrics on this port.")
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Store the events of the Redis Stream WINBACK_REDIS_STREAM (consumer group WINBACK_REDIS_GROUP,
    at least once, acknowledged after storing; invalid entries to WINBACK_REDIS_DEAD_LETTER)."""
    import logging
    import signal

    from winback.serve.consume import StreamConsumer
    from winback.serve.db import state_engine

    settings = _settings(home)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    with state_engine(settings) as engine:
        worker = StreamConsumer(settings, engine, consumer=consumer, claim_idle_ms=claim_idle_ms)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1", registry=worker.metrics.registry)
        try:
            stats = worker.run(batch, block_ms, once=once, stop=lambda: bool(stopping))
        except KeyboardInterrupt:
            stats = worker.stats
    if json_output:
        _print_json(stats.as_dict())
    else:
        print(
            f"{stats.entries:,} entries, {stats.events:,} events: {stats.stored:,} stored, "
            f"{stats.duplicates:,} duplicates, {stats.dead:,} dead-lettered ({stats.claimed:,} claimed)"
        )


@app.command(
    epilog="Examples:\n\n  winback worker\n\n"
    "  WINBACK_DATABASE_URL=postgresql+psycopg://db/winback winback worker --concurrency 4\n\n"
    "  winback worker --once --json"
)
def worker(
    once: Annotated[bool, typer.Option("--once", help="Exit when no message is due.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker threads (each its own connections).")] = 1,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Messages claimed at a time.")] = 50,
    record_every: Annotated[
        int,
        typer.Option(
            min=1, help="Deliveries recorded per transaction (at most this many resent after a crash)."
        ),
    ] = 20,
    lease_seconds: Annotated[
        float | None, typer.Option(min=0.01, help="Lease of a claim [WINBACK_OUTBOX_LEASE_SECONDS].")
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.001, help="Longest sleep between looks at the outbox (seconds).")
    ] = 1.0,
    catalogue_path: Annotated[
        Path | None,
        typer.Option("--catalogue", help="Action catalogue (caps, quiet hours); default: the packaged one."),
    ] = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send the outbox's due messages: claim, re-check (purchase, unsubscribe, caps, quiet hours), render,
    send by SMTP or webhook, record; retries with backoff, dead after the last attempt. Several workers
    may run against PostgreSQL. SIGTERM or Ctrl-C stops after the message being sent."""
    import signal
    import threading

    from winback.act.worker import run_workers
    from winback.config import check_production
    from winback.decide.catalogue import load_catalogue
    from winback.serve.db import state_engine

    settings = _settings(home)
    check_production(settings, sends_messages=True)
    catalogue = load_catalogue(catalogue_path)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    with state_engine(settings) as engine:
        err.print(f"winback worker: {concurrency} thread(s) on {engine.dialect.name}, ready", highlight=False)
        stats = run_workers(
            engine, settings, concurrency=concurrency, once=once, stop=stop, poll_interval=poll_interval,
            catalogue=catalogue, batch_size=batch, record_every=record_every, lease_seconds=lease_seconds,
        )  # fmt: skip
    if json_output:
        _print_json(stats.as_dict())
    else:
        print(
            f"{stats.sent:,} sent, {stats.cancelled:,} cancelled, {stats.deferred:,} deferred, "
            f"{stats.retried:,} to retry, {stats.failed:,} failed, {stats.dead:,} dead"
        )


@app.command(
    epilog="Examples:\n\n  winback detect\n\n"
    "  winback detect --policy random --holdout 0.1 --monthly-budget 2000 --metrics-port 9102\n\n"
    "  WINBACK_DATABASE_URL=postgresql+psycopg://db/winback winback detect --thresholds thresholds.json"
)
def detect(
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="static-10h, static-1h-24h-72h, coupon-everyone (or another flow of the catalogue), "
            "random (randomised, exact propensities) or uplift (`winback train policy`).",
        ),
    ] = "static-10h",
    holdout: Annotated[
        float, typer.Option(help="Share of customers held out as control (never messaged).")
    ] = 0.10,
    monthly_budget: Annotated[
        float | None,
        typer.Option(
            "--monthly-budget", min=0, help="Coupon face value per month, paced; 0: no coupons [no limit]."
        ),
    ] = None,
    idle_minutes: Annotated[
        float | None,
        typer.Option(
            "--idle-minutes", min=0.001, help="Idle time that abandons a cart [WINBACK_ABANDON_IDLE_MINUTES]."
        ),
    ] = None,
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="Learned idle thresholds per kind of cart (CSV/Parquet/JSON: value_from, value_to, "
            "customer, threshold_minutes; e.g. `winback warnings --json`'s cart_thresholds)."
        ),
    ] = None,
    max_late_hours: Annotated[
        float, typer.Option(min=0.0, help="Carts due longer ago than this are expired, not decided.")
    ] = 24.0,
    poll_interval: Annotated[
        float, typer.Option(min=0.001, help="Longest sleep between looks at the events (seconds).")
    ] = 0.05,
    outcomes_every: Annotated[
        float, typer.Option(min=0.0, help="Seconds between outcome recordings (0: never).")
    ] = 300.0,
    window_days: Annotated[
        float | None,
        typer.Option(
            "--window-days",
            help="Days after a decision its outcome is read from (the first order within them), recorded "
            "once they have passed [WINBACK_RECOVERY_WINDOW_DAYS].",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Exit when nothing is left to fold in or decide.")
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve Prometheus metrics on this port.")
    ] = None,
    catalogue_path: CatalogueOption = None,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Detect abandoned carts as they happen and decide at the trigger: keep every cart's state from the
    stored events, decide each cart once when it has been idle past its threshold (holdout, the policy,
    consent, caps, quiet hours, budget), log the decision and schedule its message in the outbox;
    record the decisions' outcomes on a schedule. Several may run against PostgreSQL."""
    import gc
    import logging
    import signal
    import threading
    from datetime import timedelta

    from winback.decide.catalogue import load_catalogue
    from winback.serve.carts import IdleThresholds
    from winback.serve.db import state_engine
    from winback.serve.detect import Detector

    settings = _settings(home)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    catalogue = load_catalogue(catalogue_path)
    minutes = float(settings.abandon_idle_minutes if idle_minutes is None else idle_minutes)
    idle = IdleThresholds.load(thresholds, minutes) if thresholds else IdleThresholds(minutes)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    sys.setswitchinterval(0.001)  # the deciding thread waits at most 1 ms for the catch-up thread's turn
    with state_engine(settings) as engine:
        detector = Detector(
            engine, settings, policy=policy, catalogue=catalogue, holdout_share=holdout,
            thresholds=idle, monthly_budget=monthly_budget, max_late=timedelta(hours=max_late_hours),
            outcomes_every=outcomes_every, window_days=window_days,
        )  # fmt: skip
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1", registry=detector.metrics.registry)
        # What is loaded by now (modules, catalogue, policy, recommender) lives as long as the process: out
        # of the collector's sight, a full collection no longer walks it, which took 270-310 ms (all
        # threads stopped) on a loaded machine.
        gc.freeze()
        err.print(
            f"winback detect: policy {detector.policy.name} ({detector.policy.version}), "
            f"holdout {holdout:.0%}, idle {minutes:g} min on {engine.dialect.name}, ready",
            highlight=False,
        )
        stats = detector.run(stop, once=once, poll_interval=poll_interval).as_dict()
    if json_output:
        _print_json(stats)
        return

    def took(ms: float) -> str:
        return (
            f"{ms / 60_000:.1f} min" if ms >= 60_000 else f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:g} ms"
        )

    latency = (
        f"; stored {took(stats['latency_ms_p50'])} (p50), {took(stats['latency_ms_p99'])} (p99) after the "
        "threshold"
        if "latency_ms_p50" in stats
        else ""
    )
    print(
        f"{stats['events']:,} events, {stats['carts_opened']:,} carts opened, {stats['decided']:,} decided "
        f"({stats['messages']:,} messages scheduled, {stats['holdout']:,} holdout), {stats['expired']:,} "
        f"expired, {stats['cancelled']:,} messages cancelled by purchases{latency}"
    )


@app.command(epilog="Examples:\n\n  winback sync\n\n  winback sync --full --json")
def sync(
    full: Annotated[
        bool, typer.Option("--full", help="Read everything again (stores nothing twice).")
    ] = False,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Bring the service's events and decisions (with their outcomes) into the home's event store and
    decision log, so training, `winback policies evaluate` and the reports see what the service saw and
    did. Incremental and idempotent."""
    from winback.serve.db import state_engine
    from winback.serve.sync import sync_home

    settings = _settings(home)
    with state_engine(settings) as engine:
        report = sync_home(engine, settings, full=full)
    if json_output:
        _print_json(report.as_dict())
        return
    print(
        f"events: {report.events_read:,} read, {report.events_stored:,} new -> {settings.store_path}; "
        f"decisions: {report.decisions_read:,} read, {report.decisions_logged:,} new, "
        f"{report.outcomes_recorded:,} outcomes -> {settings.home / 'decisions.duckdb'}"
    )


@app.command(epilog="Examples:\n\n  winback erase u00042 --json")
def erase(
    user_id: Annotated[str, typer.Argument(help="The customer's id.")],
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Erase a customer everywhere this machine reaches: the service's database and the home's event
    store and decision log (as DELETE /v1/customers/ID does); says what it could not reach."""
    from winback.serve.db import state_engine
    from winback.serve.routes.customers import erase_everywhere

    settings = _settings(home)
    with state_engine(settings) as engine:
        erased = erase_everywhere(settings, engine, user_id)
    if json_output:
        _print_json(erased.model_dump())
        return
    print(", ".join(f"{table} {n:,}" for table, n in erased.erased.items() if n) or "nothing held")
    for line in erased.not_reached:
        print(f"not reached: {line}")


def main() -> None:
    """Entry point: usage errors exit 2 (click's own), bad input 2, other failures 1."""
    from winback.lifeline import watch_parent

    try:
        watch_parent()  # started by the live demo: stop with it, even when it is killed
        app()
    except BadInputError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except WinbackError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

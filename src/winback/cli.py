"""The ``winback`` command. Exit codes: 0 success, 2 bad input or usage, 1 anything else."""

from __future__ import annotations

import json
import sys
import tomllib
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
        Path | None, typer.Option(help="Directory for the latent truth: customers.parquet and carts.parquet.")
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
    "  winback demo --customers 20000 --days 365 --home /tmp/winback-demo",
)
def demo(
    customers: Annotated[int, typer.Option(min=1, help="Customers in the simulated shop.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days of behaviour.")] = 180,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    home: HomeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run the main job end to end on a simulated shop and summarise what it did and where it is."""
    from winback.demo import run_demo

    summary = run_demo(_settings(home), customers=customers, days=days, seed=seed, show=not json_output)
    if json_output:
        _print_json(summary)


def main() -> None:
    """Entry point: usage errors exit 2 (click's own), bad input 2, other failures 1."""
    try:
        app()
    except BadInputError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except WinbackError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

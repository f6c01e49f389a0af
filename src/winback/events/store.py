"""The event store: an append-only, idempotent DuckDB event log in the winback home.

Why it is shaped this way:

- Identity is a 128-bit key, ``md5`` of the source's event id or, without one, of the event's canonical
  content. A fixed-width key is what makes loading 10M events and checking them for duplicates fast;
  the ``events`` view shows it as the 32-hex-digit ``event_id`` users see.
- A command's whole load is one transaction: rows are inserted, checked, de-duplicated and counted, and
  either everything commits or nothing does (bad rows, a crash, Ctrl-C).
- Rows are validated by the same SQL rules whatever the source (:mod:`winback.events.normalize`); the
  fast path reads each file once and stops at the first bad row, and only then does a careful pass
  count and explain them.
- ``event_log`` is a view over one table per layout (the optional fields a source has), so a narrow
  file writes only its own columns: DuckDB pays for every column it writes, even an all-NULL one.
- Sessions are computed here, at query time, from the settings, so every source is sessionised the
  same way and changing the gap needs no reload.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from winback.config import Settings
from winback.embedded import connect_waiting
from winback.errors import BadInputError, WinbackError
from winback.events.normalize import IGNORE, Canonical, ParseOptions, RawEvents, canonicalize, sql_string
from winback.events.schema import EVENT_FIELDS

#: 2: events are stored in one table per layout behind the ``event_log`` view (1: one wide table, which
#: opening for writing migrates; event keys are the same in both).
SCHEMA_VERSION = "2"

BEHAVIOUR_TYPES = ("view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase")

#: Physical storage: one table per *layout*, the set of optional fields a source has, named by the
#: bitmask of those fields (``event_rows_0112_n0112_usd``: user, product and order ids, all integers,
#: and the currency USD). A narrow file (RetailRocket) writes 6 columns, not 17: DuckDB pays for every
#: column of every row group it writes, NULL or not, and the eleven a narrow file lacks cost more than its
#: own six. A source without a currency has the default one at load time for all its rows, so it is a
#: constant of the table (its name's suffix), not a column. ``event_log`` is the view that unions them
#: under one schema.
_ALWAYS_STORED = ("event_key", "event_type", "timestamp", "batch_id")
_COLUMN_TYPES = {
    "event_key": "UHUGEINT NOT NULL",
    "event_id": "VARCHAR",
    "event_type": "VARCHAR NOT NULL",
    "timestamp": "TIMESTAMPTZ NOT NULL",
    "user_id": "VARCHAR",
    "anonymous_id": "VARCHAR",
    "session_id": "VARCHAR",
    "product_id": "VARCHAR",
    "category": "VARCHAR",
    "brand": "VARCHAR",
    "price": "DOUBLE",
    "quantity": "INTEGER",
    "order_id": "VARCHAR",
    "value": "DOUBLE",
    "currency": "VARCHAR",
    "properties": "JSON",
    "batch_id": "INTEGER NOT NULL",
}
_LOG_COLUMNS = tuple(_COLUMN_TYPES)  # the order of event_log's columns
#: The bits of layout names: append only.
_OPTIONAL = (
    "event_id",
    "user_id",
    "anonymous_id",
    "session_id",
    "product_id",
    "category",
    "price",
    "quantity",
    "order_id",
    "value",
    "properties",
    "currency",
    "brand",
)
_ROWS_PREFIX = "event_rows_"
#: The optional fields of version 1's wide table (``brand`` came later).
_VERSION_1_FIELDS = _OPTIONAL[:12]

_DDL = """
CREATE TABLE IF NOT EXISTS ingest_batches (
    batch_id INTEGER PRIMARY KEY,
    source VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    loaded_at TIMESTAMPTZ NOT NULL,
    ingested BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    ignored BIGINT NOT NULL,
    rejects_path VARCHAR
);
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
"""

_EVENTS_VIEW = """
CREATE OR REPLACE VIEW events AS
SELECT coalesce(event_id, lower(lpad(hex(event_key), 32, '0'))) AS event_id,
       event_type, timestamp, user_id, anonymous_id, session_id, product_id, category, brand, price,
       quantity, order_id, value, currency, CAST(properties AS VARCHAR) AS properties, batch_id
FROM event_log;
"""


#: Text ids that are stored as integers when every value of a source is the canonical text of one
#: (``42``, not ``042`` or ``+42``): DuckDB writes integers for a fraction of the cost of strings.
_INTEGER_IDS = ("user_id", "anonymous_id", "session_id", "product_id", "order_id")


def _layout_name(fields: Iterable[str], currency: str, integers: Iterable[str] = ()) -> str:
    """The table holding events with exactly these optional fields (and ``currency`` if they lack one),
    with ``integers`` among them stored as BIGINT."""
    present, numeric = set(fields), set(integers)
    mask = sum(1 << i for i, f in enumerate(_OPTIONAL) if f in present)
    ints = sum(1 << i for i, f in enumerate(_OPTIONAL) if f in numeric)
    return (
        f"{_ROWS_PREFIX}{mask:04x}"
        + (f"_n{ints:04x}" if ints else "")
        + ("" if "currency" in present else f"_{currency.lower()}")
    )


def _as_integer(field: str) -> str:
    """SQL storing a text id as BIGINT, stopping the load (to redo it as text) when it is not one.

    The number is cast once, in the ``numbered`` layer of the insert (``_int_<field>``).
    """
    number = f"_int_{field}"
    return (
        f"CASE WHEN {field} IS NULL THEN NULL WHEN CAST({number} AS VARCHAR) = {field} THEN {number} "
        f"ELSE error('{_NOT_INTEGER}') END"
    )


def _type_of(column: str) -> str:
    return _COLUMN_TYPES[column].removesuffix(" NOT NULL")


#: How each canonical field enters an event's content (money and times as integers: they print far
#: faster than doubles), with the one-letter tag that marks it. ``brand`` does not: it describes the
#: product, not the event, and it joined the canonical fields later, when sources had carried it in
#: ``properties`` (which they still do), so events keep the identity they had.
_CONTENT_PARTS = {
    "event_type": ("e", "event_type"),
    "timestamp": ("t", "epoch_us(timestamp)"),
    "user_id": ("u", "user_id"),
    "anonymous_id": ("a", "anonymous_id"),
    "session_id": ("s", "session_id"),
    "product_id": ("p", "product_id"),
    "category": ("c", "category"),
    "price": ("r", "CAST(round(price * 1e6) AS BIGINT)"),
    "quantity": ("q", "quantity"),
    "order_id": ("o", "order_id"),
    "value": ("v", "CAST(round(value * 1e6) AS BIGINT)"),
    "currency": ("m", "currency"),
    "properties": ("x", "properties"),
}
_ALWAYS = ("event_type", "timestamp", "currency")


def _content(present: Iterable[str]) -> str:
    """SQL of an event's canonical content, hashed into the key of an event without a source id.

    Each non-null field is tagged (``u`` + user id...), fields are separated by ``chr(31)`` and NULLs are
    skipped, so a value moving from one field to another changes the content while a field a source
    lacks adds nothing: leaving it out of the expression (the fast path for narrow files) gives the same
    key as spelling it out as NULL. One ``concat`` (which skips NULLs) with each optional field's separator
    and tag under ``CASE`` builds the same text as ``concat_ws`` over tagged parts, at 60% of the cost.
    """
    fields = [f for f in _CONTENT_PARTS if f in _ALWAYS or f in set(present)]
    parts = []
    for i, name in enumerate(fields):
        tag, expr = _CONTENT_PARTS[name]
        prefix = f"'{tag}'" if i == 0 else f"chr(31) || '{tag}'"
        if name not in _ALWAYS:  # the type, time and currency of a stored event are never NULL
            prefix = f"CASE WHEN {name} IS NOT NULL THEN {prefix} END"
        parts += [prefix, f"CAST({expr} AS VARCHAR)"]
    return f"concat({', '.join(parts)})"


@dataclass
class PreparedInput:
    """One source ready to load: the adapter's raw columns and how to parse them."""

    name: str  # what error messages call it (the file path)
    format: str
    raw: RawEvents
    options: ParseOptions = field(default_factory=ParseOptions)
    timestamp_format: str = "auto"
    record: str | None = None  # SQL of the source row as JSON, for the rejects file
    #: Identical rows in one file are one event logged twice (default), or distinct events (a daily
    #: transaction log where a customer bought the same thing twice in a day).
    identical_rows_distinct: bool = False


@dataclass
class BatchReport:
    """What happened to one source."""

    source: str
    format: str
    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    ignored: int = 0
    rejects_path: str | None = None


@dataclass
class IngestReport:
    """What one load did, in total and per source."""

    batches: list[BatchReport]

    def total(self, key: str) -> int:
        return sum(int(getattr(b, key)) for b in self.batches)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ingested": self.total("ingested"),
            "duplicates": self.total("duplicates"),
            "rejected": self.total("rejected"),
            "ignored": self.total("ignored"),
            "files": [vars(b) for b in self.batches],
        }


StageCallback = Callable[[str, str], None]


def no_progress(source: str, stage: str) -> None:
    return None


class EventStore:
    """The embedded event store. Open with ``EventStore(settings)``; use as a context manager."""

    def __init__(self, settings: Settings, *, read_only: bool = False) -> None:
        self.settings = settings
        path = settings.store_path
        if read_only and not path.exists():
            raise BadInputError(
                f"no event store at {path}: load events first with `winback ingest` "
                "(or point --home / WINBACK_HOME at an existing one)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        (settings.home / "tmp").mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "memory_limit": settings.memory_limit,
            "temp_directory": str(settings.home / "tmp"),
        }
        if settings.threads:
            config["threads"] = settings.threads
        if read_only:
            try:
                self.con = duckdb.connect(str(path), read_only=True, config=config)
            except duckdb.IOException as exc:
                raise WinbackError(f"cannot open the event store {path}: {exc}") from exc
        else:
            self.con = connect_waiting(
                path, what="event store", wait_seconds=settings.lock_wait_seconds, config=config
            )
        self.con.execute("SET TimeZone = 'UTC'; SET enable_progress_bar = false")
        if not read_only:
            self._open_for_writing(path)
        self._create_session_views()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_for_writing(self, path: Path) -> None:
        """Create the store, or check its schema version (migrating version 1 in place)."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(_DDL)
            row = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
            wide_table = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = 'main' AND table_name = 'event_log'"
            ).fetchone()
            if version == "1" or (version is None and wide_table and wide_table[0]):
                # Same columns and keys: the wide table becomes the layout with every field.
                con.execute("DROP VIEW IF EXISTS events")
                con.execute(f"ALTER TABLE event_log RENAME TO {_layout_name(_VERSION_1_FIELDS, '')}")
            elif version not in (None, SCHEMA_VERSION):
                raise WinbackError(
                    f"the event store {path} has schema version {version}, newer than this winback "
                    f"understands ({SCHEMA_VERSION}): upgrade winback, or use another --home"
                )
            con.execute(
                "INSERT INTO store_meta VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [SCHEMA_VERSION],
            )
            self._create_log_view()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _layout_tables(self) -> dict[str, dict[str, str]]:
        """Name -> {column: type} of every layout table."""
        rows = self.con.execute(
            "SELECT table_name, map(list(column_name), list(data_type)) FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            f"AND starts_with(table_name, '{_ROWS_PREFIX}') GROUP BY table_name ORDER BY table_name"
        ).fetchall()
        return {str(name): dict(columns) for name, columns in rows}

    def _create_log_view(self) -> None:
        """(Re)create ``event_log``, the union of the layout tables, and ``events`` over it."""
        selects = []
        for name, present in self._layout_tables().items():
            constant = {"currency": sql_string(name.rsplit("_", 1)[-1].upper())}
            cols = ", ".join(
                (c if present[c] == _type_of(c) else f"CAST({c} AS {_type_of(c)}) AS {c}")
                if c in present
                else f"CAST({constant.get(c, 'NULL')} AS {_type_of(c)}) AS {c}"
                for c in _LOG_COLUMNS
            )
            selects.append(f"SELECT {cols} FROM {name}")
        if not selects:  # an empty store still has the schema
            selects.append(
                "SELECT "
                + ", ".join(f"CAST(NULL AS {_type_of(c)}) AS {c}" for c in _LOG_COLUMNS)
                + " WHERE false"
            )
        self.con.execute("CREATE OR REPLACE VIEW event_log AS " + " UNION ALL ".join(selects))
        self.con.execute(_EVENTS_VIEW)

    def _layout_table(self, fields: Iterable[str], integers: Iterable[str] = ()) -> str:
        """The layout table for ``fields``, created (in the current transaction) when it is new."""
        name = _layout_name(fields, self.settings.default_currency, integers)
        if name not in self._layout_tables():
            columns = [c for c in _LOG_COLUMNS if c in _ALWAYS_STORED or c in set(fields)]
            ddl = ", ".join(f"{c} {'BIGINT' if c in set(integers) else _COLUMN_TYPES[c]}" for c in columns)
            self.con.execute(f"CREATE TABLE {name} ({ddl})")
            self._create_log_view()
        return name

    # -- reading -----------------------------------------------------------------------------------

    def _create_session_views(self) -> None:
        """Temporary (per-connection) views, so the configured session gap applies to every query."""
        gap = int(self.settings.session_gap_minutes)
        behaviour = ", ".join(sql_string(t) for t in BEHAVIOUR_TYPES)
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP VIEW identity_map AS
            SELECT anonymous_id, arg_min(user_id, timestamp) AS user_id
            FROM event_log WHERE anonymous_id IS NOT NULL AND user_id IS NOT NULL
            GROUP BY anonymous_id;

            CREATE OR REPLACE TEMP VIEW event_sessions AS
            WITH keyed AS (
                SELECT e.*, coalesce(e.user_id, m.user_id, 'anonymous:' || e.anonymous_id) AS user_key,
                       e.event_type IN ({behaviour}) AS is_behaviour
                FROM event_log e
                LEFT JOIN identity_map m ON e.user_id IS NULL AND e.anonymous_id = m.anonymous_id
            ),
            marked AS (
                SELECT *, coalesce(timestamp - lag(timestamp) OVER w > INTERVAL {gap} MINUTE, true)
                          AS starts_session
                FROM keyed
                WINDOW w AS (PARTITION BY user_key, is_behaviour AND session_id IS NULL
                             ORDER BY timestamp, event_key)
            )
            SELECT * EXCLUDE (starts_session),
                   CASE WHEN NOT is_behaviour THEN NULL
                        WHEN session_id IS NOT NULL THEN session_id
                        ELSE user_key || '#' || sum(CAST(starts_session AS INTEGER)) OVER (
                            PARTITION BY user_key, is_behaviour AND session_id IS NULL
                            ORDER BY timestamp, event_key
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                   END AS session_key
            FROM marked;
            """
        )

    def count(self) -> int:
        row = self.con.execute("SELECT count(*) FROM event_log").fetchone()
        return int(row[0]) if row else 0

    # -- writing -----------------------------------------------------------------------------------

    def append(self, table: pa.Table, source: str = "arrow") -> IngestReport:
        """Load canonical events from an Arrow table through the same validation as files."""
        missing = {"event_type", "timestamp"} - set(table.column_names)
        if missing:
            raise BadInputError(f"{source}: missing columns {sorted(missing)}; expected the canonical schema")
        view = f"arrow_append_{id(table)}"
        self.con.register(view, table)
        try:
            types = {f.name: _duck_type(f.type) for f in table.schema}
            raw = RawEvents(
                source=f"{view} s",
                fields={c: f"s.{c}" for c in table.column_names if c in EVENT_FIELDS},
                sources={c: c for c in table.column_names},
                location_word="row",
                raw_types=types,
            )
            return self.ingest([PreparedInput(source, "arrow", raw, record="to_json(s)")])
        finally:
            self.con.unregister(view)

    def ingest(
        self,
        inputs: list[PreparedInput],
        *,
        skip_bad_rows: bool = False,
        rejects_dir: Path | None = None,
        on_stage: StageCallback = no_progress,
    ) -> IngestReport:
        """Load ``inputs`` in one transaction: all of them, or (on bad rows, unless skipped) none.

        Files are first loaded trusting that every row is good (one pass each: a bad row aborts the
        load); only if one is not is the whole load redone carefully, counting and explaining rows.
        """
        trusting, integers = not skip_bad_rows, True
        while True:  # at most three attempts: each failure turns one assumption off
            try:
                return self._ingest(
                    inputs, skip_bad_rows, rejects_dir, on_stage, trusting=trusting, integers=integers
                )
            except _BadRowError:
                trusting = False
            except _NotIntegerError:
                integers = False

    def _ingest(
        self,
        inputs: list[PreparedInput],
        skip_bad_rows: bool,
        rejects_dir: Path | None,
        on_stage: StageCallback,
        *,
        trusting: bool,
        integers: bool,
    ) -> IngestReport:
        con = self.con
        row = con.execute("SELECT coalesce(max(batch_id), 0) FROM ingest_batches").fetchone()
        first_batch = int(row[0]) + 1 if row else 1
        reports: list[BatchReport] = []
        failures: list[str] = []
        written: list[Path] = []
        touched: set[str] = set()
        canonicals = [canonicalize(i.raw, i.options, self.settings, i.timestamp_format) for i in inputs]
        numerics = [
            self._integer_ids(inp, canonical) if integers else []
            for inp, canonical in zip(inputs, canonicals, strict=True)
        ]
        con.execute("BEGIN TRANSACTION")
        try:
            for offset, inp in enumerate(inputs):
                batch_id = first_batch + offset
                report = BatchReport(inp.name, inp.format)
                reports.append(report)
                canonical, numeric = canonicals[offset], numerics[offset]
                con.execute(f"SET TimeZone = {sql_string(inp.options.timezone)}")  # for naive times
                on_stage(inp.name, "reading")
                # Rows mapped to `ignore` are dropped and counted, so those files need the counting pass.
                trust = trusting and IGNORE not in inp.options.event_type_map.values()
                table = self._layout_table(_present(inp), numeric)
                touched.add(table)
                inserted = self._insert(inp, canonical, batch_id, table, trust=trust, integers=numeric)
                if not trust and inserted < self._count_rows(inp):
                    on_stage(inp.name, "checking rows")
                    self._explain(inp, canonical, report, skip_bad_rows, rejects_dir, batch_id, failures)
                    if report.rejects_path:
                        written.append(Path(report.rejects_path))
                report.ingested = inserted
                con.execute("SET TimeZone = 'UTC'")
            if failures:
                raise BadInputError(
                    "nothing was stored: "
                    + ", ".join(f"{b.source} has {b.rejected:,} bad rows" for b in reports if b.rejected)
                    + f" (showing up to {self.settings.error_limit}). Fix them, or load the good rows with "
                    "--skip-bad-rows, which writes the bad ones with their reasons to a file.",
                    failures,
                )
            on_stage("", "removing duplicates")
            self._remove_duplicates(first_batch, reports, sorted(touched))
            now = datetime.now(UTC)
            for offset, r in enumerate(reports):
                con.execute(
                    "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        first_batch + offset,
                        r.source,
                        r.format,
                        now,
                        r.ingested,
                        r.duplicates,
                        r.rejected,
                        r.ignored,
                        r.rejects_path,
                    ],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            con.execute("SET TimeZone = 'UTC'; SET preserve_insertion_order = true")
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return IngestReport(reports)

    def _pipeline(self, inp: PreparedInput, canonical: Canonical, *, explain: bool) -> str:
        """raw -> parsed -> lined: the SQL layers every pass over a source shares."""
        with_loc = explain or inp.identical_rows_distinct or canonical.atomic_lines
        extra = [f"{inp.raw.location} AS _loc"] if with_loc else []
        extra += [f"{inp.record or 'NULL'} AS _record"] if explain else []
        line_bad = (
            f"bool_or({canonical.row_bad}) OVER (PARTITION BY _loc)" if canonical.atomic_lines else "false"
        )
        return (
            f"WITH raw AS (SELECT {', '.join([*extra, *canonical.raw_select])} FROM {inp.raw.source}), "
            f"parsed AS (SELECT *, {', '.join(canonical.parsed_select)} FROM raw), "
            f"lined AS (SELECT *, {line_bad} AS _line_bad FROM parsed) "
        )

    def _integer_ids(self, inp: PreparedInput, canonical: Canonical) -> list[str]:
        """The text ids whose first rows are all integers (the load checks every other row).

        Run before the load's transaction: an unreadable file fails here without aborting it.
        """
        candidates = [f for f in _INTEGER_IDS if f in inp.raw.fields]
        full_pass = canonical.atomic_lines or inp.identical_rows_distinct or not inp.raw.streams
        if not candidates or full_pass:  # a sample would cost as much as the load
            return []
        tests = ", ".join(
            f"count({f}) > 0 AND bool_and({f} IS NULL OR CAST(TRY_CAST({f} AS BIGINT) AS VARCHAR) = {f})"
            for f in candidates
        )
        sql = self._pipeline(inp, canonical, explain=False) + f"SELECT {tests} FROM (FROM lined LIMIT 2000)"
        try:
            row = self.con.execute(sql).fetchone()
        except duckdb.Error:
            return []  # the load itself will say what is wrong
        return [f for f, ok in zip(candidates, row or (), strict=False) if ok]

    def _insert(
        self,
        inp: PreparedInput,
        canonical: Canonical,
        batch_id: int,
        table: str,
        *,
        trust: bool,
        integers: list[str],
    ) -> int:
        fields = [f for f in _LOG_COLUMNS if f in set(_present(inp))]
        cols = ", ".join(["event_key", *fields, "event_type", "timestamp", "batch_id"])
        values = ", ".join(
            [
                *(_as_integer(f) if f in integers else f for f in fields),
                "event_type",
                "timestamp",
                str(batch_id),
            ]
        )
        content = _content(inp.raw.fields)
        if inp.identical_rows_distinct:  # the n-th copy of a row in a file is its own event
            content += f" || '#' || row_number() OVER (PARTITION BY {content} ORDER BY _loc)"
        key = f"md5_number(coalesce('id:' || event_id, {content}))"
        # One predicate: DuckDB pushes `AND event_type <> ...` into the scan and runs 3x slower. Trusting,
        # a bad row stops the load (the caller then redoes it carefully) and no rows need counting.
        keep = (
            f"CASE WHEN {canonical.bad} THEN error('{_BAD_ROW}') ELSE true END"
            if trust
            else f"NOT ({canonical.bad} OR event_type = '{IGNORE}')"
        )
        numbers = "".join(f"TRY_CAST({f} AS BIGINT) AS _int_{f}, " for f in integers)
        sql = (
            self._pipeline(inp, canonical, explain=False) + f", good AS (SELECT * FROM lined WHERE {keep}), "
            f"numbered AS (SELECT {numbers}* FROM good) "
            f"INSERT INTO {table} ({cols}) SELECT {key}, {values} FROM numbered"
        )
        # File order matters where rows are numbered (the n-th identical copy) or where two rows may share
        # a source id with different content (the first in the file is kept). Copies of one derived key
        # are identical, so otherwise both cores may write in any order: about 15% faster.
        ordered = inp.identical_rows_distinct or "event_id" in inp.raw.fields
        self.con.execute(f"SET preserve_insertion_order = {str(ordered).lower()}")
        try:
            row = self.con.execute(sql).fetchone()
        except duckdb.Error as exc:  # the transaction is aborted: the caller rolls back and resets
            if _BAD_ROW in str(exc):
                raise _BadRowError from exc
            if _NOT_INTEGER in str(exc):
                raise _NotIntegerError from exc
            raise BadInputError(f"{inp.name}: cannot be read as {inp.format}: {_first_line(exc)}") from exc
        self.con.execute("SET preserve_insertion_order = true")
        return int(row[0]) if row else 0

    def _count_rows(self, inp: PreparedInput) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {inp.raw.source}").fetchone()
        return int(row[0]) if row else 0

    def _explain(
        self,
        inp: PreparedInput,
        canonical: Canonical,
        report: BatchReport,
        skip_bad_rows: bool,
        rejects_dir: Path | None,
        batch_id: int,
        failures: list[str],
    ) -> None:
        """Second pass, only when rows were left out: count ignored rows, describe the bad ones."""
        con = self.con
        base = self._pipeline(inp, canonical, explain=True)
        flagged = base + f", flagged AS (SELECT *, {canonical.bad} AS _bad FROM lined) "
        row = con.execute(
            flagged
            + f"SELECT count(*) FILTER (_bad), count(*) FILTER (NOT _bad AND event_type = '{IGNORE}') "
            "FROM flagged"
        ).fetchone()
        report.rejected, report.ignored = (int(row[0]), int(row[1])) if row else (0, 0)
        if not report.rejected:
            return
        detail = (
            flagged + f"SELECT _loc, r_item, {canonical.problems()} AS problems, _record "
            "FROM flagged WHERE _bad ORDER BY _loc"
        )
        if not skip_bad_rows:
            limit = self.settings.error_limit - len(failures)
            if limit > 0:
                for loc, item, problems, _ in con.execute(f"{detail} LIMIT {limit}").fetchall():
                    failures.extend(self._describe(inp, loc, item, problems))
            return
        directory = rejects_dir or self.settings.home / "rejects"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{Path(inp.name).name}.batch{batch_id}.rejects.jsonl"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            cursor = con.execute(detail)
            while chunk := cursor.fetchmany(10_000):
                for loc, item, problems, record in chunk:
                    out.write(
                        json.dumps(
                            {
                                "file": inp.name,
                                inp.raw.location_word: loc,
                                "errors": [self._problem_text(inp, item, p) for p in problems],
                                "record": _public(json.loads(record)) if record else None,
                            },
                            default=str,
                        )
                        + "\n"
                    )
        os.replace(tmp, path)
        report.rejects_path = str(path)

    def _describe(
        self, inp: PreparedInput, loc: int, item: str | None, problems: list[dict[str, str]]
    ) -> list[str]:
        where = f"{inp.name}, {inp.raw.location_word} {loc}"
        return [f"{where}: {self._problem_text(inp, item, p)}" for p in problems]

    @staticmethod
    def _problem_text(inp: PreparedInput, item: str | None, problem: dict[str, str]) -> str:
        fld, found, expected = problem["field"], problem["found"], problem["expected"]
        if fld == "(record)":  # adapter-detected: found holds {"field", "found", "expected"} as JSON
            detail = json.loads(found)
            return f"{detail['field']}: found {detail['found']!r}, expected {detail['expected']}"
        source = inp.raw.sources.get(fld)
        if source and item is not None:
            source = source.replace("{item}", item)
        named = f"{fld} ({source})" if source and source != fld else fld
        return f"{named}: found {found!r}, expected {expected}"

    def _remove_duplicates(self, first_batch: int, reports: list[BatchReport], touched: list[str]) -> None:
        """Keep the first copy of every key: the oldest load's, then the first in file order.

        Aggregates and anti-joins rather than a window, so that DuckDB can spill them to disk and a
        reload of a file larger than memory still fits the memory limit. Within a table row ids follow
        insertion order; across tables the batch id decides.
        """
        con = self.con
        row = con.execute(f"SELECT count(*) FROM event_log WHERE batch_id < {first_batch}").fetchone()
        older = bool(row and row[0])
        tables = list(self._layout_tables()) if older else touched  # else only new rows collide
        if not tables:
            return
        one = len(tables) == 1
        order = "rowid" if one else "(CAST(batch_id AS HUGEINT) << 64) + rowid"
        rows = " UNION ALL ".join(
            f"SELECT event_key, batch_id, {order} AS ord, {i} AS t, rowid AS rid FROM {name}"
            for i, name in enumerate(tables)
        )
        scope = ""
        if older:
            new = " UNION ALL ".join(
                f"SELECT event_key FROM {name} WHERE batch_id >= {first_batch}" for name in touched
            )
            scope = f"WHERE event_key IN ({new})"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE dup_keys AS SELECT event_key, min(ord) AS keep FROM ({rows}) "
            f"{scope} GROUP BY event_key HAVING count(*) > 1"
        )
        try:
            found = con.execute("SELECT count(*) FROM dup_keys").fetchone()
            if not (found and found[0]):
                return
            con.execute(
                "CREATE OR REPLACE TEMP TABLE dup_rows AS SELECT e.t, e.rid, e.batch_id "
                f"FROM ({rows}) e JOIN dup_keys d USING (event_key) WHERE e.ord <> d.keep"
            )
            counts = con.execute("SELECT batch_id, count(*) FROM dup_rows GROUP BY batch_id").fetchall()
            for i, name in enumerate(tables):
                con.execute(f"DELETE FROM {name} WHERE rowid IN (SELECT rid FROM dup_rows WHERE t = {i})")
            con.execute("DROP TABLE dup_rows")
        finally:
            con.execute("DROP TABLE dup_keys")
        for batch_id, n in counts:
            report = reports[batch_id - first_batch]
            report.duplicates += int(n)
            report.ingested -= int(n)

    def erase(self, user_id: str, anonymous_ids: Iterable[str] = ()) -> int:
        """Delete a customer's events (one transaction): those under ``user_id``, and those under any of
        ``anonymous_ids`` or of the anonymous ids the store itself links to the customer (an event
        carrying both) that no other customer claims. How many rows went."""
        con = self.con
        linked = {
            str(a)
            for (a,) in con.execute(
                "SELECT anonymous_id FROM identity_map WHERE user_id = ?", [user_id]
            ).fetchall()
        }
        anonymous = sorted(linked | {str(a) for a in anonymous_ids})
        erased = 0
        con.execute("BEGIN TRANSACTION")
        try:
            for name, columns in self._layout_tables().items():
                where: list[str] = []
                params: list[int | str] = []
                mine = _stored_ids(columns.get("user_id"), [user_id])
                if mine:
                    where.append(f"user_id IN ({', '.join('?' * len(mine))})")
                    params += mine
                theirs = _stored_ids(columns.get("anonymous_id"), anonymous)
                if theirs:  # under a linked anonymous id, unless the event names another customer
                    test = f"anonymous_id IN ({', '.join('?' * len(theirs))})"
                    if "user_id" in columns:
                        test = f"({test} AND (user_id IS NULL OR user_id IN ({', '.join('?' * len(mine))})))"
                        test = test.replace(" OR user_id IN ())", ")")
                    where.append(test)
                    params += theirs + (mine if "user_id" in columns else [])
                if where:
                    row = con.execute(f"DELETE FROM {name} WHERE {' OR '.join(where)}", params).fetchone()
                    erased += int(row[0]) if row else 0
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return erased

    def batches(self) -> list[dict[str, Any]]:
        """The load history, newest first."""
        cur = self.con.execute("SELECT * FROM ingest_batches ORDER BY batch_id DESC")
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


_BAD_ROW = "winback: a row breaks a rule"
_NOT_INTEGER = "winback: an id is not an integer"


def _stored_ids(column_type: str | None, ids: list[str]) -> list[int | str]:
    """``ids`` as a layout column of ``column_type`` holds them (None: no such column): integers for a
    BIGINT column, where only canonical integer text can match."""
    if column_type is None:
        return []
    if column_type == "BIGINT":
        return [int(i) for i in ids if _canonical_integer(i)]
    return list(ids)


def _canonical_integer(text: str) -> bool:
    """Whether ``text`` is how an id stored as BIGINT reads back (``42``, not ``042`` or ``+42``)."""
    try:
        return str(int(text)) == text and abs(int(text)) < 2**63
    except ValueError:
        return False


class _BadRowError(Exception):
    """A trusting load met a bad row: redo the load carefully, to count and explain them."""


class _NotIntegerError(Exception):
    """An id column stored as integers met another value: redo the load storing it as text."""


def _present(inp: PreparedInput) -> list[str]:
    """The optional fields a source has: its layout."""
    return [f for f in _OPTIONAL if f in inp.raw.fields]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A staged record without winback's bookkeeping columns (``_loc``, ``_item``...)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    return "VARCHAR"

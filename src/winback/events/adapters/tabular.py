"""Generic tables: CSV, TSV, whitespace-separated text and Parquet, read by DuckDB at full speed.

Columns map onto canonical fields by ``--map field=column`` (a name, or a 1-based position for files
without a header), then by the canonical name itself, then by common synonyms. Columns that map to
nothing are kept in ``properties``; a ``properties`` column of the file's own (a STRUCT or MAP, or JSON
text) is the event's properties, and those other columns are merged under it. DuckDB streams the file,
so files larger than memory load too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from winback.errors import BadInputError
from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.normalize import (
    ParseOptions,
    RawEvents,
    check_timestamp_format,
    sniff_timestamp_format,
    sql_ident,
    sql_string,
)
from winback.events.schema import EVENT_FIELDS, EVENT_TYPES
from winback.events.store import PreparedInput

#: Source column names recognised without a mapping (compared lower-cased).
COLUMN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "event_id": ("eventid", "message_id", "messageid", "id"),
    "event_type": ("event", "type", "event_name", "action"),
    "timestamp": ("time", "ts", "event_time", "datetime", "date", "created_at", "occurred_at"),
    "user_id": ("userid", "user", "customer_id", "customerid", "visitorid", "visitor_id", "client_id"),
    "anonymous_id": ("anonymousid", "anon_id", "device_id", "cookie_id"),
    "session_id": ("sessionid", "session", "user_session"),
    "product_id": ("productid", "item_id", "itemid", "sku", "product"),
    "category": ("category_code", "category_name", "product_category"),
    "brand": ("brand_name", "item_brand", "vendor", "manufacturer"),
    "price": ("unit_price", "item_price"),
    "quantity": ("qty", "quantity_ordered", "units"),
    "order_id": ("orderid", "transaction_id", "transactionid", "order_number"),
    "value": ("revenue", "total", "amount", "order_total", "order_value"),
    "currency": ("currency_code",),
}

#: Canonical fields whose source column also stays in ``properties``: ``brand`` became canonical after
#: sources had been loaded with it among their properties, and an event without an id is identified by
#: its content, properties included, so moving it would give an event loaded again a new identity.
ALSO_IN_PROPERTIES = ("brand",)


@dataclass
class Preset:
    """A known layout of a generic table: fixed columns, event names and extras kept as properties."""

    columns: dict[str, str] = field(default_factory=dict)
    event_type_map: dict[str, str] = field(default_factory=dict)
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # field -> columns to coalesce


def read_source(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: str, options: AdapterOptions
) -> tuple[str, str, str, bool]:
    """(table expression aliased ``s``, location SQL, location word, has header) for ``path``."""
    p = sql_string(str(path))
    if fmt == "parquet":
        return f"read_parquet({p}, file_row_number = true) s", "s.file_row_number + 1", "row", False
    if fmt == "whitespace":
        header = _whitespace_has_header(path) if options.header is None else options.header
        lines = (
            f"read_csv({p}, columns = {{'line': 'VARCHAR'}}, header = false, delim = '\\x1f', quote = '', "
            f"escape = '', auto_detect = false, skip = {int(header)})"
        )
        split = (
            f"SELECT row_number() OVER () AS _n, regexp_split_to_array(trim(line), '\\s+') AS f FROM {lines}"
        )
        names = _whitespace_names(path, header)
        cols = ", ".join(f"f[{i + 1}] AS {sql_ident(n)}" for i, n in enumerate(names))
        return f"(SELECT _n, {cols} FROM ({split})) s", f"s._n + {int(header)}", "line", header
    delim = options.delimiter or ("\\t" if fmt == "tsv" else None)
    dialect = f", delim = {sql_string(delim)}" if delim else ""
    header = _sniffed_header(con, f"{p}{dialect}") if options.header is None else options.header
    source = f"read_csv({p}, all_varchar = true, header = {str(header).lower()}{dialect}) s"
    return source, f"row_number() OVER () + {int(header)}", "line", header


def _sniffed_header(con: duckdb.DuckDBPyConnection, args: str) -> bool:
    """DuckDB's sniffer decides, from the column types, whether the first row is a header."""
    try:
        row = con.execute(f"SELECT HasHeader FROM sniff_csv({args})").fetchone()
    except duckdb.Error:
        return True
    return bool(row[0]) if row else True


def _whitespace_tokens(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.split()
    return []


def _whitespace_has_header(path: Path) -> bool:
    tokens = _whitespace_tokens(path)
    return bool(tokens) and not any(_looks_numeric(t) for t in tokens)


def _whitespace_names(path: Path, header: bool) -> list[str]:
    tokens = _whitespace_tokens(path)
    return tokens if header else [f"column{i}" for i in range(len(tokens))]


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def describe(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str]:
    """Column name -> DuckDB type of a table expression."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def resolve_columns(
    path: Path, available: list[str], options: AdapterOptions, preset: Preset | None = None
) -> dict[str, str]:
    """Canonical field -> source column, from the user's mapping, the preset, names and synonyms."""
    lower = {c.lower(): c for c in available}
    mapping: dict[str, str] = {}
    for fld, ref in {**(preset.columns if preset else {}), **options.columns}.items():
        if fld not in EVENT_FIELDS:
            raise BadInputError(
                f"--map {fld}={ref}: {fld!r} is not a canonical field; expected one of "
                f"{', '.join(EVENT_FIELDS)}"
            )
        mapping[fld] = _column(path, available, lower, fld, ref)
    taken = set(mapping.values())
    for fld in EVENT_FIELDS:
        if fld in mapping:
            continue
        for candidate in (fld, *COLUMN_SYNONYMS.get(fld, ())):
            column = lower.get(candidate)
            if column is not None and column not in taken:
                mapping[fld] = column
                taken.add(column)
                break
    return mapping


def _properties_column(column: str, duck_type: str) -> str:
    """SQL of a properties column as JSON text: text as written (checked later), a STRUCT or MAP as JSON.

    Any other type (a number, a list) becomes its JSON too, and is then reported as not an object.
    """
    ref = f"s.{sql_ident(column)}"
    return ref if duck_type == "VARCHAR" else f"CAST(to_json({ref}) AS VARCHAR)"


def _column(path: Path, available: list[str], lower: Mapping[str, str], fld: str, ref: str) -> str:
    if ref in available:
        return ref
    if ref.lower() in lower:
        return lower[ref.lower()]
    if ref.isdigit() and 1 <= int(ref) <= len(available):
        return available[int(ref) - 1]
    raise BadInputError(
        f"{path}: --map {fld}={ref}: no such column; the file has {', '.join(available)} "
        "(or give a 1-based position)"
    )


def prepare_table(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    options: AdapterOptions,
    preset: Preset | None = None,
) -> PreparedInput:
    """Describe a tabular file as canonical raw columns."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    check_timestamp_format(options.timestamp_format)
    source, location, word, _ = read_source(con, path, fmt, options)
    try:
        types = describe(con, source)
    except duckdb.Error as exc:
        raise BadInputError(f"{path}: cannot be read as {fmt}: {str(exc).strip().splitlines()[0]}") from exc
    available = [c for c in types if c not in ("_n", "file_row_number")]
    mapping = resolve_columns(path, available, options, preset)
    fields = {f: f"s.{sql_ident(c)}" for f, c in mapping.items()}
    for fld, columns in (preset.fallbacks if preset else {}).items():
        parts = [f"nullif(trim(CAST(s.{sql_ident(c)} AS VARCHAR)), '')" for c in (mapping[fld], *columns)]
        fields[fld] = f"coalesce({', '.join(parts)})"
    if options.event_type:
        if options.event_type not in EVENT_TYPES:
            raise BadInputError(
                f"--event-type {options.event_type}: expected one of {', '.join(EVENT_TYPES)}"
            )
        fields["event_type"] = sql_string(options.event_type)
    for required, hint in (
        ("event_type", " or give every row one type with --event-type purchase"),
        ("timestamp", ""),
    ):
        if required not in fields:
            raise BadInputError(
                f"{path}: no {required} column among {', '.join(available)}; "
                f"map one with --map {required}=COLUMN{hint}"
            )
    moved = {c for f, c in mapping.items() if f not in ALSO_IN_PROPERTIES}
    extras = [c for c in available if c not in moved]
    pairs = ", ".join(f"{sql_string(c)}, s.{sql_ident(c)}" for c in extras)
    given = "properties" in mapping
    if given:
        fields["properties"] = _properties_column(mapping["properties"], types[mapping["properties"]])
    elif extras:  # exactly as before properties columns were read: events keep their identity
        fields["properties"] = f"json_object({pairs})"
    ts_type = types[mapping["timestamp"]]
    ts_format = options.timestamp_format
    if ts_format == "auto" and ts_type == "VARCHAR":
        col = f"s.{sql_ident(mapping['timestamp'])}"
        sample = con.execute(f"SELECT {col} FROM {source} WHERE {col} IS NOT NULL LIMIT 1000").fetchall()
        ts_format = sniff_timestamp_format(str(r[0]) for r in sample)
    elif ts_format == "auto" and ts_type in ("BIGINT", "INTEGER", "DOUBLE"):
        row = con.execute(f"SELECT max(abs({fields['timestamp']})) FROM {source}").fetchone()
        ts_format = "unix_ms" if row and row[0] and float(row[0]) > 1e11 else "unix_s"
    raw = RawEvents(
        source=source,
        fields=fields,
        sources=dict(mapping),
        location=location,
        location_word=word,
        raw_types={f: types.get(c, "VARCHAR") for f, c in mapping.items()},
        streams=fmt != "whitespace",  # its lines are numbered by a window over the file
        properties_given=given,
        extra_properties=f"json_object({pairs})" if given and extras else None,
    )
    event_map = {**(preset.event_type_map if preset else {}), **options.event_type_map}
    parse = ParseOptions(event_type_map=event_map, timestamp_format=ts_format, timezone=options.timezone)
    return PreparedInput(str(path), fmt, raw, parse, ts_format, record="to_json(s)")


class TabularAdapter:
    """CSV, TSV, whitespace-separated text or Parquet with a column mapping."""

    def __init__(self, fmt: str, summary: str, suffixes: tuple[str, ...]) -> None:
        self.name = fmt
        self.summary = summary
        self.suffixes = suffixes

    def detect(self, head: FileHead) -> bool:
        return head.path.suffix.lower() in self.suffixes

    def prepare(self, con: duckdb.DuckDBPyConnection, path: Path, options: AdapterOptions) -> PreparedInput:
        return prepare_table(con, path, self.name, options)


CSV = TabularAdapter("csv", "comma (or sniffed) separated text, with or without a header", (".csv",))
TSV = TabularAdapter("tsv", "tab-separated text", (".tsv", ".tab"))
WHITESPACE = TabularAdapter(
    "whitespace", "columns separated by runs of spaces (e.g. CDNOW)", (".txt", ".dat")
)
PARQUET = TabularAdapter("parquet", "Apache Parquet", (".parquet", ".pq"))

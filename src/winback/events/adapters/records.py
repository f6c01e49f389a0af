"""JSON Lines sources: a streaming reader shared by every JSON format, and the generic JSON Lines mapper.

JSON payloads nest (an order carries a ``products`` array; a GA4 row an ``items`` array), so a JSON
format is a *mapper*: a function from one decoded record to zero or more flat rows of raw canonical
values. The reader decodes with orjson, calls the mapper, and stages the rows into a DuckDB temporary
table in chunks (so a file larger than memory spills to disk instead of failing); from there the same SQL
rules as for tables parse and validate them. A mapper reports a problem it can see (say, ``products`` is
not an array) by raising :class:`RecordError`; the reader turns it into a bad row with a JSON pointer.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import orjson
import pyarrow as pa

from winback.errors import BadInputError
from winback.events.adapters.base import AdapterOptions, FileHead
from winback.events.adapters.tabular import ALSO_IN_PROPERTIES, COLUMN_SYNONYMS
from winback.events.normalize import ParseOptions, RawEvents, check_timestamp_format, sniff_timestamp_format
from winback.events.schema import EVENT_FIELDS, EVENT_TYPES
from winback.events.store import PreparedInput

CHUNK_ROWS = 50_000
_STAGED = (*EVENT_FIELDS, "_item", "_problem")
_counter = itertools.count(1)

Row = dict[str, Any]


class RecordError(Exception):
    """A record a mapper cannot map: which field (a JSON pointer), what it found, what it expected."""

    def __init__(self, pointer: str, found: object, expected: str) -> None:
        super().__init__(f"{pointer}: found {found!r}, expected {expected}")
        self.pointer, self.found, self.expected = pointer, found, expected


class RecordMapper(Protocol):
    """One JSON format: recognises its records and flattens each into canonical rows."""

    name: str
    summary: str
    #: canonical field -> JSON pointer it comes from; ``{item}`` stands for the row's ``_item`` pointer.
    sources: Mapping[str, str]

    def detect(self, head: FileHead) -> bool: ...

    def rows(self, record: dict[str, Any], options: AdapterOptions) -> Iterable[Row]:
        """Canonical raw values (any JSON scalar; ``properties`` a dict) of each event in ``record``."""
        ...


def text(value: object) -> str | None:
    """A JSON scalar as the text the SQL parser reads (numbers keep their full precision)."""
    if value is None or isinstance(value, dict | list):
        return None if value is None else orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def blank(value: object) -> bool:
    """Whether a JSON value says nothing (null, "", [] or {})."""
    return value is None or value == "" or value == [] or value == {}


def compact(values: Mapping[str, Any], is_blank: Callable[[object], bool] = blank) -> dict[str, Any]:
    """``values`` without its blank entries (for ``properties``)."""
    return {k: v for k, v in values.items() if not is_blank(v)}


def first(*values: Any, is_blank: Callable[[object], bool] = blank) -> Any:
    """The first value that is not blank, or None."""
    return next((v for v in values if not is_blank(v)), None)


def given_properties(value: object, pointer: str) -> dict[str, Any]:
    """A source's own properties as a dict: an object, JSON text of one (as a CSV or an export of the
    ``events`` view holds them), or nothing (null or blank text: no properties)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: reported below as what it is
            value = orjson.loads(value)
    if not isinstance(value, dict):
        raise RecordError(pointer, value, 'a JSON object such as {"color": "red"}, or nothing')
    return value


def dig(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``context.traits.email``), or None."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    """(line number, record or the reason it is not one) for every non-blank line."""
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield (
                    number,
                    RecordError("", line.strip()[:60].decode(errors="replace"), f"a JSON object ({exc})"),
                )
                continue
            if not isinstance(record, dict):
                yield number, RecordError("", type(record).__name__, "a JSON object on each line")
                continue
            yield number, record


def first_record(path: Path) -> dict[str, Any] | None:
    """The first JSON object of a JSON Lines file, or None when the file does not start with one."""
    try:
        for _, record in read_json_lines(path):
            return record if isinstance(record, dict) else None
    except (OSError, UnicodeDecodeError):
        return None
    return None


@dataclass
class _Stager:
    """Collects rows column by column and flushes them into a DuckDB temporary table."""

    con: duckdb.DuckDBPyConnection
    table: str
    columns: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in ("_loc", *_STAGED)})
    created: bool = False

    def add(self, loc: int, row: Row) -> None:
        cols = self.columns
        cols["_loc"].append(loc)
        for name in _STAGED:
            value = row.get(name)
            if name == "properties" and isinstance(value, dict):
                cols[name].append(
                    orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if value else None
                )
            else:
                cols[name].append(text(value))
        if len(cols["_loc"]) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.created and not self.columns["_loc"]:
            return
        arrays = {"_loc": pa.array(self.columns["_loc"], pa.int64())}
        arrays |= {c: pa.array(self.columns[c], pa.string()) for c in _STAGED}
        chunk = pa.table(arrays)
        self.con.register("_records_chunk", chunk)
        try:
            verb = "INSERT INTO" if self.created else "CREATE TEMP TABLE"
            self.con.execute(
                f"{verb} {self.table} {'AS ' if not self.created else ''}SELECT * FROM _records_chunk"
            )
        finally:
            self.con.unregister("_records_chunk")
        self.created = True
        self.columns = {c: [] for c in ("_loc", *_STAGED)}


def _problem(error: RecordError) -> Row:
    return {
        "_problem": orjson.dumps(
            {"field": error.pointer or "(line)", "found": text(error.found), "expected": error.expected}
        ).decode()
    }


def prepare_records(
    con: duckdb.DuckDBPyConnection, path: Path, mapper: RecordMapper, options: AdapterOptions
) -> PreparedInput:
    """Stage a JSON Lines file through ``mapper`` and describe it as canonical raw columns."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    check_timestamp_format(options.timestamp_format)
    stager = _Stager(con, f"records_{next(_counter)}")
    samples: list[str] = []
    for loc, record in read_json_lines(path):
        if isinstance(record, RecordError):
            stager.add(loc, _problem(record))
            continue
        try:
            for row in list(mapper.rows(record, options)):  # a record that fails stages nothing
                if options.event_type:
                    row["event_type"] = options.event_type
                if len(samples) < 1000 and row.get("timestamp") is not None:
                    samples.append(str(row["timestamp"]))
                stager.add(loc, row)
        except RecordError as error:
            stager.add(loc, _problem(error))
    stager.flush()
    ts_format = options.timestamp_format
    if ts_format == "auto":
        ts_format = sniff_timestamp_format(samples)
    raw = RawEvents(
        source=f"{stager.table} s",
        fields={f: f"s.{f}" for f in EVENT_FIELDS},
        sources=dict(mapper.sources),
        location="s._loc",
        location_word="line",
        item_pointer="s._item",
        problem="s._problem",
    )
    parse = ParseOptions(
        event_type_map=options.event_type_map, timestamp_format=ts_format, timezone=options.timezone
    )
    return PreparedInput(str(path), mapper.name, raw, parse, ts_format, record="to_json(s)")


class RecordAdapter:
    """Adapts a :class:`RecordMapper` to the adapter interface."""

    def __init__(self, mapper: RecordMapper) -> None:
        self.mapper = mapper
        self.name = mapper.name
        self.summary = mapper.summary

    def detect(self, head: FileHead) -> bool:
        return self.mapper.detect(head)

    def prepare(self, con: duckdb.DuckDBPyConnection, path: Path, options: AdapterOptions) -> PreparedInput:
        return prepare_records(con, path, self.mapper, options)


class GenericJsonMapper:
    """Flat or nested JSON objects, one per line, with ``--map field=dotted.path``.

    Without a mapping, top-level keys named like canonical fields (or their usual synonyms) are used;
    the remaining top-level keys are kept in ``properties``. A ``properties`` key (or the path mapped to
    ``properties``) is the event's properties: an object, or JSON text of one; the remaining keys are
    merged under it, its own value winning on a shared key.
    """

    name = "jsonl"
    summary = "JSON Lines of flat or nested objects, with --map field=dotted.path"
    sources: Mapping[str, str] = {}

    def detect(self, head: FileHead) -> bool:
        return head.first_record is not None or head.path.suffix.lower() in (".jsonl", ".ndjson")

    def rows(self, record: dict[str, Any], options: AdapterOptions) -> Iterable[Row]:
        paths = self._paths(record, options)
        row: Row = {f: dig(record, p) for f, p in paths.items() if f != "properties"}
        used = {p.split(".")[0] for f, p in paths.items() if f not in ALSO_IN_PROPERTIES}
        extra = {k: v for k, v in record.items() if k not in used}
        if "properties" in paths:
            path = paths["properties"]
            given = given_properties(dig(record, path), "/" + path.replace(".", "/"))
            row["properties"] = {**extra, **given}
        elif extra:  # exactly as before properties keys were read: events keep their identity
            row["properties"] = extra
        if options.event_type and options.event_type not in EVENT_TYPES:
            raise BadInputError(
                f"--event-type {options.event_type}: expected one of {', '.join(EVENT_TYPES)}"
            )
        return [row]

    @staticmethod
    def _paths(record: dict[str, Any], options: AdapterOptions) -> dict[str, str]:
        paths = dict(options.columns)
        unknown = set(paths) - set(EVENT_FIELDS)
        if unknown:
            raise BadInputError(
                f"--map: {sorted(unknown)} are not canonical fields; expected {', '.join(EVENT_FIELDS)}"
            )
        lower = {k.lower(): k for k in record}
        for fld in EVENT_FIELDS:
            if fld in paths:
                continue
            for candidate in (fld, *COLUMN_SYNONYMS.get(fld, ())):
                if candidate in lower:
                    paths[fld] = lower[candidate]
                    break
        return paths


JSONL = RecordAdapter(GenericJsonMapper())

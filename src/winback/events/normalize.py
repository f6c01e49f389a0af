"""Turn an adapter's raw columns into canonical, validated events, in SQL.

Every adapter hands over the same thing: one SQL expression per canonical field over its source (text or
already typed). This module parses those expressions into canonical types and states every validation
rule once, as a list of :class:`Check`; the store runs the same rules to filter rows at full speed and,
only when something is wrong, to explain each bad row. Keeping parsing here (not in each adapter) is what
makes the behaviour identical for every source format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from winback.config import Settings
from winback.errors import BadInputError
from winback.events.schema import EVENT_TYPES, PRODUCT_EVENT_TYPES

#: Source event names understood without any mapping (compared lower-cased and trimmed).
EVENT_TYPE_SYNONYMS: dict[str, str] = {
    **{t: t for t in EVENT_TYPES},
    "pageview": "view",
    "page_view": "view",
    "product_view": "view",
    "product viewed": "view",
    "view_item": "view",
    "detail": "view",
    "addtocart": "add_to_cart",
    "add-to-cart": "add_to_cart",
    "cart": "add_to_cart",
    "product added": "add_to_cart",
    "removefromcart": "remove_from_cart",
    "remove-from-cart": "remove_from_cart",
    "product removed": "remove_from_cart",
    "checkout": "checkout_start",
    "begin_checkout": "checkout_start",
    "checkout started": "checkout_start",
    "initiate_checkout": "checkout_start",
    "transaction": "purchase",
    "order": "purchase",
    "order completed": "purchase",
    "order_completed": "purchase",
}

#: Mapping a source event name to this drops its rows on purpose (counted as ``ignored``).
IGNORE = "ignore"

TIMESTAMP_FORMATS = ("auto", "iso", "yyyymmdd", "unix_s", "unix_ms")
_TIMESTAMP_HELP = {
    "auto": "a timestamp (ISO 8601 text, YYYYMMDD, or unix seconds or milliseconds)",
    "iso": "an ISO 8601 timestamp like 2024-05-01T12:30:00Z, as in the rest of the file",
    "yyyymmdd": "a date as YYYYMMDD, as in the rest of the file",
    "unix_s": "unix seconds, as in the rest of the file",
    "unix_ms": "unix milliseconds, as in the rest of the file",
}

_ATOMIC = (
    "every event of its line to be valid: another event of this record is bad, and a record is kept whole"
)

TEXT_FIELDS = ("user_id", "anonymous_id", "session_id", "product_id", "category", "brand", "order_id")


def sql_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Check:
    """One validation rule: rows where ``condition`` holds are bad, for the reason ``expected``."""

    field: str
    condition: str
    expected: str
    found: str  # SQL for the offending value as text
    truncate: bool = True  # shorten long values in messages


@dataclass
class RawEvents:
    """What an adapter produces: SQL text per canonical field over ``source`` (a table expression).

    ``sources`` names where each field came from (a column name, or a JSON pointer that may contain
    ``{item}``, filled from the row's ``_item`` column), so errors speak the user's vocabulary.
    ``location`` is the SQL of the row's line number in its file (or row index in a Parquet file).
    """

    source: str
    fields: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    location: str = "row_number() OVER ()"
    location_word: str = "line"
    item_pointer: str | None = None  # SQL of a per-row JSON pointer prefix, for nested line items
    problem: str | None = None  # SQL of an adapter-detected problem as JSON {field, found, expected}
    raw_types: dict[str, str] = field(default_factory=dict)  # DuckDB type of each field's expression
    #: False when the source's first rows cost a pass over all of it (a window inside ``source``).
    streams: bool = True
    #: True when ``fields["properties"]`` is the source's own properties column (JSON text, or JSON from
    #: a STRUCT or MAP): it is then checked to be a JSON object, and ``extra_properties`` (SQL of a JSON
    #: object of the columns no field took) is merged under it. False: ``fields["properties"]`` is
    #: winback's own JSON object of those columns, stored as it is (the identity events always had).
    properties_given: bool = False
    extra_properties: str | None = None


@dataclass
class ParseOptions:
    """How to read the values of one source (from the CLI's options or a mapping file)."""

    event_type_map: Mapping[str, str] = field(default_factory=dict)
    timestamp_format: str = "auto"
    timezone: str = "UTC"


def event_type_sql(raw: str, extra: Mapping[str, str]) -> str:
    """Canonical event type of ``raw`` (NULL when unknown), honouring the user's mapping first."""
    for name, target in extra.items():
        if target not in (*EVENT_TYPES, IGNORE):
            raise BadInputError(
                f"--event-types {name}={target}: expected one of {', '.join(EVENT_TYPES)} or {IGNORE}"
            )
    mapping = {**EVENT_TYPE_SYNONYMS, **{k.strip().lower(): v for k, v in extra.items()}}
    cases = " ".join(f"WHEN {sql_string(k)} THEN {sql_string(v)}" for k, v in mapping.items())
    # Names already written lower-cased and trimmed (nearly all) match without lower(trim()), which
    # costs more than the lookup itself; the others are looked up again normalised.
    text = f"CAST({raw} AS VARCHAR)"
    return f"(CASE {text} {cases} ELSE (CASE lower(trim({text})) {cases} ELSE NULL END) END)"


def check_timestamp_format(fmt: str) -> None:
    """Refuse a --timestamp-format winback cannot read."""
    if fmt not in TIMESTAMP_FORMATS:
        raise BadInputError(f"--timestamp-format {fmt}: expected one of {', '.join(TIMESTAMP_FORMATS)}")


def sniff_timestamp_format(samples: Iterable[str]) -> str:
    """The one format all sample values share, or ``auto`` (decided row by row) when they differ."""
    kinds = {_timestamp_kind(s.strip()) for s in samples if s and s.strip()}
    return kinds.pop() if len(kinds) == 1 else "auto"


def _timestamp_kind(text: str) -> str:
    if re.fullmatch(r"\d{8}", text):
        return "yyyymmdd"
    if re.fullmatch(r"\d{9,11}(\.\d*)?", text):
        return "unix_s"
    if re.fullmatch(r"\d{12,14}(\.\d*)?", text):
        return "unix_ms"
    return "iso"


def timestamp_sql(raw: str, raw_type: str, fmt: str) -> str:
    """SQL parsing ``raw`` into TIMESTAMPTZ (NULL when it cannot be parsed).

    Naive times are read in the connection's time zone, which the store sets to the source's
    ``timezone`` while it reads.
    """
    t = raw_type.upper()
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"CAST({raw} AS TIMESTAMPTZ)"
    if t in {"BIGINT", "INTEGER", "HUGEINT", "UBIGINT", "DOUBLE", "FLOAT", "DECIMAL"} or t.startswith(
        "DECIMAL"
    ):
        raw = f"CAST({raw} AS VARCHAR)"
    by_format = {
        "iso": f"TRY_CAST({raw} AS TIMESTAMPTZ)",
        "yyyymmdd": f"CAST(try_strptime({raw}, '%Y%m%d') AS TIMESTAMPTZ)",
        "unix_s": f"make_timestamptz(CAST(TRY_CAST({raw} AS DOUBLE) * 1000000 AS BIGINT))",
        "unix_ms": f"make_timestamptz(CAST(TRY_CAST({raw} AS DOUBLE) * 1000 AS BIGINT))",
    }
    if fmt != "auto":
        return by_format[fmt]
    text = f"trim({raw})"
    return (
        f"(CASE WHEN regexp_full_match({text}, '\\d{{8}}') THEN {by_format['yyyymmdd']} "
        f"WHEN regexp_full_match({text}, '\\d{{9,11}}(\\.\\d*)?') THEN {by_format['unix_s']} "
        f"WHEN regexp_full_match({text}, '\\d{{12,14}}(\\.\\d*)?') THEN {by_format['unix_ms']} "
        f"ELSE {by_format['iso']} END)"
    )


def _text(raw: str) -> str:
    return f"nullif(trim(CAST({raw} AS VARCHAR)), '')"


def _number(raw: str) -> str:
    return f"TRY_CAST({_text(raw)} AS DOUBLE)"


@dataclass
class Canonical:
    """The parsed select list and the validation rules for one :class:`RawEvents`.

    Columns are computed in two layers so each rule can refer to parsed values by name:
    ``r_<field>`` (raw, as text or the source's type) and then the canonical ``<field>``.
    """

    raw_select: list[str]
    parsed_select: list[str]
    checks: list[Check]
    timestamp_format: str
    #: A JSON record (an order with line items) is stored whole or not at all; needs the ``lined`` layer
    #: of the store's pipeline, which marks every row of a line holding a bad row with ``_line_bad``.
    atomic_lines: bool = False

    @property
    def row_bad(self) -> str:
        return " OR ".join(f"coalesce({c.condition}, false)" for c in self.checks)

    @property
    def bad(self) -> str:
        return f"({self.row_bad}) OR _line_bad" if self.atomic_lines else self.row_bad

    def problems(self) -> str:
        """SQL of the list of problems of a row, as structs (field, found, expected)."""
        checks = list(self.checks)
        if self.atomic_lines:
            checks.append(Check("(line)", f"_line_bad AND NOT ({self.row_bad})", _ATOMIC, "'(valid)'"))
        items = ", ".join(
            f"CASE WHEN coalesce({c.condition}, false) THEN {{'field': {sql_string(c.field)}, "
            f"'found': {f'left(CAST({c.found} AS VARCHAR), 80)' if c.truncate else c.found}, "
            f"'expected': {sql_string(c.expected)}}} END"
            for c in checks
        )
        return f"list_filter([{items}], lambda x: x IS NOT NULL)"


def canonicalize(
    raw: RawEvents, options: ParseOptions, settings: Settings, timestamp_format: str
) -> Canonical:
    """Build the parsing select lists and the checks for ``raw``."""
    f = raw.fields
    null = "CAST(NULL AS VARCHAR)"
    raw_select = [f"{f.get(name, null)} AS r_{name}" for name in (*TEXT_FIELDS, "event_id", "currency")]
    raw_select += [
        f"{f.get(name, null)} AS r_{name}" for name in ("event_type", "timestamp", "price", "quantity")
    ]
    raw_select += [f"{f.get('value', null)} AS r_value", f"{f.get('properties', null)} AS r_properties"]
    if raw.properties_given:
        raw_select.append(f"{raw.extra_properties or 'CAST(NULL AS JSON)'} AS r_extra_properties")
    raw_select += [f"{raw.problem or null} AS r_problem", f"{raw.item_pointer or null} AS r_item"]

    ts_type = raw.raw_types.get("timestamp", "VARCHAR")
    allowed = ", ".join(EVENT_TYPES)
    parsed_select = [
        *(f"{_text('r_' + name)} AS {name}" for name in TEXT_FIELDS),
        f"{_text('r_event_id')} AS event_id",
        f"coalesce(upper({_text('r_currency')}), {sql_string(settings.default_currency)}) AS currency",
        f"{event_type_sql('r_event_type', options.event_type_map)} AS event_type",
        f"{timestamp_sql('r_timestamp', ts_type, timestamp_format)} AS timestamp",
        f"{_number('r_price')} AS price",
        f"TRY_CAST({_text('r_quantity')} AS DOUBLE) AS quantity_number",
        "TRY_CAST(quantity_number AS INTEGER) AS quantity",
        f"{_number('r_value')} AS value",
        *_properties_select(raw.properties_given),
    ]
    horizon = int(settings.max_future.total_seconds())
    min_ts = sql_string(settings.min_timestamp)
    checks = [
        Check("(record)", "r_problem IS NOT NULL", "", "r_problem", truncate=False),
        Check(
            "event_type",
            "event_type IS NULL",  # the mapping yields only canonical types (checked in event_type_sql)
            f"one of {allowed} (map other names with --event-types NAME=TYPE, or NAME=ignore to drop them)",
            "coalesce(CAST(r_event_type AS VARCHAR), '(missing)')",
        ),
        Check(
            "timestamp",
            "timestamp IS NULL",
            _TIMESTAMP_HELP[timestamp_format] + " (or set --timestamp-format)",
            "coalesce(CAST(r_timestamp AS VARCHAR), '(missing)')",
        ),
        Check(
            "timestamp",
            f"timestamp > now() + to_seconds({horizon})",
            f"a time no later than {horizon // 3600} h from now (WINBACK_MAX_FUTURE)",
            "strftime(timestamp, '%Y-%m-%dT%H:%M:%SZ')",
        ),
        Check(
            "timestamp",
            f"timestamp < CAST({min_ts} AS TIMESTAMPTZ)",
            f"a time after {settings.min_timestamp} (are milliseconds being read as seconds?)",
            "strftime(timestamp, '%Y-%m-%dT%H:%M:%SZ')",
        ),
        Check(
            "user_id",
            "user_id IS NULL AND anonymous_id IS NULL",
            "a user_id or an anonymous_id (an event, above all a purchase, must belong to someone)",
            "'(missing)'",
        ),
        Check(
            "product_id",
            f"product_id IS NULL AND event_type IN ({', '.join(sql_string(t) for t in PRODUCT_EVENT_TYPES)})",
            "a product_id on cart events",
            "'(missing)'",
        ),
        *_money_checks("price"),
        Check(
            "quantity",
            f"{_text('r_quantity')} IS NOT NULL AND (quantity_number IS NULL OR quantity_number < 1 "
            "OR quantity_number <> floor(quantity_number) OR quantity_number > 1000000)",
            "a whole number from 1 to 1,000,000",
            "r_quantity",
        ),
        *_money_checks("value"),
        *(_properties_checks() if raw.properties_given else []),
        Check(
            "currency",
            f"CASE WHEN currency = {sql_string(settings.default_currency)} THEN false "
            "ELSE NOT regexp_full_match(currency, '[A-Z]{3}') END",
            "a three-letter ISO 4217 currency code such as USD",
            "r_currency",
        ),
    ]
    # A record the adapter could not read has no values to check: report only why it could not.
    checks = [
        checks[0],
        *(replace(c, condition=f"r_problem IS NULL AND ({c.condition})") for c in checks[1:]),
    ]
    return Canonical(
        raw_select, parsed_select, checks, timestamp_format, atomic_lines=raw.item_pointer is not None
    )


_PROPERTY_MAP = "MAP(VARCHAR, JSON)"


def _properties_select(given: bool) -> list[str]:
    """The stored ``properties``: as the adapter built them, or a given column merged over the extras.

    A given column is read as a map of key -> JSON value (NULL when the text is not one JSON object, which
    a check reports), laid over the extras' map so that its value wins on a shared key, and written back
    with the keys sorted, so the same properties give the same identity whatever their source's key order.
    Unlike ``json_merge_patch`` this keeps keys whose value is null. Nothing at all is stored as NULL.
    """
    if not given:
        return ["CAST(r_properties AS VARCHAR) AS properties"]
    return [
        f"{_text('r_properties')} AS properties_text",
        f"TRY_CAST(TRY_CAST(properties_text AS JSON) AS {_PROPERTY_MAP}) AS properties_map",
        "nullif(CAST(to_json(map_from_entries(list_sort(map_entries(map_concat("
        f"coalesce(TRY_CAST(r_extra_properties AS {_PROPERTY_MAP}), MAP {{}}), "
        f"coalesce(properties_map, MAP {{}})))))) AS VARCHAR), '{{}}') AS properties",
    ]


def _properties_checks() -> list[Check]:
    return [
        Check(
            "properties",
            "properties_text IS NOT NULL AND properties_map IS NULL",
            'a JSON object such as {"color": "red"} (each key once), or nothing',
            "properties_text",
        )
    ]


def _money_checks(name: str) -> list[Check]:
    return [
        Check(
            name,
            f"{_text('r_' + name)} IS NOT NULL AND ({name} IS NULL OR NOT isfinite({name}))",
            "a number",
            f"r_{name}",
        ),
        Check(
            name, f"{name} < 0", "a non-negative amount (refunds are not events winback reads)", f"r_{name}"
        ),
    ]

"""Where feature expressions run: the embedded DuckDB store (default) or Apache Spark.

Every feature in :mod:`winback.features` is an Ibis expression over the canonical ``events`` table, so the
same code compiles to DuckDB SQL or Spark SQL. This module only connects: it opens the store read-only
for DuckDB, or starts (once per process) a local Spark session that reads the events as Parquet, either a
dataset the user names (``spark_events``, e.g. a data lake path written by the shop's pipeline) or an
export of the store refreshed whenever the store has gained a batch.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
from ibis.backends import BaseBackend

from winback.config import Settings
from winback.errors import BadInputError, WinbackError
from winback.events.schema import EVENT_FIELDS
from winback.events.store import EventStore
from winback.files import written_atomically

ENGINES = ("duckdb", "spark")

#: The canonical columns features read (``events`` view of the store, or a Parquet dataset of them).
EVENT_COLUMNS = EVENT_FIELDS
#: Optional text columns added to the canonical model later; events exported without them have none.
LATER_COLUMNS = ("brand",)


@dataclass
class FeatureSource:
    """An Ibis backend and the events table expressions are built on."""

    engine: str
    con: BaseBackend
    events: ibis.Table
    cached: list[ibis.Table] = field(default_factory=list)

    def cache(self, expr: ibis.Table) -> ibis.Table:
        """``expr`` computed once (a temporary table on DuckDB, a cached DataFrame on Spark) and
        released when the source closes."""
        table = expr.cache()
        self.cached.append(table)
        return table

    def release(self) -> None:
        for table in self.cached:
            table.release()
        self.cached.clear()

    def execute(self, expr: ibis.Table) -> pd.DataFrame:
        """Run ``expr`` and return pandas with UTC-aware timestamps on every engine.

        Spark hands timestamps back without a zone (in the session's zone, which we pin to UTC); DuckDB
        keeps them zoned. Aligning here keeps results of the two engines comparable and point-in-time
        code zone-safe.
        """
        frame = self.con.execute(expr)
        for name, dtype in frame.dtypes.items():
            if isinstance(dtype, pd.DatetimeTZDtype):
                frame[name] = frame[name].dt.tz_convert("UTC")
            elif pd.api.types.is_datetime64_dtype(dtype):
                frame[name] = frame[name].dt.tz_localize("UTC")
        return frame


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise BadInputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    return engine


@contextmanager
def open_source(settings: Settings, engine: str = "duckdb") -> Iterator[FeatureSource]:
    """The events of the winback home on ``engine``; closed (DuckDB) on exit."""
    check_engine(engine)
    if engine == "duckdb":
        with EventStore(settings, read_only=True) as store:
            store.con.execute("SET memory_limit = ?", [settings.feature_memory_limit])
            con = ibis.duckdb.from_connection(store.con)
            source = FeatureSource("duckdb", con, con.table("events").select(*EVENT_COLUMNS))
            try:
                yield source
            finally:
                source.release()
        return
    path = Path(settings.spark_events) if settings.spark_events else export_for_spark(settings)
    con = ibis.pyspark.connect(spark_session(settings))
    try:
        events = con.read_parquet(str(path))
    except Exception as exc:  # Spark's AnalysisException and friends carry the reason in the message
        raise BadInputError(f"spark_events {path}: cannot read it as Parquet events: {exc}") from exc
    for column in LATER_COLUMNS:  # Parquet written before the column existed: none known
        if column not in events.columns:
            events = events.mutate(**{column: ibis.null().cast("string")})
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise BadInputError(f"spark_events {path}: missing canonical columns {missing}")
    source = FeatureSource("spark", con, events.select(*EVENT_COLUMNS))
    try:
        yield source
    finally:
        source.release()


def export_for_spark(settings: Settings) -> Path:
    """The store's events as Parquet under ``HOME/spark/``, rewritten only when the store has changed."""
    with EventStore(settings, read_only=True) as store:
        row = store.con.execute("SELECT coalesce(max(batch_id), 0), count(*) FROM event_log").fetchone()
        assert row is not None
        directory = settings.home / "spark"
        path = directory / f"events-b{row[0]}-n{row[1]}.parquet"
        if path.exists():
            return path
        columns = ", ".join(EVENT_COLUMNS)
        with written_atomically(path) as tmp:
            store.con.execute(
                f"COPY (SELECT {columns} FROM events) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)"
            )
    for old in directory.glob("events-*.parquet"):
        if old != path:
            old.unlink()
    return path


_SPARK: Any = None


def spark_session(settings: Settings) -> Any:
    """One local Spark session per process (it takes about 10 s to start), in UTC."""
    global _SPARK
    if _SPARK is not None:
        return _SPARK
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise WinbackError(
            "--engine spark needs PySpark: pip install 'winback[spark]' (and Java 17 or newer)"
        ) from exc
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # PySpark 4 warns on every pandas conversion that it is not yet certified for pandas 3; features
    # convert only plain types, and the Spark-vs-DuckDB test checks the results are equal.
    for notice in ("PySpark does not yet fully support pandas", "The copy keyword is deprecated"):
        warnings.filterwarnings("ignore", message=notice, module="pyspark")
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName("winback")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    try:
        _SPARK = builder.getOrCreate()
    except Exception as exc:  # no Java, no free port...: say what to check
        raise WinbackError(f"cannot start Spark ({settings.spark_master}): {exc}") from exc
    _SPARK.sparkContext.setLogLevel("ERROR")
    return _SPARK

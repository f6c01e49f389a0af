"""The same feature expressions on DuckDB and on a local Apache Spark give the same tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from winback.config import Settings, load_settings
from winback.errors import BadInputError
from winback.features.engine import export_for_spark, open_source
from winback.features.tables import FeatureTables
from winback.models import tasks
from winback.sim import SimulationResult

pytestmark = pytest.mark.slow


def _all_tables(settings: Settings, engine: str) -> dict[str, pd.DataFrame]:
    with open_source(settings, engine) as source:
        tables = FeatureTables(source, settings)
        as_of = pd.Timestamp("2024-04-01", tz="UTC")
        return {
            "carts": tables.carts(),
            "snapshots": tables.cart_snapshots(),
            "scoring snapshots": tables.cart_snapshots(as_of=as_of),
            "customers": tables.customers(as_of, horizon_days=30),
        }


def test_duckdb_and_spark_compute_equal_features(sim_shop: tuple[Settings, SimulationResult]) -> None:
    settings, _ = sim_shop
    duck = _all_tables(settings, "duckdb")
    spark = _all_tables(settings, "spark")
    for name, frame in duck.items():
        assert len(frame) > 100, name
        other = spark[name]
        assert list(other.columns) == list(frame.columns), name
        pd.testing.assert_frame_equal(
            frame, other, check_dtype=False, check_exact=False, rtol=1e-9, obj=f"{name} (duckdb vs spark)"
        )


def test_models_train_on_spark_features_as_on_duckdb(
    sim_shop: tuple[Settings, SimulationResult], tmp_path: Path
) -> None:
    """The model commands run on either engine (``--engine spark``) and learn the same thing."""
    settings = load_settings(home=tmp_path / "home")
    settings.home.mkdir()
    shutil.copy(sim_shop[0].store_path, settings.store_path)
    results = {}
    for engine in ("duckdb", "spark"):
        with open_source(settings, engine) as source:
            tables = FeatureTables(source, settings)
            results[engine] = tasks.evaluate_clv(tables, None, 30)
            card = tasks.train_segments(tables, None)
        assert card.engine == engine
    assert results["spark"]["bgnbd"] == pytest.approx(results["duckdb"]["bgnbd"], rel=1e-9)
    assert results["spark"]["purchases"] == results["duckdb"]["purchases"]


def test_a_spark_events_path_that_is_not_canonical_events_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"visitor": ["a"], "when": [1]})
    frame.to_parquet(tmp_path / "other.parquet")
    settings = load_settings(home=tmp_path / "home", spark_events=tmp_path / "other.parquet")
    with (
        pytest.raises(BadInputError, match=r"missing canonical columns \['event_id', 'event_type'"),
        open_source(settings, "spark"),
    ):
        pass
    settings = load_settings(home=tmp_path / "home", spark_events=tmp_path / "nowhere.parquet")
    with (
        pytest.raises(BadInputError, match="cannot read it as Parquet events"),
        open_source(settings, "spark"),
    ):
        pass


def test_spark_events_written_before_brand_existed_still_open(
    sim_shop: tuple[Settings, SimulationResult], tmp_path: Path
) -> None:
    """Parquet events exported by an earlier winback lack ``brand``: read as unknown, not refused."""
    exported = pq.read_table(export_for_spark(sim_shop[0]))
    older = exported.drop_columns(["brand"])
    pq.write_table(older, tmp_path / "older.parquet")
    settings = load_settings(home=tmp_path / "home", spark_events=tmp_path / "older.parquet")
    with open_source(settings, "spark") as source:
        counts = source.execute(
            source.events.aggregate(n=source.events.count(), branded=source.events.brand.count())
        )
    assert counts.to_dict("records") == [{"n": older.num_rows, "branded": 0}]
    assert pc.count(exported["brand"]).as_py() > 0  # the simulator's events do have brands

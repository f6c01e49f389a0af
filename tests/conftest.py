"""Shared fixtures: the real data beside the checkout, and a fresh winback home per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from winback.config import Settings, load_settings
from winback.events.store import EventStore
from winback.sim import ShopConfig, SimulationResult, simulate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``: real public data; its absence is a failure, not a skip."""
    if not (DATA / "README.md").exists():
        pytest.fail(f"the shared data directory is missing: expected {DATA} beside the checkout")
    return DATA


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Iterator[EventStore]:
    with EventStore(settings) as s:
        yield s


@pytest.fixture(scope="session")
def sim_shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimulationResult]:
    """A small simulated shop (600 customers, 150 days) stored once per test run; read-only for tests."""
    settings = load_settings(home=tmp_path_factory.mktemp("sim") / "home")
    result = simulate(seed=11, config=ShopConfig(customers=600, days=150))
    with EventStore(settings) as store:
        store.append(result.events, source="simulated")
    return settings, result


@pytest.fixture(scope="session")
def shop_copy(
    sim_shop: tuple[Settings, SimulationResult], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Make a writable winback home holding a copy of :func:`sim_shop`'s store (for tests that train,
    score or plan, which write models and logs into their home)."""

    def make(label: str) -> Path:
        home = tmp_path_factory.mktemp(label) / "home"
        home.mkdir()
        shutil.copy(sim_shop[0].store_path, home / "events.duckdb")
        return home

    return make

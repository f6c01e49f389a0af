"""Shared fixtures: the real data beside the checkout, a fresh winback home per test, and the service's
databases.

``database_url``: every storage test runs on SQLite and on the real PostgreSQL of this machine.
PostgreSQL is reached at ``WINBACK_TEST_POSTGRES_URL`` (default: the local server, trust auth, as user
postgres); each test run creates its own database there and drops it afterwards. A server that does not
answer fails the tests with what is missing, never skips them (`make test` starts one if none runs).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from winback.config import Settings, load_settings
from winback.events.store import EventStore
from winback.serve.db import make_engine
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
def measured_shop(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small shop (800 customers, 60 days) that ran winback's randomising policy with a 10% holdout:
    its event store and its decision log with outcomes, stored once per test run; read-only for tests
    (copy its home to change it)."""
    from winback.measure.simulated import simulate_with_holdout, store_simulated

    settings = load_settings(home=tmp_path_factory.mktemp("measured") / "home")
    store_simulated(settings, simulate_with_holdout(4, ShopConfig(customers=800, days=60)))
    return settings


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


ADMIN_URL = os.environ.get(
    "WINBACK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for this test run (dropped at the end)."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({type(error).__name__}); the service tests need "
            "a real server: run `make test` (it starts one) or set WINBACK_TEST_POSTGRES_URL"
        )
    name = f"winback_test_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _empty(url: str) -> None:
    """Drop every table, so each test starts from an unmigrated database."""
    engine = make_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite in a temporary home, or the test run's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_server")
    _empty(url)
    return url

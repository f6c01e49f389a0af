"""Service fixtures: every storage test runs on SQLite and on the real PostgreSQL of this machine.

PostgreSQL is reached at ``WINBACK_TEST_POSTGRES_URL`` (default: the local server, trust auth, as user
postgres); each test run creates its own database there and drops it afterwards. A server that does not
answer fails the tests with what is missing, never skips them (`make test` starts one if none runs).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from winback.config import Settings, load_settings
from winback.serve.db import make_engine
from winback.serve.keys import create_key
from winback.serve.main import create_app

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


@pytest.fixture
def service_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def client(service_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


@pytest.fixture
def write_key(client: TestClient) -> str:
    token, _ = create_key(client.app.state.winback.engine, "write")  # type: ignore[attr-defined]
    return token


@pytest.fixture
def auth(write_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {write_key}"}

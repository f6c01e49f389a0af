"""Service fixtures; ``database_url`` (SQLite and the real PostgreSQL of this machine) is in
tests/conftest.py, shared with the outbox tests (tests/act)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from winback.config import Settings, load_settings
from winback.serve.keys import create_key
from winback.serve.main import create_app


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

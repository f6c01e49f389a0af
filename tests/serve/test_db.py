"""Migrations on both databases: applied from nothing, idempotent, and matching the declared tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from winback.serve.db import current_revision, head_revision, make_engine, metadata, upgrade


def test_migrations_build_the_declared_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # again: nothing to do
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []

"""The Alembic migrations build exactly the schema the models declare, up and down, on
PostgreSQL and SQLite."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.store import get_engine
from service.store.migrate import alembic_config, upgrade_head
from service.store.tables import Base
from testkit.stack import PG_ADMIN


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    name = f"flexbin_migrations_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    yield url
    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_matches_models_and_downgrades(empty_database: str) -> None:
    upgrade_head(empty_database)
    upgrade_head(empty_database)  # idempotent: every start-up runs it
    engine = get_engine(empty_database)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    uniques = inspect(engine).get_unique_constraints("job_steps")
    assert any(set(u["column_names"]) == {"job_id", "index"} for u in uniques)
    command.downgrade(alembic_config(empty_database), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

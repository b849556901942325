"""Integration fixtures: the service stack (testkit/fixtures.py: a fresh PostgreSQL database
`flexbin_test_<pid>`, a Redis DB, the API and Celery workers), HTTP clients of the two test
tenants, and the database's row counts."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from service.store import get_sessionmaker
from service.store.tables import Base
from testkit.fixtures import (  # the service stack, a stack of this package's own
    api_process,
    api_url,
    broker_url,
    database_name,
    database_url,
    export_api_url,
    log_dir,
    redis_db_index,
    service_env,
    start_worker,
    worker,
)
from testkit.stack import KEYS


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"},
                      timeout=120) as c:
        yield c


@pytest.fixture
def other_client(api_url: str) -> Iterator[httpx.Client]:
    """Tenant beta: must never see alpha's resources."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['beta']}"},
                      timeout=120) as c:
        yield c


@pytest.fixture
def db_counts(database_url: str) -> Callable[[], dict[str, int]]:
    """Row counts of every table (to show a rejected request stored nothing)."""

    def counts() -> dict[str, int]:
        with get_sessionmaker(database_url)() as s:
            return {t.name: s.scalar(select(func.count()).select_from(t)) or 0
                    for t in Base.metadata.sorted_tables}

    return counts

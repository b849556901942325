"""E2E fixtures: the service stack (testkit/fixtures.py: real API + Celery worker on
PostgreSQL + Redis) in a database and Redis DB of its own, and headless Chromium driven by
Playwright."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.paths import REPO_ROOT
from testkit.fixtures import (  # the service stack, a stack of this package's own
    api_process,
    api_url,
    broker_url,
    database_url,
    export_api_url,
    log_dir,
    service_env,
    start_worker,
    worker,
)

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("FLEXBIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def database_name() -> str:
    """A database of its own (`flexbin_e2e_<pid>`)."""
    return f"flexbin_e2e_{os.getpid()}"


@pytest.fixture(scope="session")
def redis_db_index() -> int:
    """Another Redis DB than the integration tests', so neither suite's workers take the other's jobs."""
    return 1 + (os.getpid() + 7) % 15


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread until
    it stops, and later tests that call `asyncio.run()` must not find it."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

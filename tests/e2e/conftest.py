"""E2E fixtures: the integration services (real API + Celery worker on PostgreSQL + Redis),
in their own database and Redis DB, and headless Chromium driven by Playwright."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures re-used by name
    api_process,
    api_url,
    fresh_database,
    fresh_redis_db,
    log_dir,
    service_env,
    start_worker,
    worker,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("FLEXBIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """Overrides the integration one: a database of its own (`flexbin_e2e_<pid>`)."""
    with fresh_database(f"flexbin_e2e_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """Overrides the integration one: another Redis DB, so neither suite's workers take the other's jobs."""
    with fresh_redis_db(1 + (os.getpid() + 7) % 15) as url:
        yield url


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

"""The service stack as pytest fixtures: a fresh PostgreSQL database and a Redis DB, the API
and real Celery worker processes (`testkit.stack`).

A test package imports these by name into its conftest.py, which gives it a stack of its own
(pytest caches a session fixture per conftest that defines it); it names its database and
Redis DB by overriding `database_name` and `redis_db_index`, so two packages' workers never
take each other's jobs."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.stack import (
    Proc,
    fresh_database,
    fresh_redis_db,
    service_environment,
    start_api_process,
    start_worker_process,
    wait_worker_ready,
)


@pytest.fixture(scope="session")
def database_name() -> str:
    return f"flexbin_test_{os.getpid()}"


@pytest.fixture(scope="session")
def redis_db_index() -> int:
    return 1 + os.getpid() % 15


@pytest.fixture(scope="session")
def database_url(database_name: str) -> Iterator[str]:
    """A fresh database, migrated with the real migrations, dropped after."""
    with fresh_database(database_name) as url:
        yield url


@pytest.fixture(scope="session")
def broker_url(redis_db_index: int) -> Iterator[str]:
    with fresh_redis_db(redis_db_index) as url:
        yield url


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def service_env(database_url: str, broker_url: str) -> dict[str, str]:
    return service_environment(database_url, broker_url)


@pytest.fixture(scope="session")
def api_process(service_env: dict[str, str], log_dir: Path) -> Iterator[Proc]:
    """The API under test (`api_url` is its address)."""
    proc, url = start_api_process("api", service_env, log_dir)
    proc.url = url
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_url(api_process: Proc) -> str:
    return api_process.url


EXPORT_ON = {"FLEXBIN_EXPORT_OPENVINO": "true"}
"""The per-step OpenVINO export, off in `service_env` (about 1 s a step that the job machinery's
tests do not need): on for the workers of the modules that test it (their `WORKER_ENV`)."""


@pytest.fixture(scope="module")
def export_api_url(service_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A second API on the same database and broker, with the per-step export on, so it takes the jobs
    that need it (latency targets, deploy_format openvino-int8); a worker with `EXPORT_ON` runs them."""
    proc, url = start_api_process("export-api", {**service_env, **EXPORT_ON}, log_dir)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def start_worker(service_env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Proc]]:
    """Start a real Celery worker process; all are stopped at the end of the session."""
    started: list[Proc] = []

    def start(name: str | None = None, **extra_env: str) -> Proc:
        proc = start_worker_process(name or f"worker{len(started)}", {**service_env, **extra_env}, log_dir)
        started.append(proc)
        wait_worker_ready(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Proc], request: pytest.FixtureRequest) -> Iterator[Proc]:
    """One worker for a test module's jobs, stopped after the module (`<module>-worker`); a module's
    `WORKER_ENV` dict adds to its environment (e.g. `FLEXBIN_EXPORT_OPENVINO`)."""
    proc = start_worker(f"{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}-worker",
                        **getattr(request.module, "WORKER_ENV", {}))
    yield proc
    proc.stop()

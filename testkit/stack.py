"""The service stack for tests and benchmarks: fresh PostgreSQL databases and Redis DBs on this
machine, the API as a real uvicorn subprocess (`python -m api.run`) and real Celery worker
processes (`python -m worker.main`), each in its own process group logging to a file.

The pytest fixtures built on these live in tests/conftest.py; bench/stack.py uses them too."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import redis

from core.paths import REPO_ROOT
from service.store import get_engine
from service.store.migrate import upgrade_head
from testkit.servers import free_port

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
KEYS = {"alpha": "key-alpha", "beta": "key-beta"}
MAX_MODEL_BYTES = 3_000_000  # holds the bundled pedestrian_adas_0002 weights (2.3 MB)
MAX_DATASET_BYTES = 20_000_000
MAX_DETECT_IMAGES = 4
MAX_DETECT_BYTES = 6_000_000
MAX_DETECT_PIXELS = 2_000_000


class Proc:
    """A service subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.url = ""  # where it answers, for a server
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now and its peak since start or `reset_peak_memory` (Linux)."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}

    def reset_peak_memory(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new PostgreSQL database `name`, migrated with the real migrations, dropped after."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade_head(url)
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_redis_db(index: int) -> Iterator[str]:
    """Redis logical database `index` (1..15), emptied before and after."""
    url = f"redis://127.0.0.1:6379/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def service_environment(database_url: str, broker_url: str) -> dict[str, str]:
    """The environment of the API and worker processes under test: short leases and polls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXBIN_", "DATABASE_URL", "CELERY_"))}
    env.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        FLEXBIN_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
        FLEXBIN_DEMO="false",
        FLEXBIN_EMBEDDED_WORKER="false",
        FLEXBIN_DEVICE="cpu",
        FLEXBIN_JOB_LEASE_SECONDS="4",
        FLEXBIN_PROGRESS_INTERVAL_SECONDS="0.5",
        FLEXBIN_CANCEL_POLL_SECONDS="0.2",
        FLEXBIN_MAX_MODEL_BYTES=str(MAX_MODEL_BYTES),
        FLEXBIN_MAX_DATASET_BYTES=str(MAX_DATASET_BYTES),
        FLEXBIN_MAX_DETECT_IMAGES=str(MAX_DETECT_IMAGES),
        FLEXBIN_MAX_DETECT_BYTES=str(MAX_DETECT_BYTES),
        FLEXBIN_MAX_DETECT_PIXELS=str(MAX_DETECT_PIXELS),
        # on, but far above what the suite sends (the fuzzer alone ~1,300 requests a minute as
        # beta); test_ratelimit.py starts its own API processes with low limits
        FLEXBIN_RATE_LIMIT="100000/minute",
        FLEXBIN_RATE_LIMIT_DETECT="100000/minute",
        # ~1 s per job step that tests of the job machinery do not need; the modules that test
        # OpenVINO export and serving turn it on for their worker (WORKER_ENV)
        FLEXBIN_EXPORT_OPENVINO="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2,
               error: type[Exception] = AssertionError) -> object:
    """Poll `predicate` until it returns something truthy (returned); `error` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f}s waiting for {what}")


def start_api_process(name: str, env: dict[str, str], log_dir: Path, timeout: float = 90) -> tuple[Proc, str]:
    """`python -m api.run` on a free loopback port; returns once it answers /healthz."""
    port = free_port()
    proc = Proc(name, [sys.executable, "-m", "api.run"], {**env, "FLEXBIN_PORT": str(port)}, log_dir)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"API exited:\n{proc.tail()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout, f"{name} to answer /healthz")
    except BaseException:
        proc.stop()
        raise
    return proc, url


def start_worker_process(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    return Proc(name, [sys.executable, "-m", "worker.main"], env, log_dir)


def wait_worker_ready(proc: Proc, timeout: float = 90) -> None:
    """Until Celery logs "ready."; a worker that exits or never gets there is stopped and fails."""
    try:
        wait_until(lambda: "ready." in proc.log_path.read_text(errors="replace") or not proc.alive(), timeout,
                   f"{proc.name} to be ready")
        assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
    except BaseException:
        proc.stop()
        raise



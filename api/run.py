"""`python -m api.run` (`make run`): migrate, start the API and, on the embedded defaults, a
supervised worker process (`python -m worker.main`: the same task code as `make worker`)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import uvicorn

from api.app import create_app
from api.bootstrap import bootstrap, maybe_seed_demo
from core.paths import REPO_ROOT
from service.settings import Settings, get_settings

log = logging.getLogger("flexbin")


class WorkerSupervisor:
    """Keeps one worker subprocess alive (restarts it after a crash) until `stop()`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "FLEXBIN_PARENT_PID": str(os.getpid())}  # the worker dies with us
        proc = subprocess.Popen([sys.executable, "-m", "worker.main"], cwd=REPO_ROOT, env=env)
        log.info("started embedded worker (pid %d)", proc.pid)
        return proc

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            self.proc = self._spawn()
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 60.0)
            log.error("embedded worker exited with %s; restarting in %.0fs", code, backoff)
            self._stopping.wait(backoff)

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # warm shutdown: an unfinished job is resumed later
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal that stopped it after its graceful shutdown; as an
    # exception it unwinds through main()'s `finally`, which stops the worker.
    raise SystemExit(128 + signum)


def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [api %(process)d] %(name)s: %(message)s",
    )
    log.info("database %s, broker %s", _redact(settings.database_url), _redact(settings.celery_broker_url))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        settings.check_secrets()
    except ValueError as exc:
        sys.exit(f"api: {exc}")
    bootstrap(settings)
    supervisor = WorkerSupervisor() if settings.run_embedded_worker else None
    if supervisor is not None:
        supervisor.start()
    else:
        log.info("no embedded worker: start workers with `make worker`")
    maybe_seed_demo(settings)
    app = create_app(settings, run_bootstrap=False)
    log.info("FlexBin API on http://%s:%d (docs at /docs)", settings.host, settings.port)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                    log_config=None)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _redact(url: str) -> str:
    """Hide a password in a URL for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


if __name__ == "__main__":
    main()

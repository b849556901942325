"""Layering rules of the service: workers never import FastAPI, the API never imports the
worker (it speaks the queue contract, `core.queue`) nor, at start, torch; settings parse the
documented environment."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core.paths import REPO_ROOT
from core.settings import Settings


def _modules_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_worker_never_imports_fastapi() -> None:
    modules = _modules_after("import worker.main, worker.tasks, worker.jobs, worker.demo, worker.lease")
    assert not {m for m in modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn", "api")}


def test_api_never_imports_the_worker() -> None:
    """The API enqueues through the queue contract (`core.queue`), never through `worker/`."""
    modules = _modules_after("import api.app, api.run, api.queue")
    assert "core.queue" in modules
    assert not {m for m in modules if m.split(".")[0] == "worker"}


def test_the_queue_contract_builds_nothing_at_import() -> None:
    """`core.queue` is names and a factory: importing it builds no FlexBin Celery app (Celery's
    own lazy default app aside) and loads no task code."""
    code = ("import gc, celery, core.queue; "
            "print(sum(isinstance(o, celery.Celery) and o.main == 'flexbin' for o in gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert not {m for m in _modules_after("import core.queue") if m.split(".")[0] in ("worker", "torch")}


def test_api_idles_without_torch() -> None:
    """The API process imports torch only when a request needs it (an upload to validate, a
    checkpoint to serve): job specs and step records come from the torch-free `core.config`."""
    modules = _modules_after("import api.app, api.run")
    assert not {m for m in modules if m.split(".")[0] in ("torch", "torchvision")}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://h:6379/0")
    monkeypatch.setenv("FLEXBIN_API_KEYS", " acme:k1 , globex:k2,")
    monkeypatch.setenv("FLEXBIN_PORT", "9000")
    s = Settings()
    assert (s.database_url, s.celery_broker_url, s.port) == ("postgresql+psycopg://u@h/db", "redis://h:6379/0", 9000)
    assert s.parsed_api_keys() == [("acme", "k1"), ("globex", "k2")] and s.demo_tenant() == "acme"
    assert not s.embedded and not s.run_embedded_worker and not s.is_sqlite
    monkeypatch.setenv("FLEXBIN_API_KEYS", "no-colon-here")
    with pytest.raises(ValueError, match="tenant:key"):
        Settings().parsed_api_keys()


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_URL", "CELERY_BROKER_URL", "FLEXBIN_API_KEYS", "FLEXBIN_EMBEDDED_WORKER"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.database_url == f"sqlite:///{REPO_ROOT}/var/flexbin.db"
    assert s.celery_broker_url == f"sqla+sqlite:///{REPO_ROOT}/var/broker.db"
    assert s.embedded and s.run_embedded_worker and s.demo_tenant() == "dev"

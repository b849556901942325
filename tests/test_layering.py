"""The layering, each layer talking only to the one below it: `core` imports no HTTP or Celery
code (its ML library none of the service's frameworks), workers never import FastAPI, the API
never imports the worker (it speaks the queue contract, `service.queue`) nor, until a request
needs it, torch."""
from __future__ import annotations

import subprocess
import sys

from core.paths import REPO_ROOT

ML_MODULES = ["core.pipeline", "core.checkpoint", "core.train", "core.priority", "core.binary",
              "core.data", "core.detection_metrics", "core.models", "bench.baselines.hog", "core.__main__", "core.job_spec"]


def test_ml_library_imports_no_service_framework() -> None:
    modules = _modules_after(f"import importlib; [importlib.import_module(m) for m in {ML_MODULES!r}]")
    bad = {m.split(".")[0] for m in modules} & {"fastapi", "starlette", "celery", "kombu", "sqlalchemy", "uvicorn"}
    assert not bad


def test_the_job_spec_needs_no_torch() -> None:
    """`core.job_spec` (job options, step records) is pydantic only."""
    assert not {m for m in _modules_after("import core.job_spec") if m.split(".")[0] in ("torch", "sqlalchemy")}


def _modules_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_worker_never_imports_fastapi() -> None:
    modules = _modules_after("import worker.main, worker.tasks, worker.jobs, worker.demo, worker.lease")
    assert not {m for m in modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn", "api")}


def test_api_never_imports_the_worker() -> None:
    """The API enqueues through the queue contract (`service.queue`), never through `worker/`."""
    modules = _modules_after("import api.app, api.run, api.queue")
    assert "service.queue" in modules
    assert not {m for m in modules if m.split(".")[0] == "worker"}


def test_the_queue_contract_builds_nothing_at_import() -> None:
    """`service.queue` is names and a factory: importing it builds no FlexBin Celery app (Celery's
    own lazy default app aside) and loads no task code."""
    code = ("import gc, celery, service.queue; "
            "print(sum(isinstance(o, celery.Celery) and o.main == 'flexbin' for o in gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert not {m for m in _modules_after("import service.queue") if m.split(".")[0] in ("worker", "torch")}


def test_api_idles_without_torch() -> None:
    """The API process imports torch only when a request needs it (an upload to validate, a
    checkpoint to serve): job specs and step records come from the torch-free `core.job_spec`."""
    modules = _modules_after("import api.app, api.run")
    assert not {m for m in modules if m.split(".")[0] in ("torch", "torchvision")}

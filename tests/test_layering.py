"""What the import-linter contracts in pyproject.toml (`make lint`) cannot see: what a process
really loads at run time. The static layering (core < service < api | worker < testkit < bench
< tests, api and worker independent) is checked by those contracts, not here."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import core
from core.paths import REPO_ROOT

SERVICE_PACKAGES = ("sqlalchemy", "alembic", "celery", "kombu", "pydantic_settings", "limits", "fastapi",
                    "starlette", "uvicorn")


def _modules_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_every_core_module_imports_with_the_service_packages_blocked() -> None:
    """core/ is the ML library: a notebook without SQLAlchemy, Celery, pydantic-settings or
    `limits` installed can import every module of it."""
    modules = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core."))
    assert "core.pipeline" in modules and "core.export.openvino" in modules
    blocker = ("import importlib, importlib.abc, sys\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               f"        if name.split('.')[0] in {SERVICE_PACKAGES!r}:\n"
               "            raise ImportError(f'blocked: {name}')\n"
               "sys.meta_path.insert(0, Block())\n"
               f"for m in {modules!r}: importlib.import_module(m)\n")
    subprocess.run([sys.executable, "-c", blocker], cwd=REPO_ROOT, check=True, capture_output=True)


def test_the_job_spec_needs_no_torch() -> None:
    """`core.job_spec` (job options, step records) is pydantic only: the API validates jobs with it."""
    assert not {m for m in _modules_after("import core.job_spec") if m.split(".")[0] in ("torch", "sqlalchemy")}


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


def test_the_gpu_check_loads_only_what_the_gpu_machine_has() -> None:
    """bench.gpu_check runs on a lent GPU machine with torch, torchvision, numpy, pillow,
    safetensors, tqdm and carried pydantic wheels: importing it loads no OpenVINO, matplotlib,
    service package or HTTP client."""
    absent = {"openvino", "nncf", "matplotlib", "httpx", "service", "api", "worker", *SERVICE_PACKAGES}
    loaded = {m.split(".")[0] for m in _modules_after("import bench.gpu_check")}
    assert "torch" in loaded and not loaded & absent, loaded & absent

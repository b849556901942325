"""`core` knows nothing of HTTP or Celery: importing the ML library pulls in neither."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

ML_MODULES = ["core.pipeline", "core.checkpoint", "core.train", "core.priority", "core.binary",
              "core.data", "core.metrics", "core.models", "core.baselines.hog", "core.__main__"]


def test_ml_library_imports_no_service_framework() -> None:
    code = (
        "import sys, importlib\n"
        f"for m in {ML_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & {'fastapi', 'starlette', 'celery', 'kombu', 'sqlalchemy', 'uvicorn'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

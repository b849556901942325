"""Fixtures shared by every test package (the service stack's: testkit/fixtures.py, imported by
the integration and e2e conftests)."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.paths import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`record_figures("faults.sigkill", runs=10, ...)`: the figures a reliability test saw,
    written as `<section>.json` into `$FLEXBIN_RELIABILITY_DIR` when `python -m bench.reliability`
    runs the tests (a no-op otherwise). The test still asserts on them itself."""

    def record(section: str, **figures: Any) -> None:
        out = os.environ.get("FLEXBIN_RELIABILITY_DIR")
        if not out:
            return
        path = Path(out) / f"{section}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"section": section, "test": request.node.nodeid, "figures": figures},
                                   indent=2, default=str))

    return record

"""Print the runtime dependencies of pyproject.toml (`[project] dependencies`), one per line.

The Docker image and `tools/compose_check.sh`'s wheelhouse install exactly these: the test and
bench extras stay out of the image.

    python tools/runtime_requirements.py [pyproject.toml] > runtime.txt
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(runtime_requirements(path)))

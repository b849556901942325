"""docs/configuration.md from `service.settings.Settings`: every environment variable, its default
and its description, written once (in the Settings field) and rendered here.

    python -m tools.settings_doc            # rewrite docs/configuration.md
    python -m tools.settings_doc --check    # exit 1 when the file is not current (a test runs this)
"""
from __future__ import annotations

import sys
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from core.paths import REPO_ROOT
from service.settings import Settings

DOC = REPO_ROOT / "docs" / "configuration.md"
HEADER = """# Configuration

One pydantic `Settings` object (`service/settings.py`) configures the API, the workers, the
database and the demo from environment variables. This table is generated from it
(`python -m tools.settings_doc`; a test fails when it is stale).

| variable | default | meaning |
|---|---|---|
"""


def variable(name: str, field: FieldInfo) -> str:
    """The environment variable a field reads: its first alias, else `FLEXBIN_<NAME>`."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"FLEXBIN_{name.upper()}"


def default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 and value % 2**20 == 0:
        return f"{value // 2**30} GiB" if value % 2**30 == 0 else f"{value // 2**20} MiB"
    if value is None:
        return "auto"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`" if text else "empty"


def render() -> str:
    rows = [f"| `{variable(name, field)}` | {default(field)} | {(field.description or '').replace('|', '/')} |"
            for name, field in Settings.model_fields.items()]
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC.relative_to(REPO_ROOT)} is stale: run python -m tools.settings_doc", file=sys.stderr)
            return 1
        return 0
    Path(DOC).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

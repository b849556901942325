"""The README stays true: every setting is documented, and the two commands are there."""
from __future__ import annotations

from core.paths import REPO_ROOT
from core.settings import Settings


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if alias is not None:
        return next(a for a in alias.choices if isinstance(a, str) and a.isupper())
    return f"FLEXBIN_{name.upper()}"


def test_readme_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [_env_name(n) for n in Settings.model_fields if f"`{_env_name(n)}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_has_the_two_commands_and_ci_calls_make_test() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()

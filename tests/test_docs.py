"""The docs stay true: the configuration table is generated from `Settings` and current, the
README links it and has the two commands, and CI runs the README's test command."""
from __future__ import annotations

import subprocess
import sys

from core.paths import REPO_ROOT
from tools.settings_doc import DOC, render


def test_the_configuration_table_is_generated_from_the_settings_and_current() -> None:
    assert DOC.read_text() == render(), "docs/configuration.md is stale: run python -m tools.settings_doc"
    done = subprocess.run([sys.executable, "-m", "tools.settings_doc", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_readme_has_the_two_commands_links_the_configuration_and_ci_calls_make_test() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "docs/configuration.md" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_relative_link_in_the_readme_and_docs_names_a_file_that_exists() -> None:
    """The README and docs/ link results and each other by relative path; a moved or renamed file
    must not leave a dead link behind (links out of the repository, like ../shared/API.md, are
    not checked)."""
    import re

    dead = []
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve()
            if path.is_relative_to(REPO_ROOT.resolve()) and not path.exists():  # ../shared is outside
                dead.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not dead, dead

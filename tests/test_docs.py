"""The docs stay true: the configuration and job-option tables are generated from the code and
current, the README links them and has the two commands, and CI runs the README's test command."""
from __future__ import annotations

import subprocess
import sys

from api.schemas import JobCreate
from core.job_spec import Target
from core.paths import REPO_ROOT
from tools.reference_docs import JOB_OPTIONS, PAGES, stale_pages


def test_the_reference_pages_are_generated_from_the_code_and_current() -> None:
    assert not stale_pages(), "run python -m tools.reference_docs"
    done = subprocess.run([sys.executable, "-m", "tools.reference_docs", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert len(PAGES) == 2


def test_the_job_options_page_lists_every_post_jobs_field_with_a_description() -> None:
    page = JOB_OPTIONS.read_text()
    for model in (JobCreate, Target):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in page, name
            assert field.description, f"{model.__name__}.{name} has no description for docs/job-options.md"


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch) -> None:
    from tools import reference_docs

    stale = tmp_path / "job-options.md"
    stale.write_text("an old table\n")
    monkeypatch.setattr(reference_docs, "PAGES", {stale: reference_docs.render_job_options})
    assert reference_docs.stale_pages() == [stale]
    assert reference_docs.main(["--check"]) == 1
    assert reference_docs.main([]) == 0 and not reference_docs.stale_pages()


def test_readme_has_the_two_commands_links_the_configuration_and_ci_calls_make_test() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "docs/configuration.md" in readme and "docs/job-options.md" in readme
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

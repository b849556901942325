"""bench/results/README.md is what the committed result files give: regenerating it from the
JSON changes nothing (`python -m bench.results_readme` after a bench run; a hand edit or a
rerun without regenerating fails here)."""
from __future__ import annotations

from pathlib import Path

from bench.report import RESULTS, machine, machine_text, markdown_table
from bench.results_readme import SECTIONS, render


def test_the_results_readme_is_generated_from_the_committed_json() -> None:
    assert (RESULTS / "README.md").read_text() == render(RESULTS), \
        "bench/results/README.md differs from the JSON files: run `python -m bench.results_readme`"


def test_every_section_renders_without_results(tmp_path: Path) -> None:
    for module in SECTIONS:
        assert "Not run yet." in module.readme_section(tmp_path), module.__name__


def test_markdown_table_and_machine_line() -> None:
    rows = [{"name": "a|b", "x": 1.5}, {"name": "c", "x": None}]
    assert markdown_table(rows, [("name", "name"), ("x", lambda r: r["x"] and f"{r['x']:.2f}")], align="lr") == [
        "| name | x |", "|---|---:|", "| a\\|b | 1.50 |", "| c | - |"]
    record = machine(note="test")
    assert {"cpus", "cpu_count", "python", "torch", "openvino", "date", "note"} <= set(record)
    assert machine_text(record).startswith(f"{record['cpus']} CPUs")
    assert machine_text("x86_64, 2 cores") == "x86_64, 2 cores"  # older results recorded a sentence

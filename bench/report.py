"""What every benchmark writes, written once: result files, markdown tables, plots and the
machine record.

A bench uses them as `report.<name>` (the benches name their result dicts `result`):

    from bench import report

    result = {"machine": report.machine(), "git": report.git_commit(), "rows": rows, ...}
    lines = ["# My bench (`python -m bench.mine`)", "", report.machine_text(result["machine"]), "",
             *report.markdown_table(rows, [("variant", "name"), ("MR^-2", lambda r: f"{r['miss_rate']:.3f}")],
                                    align="lr")]
    report.write_results("mine", result, "\\n".join(lines) + "\\n")   # bench/results/mine.{json,md}
    fig, ax = report.figure()
    ax.plot(...)
    report.label(ax, x="compression", y="MR^-2", title="...")
    report.save_figure(fig, report.RESULTS / "mine.png")

    def readme_section(results: Path) -> str:         # its part of bench/results/README.md
        return report.section("### My bench ([`mine.md`](mine.md))", report.load_results("mine", results),
                              lambda result: [...lines, every number from `result`...])

and adds its module to `bench.results_readme.SECTIONS`.

- `write_results(name, result, markdown)`: `bench/results/<name>.json` (and `.md`);
  `load_results(name)` reads one back (None when absent), `load_all(prefix)` every run of a
  bench; `section(head, results, render)` is a bench's part of bench/results/README.md, and
  `each_run(render)` renders `load_all`'s runs one after another, each under a link to its markdown.
- `markdown_table(rows, columns, align=)`: the lines of a markdown table; a column is
  (header, key of a row mapping or function of the row); None shows as "-".
- `figure(...)`, `label(ax, x=, y=, title=, log_x=)`, `save_figure(fig, path)`: matplotlib (Agg)
  figures in one style.
- `machine(**extra)`: the record of where a result was measured (CPUs, CPU model and the
  instruction sets that change what the kernels can do, Python / torch / OpenVINO versions,
  date); `git_commit()` the commit and whether the tree was dirty; `machine_text(record)` one
  line of either for a report (also the older records some committed results carry).
- `log(message)`: a timestamped progress line (`log_goals(goals)`: one per goal); `mark(ok)`:
  met / **missed** / not run; `goal_lines`, `span` (lo–hi of some values), `minutes`, `plural`,
  `rate`: the small words of reports; `step_rows(steps)`: a binarization job's steps as results
  record them.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: Instruction sets that change what the CPU kernels can do (OpenVINO picks bf16 with AMX / AVX-512 BF16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
#: One look for every plot.
STYLE = {"axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "axes.titlesize": 11,
         "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8}
DPI = 110

Cell = str | Callable[[Any], object]


# -- result files -----------------------------------------------------------------------------
def write_results(name: str, result: Mapping[str, Any], markdown: str | None = None, *, out: Path = RESULTS,
                  indent: int = 2) -> Path:
    """`<out>/<name>.json` (and `<name>.md` when given); returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=indent, default=str) + "\n")
    if markdown is not None:
        (out / f"{name}.md").write_text(markdown)
    return path


def load_results(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """`<results>/<name>.json`, or None when that bench has not written it."""
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_all(prefix: str, results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every `<results>/<prefix>*.json` but `--quick` smoke runs, by name (sorted)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob(f"{prefix}*.json")) if "quick" not in p.stem}


def section(head: str, results: Any, render: Callable[[Any], list[str]]) -> str:
    """A section of bench/results/README.md: `head`, then the lines `render(results)` gives, or
    "Not run yet." when there are no results (None or empty)."""
    return "\n".join([head, "", *(render(results) if results else ["Not run yet."])]).rstrip("\n") + "\n"


def each_run(render: Callable[[dict[str, Any]], list[str]]) -> Callable[[dict[str, dict[str, Any]]], list[str]]:
    """For `section` over `load_all`: each run as a link to its markdown, then `render(result)`."""
    def lines(runs: dict[str, dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for name, result in runs.items():
            out += [f"[`{name}.md`]({name}.md):", "", *render(result), ""]
        return out
    return lines


# -- markdown ---------------------------------------------------------------------------------
def markdown_table(rows: Iterable[Any], columns: Sequence[tuple[str, Cell]], *, align: str = "") -> list[str]:
    """The lines of a markdown table: one row per item of `rows`, one column per (header, cell),
    where a cell is a key of the row (a mapping) or a function of the row. None shows as "-", a
    "|" inside a cell is escaped. `align`: one letter per column, "l" (the default) or "r"."""
    def text(row: Any, cell: Cell) -> str:
        value = row.get(cell) if isinstance(cell, str) else cell(row)
        return "-" if value is None else str(value).replace("|", "\\|")

    rules = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "|".join(rules[align[i] if i < len(align) else "l"] for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(text(row, cell) for _, cell in columns) + " |" for row in rows]
    return lines


def interval_text(ci: Sequence[float] | None) -> str | None:
    """A 95 % interval of an MR^-2 difference as a table shows it, `[-0.012, +0.034]` (None: "-")."""
    return None if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def mark(ok: bool | None, *, none: str = "not run", plain: bool = False) -> str:
    """How a goal reads in a report: met, **missed** (`plain`: MISSED, for a terminal), or `none`
    when it was not judged."""
    return none if ok is None else "met" if ok else "MISSED" if plain else "**missed**"


def goal_lines(goals: Mapping[str, bool | None], *, none: str = "not run") -> list[str]:
    """A bullet per goal: `- met: <goal>`."""
    return [f"- {mark(ok, none=none)}: {goal}" for goal, ok in goals.items()]


def plural(n: int, word: str) -> str:
    """"1 thread", "2 threads"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def rate(lr: float) -> str:
    """A learning rate as people write it: 1e-4, 3e-4, 1e-3."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def log_goals(goals: Mapping[str, bool | None], *, none: str = "not run") -> None:
    """Each goal and whether it was met, as progress lines."""
    for goal, ok in goals.items():
        log(f"{mark(ok, none=none, plain=True)}: {goal}")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def span(values: Iterable[float], fmt: str = ".2f", sep: str = "–") -> str:
    """"lo–hi" of the values (one value when they agree at that precision)."""
    ordered = sorted(values)
    lo, hi = format(ordered[0], fmt), format(ordered[-1], fmt)
    return lo if lo == hi else f"{lo}{sep}{hi}"


# -- plots ------------------------------------------------------------------------------------
def figure(ncols: int = 1, *, size: tuple[float, float] = (7.0, 4.5)) -> tuple[Figure, Any]:
    """A figure in the benches' style with `ncols` axes side by side (one axes, or an array)."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(1, ncols, figsize=size)
    return fig, axes


def label(ax: Any, *, x: str, y: str, title: str | None = None, log_x: bool = False, legend: bool = True) -> None:
    """An axes' labels, title, log x scale and legend, in one call."""
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()


def save_figure(fig: Figure, path: Path) -> Path:
    """Laid out, written as PNG at the benches' resolution, and closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# -- the machine record -----------------------------------------------------------------------
def cpu_model() -> dict[str, str]:
    """The CPU's model name and which of ISA_FLAGS it has (Linux /proc/cpuinfo): timings from
    different sessions may come from different CPUs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "?"), "cpu_isa": " ".join(f for f in ISA_FLAGS if f in flags) or "-"}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(**extra: Any) -> dict[str, Any]:
    """Where a result was measured: the CPUs this process may use (`cpus`) and the machine's
    (`cpu_count`), platform, CPU model and instruction sets, Python, torch and OpenVINO versions
    and the date; `extra` adds to it or overrides (a bench's threads, a note)."""
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "machine": platform.machine(),
            "python": platform.python_version(),
            **cpu_model(), "torch": package_version("torch"), "openvino": package_version("openvino"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **extra}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> dict[str, Any]:
    """The commit the working tree is on, and whether it had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def commit_text(git: Mapping[str, Any] | str | None) -> str:
    """"5b9e35a1dd" or "5b9e35a1dd (dirty)" from `git_commit()` (a plain string: as it is)."""
    if not isinstance(git, Mapping):
        return git or "?"
    return (git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")


def machine_text(record: Mapping[str, Any] | str) -> str:
    """One line for a report: "2 CPUs (Intel(R) Xeon(R) Processor; avx2 avx512f), Python 3.11.7,
    torch 2.14.1". Older results recorded less (or a sentence: returned as it is)."""
    if isinstance(record, str):
        return record
    cpu = record.get("cpu_model") or record.get("processor") or record.get("machine")
    isa = record.get("cpu_isa")
    cpus = record.get("cpus", record.get("cpu_count"))
    what = "; ".join(x for x in (cpu, isa) if x)
    parts = [(f"{cpus} CPUs ({what})" if what else f"{cpus} CPUs") if cpus else (what or "?")]
    parts += [f"{name} {record[key]}" for name, key in (("Python", "python"), ("torch", "torch"),
                                                        ("OpenVINO", "openvino")) if record.get(key)]
    return ", ".join(parts)


def step_rows(steps: Iterable[Any]) -> list[dict[str, Any]]:
    """The record of each step of a binarization job (`core.pipeline.StepOutcome`s) in results."""
    return [{"index": s.index, "layers": s.layers, "num_binary_layers": len(s.binary_layers),
             "compression_ratio": round(s.compression_ratio, 3),
             "binary_layer_compression": s.binary_layer_compression and round(s.binary_layer_compression, 2),
             "miss_rate": round(s.miss_rate, 4), "ap50": round(s.ap50, 4),
             "step_seconds": round(s.step_seconds, 1), "checkpoint_bytes": s.checkpoint_bytes} for s in steps]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

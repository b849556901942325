"""The pre-registered study of the paper's claim: layer priority against all-at-once.

    python bench/claim.py                  # the PedNet study (make bench-claim; < 2 h on 2 idle cores)
    python bench/claim.py --quick          # same code path, 2 folds x 1 seed, tiny budgets (~10-20 min)
    python bench/claim.py --plan           # the runs and iterations it would make; trains nothing
    python bench/claim.py --activation-bits 1                                   # binary weights + activations (issue 11)
    python bench/claim.py --model pedestrian_adas_0002 --pretrained DIR         # Intel's detector (issue 10)
    python bench/claim.py --model pedestrian_adas_0002 --pretrained core/models/weights/pedestrian_adas_0002 \
        --input 192x336 --evaluated-folds 0,1 --seeds 1 --finetune-iters 5 --consolidation-iters 20 \
        --learning-rates 1e-4,3e-4                                              # the reduced run in the README

Design, statistics and decision rule: README, "The claim study", and `core/study/`. Every
(fold, seed, arm) run is saved under var/claim/<variant>-<design hash>/ as soon as it ends;
a rerun with the same design skips every finished run, so an interrupted study resumes.
Writes bench/results/claim<suffix>.{json,md} and claim<suffix>_forest.png,
claim<suffix>_curves.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stack import cpu_model
from core.checkpoint import ModelCard, load_model, save_model
from core.data import ImageRecord, read_pennfudan
from core.device import add_device_argument, device_from_args
from core.metrics import match_image
from core.models.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE
from core.paths import default_data_dir
from core.priority import ORDERS
from core.study.arms import (
    ARMS,
    BASELINE,
    CONTROL,
    PRIMARY_ORDER,
    StudyDesign,
    StudyUnavailable,
    choose_learning_rate,
    consolidated_points,
    folds_of,
    inner_split,
    matched_points,
    pipeline_config,
    planned_iterations,
    run_arm,
)
from core.study.results import is_done, load_arm_run, save_arm_run
from core.study.stats import (
    MissRateSample,
    PooledDetections,
    Units,
    difference_interval,
    resample_weights,
    verdict,
)

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "var" / "claim"
QUICK = {"evaluated_folds": (0, 1), "seeds": 1, "float_iterations": 300, "finetune_iters": 5,
         "consolidation_iters": 10, "learning_rates": (3e-4, 1e-3), "drift_images": 4}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the runs (each in a worker process) ------------------------------------------------
def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _records(data: str) -> list[ImageRecord]:
    return read_pennfudan(Path(data))


def _float_dir(work: Path, fold: int) -> Path:
    return work / f"fold{fold}" / "float"


def float_unit(design_json: str, data: str, work: str, fold: int, pretrained: str | None,
               device: str = "cpu") -> None:
    """The fold's float detector: trained on the fold's training images (or the given
    pretrained model, unchanged)."""
    from core.train import train_float_detector

    design = StudyDesign.model_validate_json(design_json)
    out = _float_dir(Path(work), fold)
    if pretrained:
        model, card = load_model(Path(pretrained), overrides=design.builder_kwargs)
    else:
        train, evaluate = folds_of(_records(data), design)[fold]
        model, card = train_float_detector(train, evaluate, architecture=design.architecture,
                                           builder_kwargs=design.builder_kwargs,
                                           iterations=design.float_iterations, seed=fold, device=device)
        model.to("cpu")
    save_model(model, card, out.with_name("float.tmp"))
    os.replace(out.with_name("float.tmp"), out)


def tune_unit(design_json: str, data: str, work: str, fold: int, arm: str, lr: float, device: str = "cpu") -> None:
    """Inner-validation MR^-2 of one arm at one learning rate (training images only)."""
    design = StudyDesign.model_validate_json(design_json)
    train, _ = folds_of(_records(data), design)[fold]
    inner_train, inner_val = inner_split(train, design)
    model, card = load_model(_float_dir(Path(work), fold))
    result = run_arm(design, arm, model, card, inner_train, inner_val, learning_rate=lr, seed=0,
                     deepest_only=True, evaluate_steps=False, measure_drift=False, device=device)
    out = _tune_path(Path(work), fold, arm, lr)
    out.parent.mkdir(parents=True, exist_ok=True)
    final = result.evaluations[-1]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"arm": arm, "learning_rate": lr, "inner_train": len(inner_train),
                               "inner_val": len(inner_val), "miss_rate": final.miss_rate,
                               "label": final.label, "seconds": round(result.seconds, 1)}))
    os.replace(tmp, out)


def main_unit(design_json: str, data: str, work: str, fold: int, seed: int, arm: str, lr: float,
              device: str = "cpu") -> None:
    design = StudyDesign.model_validate_json(design_json)
    train, evaluate = folds_of(_records(data), design)[fold]
    model, card = load_model(_float_dir(Path(work), fold))
    result = run_arm(design, arm, model, card, train, evaluate, learning_rate=lr, seed=seed, device=device)
    save_arm_run(result, Path(work) / f"fold{fold}" / "runs", f"{arm}_seed{seed}",
                 [r.name for r in evaluate], {"fold": fold, "train_images": len(train)})


# -- scheduling ---------------------------------------------------------------------------
@dataclass
class Unit:
    key: str
    kind: str  # float | tune | main
    fold: int
    arm: str = ""
    seed: int = 0
    lr: float = 0.0
    iterations: int = 0
    deps: list[str] = field(default_factory=list)


def _tune_path(work: Path, fold: int, arm: str, lr: float) -> Path:
    return work / f"fold{fold}" / "tune" / f"{arm}_lr{lr:g}.json"


def plan_units(design: StudyDesign, iterations: dict[str, dict[int, int]], num_steps: int,
               pretrained: bool) -> list[Unit]:
    """Every run of the study with its dependencies and its fine-tuning iterations."""
    units = []
    deepest = max(iterations[PRIMARY_ORDER])
    for f in design.fold_indices:
        units.append(Unit(f"float{f}", "float", f, iterations=0 if pretrained else design.float_iterations))
        for arm in ARMS:
            # layer priority and the control run their whole chain; all-at-once one run per point
            chain = num_steps * design.finetune_iters if arm != BASELINE else 0
            tune_its = (chain + design.consolidation_iters) if arm != BASELINE else iterations[arm][deepest]
            tunes = [f"tune{f}-{arm}-{lr:g}" for lr in design.learning_rates]
            for lr, key in zip(design.learning_rates, tunes, strict=True):
                units.append(Unit(key, "tune", f, arm, lr=lr, iterations=tune_its, deps=[f"float{f}"]))
            points = iterations[arm]
            main_its = (chain + len(points) * design.consolidation_iters if arm != BASELINE
                        else sum(points.values()))
            for s in range(design.seeds):
                units.append(Unit(f"main{f}-{arm}-{s}", "main", f, arm, s, iterations=main_its,
                                  deps=[f"float{f}", *tunes]))
    return units


def _done(unit: Unit, work: Path) -> bool:
    if unit.kind == "float":
        return (_float_dir(work, unit.fold) / "card.json").exists()
    if unit.kind == "tune":
        return _tune_path(work, unit.fold, unit.arm, unit.lr).exists()
    return is_done(work / f"fold{unit.fold}" / "runs", f"{unit.arm}_seed{unit.seed}")


def chosen_learning_rates(design: StudyDesign, work: Path) -> dict[int, dict[str, Any]]:
    """{fold: {arm: {"chosen": lr, "inner_miss_rates": {lr: MR^-2}}}} from the finished tuning runs."""
    out: dict[int, dict[str, Any]] = {}
    for f in design.fold_indices:
        out[f] = {}
        for arm in ARMS:
            rates = {}
            for lr in design.learning_rates:
                path = _tune_path(work, f, arm, lr)
                if path.exists():
                    rates[lr] = json.loads(path.read_text())["miss_rate"]
            if len(rates) == len(design.learning_rates):
                out[f][arm] = {"chosen": choose_learning_rate(rates),
                               "inner_miss_rates": {f"{lr:g}": round(mr, 4) for lr, mr in rates.items()}}
    return out


unit_started: dict[str, float] = {}


def execute(units: list[Unit], design: StudyDesign, data: Path, work: Path, workers: int, threads: int,
            pretrained: str | None, device: str = "cpu") -> None:
    """Run every unfinished unit, `workers` processes at a time, dependencies first, the
    longest ready unit first."""
    pending = {u.key: u for u in units if not _done(u, work)}
    finished = {u.key for u in units} - set(pending)
    log(f"{len(finished)} of {len(units)} runs already done; {len(pending)} to go "
        f"({sum(u.iterations for u in pending.values())} fine-tuning iterations)")
    if not pending:
        return
    design_json = design.model_dump_json()
    running: dict[Future, Unit] = {}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        while pending or running:
            ready = sorted((u for u in pending.values() if all(d in finished for d in u.deps)),
                           key=lambda u: ({"float": 0, "tune": 1, "main": 2}[u.kind], -u.iterations, u.key))
            for unit in ready[: max(0, workers - len(running))]:
                del pending[unit.key]
                if unit.kind == "float":
                    future = pool.submit(float_unit, design_json, str(data), str(work), unit.fold, pretrained,
                                         device)
                elif unit.kind == "tune":
                    future = pool.submit(tune_unit, design_json, str(data), str(work), unit.fold, unit.arm, unit.lr,
                                         device)
                else:
                    lr = chosen_learning_rates(design, work)[unit.fold][unit.arm]["chosen"]
                    future = pool.submit(main_unit, design_json, str(data), str(work), unit.fold, unit.seed,
                                         unit.arm, lr, device)
                running[future] = unit
                unit_started[unit.key] = time.monotonic()
            if not running:
                raise RuntimeError(f"runs whose dependencies cannot finish: {sorted(pending)}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                future.result()  # a failed run stops the study; finished runs stay on disk
                finished.add(unit.key)
                log(f"done {unit.key} ({unit.iterations} its, {time.monotonic() - unit_started[unit.key]:.0f} s); "
                    f"{len(pending) + len(running)} to go")


# -- analysis -----------------------------------------------------------------------------
def analyse(design: StudyDesign, records: list[ImageRecord], work: Path) -> dict[str, Any]:
    """Pool every run's saved detections, bootstrap, and apply the decision rule."""
    folds = folds_of(records, design)
    index = {r.name: i for i, r in enumerate(records)}
    gt = {r.name: r.boxes for r in records}
    keys = [(f, s, r.name) for f, (_, ev) in folds.items() for s in range(design.seeds) for r in ev]
    units = Units(np.array([k[0] for k in keys]), np.array([k[1] for k in keys]),
                  np.array([index[k[2]] for k in keys]))
    weights = resample_weights(units, design.resamples, seed=design.bootstrap_seed)
    fixed_runs = resample_weights(units, design.resamples, seed=design.bootstrap_seed, resample_seeds=False)
    ground_truth = [len(gt[name]) for _, _, name in keys]

    runs: dict[tuple[int, int, str], tuple[dict, dict]] = {}
    for f in folds:
        for s in range(design.seeds):
            for arm in ARMS:
                runs[f, s, arm] = load_arm_run(work / f"fold{f}" / "runs", f"{arm}_seed{s}")

    samples: dict[tuple[str, str], MissRateSample] = {}
    diagnostics: dict[tuple[str, str], MissRateSample] = {}
    checkpoints: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in ARMS:
        first = runs[next(iter(folds)), 0, arm][0]
        checkpoints[arm] = {}
        for ev in first["evaluations"]:
            label = ev["label"]
            matched = []
            for f, s, name in keys:
                meta, detections = runs[f, s, arm]
                matched.append(match_image(detections[label][meta["images"].index(name)], gt[name]))
            pooled = PooledDetections.pool(matched, ground_truth)
            samples[arm, label] = MissRateSample.of(pooled, weights)
            if label.startswith("consolidated"):
                diagnostics[arm, label] = MissRateSample.of(pooled, fixed_runs)
            interval = samples[arm, label].interval()
            evs = [next(e for e in runs[f, s, arm][0]["evaluations"] if e["label"] == label)
                   for f in folds for s in range(design.seeds)]
            checkpoints[arm][label] = {
                "num_binary_layers": ev["num_binary_layers"], "compression_ratio": round(ev["compression_ratio"], 3),
                "iterations": ev["iterations"], "miss_rate": round(interval.estimate, 4),
                "ci95": [round(interval.lo, 4), round(interval.hi, 4)],
                "per_run_miss_rate": [round(e["miss_rate"], 4) for e in evs],
                "layer_errors": _mean_dicts([e["layer_errors"] for e in evs]),
                "errors_at_binarization": _mean_dicts([e["errors_at_binarization"] for e in evs]),
            }

    points = sorted(int(label.removeprefix("consolidated")) for label in checkpoints[PRIMARY_ORDER]
                    if label.startswith("consolidated"))
    deepest = f"consolidated{points[-1]}"
    comparisons = []

    def compare(name: str, role: str, a: list[tuple[str, str]], b: list[tuple[str, str]]) -> None:
        interval, _ = difference_interval([samples[x] for x in a], [samples[x] for x in b])
        row = {"name": name, "role": role, "a": [list(x) for x in a], "b": [list(x) for x in b],
               "difference": round(interval.estimate, 4), "ci95": [round(interval.lo, 4), round(interval.hi, 4)],
               "half_width": round(interval.half_width, 4), "verdict": verdict(interval.lo, interval.hi, design.margin)}
        if all(x in diagnostics for x in (*a, *b)):
            fixed, _ = difference_interval([diagnostics[x] for x in a], [diagnostics[x] for x in b])
            row["ci95_runs_fixed"] = [round(fixed.lo, 4), round(fixed.hi, 4)]
        comparisons.append(row)

    at = [f"consolidated{k}" for k in points]
    compare(f"{PRIMARY_ORDER} - {BASELINE}, mean over the {len(points)} matched points", "primary",
            [(PRIMARY_ORDER, x) for x in at], [(BASELINE, x) for x in at])
    for x in at:
        ratio = checkpoints[BASELINE][x]["compression_ratio"]
        compare(f"{PRIMARY_ORDER} - {BASELINE}, {x.removeprefix('consolidated')} layers ({ratio:.1f}x)",
                "secondary", [(PRIMARY_ORDER, x)], [(BASELINE, x)])
    for order in ORDERS:
        if order != PRIMARY_ORDER:
            compare(f"{order} - {BASELINE}, all layers", "secondary", [(order, deepest)], [(BASELINE, deepest)])
    for a, b in ((PRIMARY_ORDER, "forward"), (PRIMARY_ORDER, "sensitivity"), ("sensitivity", "forward")):
        compare(f"{a} - {b}, all layers", "secondary", [(a, deepest)], [(b, deepest)])
    for arm in (PRIMARY_ORDER, BASELINE):
        compare(f"{arm} - {CONTROL} (cost of binarizing), all layers", "reference",
                [(arm, deepest)], [(CONTROL, deepest)])
    return {"matched_layers": points, "checkpoints": checkpoints, "comparisons": comparisons,
            "units": {"folds": list(folds), "seeds": design.seeds, "images": len({k[2] for k in keys}),
                      "evaluations_per_checkpoint": len(keys)},
            "runs": [{"fold": f, "seed": s, "arm": arm, "learning_rate": meta["learning_rate"],
                      "seconds": meta["seconds"], "layer_order": meta["layer_order"]}
                     for (f, s, arm), (meta, _) in runs.items()]}


def project_half_width(primary: dict[str, Any], design: StudyDesign) -> dict[str, Any]:
    """A rough extrapolation (not part of the pre-registration): what would bring the primary
    half-width to the margin. Treats the interval's variance as an image part (the width
    with the trained networks fixed), which only more images shrink, plus a run-to-run part
    that falls as 1/seeds."""
    total = primary["half_width"] ** 2
    images = ((primary["ci95_runs_fixed"][1] - primary["ci95_runs_fixed"][0]) / 2) ** 2
    runs = max(total - images, 0.0)
    goal = design.margin ** 2
    if total <= goal:
        return {"seeds_needed": design.seeds, "images_factor": 1.0,
                "text": "The goal is met with this design."}
    if images >= goal:
        factor = images / goal
        return {"seeds_needed": None, "images_factor": round(factor, 2),
                "text": (f"More seeds cannot reach the goal: the image part alone is wider; it would take "
                         f"about {factor:.1f}x as many evaluation images (and seeds to match).")}
    seeds = int(np.ceil(design.seeds * runs / (goal - images)))
    return {"seeds_needed": seeds, "images_factor": 1.0,
            "text": (f"Rough projection: about {seeds} seeds per fold would reach it "
                     f"({seeds / design.seeds:.1f}x this study's runs).")}


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    if not dicts or not dicts[0]:
        return {}
    return {k: round(float(np.mean([d[k] for d in dicts])), 4) for k in dicts[0]}


# -- report -----------------------------------------------------------------------------
def write_report(report: dict[str, Any], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    a, d = report["analysis"], report["design"]
    primary = next(c for c in a["comparisons"] if c["role"] == "primary")
    lines = [
        f"# The claim study{' (--quick: a path check, not a result)' if report['quick'] else ''}",
        "",
        (f"{report['environment']['date']}, commit {report['environment']['commit']}, torch "
         f"{report['environment']['torch']}, {d['architecture']}"
         f"{', activations binary' if d['activation_bits'] else ', weights-only binarization'}. "
         f"{a['units']['images']} images in {len(a['units']['folds'])} evaluated folds (of {d['folds']}) x "
         f"{d['seeds']} seeds: {a['units']['evaluations_per_checkpoint']} evaluations per checkpoint. "
         f"Fine-tuning {d['finetune_iters']} iterations per layer (batch {d['batch_size']}), consolidation "
         f"{d['consolidation_iters']} at every compared point; learning rates from {list(d['learning_rates'])} "
         f"on an inner split of each fold's training images; {d['resamples']} paired bootstrap resamples "
         "(images and seeds, within folds)."),
        "",
        "## Verdicts (rule: README, \"The claim study\")",
        "",
        "| comparison (A - B, MR^-2) | role | difference | 95 % interval | half-width | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in a["comparisons"]:
        lines.append(f"| {c['name']} | {c['role']} | {c['difference']:+.4f} | [{c['ci95'][0]:+.4f}, "
                     f"{c['ci95'][1]:+.4f}] | {c['half_width']:.4f} | **{c['verdict']}** |")
    lines += ["", (f"Primary half-width {primary['half_width']:.4f} (goal <= {d['margin']}: "
                   f"{'met' if report['goals']['primary half-width <= margin'] else 'missed'}); with the trained "
                   f"networks held fixed (images resampled, seeds not) the interval would be "
                   f"[{primary['ci95_runs_fixed'][0]:+.4f}, {primary['ci95_runs_fixed'][1]:+.4f}]. "
                   f"{report['projection']['text']}"),
              "", "## MR^-2 at the compared points (pooled over folds and seeds, 95 % interval)", "",
              "| arm | checkpoint | layers | compression | iterations | MR^-2 | 95 % interval |",
              "|---|---|---|---|---|---|---|"]
    for arm, cps in a["checkpoints"].items():
        for label, cp in cps.items():
            if label.startswith("consolidated") or label == "step0":
                lines.append(f"| {arm} | {label} | {cp['num_binary_layers']} | {cp['compression_ratio']:.2f}x | "
                             f"{cp['iterations']} | {cp['miss_rate']:.4f} | [{cp['ci95'][0]:.4f}, {cp['ci95'][1]:.4f}] |")
    lines += ["", "## Learning rates chosen on the inner split (inner-validation MR^-2 per rate)", "",
              "| fold | arm | chosen | inner MR^-2 by rate |", "|---|---|---|---|"]
    for fold, arms in report["learning_rates"].items():
        for arm, row in arms.items():
            rates = ", ".join(f"{k}: {v:.3f}" for k, v in row["inner_miss_rates"].items())
            lines.append(f"| {fold} | {arm} | {row['chosen']:g} | {rates} |")
    lines += _drift_lines(a)
    lines += ["", "## Goals", ""]
    lines += [f"- {_mark(ok)}: {goal}" for goal, ok in report["goals"].items()]
    lines += ["", (f"Wall time of this invocation {report['seconds']['wall'] / 60:.1f} min; the main runs took "
                   f"{report['seconds']['runs'] / 60:.1f} min of process time; {report['workers']} workers x "
                   f"{report['threads']} threads; fresh start: {report['fresh_start']}. Load average at the end: "
                   f"{report['environment']['load_average_at_end']}.")]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot_forest(report, out / f"{name}_forest.png")
    plot_curves(report, out / f"{name}_curves.png")


def _drift_lines(a: dict[str, Any]) -> list[str]:
    deepest = f"consolidated{a['matched_layers'][-1]}"
    cps = a["checkpoints"]
    aao, primary = cps[BASELINE][deepest], cps[PRIMARY_ORDER]
    layers = list(aao["layer_errors"])
    if not layers:
        return []
    steps = sorted((int(k.removeprefix("step")), v) for k, v in primary.items() if k.startswith("step"))
    lines = ["", "## Relative output error against the float network (mean over runs, fixed images)", "",
             ("Each layer's output (after its BatchNorm) against the float network's on the same images: "
              "||f - f_float|| / ||f_float||. \"just binarized\": before any fine-tuning of that step."), "",
             (f"| layer (forward order) | all-at-once, all {a['matched_layers'][-1]} just binarized | all-at-once, "
              f"consolidated | {PRIMARY_ORDER}, last step just binarized | {PRIMARY_ORDER}, consolidated | "
              f"{CONTROL}, same iterations |"), "|---|---|---|---|---|---|"]
    last_step = steps[-1][1] if steps else {"errors_at_binarization": {}}
    for layer in layers:
        lines.append(f"| {layer} | {_num(aao['errors_at_binarization'].get(layer))} | {_num(aao['layer_errors'][layer])} | "
                     f"{_num(last_step['errors_at_binarization'].get(layer))} | "
                     f"{_num(primary[deepest]['layer_errors'].get(layer))} | "
                     f"{_num(cps[CONTROL][deepest]['layer_errors'].get(layer))} |")
    return lines


def _mark(ok: bool | None) -> str:
    return "N/A (resumed run)" if ok is None else "PASS" if ok else "MISS"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def plot_forest(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["analysis"]["comparisons"]
    margin = report["design"]["margin"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    ys = np.arange(len(rows))[::-1]
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"equivalence band ±{margin}")
    ax.axvline(0, color="black", lw=0.8)
    for y, row in zip(ys, rows, strict=True):
        colour = {"better": "tab:blue", "worse": "tab:red", "equivalent": "tab:green"}.get(row["verdict"], "gray")
        ax.errorbar(row["difference"], y, xerr=[[row["difference"] - row["ci95"][0]], [row["ci95"][1] - row["difference"]]],
                    fmt="s" if row["role"] == "primary" else "o", color=colour, capsize=3)
        ax.text(1.02, y, row["verdict"], transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=colour)
    ax.set_yticks(ys, [r["name"] for r in rows], fontsize=7)
    ax.set_xlabel("MR^-2 difference A - B (negative: A misses less), 95 % paired bootstrap interval")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    cps = report["analysis"]["checkpoints"]
    colours = {"inverse_depth": "tab:blue", "forward": "tab:orange", "sensitivity": "tab:purple",
               BASELINE: "black", CONTROL: "tab:green"}
    for arm in ORDERS:
        steps = sorted((int(k.removeprefix("step")), v) for k, v in cps[arm].items() if k.startswith("step"))
        if steps:
            xs = [v["compression_ratio"] for _, v in steps]
            ax.plot(xs, [v["miss_rate"] for _, v in steps], color=colours[arm], lw=1, alpha=0.6,
                    label=f"{arm}: steps (no consolidation)")
            ax.fill_between(xs, [v["ci95"][0] for _, v in steps], [v["ci95"][1] for _, v in steps],
                            color=colours[arm], alpha=0.1)
    for shift, arm in enumerate((*ORDERS, BASELINE, CONTROL)):
        points = [v for k, v in cps[arm].items() if k.startswith("consolidated")]
        if arm == CONTROL:  # float: plotted at the compression of the point whose iterations it matches
            ratios = {v["iterations"]: v["compression_ratio"] for k, v in cps[BASELINE].items()}
            xs = [ratios.get(v["iterations"], 1.0) for v in points]
        else:
            xs = [v["compression_ratio"] for v in points]
        xs = [x * 1.025 ** (shift - 2) for x in xs]  # side by side, not on top of each other
        ys = [v["miss_rate"] for v in points]
        err = [[y - v["ci95"][0] for y, v in zip(ys, points, strict=True)],
               [v["ci95"][1] - y for y, v in zip(ys, points, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, fmt="s" if arm in (BASELINE, CONTROL) else "o", ls="--" if arm == BASELINE else "",
                    color=colours[arm], capsize=3, label=f"{arm}: consolidated" + (" (float, same iterations)" if arm == CONTROL else ""))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("whole-model compression ratio (float control: the point whose iterations it matches)")
    ax.set_ylabel("MR^-2, pooled over folds and seeds (lower is better)")
    ax.set_title("Trade-off with 95 % bootstrap intervals")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------
def build_design(args: argparse.Namespace) -> StudyDesign:
    fields: dict[str, Any] = {"architecture": args.model, "pretrained": bool(args.pretrained)}
    if args.activation_bits is not None:
        fields["activation_bits"] = args.activation_bits
    if args.quick:
        fields.update(QUICK)
    for name in ("seeds", "finetune_iters", "consolidation_iters", "evaluated_folds", "learning_rates"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.input:
        height, width = args.input
        fields["builder_kwargs"] = {"input_height": height, "input_width": width}
    return StudyDesign(**fields)


def _numbers(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(v) for v in text.split(","))
    return parse


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def _commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 of 4 folds, 1 seed, tiny budgets (same code path)")
    parser.add_argument("--plan", action="store_true", help="print the runs and their iterations; train nothing")
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--model", default=DEFAULT_ARCHITECTURE, help="architecture (pedestrian_adas_0002: issue 10)")
    parser.add_argument("--pretrained", type=Path, help="a float model folder (weights.safetensors + card.json) "
                        "every fold starts from, instead of training one per fold")
    parser.add_argument("--activation-bits", type=int, help="1: binary activations too (issue 11's option)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--finetune-iters", type=int)
    parser.add_argument("--consolidation-iters", type=int)
    parser.add_argument("--evaluated-folds", type=_numbers(int), help="e.g. 0,1: evaluate only these folds")
    parser.add_argument("--learning-rates", type=_numbers(float), help="the grid, e.g. 1e-4,3e-4")
    parser.add_argument("--input", type=_size, help="HxW: the network input (builder kwargs input_height, "
                        "input_width; pedestrian_adas_0002), e.g. 192x336")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seconds-per-iteration", type=float, default=0.38,
                        help="for --plan's estimate: one fine-tuning iteration (batch 8) in one process "
                        "while the other core is busy too (0.37-0.41 s measured with 2 x 1 thread)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK)
    add_device_argument(parser)
    args = parser.parse_args()
    device = device_from_args(args, parser)

    if args.model not in ARCHITECTURES:
        raise SystemExit(f"unavailable: architecture {args.model!r} is not registered in this build "
                         f"(pedestrian_adas_0002 arrives with issue 10); known: {sorted(ARCHITECTURES)}")
    if args.model != DEFAULT_ARCHITECTURE and not args.pretrained:
        raise SystemExit(f"--model {args.model} needs --pretrained DIR: the study fine-tunes a given "
                         "detector and trains no float model for it")
    design = build_design(args)
    try:
        pipeline_config(design, PRIMARY_ORDER, learning_rate=1e-3, seed=0)
    except StudyUnavailable as exc:
        raise SystemExit(f"unavailable: {exc}") from None
    variant = "pednet" if args.model == DEFAULT_ARCHITECTURE else args.model
    if args.input:
        variant += f"_{args.input[0]}x{args.input[1]}"
    if design.activation_bits:
        variant += f"_act{design.activation_bits}"
    name = "claim" + ("" if variant == "pednet" else f"_{variant}") + ("_quick" if args.quick else "")
    run_study(design, name=name, variant=variant + ("-quick" if args.quick else ""), data=args.data,
              out=args.out, work_root=args.work, workers=args.workers, threads=args.threads,
              pretrained=args.pretrained, quick=args.quick, plan_only=args.plan,
              seconds_per_iteration=args.seconds_per_iteration, device=device)


def run_study(design: StudyDesign, *, name: str, variant: str, data: Path, out: Path, work_root: Path,
              workers: int, threads: int, pretrained: Path | None, quick: bool, plan_only: bool = False,
              seconds_per_iteration: float = 0.25, device: str = "cpu") -> dict[str, Any] | None:
    """Run (or resume) every unfinished run of `design`, analyse, and write the report."""
    digest = hashlib.sha1(design.model_dump_json().encode()).hexdigest()[:10]
    work = work_root / f"{variant}-{digest}"
    import torch

    torch.set_num_threads(threads)
    records = _records(str(data))
    if pretrained:
        model, card = load_model(pretrained, overrides=design.builder_kwargs)
    else:
        card = ModelCard(architecture=design.architecture, **design.builder_kwargs)
        model = card.build().eval()
    points = matched_points(model, card, design)
    iterations = planned_iterations(model, card, design)
    units = plan_units(design, iterations, max(points), bool(pretrained))
    total = sum(u.iterations for u in units)
    log(f"design {digest} ({work}): {len(units)} runs, {total} fine-tuning iterations; matched points "
        f"(step: layers) {points}; iterations per arm and point {iterations}")
    if plan_only:
        for kind in ("float", "tune", "main"):
            its = sum(u.iterations for u in units if u.kind == kind)
            log(f"  {kind}: {sum(u.kind == kind for u in units)} runs, {its} iterations")
        log(f"estimate: {total * seconds_per_iteration / workers / 3600:.2f} h at {seconds_per_iteration} s "
            f"per iteration per process, {workers} processes (evaluation and start-up not included)")
        return None
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "design.json").exists():
        (work / "design.json").write_text(design.model_dump_json(indent=1))

    started, commit = time.monotonic(), _commit()  # the code the runs below use
    fresh = not any(_done(u, work) for u in units)
    execute(units, design, data, work, workers, threads, str(pretrained) if pretrained else None, device)
    wall = time.monotonic() - started
    log("analysing")
    analysis = analyse(design, records, work)
    learning_rates = chosen_learning_rates(design, work)
    run_seconds = sum(r["seconds"] for r in analysis["runs"])
    primary = next(c for c in analysis["comparisons"] if c["role"] == "primary")
    budget = 20 * 60 if quick else 2 * 3600
    goals = {
        "primary half-width <= margin": primary["half_width"] <= design.margin,
        # a resumed study's wall time says nothing about the whole study's: not judged
        f"study within {budget // 60} minutes (fresh start, wall time)": (wall <= budget) if fresh else None,
        "arms got equal iterations at each compared point (from the plans)":
            all(len({iterations[arm][k] for arm in ARMS if k in iterations[arm]}) == 1
                for k in iterations[PRIMARY_ORDER]),
    }
    report = {
        "projection": project_half_width(primary, design),
        "quick": quick, "design": design.model_dump(mode="json"), "design_hash": digest,
        "work": str(work), "workers": workers, "threads": threads, "fresh_start": fresh,
        "planned_iterations": {arm: {str(k): v for k, v in its.items()} for arm, its in iterations.items()},
        "consolidated_points": {arm: list(consolidated_points(arm, points).values()) for arm in ARMS},
        "learning_rates": {str(f): v for f, v in learning_rates.items()},
        "analysis": analysis, "goals": goals,
        "seconds": {"wall": round(wall, 1), "runs": round(run_seconds, 1)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(), **cpu_model(),
                        "date": time.strftime("%Y-%m-%d"),
                        "commit": commit, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    write_report(report, out, name)
    for c in analysis["comparisons"]:
        log(f"{c['verdict']:>12}: {c['name']} {c['difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    for goal, ok in goals.items():
        log(f"{_mark(ok)}: {goal}")
    log(f"wrote {out / name}.{{json,md}} and plots")
    return report


if __name__ == "__main__":
    main()

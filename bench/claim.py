"""The pre-registered study of the paper's claim: layer priority against all-at-once.

    python -m bench.claim                  # the PedNet study (make bench-claim; < 2 h on 2 idle cores)
    python -m bench.claim --quick          # same code path, 2 folds x 1 seed, tiny budgets (~10-20 min)
    python -m bench.claim --plan           # the runs and iterations it would make; trains nothing
    python -m bench.claim --activation-bits 1                                   # binary weights + activations (issue 11)
    python -m bench.claim --model pedestrian_adas_0002 --pretrained DIR         # Intel's detector (issue 10)
    python -m bench.claim --model pedestrian_adas_0002 --pretrained core/models/weights/pedestrian_adas_0002 \\
        --input 192x336 --seeds 1 --finetune-iters 5 --consolidation-iters 20 \\
        --learning-rates 1e-4,3e-4                                              # the reduced run in the results

Design, statistics and decision rule: bench/results/README.md, "The claim study", and
`bench/study/`. Every (fold, seed, arm) run is saved under var/claim/<variant>-<design hash>/
as soon as it ends; a rerun with the same design skips every finished run, so an interrupted
study resumes. The runs go to worker processes started with "spawn": each imports this module
by its name (`bench.claim`, from the parent's import path and working directory, the repo
root), never a script path. Writes bench/results/claim<suffix>.{json,md} and claim<suffix>_forest.png,
claim<suffix>_curves.png (`--name` another name: e.g. claim_pedestrian_adas_0002_192x336_2seeds, the reduced
design with the default 2 seeds per fold, beside its 1-seed run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import report
from bench.study.analysis import analyse, project_half_width
from bench.study.arms import (
    ARMS,
    BASELINE,
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
from bench.study.report import design_text, statistics_text, variant_text, write_report
from bench.study.results import is_done, save_arm_run
from core.checkpoint import ModelCard, load_model, save_model
from core.data import ImageRecord, read_pennfudan
from core.device import add_device_argument, device_from_args
from core.models.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE
from core.paths import default_data_dir
from core.pretrained import pretrained_for
from core.train import train_float_detector

WORK = report.ROOT / "var" / "claim"
QUICK = {"evaluated_folds": (0, 1), "seeds": 1, "float_iterations": 300, "finetune_iters": 5,
         "consolidation_iters": 10, "learning_rates": (3e-4, 1e-3), "drift_images": 4}
# one fine-tuning iteration (batch 8) in one process while the other core is busy too
# (0.37-0.41 s measured with 2 x 1 thread): --plan's estimate
SECONDS_PER_ITERATION = 0.38
BUDGET_MINUTES, QUICK_BUDGET_MINUTES = 120, 20
REDUCING = ("evaluated_folds", "seeds", "finetune_iters", "consolidation_iters", "learning_rates")


def main() -> None:
    args = parse_args()
    design = build_design(args)
    variant = variant_of(design.model_dump(mode="json"))
    name = args.name or default_name(variant, args.quick)
    run_study(design, name=name, variant=variant + ("-quick" if args.quick else ""), data=args.data,
              out=args.out, work_root=args.work, workers=args.workers, threads=args.threads,
              pretrained=args.pretrained, quick=args.quick, plan_only=args.plan,
              seconds_per_iteration=args.seconds_per_iteration, device=args.device)


def variant_of(design: dict[str, Any]) -> str:
    """The study's variant, from its design: `pednet`, or the architecture, with the input size
    and `_act<bits>` where they are given (e.g. `pedestrian_adas_0002_192x336`)."""
    variant = "pednet" if design["architecture"] == DEFAULT_ARCHITECTURE else design["architecture"]
    size = design["builder_kwargs"]
    if size.get("input_height"):
        variant += f"_{size['input_height']}x{size['input_width']}"
    if design["activation_bits"]:
        variant += f"_act{design['activation_bits']}"
    return variant


def default_name(variant: str, quick: bool = False) -> str:
    """The results' file name unless --name gives another: `claim`, or `claim_<variant>`."""
    return "claim" + ("" if variant == "pednet" else f"_{variant}") + ("_quick" if quick else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.claim", description=__doc__.splitlines()[0])
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
    parser.add_argument("--seconds-per-iteration", type=float, default=SECONDS_PER_ITERATION,
                        help="for --plan's estimate: one fine-tuning iteration (batch 8) in one process "
                        "while the other core is busy too (0.37-0.41 s measured with 2 x 1 thread)")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    parser.add_argument("--name", help="the results' file name (default: claim_<variant>, e.g. "
                        "claim_pedestrian_adas_0002_192x336), to keep another design of a variant beside it")
    parser.add_argument("--work", type=Path, default=WORK)
    add_device_argument(parser)
    args = parser.parse_args()
    args.device = device_from_args(args, parser)
    if args.model not in ARCHITECTURES:
        raise SystemExit(f"unavailable: architecture {args.model!r} is not registered in this build "
                         f"(pedestrian_adas_0002 arrives with issue 10); known: {sorted(ARCHITECTURES)}")
    if args.model != DEFAULT_ARCHITECTURE and not args.pretrained:
        raise SystemExit(f"--model {args.model} needs --pretrained DIR: the study fine-tunes a given "
                         "detector and trains no float model for it")
    return args


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
    design = StudyDesign(**fields)
    try:
        pipeline_config(design, PRIMARY_ORDER, learning_rate=1e-3, seed=0)
    except StudyUnavailable as exc:
        raise SystemExit(f"unavailable: {exc}") from None
    return design


def _numbers(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(v) for v in text.split(","))
    return parse


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


# -- the study ------------------------------------------------------------------------------
def run_study(design: StudyDesign, *, name: str, variant: str, data: Path, out: Path, work_root: Path,
              workers: int, threads: int, pretrained: Path | None, quick: bool, plan_only: bool = False,
              seconds_per_iteration: float = 0.25, device: str = "cpu") -> dict[str, Any] | None:
    """Run (or resume) every unfinished run of `design`, analyse, and write the report."""
    digest = hashlib.sha1(design.model_dump_json().encode()).hexdigest()[:10]
    work = work_root / f"{variant}-{digest}"
    torch.set_num_threads(threads)
    points, iterations, units = plan_study(design, pretrained)
    total = sum(u.iterations for u in units)
    report.log(f"design {digest} ({work}): {len(units)} runs, {total} fine-tuning iterations; matched points "
               f"(step: layers) {points}; iterations per arm and point {iterations}")
    if plan_only:
        print_plan(units, workers, seconds_per_iteration)
        return None
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "design.json").exists():
        (work / "design.json").write_text(design.model_dump_json(indent=1))
    started, commit = time.monotonic(), report.git_commit()  # the code the runs below use
    fresh = not any(_done(u, work) for u in units)
    execute(units, design, data, work, workers, threads, str(pretrained) if pretrained else None, device)
    wall = time.monotonic() - started
    report.log("analysing")
    analysis = analyse(design, _records(str(data)), work)
    primary = next(c for c in analysis["comparisons"] if c["role"] == "primary")
    result = {
        "projection": project_half_width(primary, design),
        "quick": quick, "design": design.model_dump(mode="json"), "design_hash": digest,
        "work": str(work), "workers": workers, "threads": threads, "fresh_start": fresh,
        "planned_iterations": {arm: {str(k): v for k, v in its.items()} for arm, its in iterations.items()},
        "consolidated_points": {arm: list(consolidated_points(arm, points).values()) for arm in ARMS},
        "learning_rates": {str(f): v for f, v in chosen_learning_rates(design, work).items()},
        "analysis": analysis,
        "goals": goals(design, analysis, iterations, wall, fresh, quick),
        "seconds": {"wall": round(wall, 1), "runs": round(sum(r["seconds"] for r in analysis["runs"]), 1)},
        "environment": report.machine(date=time.strftime("%Y-%m-%d"), load_average_at_end=report.load_average(),
                                      commit=(commit["commit"] or "unknown")[:7] + ("+dirty" if commit["dirty"] else "")),
    }
    write_report(result, out, name)
    for c in analysis["comparisons"]:
        report.log(f"{c['verdict']:>12}: {c['name']} {c['difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    report.log_goals(result["goals"], none="N/A (resumed run)")
    report.log(f"wrote {out / name}.{{json,md}} and plots")
    return result


def plan_study(design: StudyDesign, pretrained: Path | None) -> tuple[dict[int, int], dict[str, dict[int, int]],
                                                                       list[Unit]]:
    """The matched points, each arm's iterations per point, and every run of the study."""
    if pretrained:
        model, card = load_model(pretrained, overrides=design.builder_kwargs)
    else:
        card = ModelCard(architecture=design.architecture, **design.builder_kwargs)
        model = card.build().eval()
    points = matched_points(model, card, design)
    iterations = planned_iterations(model, card, design)
    return points, iterations, plan_units(design, iterations, max(points), bool(pretrained))


def print_plan(units: list[Unit], workers: int, seconds_per_iteration: float) -> None:
    for kind in ("float", "tune", "main"):
        its = sum(u.iterations for u in units if u.kind == kind)
        report.log(f"  {kind}: {sum(u.kind == kind for u in units)} runs, {its} iterations")
    total = sum(u.iterations for u in units)
    report.log(f"estimate: {total * seconds_per_iteration / workers / 3600:.2f} h at {seconds_per_iteration} s "
               f"per iteration per process, {workers} processes (evaluation and start-up not included)")


def goals(design: StudyDesign, analysis: dict[str, Any], iterations: dict[str, dict[int, int]], wall: float,
          fresh: bool, quick: bool) -> dict[str, bool | None]:
    primary = next(c for c in analysis["comparisons"] if c["role"] == "primary")
    budget = QUICK_BUDGET_MINUTES if quick else BUDGET_MINUTES
    return {
        "primary half-width <= margin": primary["half_width"] <= design.margin,
        # a resumed study's wall time says nothing about the whole study's: not judged
        f"study within {budget} minutes (fresh start, wall time)": (wall <= budget * 60) if fresh else None,
        "arms got equal iterations at each compared point (from the plans)":
            all(len({iterations[arm][k] for arm in ARMS if k in iterations[arm]}) == 1
                for k in iterations[PRIMARY_ORDER]),
    }


# -- the runs (each in a worker process) ------------------------------------------------
def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _records(data: str) -> list[ImageRecord]:
    return read_pennfudan(Path(data))


def _float_dir(work: Path, fold: int) -> Path:
    return work / f"fold{fold}" / "float"


def float_unit(design_json: str, data: str, work: str, fold: int, pretrained: str | None,
               device: str = "cpu") -> None:
    """The fold's float detector: trained on the fold's training images (or the given
    pretrained model, unchanged)."""
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


def execute(units: list[Unit], design: StudyDesign, data: Path, work: Path, workers: int, threads: int,
            pretrained: str | None, device: str = "cpu") -> None:
    """Run every unfinished unit, `workers` processes at a time, dependencies first, the
    longest ready unit first."""
    pending = {u.key: u for u in units if not _done(u, work)}
    finished = {u.key for u in units} - set(pending)
    report.log(f"{len(finished)} of {len(units)} runs already done; {len(pending)} to go "
               f"({sum(u.iterations for u in pending.values())} fine-tuning iterations)")
    if not pending:
        return
    running: dict[Future[None], tuple[Unit, float]] = {}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        while pending or running:
            ready = sorted((u for u in pending.values() if all(d in finished for d in u.deps)),
                           key=lambda u: ({"float": 0, "tune": 1, "main": 2}[u.kind], -u.iterations, u.key))
            for unit in ready[: max(0, workers - len(running))]:
                del pending[unit.key]
                running[submit(pool, unit, design, data, work, pretrained, device)] = (unit, time.monotonic())
            if not running:
                raise RuntimeError(f"runs whose dependencies cannot finish: {sorted(pending)}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit, unit_started = running.pop(future)
                future.result()  # a failed run stops the study; finished runs stay on disk
                finished.add(unit.key)
                report.log(f"done {unit.key} ({unit.iterations} its, {time.monotonic() - unit_started:.0f} s); "
                           f"{len(pending) + len(running)} to go")


def submit(pool: ProcessPoolExecutor, unit: Unit, design: StudyDesign, data: Path, work: Path,
           pretrained: str | None, device: str) -> Future[None]:
    """One unit to the worker processes (which import this module as `bench.claim`)."""
    design_json = design.model_dump_json()
    if unit.kind == "float":
        return pool.submit(float_unit, design_json, str(data), str(work), unit.fold, pretrained, device)
    if unit.kind == "tune":
        return pool.submit(tune_unit, design_json, str(data), str(work), unit.fold, unit.arm, unit.lr,
                           device)
    lr = chosen_learning_rates(design, work)[unit.fold][unit.arm]["chosen"]
    return pool.submit(main_unit, design_json, str(data), str(work), unit.fold, unit.seed, unit.arm, lr,
                       device)


# -- bench/results/README.md ----------------------------------------------------------------
NOTES = {  # what a number cannot say about one result file
    "claim": ("The study was paused (SIGSTOP) for a while so the speed and jobs benchmarks could run on idle "
              "cores, and ran partly beside the compose check and a test-suite run: its wall time overstates its "
              "own."),
    "claim_pednet_act1": (
        "Here binarizing costs a lot and the layers drift about as far in either arm, so the paper's \"errors "
        "accumulate through all layers\" does not single out all-at-once. One plausible reading: all-at-once "
        "trains every layer's activation thresholds together for all its iterations, while layer priority gives "
        "the last-binarized layers only their own step plus the consolidation. `make bench-pretrained` ran on the "
        "same cores during this study."),
    "claim_pedestrian_adas_0002_192x336": (
        "The full design would take far too long on these 2 cores (one fine-tuning iteration of this detector costs "
        "several times PedNet's), so this variant ran smaller, every choice on the command line and in the design "
        "hash (the demo's resolution; learning rates around the demo's). It ran as two invocations of two folds "
        "each, the second reusing the finished runs (the same runs: the folds do not depend on which are "
        "evaluated). The primary verdict rests on the deepest point: there every arm is far from the float model, "
        "so the win is real but at a point no user would deploy. `sensitivity` beats every other arm at that "
        "point; it is already a job option (`\"order\": \"sensitivity\"`), so item 5 of issue 12 needs no new "
        "option; PedNet showed no such difference."),
    "claim_pedestrian_adas_0002_192x336_2seeds": (
        "The same reduced design with the default 2 seeds per fold (issue 18: what the faster fine-tuning buys), "
        "so run-to-run training noise enters the interval; fresh, on 2 AMD EPYC cores otherwise nearly idle (a few "
        "short test runs beside it). Against the 1-seed run above, the primary interval widened and kept its "
        "verdict; `inverse_depth` against `forward` at all layers, *worse* with one seed, became inconclusive. "
        "As there, the primary "
        "verdict rests on the deepest point, where every binarized arm is far from the float control; issue 18 "
        "asked for this design within 2 h 40 min."),
}


def readme_section(results: Path) -> str:
    """The study's design (from the PedNet study's JSON) and each variant's results."""
    head = "### The claim study: layer priority against all-at-once, pre-registered (`make bench-claim`)"
    return report.section(head, report.load_all("claim", results), _readme_lines)


def _readme_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    # the PedNet study first (the design below is its), then its variants, then other detectors
    reports = dict(sorted(results.items(), key=lambda kv: (
        kv[0] != "claim", kv[1]["design"]["architecture"] != DEFAULT_ARCHITECTURE, kv[0])))
    first = next(iter(reports.values()))
    lines = [("FlexBin rests on one claim: at the same compression ratio, binarizing layer by layer in priority "
              "order gives a lower miss rate than binarizing all layers at once. The trade-off benchmark above "
              "cannot decide it (one run per method on a small validation split; arms not trained alike). "
              "`python -m bench.claim` is the study that can. Its design, statistics and decision rule below were "
              "committed (with the code in `bench/study/` and `bench/claim.py`) before any full run; the git "
              "history shows it."), "",
             *design_text(first), "", *statistics_text(first, _plan(first)), ""]
    for n, result in reports.items():
        command = _command(result, n)
        note = (f"Run as `{command}`. " if command else "") + NOTES.get(n, "")
        if result["design"]["seeds"] == 1:
            note += (" With one seed per fold the interval holds the trained networks fixed: it does not include "
                     "run-to-run training noise, so it is narrower than a design with more seeds would give.")
        lines += [*variant_text(n, result, _plan(result), _title(result), note.strip()), ""]
    return lines


def _plan(result: dict[str, Any]) -> dict[str, Any]:
    """The runs and iterations of a study, from its JSON's design and planned iterations."""
    design = StudyDesign.model_validate(result["design"])
    iterations = {arm: {int(k): v for k, v in its.items()} for arm, its in result["planned_iterations"].items()}
    units = plan_units(design, iterations, max(result["analysis"]["matched_layers"]), design.pretrained)
    return {"runs": len(units), "iterations": sum(u.iterations for u in units), "quick": QUICK,
            "budget_minutes": BUDGET_MINUTES, "quick_budget_minutes": QUICK_BUDGET_MINUTES,
            "seconds_per_iteration": SECONDS_PER_ITERATION}


def _title(result: dict[str, Any]) -> str:
    d = result["design"]
    size = "x".join(str(d["builder_kwargs"][k]) for k in ("input_height", "input_width") if k in d["builder_kwargs"])
    return (("PedNet" if d["architecture"] == DEFAULT_ARCHITECTURE else f"`{d['architecture']}`")
            + (f" at {size}" if size else "")
            + (", binary weights and activations" if d["activation_bits"] else ", weights only")
            + (", a reduced design" if _reduced(result) else ""))


def _reduced(result: dict[str, Any]) -> bool:
    default = StudyDesign().model_dump(mode="json")
    return any(result["design"][k] != default[k] for k in REDUCING)


def _command(result: dict[str, Any], name: str) -> str:
    """The command line of a study whose design is not the default one (beyond --activation-bits), or
    whose results file (`name`) is not its variant's default."""
    d, default = result["design"], StudyDesign().model_dump(mode="json")
    args = []
    if d["architecture"] != DEFAULT_ARCHITECTURE:
        weights = pretrained_for(d["architecture"])
        args += ["--model", d["architecture"], "--pretrained",
                 str(weights.directory.relative_to(report.ROOT)) if weights else "DIR"]
    if d["builder_kwargs"].get("input_height"):
        args += ["--input", f"{d['builder_kwargs']['input_height']}x{d['builder_kwargs']['input_width']}"]
    if d["activation_bits"]:
        args += ["--activation-bits", str(d["activation_bits"])]
    for key in REDUCING:
        if d[key] != default[key]:
            value = d[key]
            text = ",".join(report.rate(v) if key == "learning_rates" else str(v) for v in value) \
                if isinstance(value, list) else str(value)
            args += [f"--{key.replace('_', '-')}", text]
    if name != default_name(variant_of(d), result["quick"]):
        args += ["--name", name]
    return "python -m bench.claim " + " ".join(args) if args else ""


if __name__ == "__main__":
    main()

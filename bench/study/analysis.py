"""The claim study's analysis: every run's saved detections pooled over folds and seeds, the
paired bootstrap (`bench.study.stats`) and the decision rule applied to each pre-registered
comparison; and a rough projection of what would narrow the primary interval."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from bench.study import stats
from bench.study.arms import (
    ARMS,
    BASELINE,
    CONTROL,
    PRIMARY_ORDER,
    STUDY_ORDERS,
    StudyDesign,
    folds_of,
)
from bench.study.results import load_arm_run
from core.data import ImageRecord
from core.detection_metrics import match_image

Sample = tuple[str, str]  # (arm, checkpoint label)


@dataclass
class Pooled:
    """Every checkpoint's bootstrap sample (`samples`; with the trained networks held fixed:
    `diagnostics`, consolidated points only) and its summary for the report (`checkpoints`)."""

    samples: dict[Sample, stats.MissRateSample]
    diagnostics: dict[Sample, stats.MissRateSample]
    checkpoints: dict[str, dict[str, dict[str, Any]]]


def analyse(design: StudyDesign, records: list[ImageRecord], work: Path) -> dict[str, Any]:
    """Pool every run's saved detections, bootstrap, and apply the decision rule."""
    folds = folds_of(records, design)
    keys = [(f, s, r.name) for f, (_, ev) in folds.items() for s in range(design.seeds) for r in ev]
    runs = {(f, s, arm): load_arm_run(work / f"fold{f}" / "runs", f"{arm}_seed{s}")
            for f in folds for s in range(design.seeds) for arm in ARMS}
    pooled = pool(design, records, keys, runs)
    points = sorted(int(label.removeprefix("consolidated")) for label in pooled.checkpoints[PRIMARY_ORDER]
                    if label.startswith("consolidated"))
    return {"matched_layers": points, "checkpoints": pooled.checkpoints,
            "comparisons": comparisons(design, pooled, points),
            "units": {"folds": list(folds), "seeds": design.seeds, "images": len({k[2] for k in keys}),
                      "evaluations_per_checkpoint": len(keys)},
            "runs": [{"fold": f, "seed": s, "arm": arm, "learning_rate": meta["learning_rate"],
                      "seconds": meta["seconds"], "layer_order": meta["layer_order"]}
                     for (f, s, arm), (meta, _) in runs.items()]}


def pool(design: StudyDesign, records: list[ImageRecord], keys: list[tuple[int, int, str]],
         runs: dict[tuple[int, int, str], tuple[dict[str, Any], dict[str, list[dict[str, Tensor]]]]]) -> Pooled:
    """Each arm's checkpoints, their detections pooled over every evaluated (fold, seed, image)."""
    index = {r.name: i for i, r in enumerate(records)}
    gt = {r.name: r.boxes for r in records}
    units = stats.Units(np.array([k[0] for k in keys]), np.array([k[1] for k in keys]),
                        np.array([index[k[2]] for k in keys]))
    weights = stats.resample_weights(units, design.resamples, seed=design.bootstrap_seed)
    fixed_runs = stats.resample_weights(units, design.resamples, seed=design.bootstrap_seed, resample_seeds=False)
    ground_truth = [len(gt[name]) for _, _, name in keys]
    out = Pooled({}, {}, {})
    for arm in ARMS:
        out.checkpoints[arm] = {}
        first_run = runs[keys[0][0], 0, arm][0]
        for ev in first_run["evaluations"]:
            label = ev["label"]
            matched = [match_image(runs[f, s, arm][1][label][runs[f, s, arm][0]["images"].index(name)], gt[name])
                       for f, s, name in keys]
            detections = stats.PooledDetections.pool(matched, ground_truth)
            out.samples[arm, label] = stats.MissRateSample.of(detections, weights)
            if label.startswith("consolidated"):
                out.diagnostics[arm, label] = stats.MissRateSample.of(detections, fixed_runs)
            interval = out.samples[arm, label].interval()
            evs = [next(e for e in meta["evaluations"] if e["label"] == label)
                   for (_, _, a), (meta, _) in runs.items() if a == arm]
            out.checkpoints[arm][label] = {
                "num_binary_layers": ev["num_binary_layers"], "compression_ratio": round(ev["compression_ratio"], 3),
                "iterations": ev["iterations"], "miss_rate": round(interval.estimate, 4),
                "ci95": [round(interval.lo, 4), round(interval.hi, 4)],
                "per_run_miss_rate": [round(e["miss_rate"], 4) for e in evs],
                "layer_errors": _mean_dicts([e["layer_errors"] for e in evs]),
                "errors_at_binarization": _mean_dicts([e["errors_at_binarization"] for e in evs]),
            }
    return out


def comparisons(design: StudyDesign, pooled: Pooled, points: list[int]) -> list[dict[str, Any]]:
    """The pre-registered comparisons, in the report's order: primary, secondary, reference."""
    deepest = f"consolidated{points[-1]}"
    at = [f"consolidated{k}" for k in points]
    rows: list[dict[str, Any]] = []

    def compare(name: str, role: str, a: list[Sample], b: list[Sample]) -> None:
        interval, _ = stats.difference_interval([pooled.samples[x] for x in a], [pooled.samples[x] for x in b])
        row = {"name": name, "role": role, "a": [list(x) for x in a], "b": [list(x) for x in b],
               "difference": round(interval.estimate, 4), "ci95": [round(interval.lo, 4), round(interval.hi, 4)],
               "half_width": round(interval.half_width, 4),
               "verdict": stats.verdict(interval.lo, interval.hi, design.margin)}
        if all(x in pooled.diagnostics for x in (*a, *b)):
            fixed, _ = stats.difference_interval([pooled.diagnostics[x] for x in a],
                                                 [pooled.diagnostics[x] for x in b])
            row["ci95_runs_fixed"] = [round(fixed.lo, 4), round(fixed.hi, 4)]
        rows.append(row)

    compare(f"{PRIMARY_ORDER} - {BASELINE}, mean over the {len(points)} matched points", "primary",
            [(PRIMARY_ORDER, x) for x in at], [(BASELINE, x) for x in at])
    for x in at:
        ratio = pooled.checkpoints[BASELINE][x]["compression_ratio"]
        compare(f"{PRIMARY_ORDER} - {BASELINE}, {x.removeprefix('consolidated')} layers ({ratio:.1f}x)",
                "secondary", [(PRIMARY_ORDER, x)], [(BASELINE, x)])
    for order in STUDY_ORDERS:
        if order != PRIMARY_ORDER:
            compare(f"{order} - {BASELINE}, all layers", "secondary", [(order, deepest)], [(BASELINE, deepest)])
    for a, b in ((PRIMARY_ORDER, "forward"), (PRIMARY_ORDER, "sensitivity"), ("sensitivity", "forward")):
        compare(f"{a} - {b}, all layers", "secondary", [(a, deepest)], [(b, deepest)])
    for arm in (PRIMARY_ORDER, BASELINE):
        compare(f"{arm} - {CONTROL} (cost of binarizing), all layers", "reference",
                [(arm, deepest)], [(CONTROL, deepest)])
    return rows


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

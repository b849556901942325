"""The claim study's report: `claim<suffix>.md`, its two plots, and its part of
bench/results/README.md (the design, the statistics and each variant's results), every number
from the study's JSON."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np

from bench.report import (
    figure,
    goal_lines,
    label,
    machine_text,
    mark,
    markdown_table,
    minutes,
    plural,
    rate,
    save_figure,
    span,
    write_results,
)
from bench.study.arms import BASELINE, CONTROL, PRIMARY_ORDER, STUDY_ORDERS

RESUMED = "N/A (resumed run)"
COLOURS = {"inverse_depth": "tab:blue", "forward": "tab:orange", "sensitivity": "tab:purple",
           BASELINE: "black", CONTROL: "tab:green"}


def write_report(report: dict[str, Any], out: Path, name: str) -> None:
    """`<out>/<name>.json`, `.md`, `_forest.png` and `_curves.png`."""
    write_results(name, report, markdown(report), out=out, indent=1)
    plot_forest(report, out / f"{name}_forest.png")
    plot_curves(report, out / f"{name}_curves.png")


# -- <name>.md -------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    a, d, env = report["analysis"], report["design"], report["environment"]
    primary = _primary(a)
    lines = [
        f"# The claim study{' (--quick: a path check, not a result)' if report['quick'] else ''}", "",
        (f"{env['date']}, commit {env['commit']}, torch {env['torch']}, {d['architecture']}"
         f"{', activations binary' if d['activation_bits'] else ', weights-only binarization'}. "
         f"{a['units']['images']} images in {len(a['units']['folds'])} evaluated folds (of {d['folds']}) x "
         f"{d['seeds']} seeds: {a['units']['evaluations_per_checkpoint']} evaluations per checkpoint. "
         f"Fine-tuning {d['finetune_iters']} iterations per layer (batch {d['batch_size']}), consolidation "
         f"{d['consolidation_iters']} at every compared point; learning rates from {list(d['learning_rates'])} "
         f"on an inner split of each fold's training images; {d['resamples']} paired bootstrap resamples "
         f"(images and seeds, within folds). Machine: {machine_text(env)}."), "",
        "## Verdicts (rule: bench/results/README.md, \"The claim study\")", "",
        *comparison_table(a["comparisons"], digits=4, half_width=True), "",
        (f"Primary half-width {primary['half_width']:.4f} (goal <= {d['margin']}: "
         f"{'met' if report['goals']['primary half-width <= margin'] else 'missed'}); with the trained networks "
         f"held fixed (images resampled, seeds not) the interval would be [{primary['ci95_runs_fixed'][0]:+.4f}, "
         f"{primary['ci95_runs_fixed'][1]:+.4f}]. {report['projection']['text']}"),
        "", "## MR^-2 at the compared points (pooled over folds and seeds, 95 % interval)", "",
        *points_table(a, with_float=True), "",
        "## Learning rates chosen on the inner split (inner-validation MR^-2 per rate)", "",
        *markdown_table([(fold, arm, row) for fold, arms in report["learning_rates"].items() for arm, row in arms.items()],
                        [("fold", lambda r: r[0]), ("arm", lambda r: r[1]), ("chosen", lambda r: f"{r[2]['chosen']:g}"),
                         ("inner MR^-2 by rate", lambda r: ", ".join(f"{k}: {v:.3f}"
                                                                     for k, v in r[2]["inner_miss_rates"].items()))]),
        *_drift_lines(a), "", "## Goals", "", *goal_lines(report["goals"], none=RESUMED), "",
        (f"Wall time of this invocation {minutes(report['seconds']['wall'])}; the main runs took "
         f"{minutes(report['seconds']['runs'])} of process time; {report['workers']} workers x {report['threads']} "
         f"threads; fresh start: {report['fresh_start']}. Load average at the end: {env['load_average_at_end']}."),
    ]
    return "\n".join(lines) + "\n"


def comparison_table(comparisons: list[dict[str, Any]], *, digits: int = 3, half_width: bool = False,
                     title: str = "comparison (A - B, MR^-2)") -> list[str]:
    def signed(x: float) -> str:
        return f"{x:+.{digits}f}"

    columns = [(title, "name"), ("role", "role"), ("difference", lambda c: signed(c["difference"])),
               ("95 % interval", lambda c: f"[{signed(c['ci95'][0])}, {signed(c['ci95'][1])}]")]
    if half_width:
        columns.append(("half-width", lambda c: f"{c['half_width']:.{digits}f}"))
    return markdown_table(comparisons, [*columns, ("verdict", lambda c: f"**{c['verdict']}**")])


def points_table(analysis: dict[str, Any], *, with_float: bool = False, digits: int = 4) -> list[str]:
    """Each arm's MR^-2 at the compared (consolidated) points, and its float start (step0)."""
    rows = [(arm, label, cp) for arm, cps in analysis["checkpoints"].items() for label, cp in cps.items()
            if label.startswith("consolidated") or (with_float and label == "step0")]
    return markdown_table(rows, [
        ("arm", lambda r: r[0]), ("checkpoint", lambda r: r[1]), ("layers", lambda r: r[2]["num_binary_layers"]),
        ("compression", lambda r: f"{r[2]['compression_ratio']:.2f}x"), ("iterations", lambda r: r[2]["iterations"]),
        ("MR^-2", lambda r: f"{r[2]['miss_rate']:.{digits}f}"),
        ("95 % interval", lambda r: f"[{r[2]['ci95'][0]:.{digits}f}, {r[2]['ci95'][1]:.{digits}f}]")],
        align="llrrrrl")


def _primary(analysis: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in analysis["comparisons"] if c["role"] == "primary")


def _drift_lines(a: dict[str, Any]) -> list[str]:
    deepest = f"consolidated{a['matched_layers'][-1]}"
    cps = a["checkpoints"]
    aao, primary = cps[BASELINE][deepest], cps[PRIMARY_ORDER]
    layers = list(aao["layer_errors"])
    if not layers:
        return []
    steps = sorted((int(k.removeprefix("step")), v) for k, v in primary.items() if k.startswith("step"))
    last_step = steps[-1][1] if steps else {"errors_at_binarization": {}}
    return ["", "## Relative output error against the float network (mean over runs, fixed images)", "",
            ("Each layer's output (after its BatchNorm) against the float network's on the same images: "
             "||f - f_float|| / ||f_float||. \"just binarized\": before any fine-tuning of that step."), "",
            *markdown_table(layers, [
                ("layer (forward order)", lambda x: x),
                (f"all-at-once, all {a['matched_layers'][-1]} just binarized",
                 lambda x: _num(aao["errors_at_binarization"].get(x))),
                ("all-at-once, consolidated", lambda x: _num(aao["layer_errors"][x])),
                (f"{PRIMARY_ORDER}, last step just binarized", lambda x: _num(last_step["errors_at_binarization"].get(x))),
                (f"{PRIMARY_ORDER}, consolidated", lambda x: _num(primary[deepest]["layer_errors"].get(x))),
                (f"{CONTROL}, same iterations", lambda x: _num(cps[CONTROL][deepest]["layer_errors"].get(x)))])]


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# -- plots ------------------------------------------------------------------------------------
def plot_forest(report: dict[str, Any], path: Path) -> None:
    rows = report["analysis"]["comparisons"]
    margin = report["design"]["margin"]
    fig, ax = figure(size=(10, 0.45 * len(rows) + 1.5))
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
    save_figure(fig, path)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    fig, ax = figure(size=(8, 5))
    cps = report["analysis"]["checkpoints"]
    for arm in STUDY_ORDERS:
        steps = sorted((int(k.removeprefix("step")), v) for k, v in cps[arm].items() if k.startswith("step"))
        if steps:
            xs = [v["compression_ratio"] for _, v in steps]
            ax.plot(xs, [v["miss_rate"] for _, v in steps], color=COLOURS[arm], lw=1, alpha=0.6,
                    label=f"{arm}: steps (no consolidation)")
            ax.fill_between(xs, [v["ci95"][0] for _, v in steps], [v["ci95"][1] for _, v in steps],
                            color=COLOURS[arm], alpha=0.1)
    for shift, arm in enumerate((*STUDY_ORDERS, BASELINE, CONTROL)):
        points = [v for k, v in cps[arm].items() if k.startswith("consolidated")]
        if arm == CONTROL:  # float: plotted at the compression of the point whose iterations it matches
            ratios = {v["iterations"]: v["compression_ratio"] for v in cps[BASELINE].values()}
            xs = [ratios.get(v["iterations"], 1.0) for v in points]
        else:
            xs = [v["compression_ratio"] for v in points]
        xs = [x * 1.025 ** (shift - 2) for x in xs]  # side by side, not on top of each other
        ys = [v["miss_rate"] for v in points]
        err = [[y - v["ci95"][0] for y, v in zip(ys, points, strict=True)],
               [v["ci95"][1] - y for y, v in zip(ys, points, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, fmt="s" if arm in (BASELINE, CONTROL) else "o", ls="--" if arm == BASELINE else "",
                    color=COLOURS[arm], capsize=3,
                    label=f"{arm}: consolidated" + (" (float, same iterations)" if arm == CONTROL else ""))
    label(ax, x="whole-model compression ratio (float control: the point whose iterations it matches)",
          y="MR^-2, pooled over folds and seeds (lower is better)", title="Trade-off with 95 % bootstrap intervals",
          log_x=True, legend=False)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    save_figure(fig, path)


# -- bench/results/README.md -----------------------------------------------------------------
def design_text(report: dict[str, Any]) -> list[str]:
    """The pre-registered design, with the numbers of `report`'s design (the PedNet study)."""
    d, a = report["design"], report["analysis"]
    cps, points = a["checkpoints"], a["matched_layers"]
    images, folds, ft, ci = a["units"]["images"], d["folds"], d["finetune_iters"], d["consolidation_iters"]
    sizes = "/".join(str(images // folds + (i < images % folds)) for i in range(folds))
    ratios = [f"{cps[BASELINE][f'consolidated{k}']['compression_ratio']:.1f}x" for k in points]
    rates = "{" + ", ".join(rate(lr) for lr in d["learning_rates"]) + "}"
    return [
        "**Design.**",
        (f"- *Data and folds.* The {images} shared Penn-Fudan images in {folds} folds fixed by name "
         f"(`core.data.kfold_records`: images ranked by the SHA-1 of their name, rank i in fold i mod {folds}; "
         f"{sizes} images). Per fold, one float PedNet (the default recipe, {d['float_iterations']} iterations, seed = "
         "fold number) trained on the other folds. Every image is evaluated once per seed and arm, by the "
         "networks of the fold that held it out."),
        (f"- *Arms.* Every arm starts from the fold's float model and fine-tunes on the fold's training images only "
         f"(batch {d['batch_size']}, AdamW, cosine schedules): **layer priority** in each order (`inverse_depth` = the "
         f"paper's, `forward`, `sensitivity`), one layer per step, {ft} iterations per step with a fresh optimizer and "
         f"schedule per step, as jobs do; **all-at-once**, the same first k layers of `inverse_depth` binarized in one "
         f"step and fine-tuned k x {ft} iterations; a **float control**, nothing binarized, fine-tuned in the same "
         f"{ft}-iteration segments with the same seeds, so \"more training\" is credited to neither method."),
        (f"- *Fair arms: a consolidation phase (option b of issue 12).* At every compared point each arm's evaluated "
         f"network is a copy fine-tuned {ci} more iterations with one fresh AdamW and one cosine schedule, on the same "
         "batches for every arm (`PipelineConfig.consolidation_iters`, `core.pipeline.consolidate`). Layer priority at "
         f"k layers, all-at-once over the same k layers and the control at that point all have k x {ft} + {ci} "
         "iterations and end with the same anneal (`bench.study.arms.planned_iterations` checks it from the plans). "
         "Why not option (a), one optimizer and schedule across all steps: every intermediate checkpoint would then "
         "be evaluated mid-schedule, with its learning rate still high, so layer priority's points before the last "
         "would be compared unannealed against an annealed all-at-once run (or all-at-once would have to be stopped "
         "mid-schedule too, which no user does); and every job would have to carry its optimizer state in the resume "
         "state. Consolidation gives each compared checkpoint the same final treatment, is what a user does with a "
         "selected checkpoint anyway, and leaves jobs unchanged (a job option, `consolidation_iters`, off by "
         "default)."),
        (f"- *Matched points.* {', '.join(map(str, points[:-1]))} and {points[-1]} binarized layers (fractions "
         f"{', '.join(f'{q:g}' for q in d['matched_fractions'])} of PedNet's {points[-1]} eligible layers): "
         f"{', '.join(ratios[:-1])} and {ratios[-1]}, the same layers in both arms. `forward` and `sensitivity` "
         "binarize other layers first, so before the last point their ratios differ from all-at-once's; they are "
         f"compared at {points[-1]} layers ({ratios[-1]}) only, the one point where every order has the same layers "
         "and ratio."),
        (f"- *Learning rates.* Per fold and arm, the best of {rates} by MR^-2 on an inner split of that fold's "
         f"training images (a fraction {d['inner_val_fraction']:g}, by name hash, as inner validation; fine-tuned on "
         "the rest, at the all-layers point, seed 0); a tie goes to the smaller rate. The evaluation images never "
         "enter. Limitation: the fold's float model has seen the inner-validation images in its own training (a "
         "second float model per fold would cost more time)."),
        f"- *Seeds.* {d['seeds']} per fold; seed s drives every run's sampling.",
        ("- *Saved.* Per run (fold, seed, arm), under `var/claim/`: the boxes and scores of every evaluated image at "
         "every checkpoint (safetensors + JSON), so every number is recomputable; and each layer's relative output "
         "error against the float network, ||f − f_float|| / ||f_float|| (after the layer's BatchNorm, on the "
         f"fold's first {d['drift_images']} evaluation images), after each step and just after binarizing, before "
         "fine-tuning: the paper's \"errors accumulate through all layers\" argument, measured."),
    ]


def statistics_text(report: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The pre-registered statistics and goals; `plan`: the study's runs and iterations, the
    quick design, the time budgets."""
    d, points = report["design"], report["analysis"]["matched_layers"]
    folds, quick = d["folds"], plan["quick"]
    return [
        "**Statistics** (`bench/study/stats.py`).",
        (f"- *Primary comparison:* Δ = the mean over the {len(points)} matched points of MR^-2(layer priority, "
         "`inverse_depth`) − MR^-2(all-at-once); each MR^-2 is computed on the detections pooled over all folds and "
         "seeds (a dataset-level metric, never an average of per-image numbers)."),
        (f"- *95 % interval:* percentile interval of {d['resamples']} paired bootstrap resamples (fixed generator "
         "seed). Each resample draws, in every fold independently, the fold's images with replacement and its seeds "
         "with replacement, and recomputes every MR^-2 from the saved detections; both arms use the same draws. "
         "Seeds combine by pooling (an image counts once per seed), and drawing them puts run-to-run training noise "
         f"into the interval (with {d['seeds']} seeds per fold it still understates that part). The report also gives "
         "the interval with the trained networks held fixed (seeds not drawn), as a diagnostic."),
        (f"- *Decision rule* (margin {d['margin']}; the first rule that matches decides, so every interval has "
         "exactly one verdict): **better** if the interval lies below 0 (hi < 0); **worse** if it lies above 0 "
         f"(lo > 0); **equivalent** if it contains 0 and lies within ±{d['margin']} (−{d['margin']} ≤ lo and hi ≤ "
         f"{d['margin']}); **inconclusive** otherwise. An interval that excludes 0 is a difference even when it lies "
         "inside the band (its bounds then say it is small)."),
        ("- *Secondary comparisons* (same rule, each its own statement, unadjusted 95 % intervals): `inverse_depth` − "
         "all-at-once at each matched point; `forward` − all-at-once and `sensitivity` − all-at-once at all layers; "
         "the orders against each other at all layers (`inverse_depth` − `forward`, `inverse_depth` − `sensitivity`, "
         "`sensitivity` − `forward`); for reference, `inverse_depth` − control and all-at-once − control at all "
         "layers (the cost of binarizing)."),
        (f"- *Goals:* the primary interval's half-width ≤ {d['margin']} MR^-2; the PedNet study within "
         f"{plan['budget_minutes'] // 60:g} hours on 2 idle cores ({plan['runs']} runs, {plan['iterations']:,} "
         f"fine-tuning iterations in {report['workers']} processes of {plural(report['threads'], 'thread')}, about "
         f"{plan['iterations'] * plan['seconds_per_iteration'] / report['workers'] / 3600:.1f} h at the "
         f"{plan['seconds_per_iteration']} s per iteration measured for one such process (`--seconds-per-iteration`), "
         "plus evaluation: `python -m bench.claim --plan`); `--quick` "
         f"({len(quick['evaluated_folds'])} of the {folds} folds, {quick['seeds']} seed, "
         f"{quick['float_iterations']}-iteration float models, {quick['finetune_iters']} iterations per step, "
         f"{quick['consolidation_iters']} consolidation, rates {{{', '.join(rate(lr) for lr in quick['learning_rates'])}}}; "
         f"the same code path) within {plan['quick_budget_minutes']} minutes. Each run is saved when it ends; "
         "rerunning resumes. (The iteration budget first written here was cut before any full run, when the quick "
         "run showed 1-thread iterations slower than assumed; the git history has both.) Should the half-width goal "
         "be missed, the report says whether more seeds could reach it (the width with the trained networks held "
         "fixed is the part only more images shrink) and how many, as a rough projection. More seeds cost runs, not "
         "design: every (fold, seed, arm) run is independent, so a GPU machine (or several processes) would take "
         "them in parallel. `--workers 2 --threads 1` is the default; one process with two threads may be faster on "
         "a truly idle machine but slows down badly as soon as anything else runs."),
        ("- *Where the paper's argument should bite:* `--activation-bits 1` (binary weights and activations) and "
         "`--model pedestrian_adas_0002 --pretrained DIR` (Intel's pretrained SSD: no float training per fold, the "
         "same folds for its recovery fine-tuning) run the same study into `claim_<variant>.*`. `--input HxW` runs a "
         "given detector at another network input (its card's `input_height` / `input_width`), and "
         "`--evaluated-folds`, `--seeds`, `--finetune-iters`, `--consolidation-iters` and `--learning-rates` shrink "
         "the design for a network too slow for the full one on this CPU; the design (and so the results folder's "
         "hash) records every choice."),
    ]


def variant_text(name: str, report: dict[str, Any], plan: dict[str, Any], title: str, note: str = "") -> list[str]:
    """One study's results: the verdicts, what they rest on, its comparisons and compared points."""
    a, d = report["analysis"], report["design"]
    p, margin = _primary(a), d["margin"]
    points = a["matched_layers"]
    deepest = f"consolidated{points[-1]}"
    cps = a["checkpoints"]
    by_role = {role: [c for c in a["comparisons"] if c["role"] == role] for role in ("secondary", "reference")}
    at_points = by_role["secondary"][:len(points)]
    others = [c for c in by_role["secondary"][len(points):] if c["verdict"] != "inconclusive"]
    wall_goal = next((g for g in report["goals"] if g.startswith("study within")), None)
    ok = report["goals"].get(wall_goal) if wall_goal else None
    errors = {arm: list(cps[arm][deepest]["layer_errors"].values()) for arm in (PRIMARY_ORDER, BASELINE, CONTROL)}
    paragraphs = [
        (f"**{title} ({report['environment']['date']}, [`{name}.md`]({name}.md)): the primary verdict is "
         f"*{p['verdict']}*.** {a['units']['images']} images x {plural(d['seeds'], 'seed')} "
         f"({a['units']['evaluations_per_checkpoint']} evaluations per checkpoint) in {len(a['units']['folds'])} "
         f"folds, {plan['runs']} runs{'' if report['fresh_start'] else ' (resumed: earlier runs reused)'}; "
         f"{d['architecture']}, {'binary weights and activations' if d['activation_bits'] else 'weights only'}. "
         f"Layer priority (`inverse_depth`) minus all-at-once, mean over the {len(points)} matched points: "
         f"**{p['difference']:+.3f} MR^-2, 95 % interval [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]** (half-width "
         f"{p['half_width']:.3f}: the ≤ {margin} goal is {mark(p['half_width'] <= margin)}); {_why(p, margin)}."),
        (f"At each matched point alone ({', '.join(f'{k} layers' for k in points)}): differences "
         f"{span((c['difference'] for c in at_points), '+.3f', ' to ')}, verdicts "
         f"{_counts(at_points)}. Between the orders and against all-at-once at all layers: "
         + ("; ".join(f"{c['name']} {c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]: "
                      f"*{c['verdict']}*" for c in others) or "every one inconclusive")
         + (", the others inconclusive" if others else "") + "."),
        (f"The cost of binarizing, at {points[-1]} layers ({cps[BASELINE][deepest]['compression_ratio']:.1f}x) against "
         "the float control given the same training: "
         + "; ".join(f"{c['name'].split(' - ')[0]} {c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], "
                     f"*{c['verdict']}*" for c in by_role["reference"])
         + f". MR^-2 there ({cps[BASELINE][deepest]['iterations']} iterations each arm): "
         + ", ".join(f"{arm} {cps[arm][deepest]['miss_rate']:.3f}" for arm in cps)
         + f"; the folds' float models start at {cps[PRIMARY_ORDER]['step0']['miss_rate']:.3f}."),
        ("Each layer's relative output error against the float network at that point (every layer; median and "
         "range): " + ", ".join(f"{arm} {statistics.median(v):.2f} ({span(v)})" for arm, v in errors.items() if v)
         + "." if any(errors.values()) else ""),
        (f"Wall time {minutes(report['seconds']['wall'])}"
         + (f" (goal {plan['budget_minutes']} min: {mark(ok, none='not judged, resumed')})" if wall_goal else "")
         + f"; the runs' process time {minutes(report['seconds']['runs'])}. {note}").rstrip(),
    ]
    return [*(x for para in paragraphs if para for x in (para, "")),
            *comparison_table(a["comparisons"], title=f"comparison (A − B, MR^-2, {title})"), "",
            "MR^-2 at the compared points (each consolidated; pooled over folds and seeds):", "",
            *points_table(a, digits=3), "",
            f"![forest plot: {title}]({name}_forest.png) (curves: [`{name}_curves.png`]({name}_curves.png))"]


def _why(c: dict[str, Any], margin: float) -> str:
    lo, hi = c["ci95"]
    if c["verdict"] == "better":
        return "the interval lies below 0: layer priority misses less"
    if c["verdict"] == "worse":
        return "the interval lies above 0: layer priority misses more"
    if c["verdict"] == "equivalent":
        return f"the interval contains 0 and lies within ±{margin}"
    past = max(hi - margin, -margin - lo)
    return f"the interval contains 0 but reaches {past:.3f} past the ±{margin} band, so it is not *equivalent*"


def _counts(comparisons: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    return ", ".join(f"{n} {v}" for v, n in counts.items())

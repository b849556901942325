"""Do distillation from the float model, or NNCF's scale-threshold input binarizer, keep binary
activations accurate (issue 19)? A screen.

    python -m bench.distillation             # about 10 minutes on 2 idle cores
    python -m bench.distillation --quick     # a minute: checks the script
    python -m bench.distillation --steps 1 --iterations 600 --binarizers rsign,scale_threshold
    python -m bench.distillation --steps 1 --iterations 600 --weights 0 --staged
    python -m bench.distillation --steps 1 --iterations 600 --weights 0 --binarizer-lr 100
    python -m bench.distillation --steps 1 --iterations 600 --weights 0 --binarizers scale_threshold --binarizer-lr 100 --rprelu
    python -m bench.distillation --steps 21 --iterations 300 --weights 0 --binarizers scale_threshold --binarizer-lr 100 --staged --binary-input-layers 24 --seed 2
    python -m bench.distillation --steps 21 --iterations 600 --weights 0 --binarizers scale_threshold --binarizer-lr 100 --staged --binary-input-layers 24 --weights-only-iterations 200
    python -m bench.distillation --steps 19 --iterations 600 --weights 0 --binarizers scale_threshold --binarizer-lr 100 --staged --order inverse_depth

The same job once per arm on pedestrian_adas_0002 at 192x336 (the demo's resolution and learning
rate), one arm per `distillation_weight` (default 0 and 1) and input binarizer (`activation_quantizer`,
default `rsign`), with `staged_schedule` on for every arm under --staged and `binarizer_lr_multiplier` from
--binarizer-lr (default 1) and `rprelu` under --rprelu, everything else equal: binary weights and inputs (`activation_bits: 1`), the
`latency` order (--order; the layers that save the most measured time first: the costly pointwise convs,
where binary inputs break this detector), 2 layers per step, 60 fine-tuning iterations per step,
seed 0 (--seed), a fixed number of steps. Each step records its validation MR^-2 (32 images), the forward
time of its OpenVINO export (1 thread, f32, the worker's way) and how many layers run at 1 bit.

A screen, as the issue asks for the ablation grid: one seed, few iterations, the 32-image
validation split (step-to-step noise about ±0.04 MR^-2). What survives earns full runs.

Each step's packed checkpoint is kept in var/bench_distillation/<result name>/<arm>/step<k>.safetensors
(git-ignored), for timing against int8 in one run (`python -m bench.ceiling --checkpoint ...`).

Writes bench/results/distillation.{json,md} (`_quick` last with --quick; other --steps / --iterations:
`distillation_<steps>steps_<iterations>iterations.*`; binarizers other than rsign alone add
`_<binarizer>...`, --staged `_staged`, --binarizer-lr m `_blr<m>`, --rprelu `_rprelu`, --binary-input-layers n
`_bin<n>`, --weights-only-iterations n `_wo<n>`, --iters-per-mac-percent n `_mac<n>`, --order o other than latency `_<o>`, --int8 `_int8` (--int8-max-drop d `_int8ac<d>`, --int8-after-1bit `_int8_after1bit`, --int8-after-1bit auto `_int8_auto`), --bf16 `_bf16`, --seed s `_seed<s>`;
--name another name, e.g. with the CPU kind appended, `_quick` added with --quick).
"""
from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path
from typing import Any, get_args

import torch

from bench import report
from bench.ceiling import one_bit_mac_share
from core.data import read_pennfudan, split_records
from core.job_spec import Order, PipelineConfig, Target
from core.paths import default_data_dir
from core.pipeline import Cancelled, StepOutcome, run, step_iterations
from core.pretrained import load_pretrained
from core.priority import discover_layers
from core.train import TrainOptions

BUDGET = 0.03  # the accuracy bar: MR^-2 within float + 0.03
CHECKPOINTS = report.ROOT / "var" / "bench_distillation"


def job_config(args: argparse.Namespace, weight: float, binarizer: str, iterations: int) -> PipelineConfig:
    """One arm's job: the options under test from the command line, the rest fixed."""
    # a compression target out of reach: the bench stops the job after its steps
    return PipelineConfig(target=Target(min_compression_ratio=32.0), activation_bits=1, order=args.order,
                          layers_per_step=2, finetune_iters=iterations, learning_rate=1e-4, seed=args.seed,
                          distillation_weight=weight, activation_quantizer=binarizer, staged_schedule=args.staged,
                          binarizer_lr_multiplier=args.binarizer_lr, rprelu=args.rprelu,
                          binary_input_layers=args.binary_input_layers, weights_only_iters=args.weights_only_iterations,
                          iters_per_mac_percent=args.iters_per_mac_percent,
                          deploy_format="openvino-int8" if wants_int8(args) else "openvino",
                          int8_max_drop=args.int8_max_drop, int8_after_1bit=args.int8_after_1bit)


def run_arm(job: dict[str, Any], config: PipelineConfig, steps: int, checkpoints: Path, *,
            bf16: bool = False) -> dict[str, Any]:
    """One job (`job`: the float model, its card and the split), stopped after `steps` binarization
    steps (`bf16`: fine-tuning under bfloat16 autocast, the worker's FLEXBIN_TRAIN_BF16); its
    options and steps as results record them."""
    done: list[StepOutcome] = []
    started = time.monotonic()
    options = TrainOptions(bf16=bf16)  # the worker's defaults otherwise (fused binarizers)
    arm = {"distillation_weight": config.distillation_weight, "activation_quantizer": config.activation_quantizer,
           "staged_schedule": config.staged_schedule, "binarizer_lr_multiplier": config.binarizer_lr_multiplier,
           "rprelu": config.rprelu, "seed": config.seed, "binary_input_layers": config.binary_input_layers,
           "weights_only_iters": config.weights_only_iters, "iters_per_mac_percent": config.iters_per_mac_percent,
           "deploy_format": config.deploy_format,
           "int8_max_drop": config.int8_max_drop, "int8_after_1bit": config.int8_after_1bit, "bf16_autocast": bf16,
           "fuse_binarizers": options.fuse_binarizers}
    elapsed: list[float] = []  # seconds from the job's start to each step's report
    loads: list[float] = []  # the machine's 1-minute load average then (2 on 2 busy cores: the job alone)

    def on_step(step: StepOutcome) -> None:
        done.append(step)
        elapsed.append(time.monotonic() - started)
        loads.append(report.load_average()[0])
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / f"step{step.index}.safetensors").write_bytes(step.checkpoint)
        report.log(f"{arm_name(arm)}: step {step.index}, {len(step.binary_layers)} layers, MR^-2 "
                   f"{step.miss_rate:.3f}, {step.latency_ms or float('nan'):.2f} ms" + (
                       f"; int8 file MR^-2 {step.int8.miss_rate:.3f}, {step.int8.latency_ms:.2f} ms" if step.int8 else ""))

    try:
        run(job["model"], job["card"], job["train"], job["val"], config, on_step=on_step,
            should_stop=lambda: len(done) > steps, train_options=options)
    except Cancelled:
        pass  # the bench's stop after `steps` steps
    rows = report.step_rows(done)
    iterations = [0] + step_iterations(job["model"], config, [s.layers for s in done[1:]],
                                       discover_layers(job["model"], job["card"].input_size))
    for row, step, seconds, load in zip(rows, done, elapsed, loads, strict=True):
        row["elapsed_s"] = round(seconds, 1)
        row["load_1min"] = load
        row["iterations"] = iterations[step.index]
        row["latency_ms"] = step.latency_ms and round(step.latency_ms, 3)
        row["num_binary_input_layers"] = len(step.binary_input_layers)
        row["ir_bytes"] = step.openvino and ir_size(step.openvino)
        row["one_bit_mac_share"] = round(one_bit_mac_share(job["model"], set(step.binary_input_layers)), 4)
        if step.int8 is not None:  # the job's own figures for its openvino-int8 file (deploy_format)
            row["int8"] = {"miss_rate": round(step.int8.miss_rate, 4), "ap50": round(step.int8.ap50, 4),
                           "latency_ms": round(step.int8.latency_ms, 3),
                           "ir_bytes": step.openvino_int8 and ir_size(step.openvino_int8),
                           "after_1bit": step.int8.after_1bit,
                           "variants": [v.model_dump() for v in step.int8.variants]}
    return {**arm, "steps": rows, "seconds": round(time.monotonic() - started, 1)}


def ir_size(openvino_zip: bytes) -> int:
    """Bytes of model.xml + model.bin in a FlexBin OpenVINO zip (`OpenVinoExport.zip_bytes`)."""
    with zipfile.ZipFile(io.BytesIO(openvino_zip)) as zf:
        return sum(zf.getinfo(name).file_size for name in ("model.xml", "model.bin"))


def arm_name(arm: dict[str, Any]) -> str:
    """`activation_quantizer` (rsign in results from before it was recorded) and weight."""
    return f"{arm_label(arm)}, distillation_weight {arm['distillation_weight']}"


def arm_label(arm: dict[str, Any]) -> str:
    """The input binarizer and how it was trained (defaults for results from before these were recorded)."""
    staged = ", staged" if arm.get("staged_schedule") else ""
    rprelu = " + RPReLU" if arm.get("rprelu") else ""
    lr = arm.get("binarizer_lr_multiplier", 1.0)
    capped = f", binary inputs on the first {arm['binary_input_layers']} layers" \
        if arm.get("binary_input_layers") is not None else ""
    short = f", {arm['weights_only_iters']} iterations a weights-only step" \
        if arm.get("weights_only_iters") is not None else ""
    by_macs = f", {arm['iters_per_mac_percent']} more iterations per % of MACs" \
        if arm.get("iters_per_mac_percent") else ""
    return (f"{arm.get('activation_quantizer', 'rsign')}{rprelu}{staged}" + (f", binarizer lr x{lr:g}" if lr != 1.0 else "")
            + capped + short + by_macs + (", bf16 autocast" if arm.get("bf16_autocast") else ""))


def summary(arm: dict[str, Any]) -> dict[str, Any]:
    """The most layers at 1 bit within the budget, and the last step; with int8 files, also the
    most 1-bit MACs whose int8 file is within the budget (issue 19's accuracy and MACs checks)."""
    float_mr = arm["steps"][0]["miss_rate"]
    within = [s for s in arm["steps"][1:] if s["miss_rate"] - float_mr <= BUDGET]
    best = max(within, key=lambda s: s["num_binary_layers"], default=None)
    int8_within = [s for s in arm["steps"][1:] if s.get("int8") and s["int8"]["miss_rate"] - float_mr <= BUDGET]
    best_int8 = max(int8_within, key=lambda s: s["one_bit_mac_share"], default=None)
    return {"float_miss_rate": float_mr, "layers_within_budget": best["num_binary_layers"] if best else 0,
            "latency_within_budget_ms": best and best["latency_ms"], "last": arm["steps"][-1],
            "int8_within_budget": best_int8}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Distillation screen (`python -m bench.distillation`)", "",
             (f"{result['machine']['date']}, {report.machine_text(result['machine'])}, commit "
             f"{report.commit_text(result['git'])}. {result['design']}"), ""]
    for arm in result["arms"]:
        int8 = [] if not any(s.get("int8") for s in arm["steps"]) else [
            ("1-bit MACs", lambda s: s.get("one_bit_mac_share") is not None and f"{100 * s['one_bit_mac_share']:.0f} %"),
            ("int8 file MR^-2", lambda s: s.get("int8") and f"{s['int8']['miss_rate']:.3f}"),
            ("int8 file ms", lambda s: s.get("int8") and s["int8"]["latency_ms"]),
            ("int8 IR MB", lambda s: s.get("int8") and s["int8"]["ir_bytes"] and f"{s['int8']['ir_bytes'] / 1e6:.2f}")]
        if any(s.get("int8", {}).get("variants") for s in arm["steps"]):  # int8_after_1bit "auto"
            int8 += [("int8 kept (calibration MR^-2)", _kept_cell), ("other int8 file MR^-2 (calibration)", _other_cell)]
        lines += [f"## {arm_name(arm)} ({report.minutes(arm['seconds'])})", "",
                  *report.markdown_table(arm["steps"], [
                      ("step", "index"), ("binarized layers", "num_binary_layers"),
                      ("binary inputs", lambda s: s.get("num_binary_input_layers")),
                      ("val MR^-2", lambda s: f"{s['miss_rate']:.3f}"), ("AP@0.5", lambda s: f"{s['ap50']:.3f}"),
                      ("forward ms (1t f32)", "latency_ms"),
                      ("IR MB", lambda s: s.get("ir_bytes") and f"{s['ir_bytes'] / 1e6:.2f}"),
                      *int8, ("iterations", lambda s: s.get("iterations")), ("step s", "step_seconds"),
                      ("job min", lambda s: s.get("elapsed_s") and f"{s['elapsed_s'] / 60:.1f}"),
                      ("load (1 min)", lambda s: s.get("load_1min"))],
                      align="r" * (11 + len(int8))), ""]
    return "\n".join(lines + _readme_lines(result)) + "\n"


def readme_section(results: Path) -> str:
    head = "### Distillation screen (`make bench-distillation`, [`distillation.md`](distillation.md))"
    return report.section(head, report.load_all("distillation", results),
                          report.each_run(_readme_lines))


def _readme_lines(result: dict[str, Any]) -> list[str]:
    rows = [{"binarizer": arm_label(a), "weight": a["distillation_weight"], **summary(a)}
            for a in result["arms"]]
    return [result["design"], "", *report.markdown_table(rows, [
        ("input binarizer", "binarizer"), ("distillation_weight", "weight"), ("float MR^-2", lambda r: f"{r['float_miss_rate']:.3f}"),
        (f"binarized layers within +{BUDGET}", "layers_within_budget"),
        ("their forward ms", "latency_within_budget_ms"),
        ("last step: layers", lambda r: r["last"]["num_binary_layers"]),
        ("last step: MR^-2", lambda r: f"{r['last']['miss_rate']:.3f}"),
        ("last step: forward ms", lambda r: r["last"]["latency_ms"]),
        (f"int8 file within +{BUDGET}: most 1-bit MACs (step, MR^-2, ms)", _int8_cell)], align="lrrrrrrrr")]


def _variant_text(variant: dict[str, Any]) -> str:
    return "everywhere" if variant["after_1bit"] else "fusing"


def _kept_cell(step: dict[str, Any]) -> str | None:
    """With int8_after_1bit "auto": which file the job kept, and its MR^-2 on the calibration images."""
    kept = [v for v in step.get("int8", {}).get("variants", []) if v["kept"]]
    return f"{_variant_text(kept[0])} ({kept[0]['calibration_miss_rate']:.3f})" if kept else None


def _other_cell(step: dict[str, Any]) -> str | None:
    """With int8_after_1bit "auto": the file it did not keep, on validation (calibration)."""
    other = [v for v in step.get("int8", {}).get("variants", []) if not v["kept"]]
    return (f"{other[0]['miss_rate']:.3f} ({_variant_text(other[0])}, {other[0]['calibration_miss_rate']:.3f})"
            if other else None)


def _int8_cell(row: dict[str, Any]) -> str | None:
    best = row["int8_within_budget"]
    if best is None:
        return None if not row["last"].get("int8") else "none"
    return (f"{100 * best['one_bit_mac_share']:.0f} % (step {best['index']}, {best['int8']['miss_rate']:.3f}, "
            f"{best['int8']['latency_ms']} ms)")


def result_name(args: argparse.Namespace, steps: int, iterations: int, binarizers: list[str]) -> str:
    """distillation[_<steps>steps_<iterations>iterations][_<binarizers>][_staged][_blr<m>][_rprelu][_bin<n>]
    [_wo<n>][_mac<n>][_<order>][_int8[_after1bit|_auto]][_bf16][_seed<s>][_quick]"""
    name = "distillation" + ("" if args.quick or (steps, iterations) == (8, 60)
                             else f"_{steps}steps_{iterations}iterations")
    if binarizers != ["rsign"]:
        name += "_" + "_".join(binarizers)
    if args.staged:
        name += "_staged"
    if args.binarizer_lr != 1.0:
        name += f"_blr{args.binarizer_lr:g}"
    if args.rprelu:
        name += "_rprelu"
    if args.binary_input_layers is not None:
        name += f"_bin{args.binary_input_layers}"
    if args.weights_only_iterations is not None:
        name += f"_wo{args.weights_only_iterations}"
    if args.iters_per_mac_percent:
        name += f"_mac{args.iters_per_mac_percent}"
    if args.order != "latency":
        name += f"_{args.order}"
    if wants_int8(args):
        name += "_int8" + (f"ac{args.int8_max_drop:g}" if args.int8_max_drop is not None else "") + (
            {True: "_after1bit", "auto": "_auto"}.get(args.int8_after_1bit, ""))
    if args.bf16:
        name += "_bf16"
    if args.seed:
        name += f"_seed{args.seed}"
    return name + ("_quick" if args.quick else "")  # last, as every bench's quick output (git-ignored)


def wants_int8(args: argparse.Namespace) -> bool:
    """Whether the jobs make their int8 files (deploy_format openvino-int8): --int8 or an option of it."""
    return bool(args.int8 or args.int8_max_drop is not None or args.int8_after_1bit)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.distillation", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="0,1", help="distillation weights, one job each (default 0,1)")
    parser.add_argument("--binarizers", default="rsign",
                        help="input binarizers (activation_quantizer), one job per weight each (default rsign)")
    parser.add_argument("--staged", action="store_true", help="staged_schedule on: inputs first, then weights")
    parser.add_argument("--binarizer-lr", type=float, default=1.0,
                        help="binarizer_lr_multiplier of every arm (default 1)")
    parser.add_argument("--rprelu", action="store_true", help="rprelu on: ReActNet's RPReLU after each 1-bit conv")
    parser.add_argument("--seed", type=int, default=0, help="the jobs' seed (default 0)")
    parser.add_argument("--order", default="latency", choices=get_args(Order),
                        help="the jobs' layer order (default latency; inverse_depth binarizes the SSD heads and extra "
                             "layers first, so each step is a suffix of the network: the mixes that can beat int8 on "
                             "an AMX CPU, bench.ceiling's suffix rows)")
    parser.add_argument("--binary-input-layers", type=int, default=None,
                        help="binary_input_layers of every arm: binary inputs on the first N layers only, 1-bit "
                             "weights with float inputs after them (default: every layer)")
    parser.add_argument("--weights-only-iterations", type=int, default=None,
                        help="weights_only_iters of every arm: fine-tuning iterations of a step whose layers all keep "
                             "float inputs (default: --iterations)")
    parser.add_argument("--iters-per-mac-percent", type=int, default=None,
                        help="iters_per_mac_percent of every arm: a step gets this many more iterations per percent of "
                             "the network's MACs its layers hold (default: none)")
    parser.add_argument("--int8", action="store_true",
                        help="deploy_format openvino-int8: every step's int8 file is made, evaluated and timed in the job "
                             "(1-bit MACs, its MR^-2, ms and size per step)")
    parser.add_argument("--int8-max-drop", type=float, default=None,
                        help="int8_max_drop (implies --int8): each step's int8 file by NNCF's accuracy control on the "
                             "training images, at most this much MR^-2 above the checkpoint as trained there")
    parser.add_argument("--int8-after-1bit", nargs="?", const=True, default=False, choices=["auto"],
                        help="int8_after_1bit (implies --int8): the int8 files quantize the convs a 1-bit conv feeds "
                             "too; `--int8-after-1bit auto`: each step makes both files and keeps the one with the "
                             "lower MR^-2 on the training images")
    parser.add_argument("--bf16", action="store_true",
                        help="fine-tune under bfloat16 autocast (the worker's FLEXBIN_TRAIN_BF16); evaluation and "
                             "export stay float32")
    parser.add_argument("--steps", type=int, default=8, help="binarization steps per job (default 8: 16 layers)")
    parser.add_argument("--iterations", type=int, default=60, help="fine-tuning iterations per step (default 60)")
    parser.add_argument("--quick", action="store_true", help="2 steps of 4 iterations: checks the script")
    parser.add_argument("--name", default=None,
                        help="results name (default: from the options, see above); e.g. a suffix for the CPU kind, "
                             "since the steps' forward times are this CPU's")
    args = parser.parse_args()
    steps, iterations = (2, 4) if args.quick else (args.steps, args.iterations)
    torch.set_num_threads(2)
    binarizers = args.binarizers.split(",")
    name = result_name(args, steps, iterations, binarizers) if args.name is None \
        else args.name + ("_quick" if args.quick else "")  # as bench.ceiling: a --quick run never overwrites
    train, val = split_records(read_pennfudan(default_data_dir()))
    model, card = load_pretrained("pedestrian_adas_0002", input_height=192, input_width=336)
    job = {"model": model, "card": card, "train": train, "val": val}  # `run` leaves the float model as it was
    arms = [run_arm(job, job_config(args, float(w), b, iterations), steps, CHECKPOINTS / name / f"{b}_w{w}",
                    bf16=args.bf16)
            for b in binarizers for w in args.weights.split(",")]
    training = (", RPReLU" if args.rprelu else "") + (", staged schedule" if args.staged else "") + (
        f", binary inputs on the first {args.binary_input_layers} layers, 1-bit weights only after them"
        if args.binary_input_layers is not None else "") + (
        f" ({args.weights_only_iterations} iterations a weights-only step)" if args.weights_only_iterations is not None
        else "") + (
        f", {args.iters_per_mac_percent} more iterations per percent of the network's MACs a step binarizes"
        if args.iters_per_mac_percent else "") + (", fine-tuning under bf16 autocast" if args.bf16 else "")
    int8 = ""
    if wants_int8(args):
        int8 = ("; with each step's openvino-int8 file (NNCF calibrated on the job's training images, the 1-bit layers "
                "kept) made, evaluated and timed the same way in the job")
        if args.int8_max_drop is not None:
            int8 += f" (by NNCF's accuracy control, max_drop {args.int8_max_drop:g} in 1 - MR^-2 on the training images)"
        if args.int8_after_1bit == "auto":
            int8 += (" (each step makes the file with and without int8 on the convs a 1-bit conv feeds and keeps the "
                     "one with the lower MR^-2 on the training images, the faster on a tie; `everywhere` / `fusing`)")
        elif args.int8_after_1bit:
            int8 += " (int8 on the convs a 1-bit conv feeds too)"
    design = (f"pedestrian_adas_0002 at 192x336, activation_bits 1 ({', '.join(binarizers)}){training}, binarizer lr "
              f"x{args.binarizer_lr:g}, order {args.order}, 2 layers per step, {iterations} "
              f"iterations per step, lr 1e-4, seed {args.seed}, {steps} steps; validation MR^-2 on 32 images (noise about "
              f"±0.04); forward ms of each step's OpenVINO export, 1 thread f32{int8}. One seed: a screen, not a verdict.")
    result = {"machine": report.machine(threads=torch.get_num_threads()), "git": report.git_commit(),
              "design": design, "arms": arms}
    path = report.write_results(name, result, markdown(result))
    report.log(f"wrote {path}")


if __name__ == "__main__":
    main()

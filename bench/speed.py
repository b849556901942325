"""Speed benchmark: PyTorch float vs OpenVINO float / NNCF int8 / 1-bit, side by side, with MR^-2.

    python -m bench.speed                      # make bench-speed (about 15-25 minutes on 2 idle cores)
    python -m bench.speed --quick              # minutes, tiny budgets: checks the script works
    python -m bench.speed --float-model var/models/pednet          # reuse a trained float model
    python -m bench.speed --float-model <dir of another architecture's weights.safetensors + card.json>
    python -m bench.speed --pretrained pedestrian_adas_0002   # Intel's detector, the demo's recipe
    python -m bench.speed --name speed_pednet_binputs6 --finetune-iters 300 --torch-threads 2 --order latency --activation-quantizer scale_threshold --staged --binarizer-lr 100 --binary-input-layers 6 --min-compression-ratio 32   # issue 19's recipe on PedNet (20 minutes)

What it does, on one machine, on the same Penn-Fudan validation images:
1. The float detector: `--float-model` (weights.safetensors + card.json, any registered
   architecture), `--pretrained` (a detector that ships with FlexBin, at the demo's resolution
   and learning rate: service/demo.py) or FlexBin's PedNet trained with the default recipe
   (cached under var/).
2. Two layer-priority jobs (`core.pipeline.run`, target `max_miss_rate_increase: 0.05`):
   weights only (`activation_bits: 32`) and binary activations (`activation_bits: 1`). Every
   step is exported and timed by the pipeline itself (`latency_ms`: the speed axis of the
   trade-off curve).
3. Nine variants: torch float (the float model on PyTorch, what /detect ran before OpenVINO),
   OpenVINO float, NNCF int8 of that float IR (`nncf.quantize`, what a user gets in one call:
   the baseline to beat), OpenVINO binary weights (the weights-only job's selected checkpoint;
   1-bit weights, float inputs) and its `?format=openvino-int8` (NNCF int8, exact for the ±α
   weights), OpenVINO 1-bit (the binary-activation job's selected checkpoint: what the goals
   are about) and its `?format=openvino-int8` (1-bit layers stay 1-bit, NNCF int8 where its
   quantizer fuses), OpenVINO 1-bit with the most layers binary (that job's last step,
   where its budget stopped it), and the float model with every conv that can take binary
   inputs at 1 bit, untrained (the speed ceiling, accuracy destroyed). NNCF calibrates on the training
   images, as many as the API uses (`FLEXBIN_INT8_CALIBRATION_IMAGES`). For each: MR^-2 (with
   a 95 % bootstrap interval over the validation images, and the paired interval of its
   difference from OpenVINO float: `bench.study.stats`, networks held fixed) and AP@0.5 on the
   validation split at f32, MR^-2 at bf16 too where the CPU has bf16 arithmetic (what
   `FLEXBIN_SERVING_PRECISION=auto` may pick), the IR's size, the share of conv MACs in 1-bit convolutions, the
   network's forward ms per image at 1 and 2 threads (fixed [1, 3, S, S] input), what each
   layer runs as on the compiled graph, and how much of the forward time layout conversions
   (Reorder nodes between float and 1-bit layers) take.
4. End-to-end `POST /detect` p50 at 1 client over loopback HTTP for each variant (the torch one
   from an API with `FLEXBIN_SERVING_BACKEND=torch`, the others from the default OpenVINO
   backend; uploads go to the torch one, whose validation needs torch anyway), and each API
   process's RSS after start-up, idle with the one checkpoint it served loaded (torch float;
   the 1-bit one), and with all eight OpenVINO variants loaded.
5. Intel's own IRs of pedestrian-detection-adas-0002 (`--intel-ir`, FP16 and FP16-INT8) when
   present: forward ms and MR^-2 / AP on the same images, at the IR's own 384x672 and, reshaped,
   at the benchmarked model's input size, for reference and for the pretrained-detector goal
   (computed only when the benchmarked architecture is that detector, at the same input size).
Writes bench/results/speed.{json,md,png} for PedNet, speed_<architecture>.* for any other
(`--name` keeps a run per CPU kind or recipe, e.g. speed_intel_xeon_amx; `_quick` with --quick),
and says which goals are met, and why not where they are missed;
the plot's right panel is the frontier: MR^-2 against forward ms, marker area by IR size.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from bench import report, stack
from bench.ceiling import int8_goal_checks, one_bit_mac_share
from bench.study import stats
from core.checkpoint import (
    ModelCard,
    load_model,
    pack_checkpoint,
    save_model,
    save_model_bytes,
    unpack_checkpoint,
)
from core.data import ImageRecord, read_pennfudan, split_records
from core.detection_metrics import evaluate_detections
from core.device import add_device_argument, device_from_args
from core.export.int8 import int8_export
from core.export.one_bit import binarize_all
from core.export.openvino import (
    OpenVinoExport,
    export_checkpoint,
    export_network,
    layer_report,
    runtime_layer_precision,
)
from core.export.runtime import compile_config, median_forward_ms, resize_bilinear
from core.images import decode_image
from core.job_spec import PipelineConfig, Target
from core.models.registry import DEFAULT_ARCHITECTURE
from core.paths import default_data_dir
from core.pipeline import PipelineResult, run
from core.pretrained import load_pretrained
from core.train import ImageCache, evaluate_model, train_float_detector
from service.demo import ADAS_DEMO
from service.settings import Settings

# ../shared/models next to the repo (a worktree sits one level deeper: /work/wt/<name>)
DEFAULT_INTEL_IR = next((p for p in (report.ROOT.parent / "shared" / "models" / "pedestrian-detection-adas-0002",
                                     report.ROOT.parent.parent / "shared" / "models" / "pedestrian-detection-adas-0002")
                         if p.is_dir()), None)
CACHE = report.ROOT / "var" / "bench_speed"
VARIANTS = ("torch_float", "ov_float", "ov_nncf_int8", "ov_binary_weights", "ov_binary_weights_int8",
            "ov_binary_activations", "ov_binary_activations_int8", "ov_binary_activations_all", "ov_all_1bit")
INT8_OF = {"ov_nncf_int8": "ov_float", "ov_binary_weights_int8": "ov_binary_weights",
           "ov_binary_activations_int8": "ov_binary_activations"}
"""The int8 variants: NNCF int8 (`core.export.int8.int8_export`, as `?format=openvino-int8`) of another."""
LEGACY_VARIANTS = ("ov_int8",)
"""Variants of result files written before NNCF int8 (rendered, no longer measured): ov_int8 was
the weights-only selection with hand-calibrated 8-bit inputs (min / max over 8 images)."""
LABELS = {"torch_float": "PyTorch float", "ov_float": "OpenVINO float",
          "ov_nncf_int8": "NNCF int8 of OpenVINO float (nncf.quantize)",
          "ov_binary_weights": "OpenVINO binary weights (1-bit weights, float inputs)",
          "ov_binary_weights_int8": "OpenVINO binary weights, NNCF int8 (?format=openvino-int8)",
          "ov_int8": "OpenVINO int8 (binary weights + 8-bit inputs)",
          "ov_binary_activations": "OpenVINO 1-bit (binary weights + activations; the job's selection)",
          "ov_binary_activations_int8": "OpenVINO 1-bit, NNCF int8 elsewhere (?format=openvino-int8)",
          "ov_binary_activations_all": "OpenVINO 1-bit, the job's last step (its most binary checkpoint)",
          "ov_all_1bit": "OpenVINO all 1-bit, untrained (the speed ceiling: every conv that can be 1-bit; accuracy destroyed)"}
BUDGET = 0.05  # the job target: max_miss_rate_increase
INT8_BUDGET = 0.03  # issue 19's comparison with int8: MR^-2 within float + 0.03
ONE_BIT = "binary_weights_activations"
INT8_CALIBRATION_IMAGES = Settings.model_fields["int8_calibration_images"].default
BOOTSTRAP_SEED = 20261205


def variants_of(result: dict[str, Any]) -> list[str]:
    """The variants a result file holds, in table order (older files: `LEGACY_VARIANTS`)."""
    order = [*VARIANTS[:5], *LEGACY_VARIANTS, *VARIANTS[5:]]
    return [name for name in order if name in result["variants"]]


def int8_baseline(result: dict[str, Any]) -> str:
    """The int8 row a result compares against: NNCF int8, or in older files the hand-calibrated one."""
    return "ov_nncf_int8" if "ov_nncf_int8" in result["variants"] else "ov_int8"


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    torch.set_num_threads(args.torch_threads)
    train, val = split_records(read_pennfudan(default_data_dir()))
    if args.quick:
        train, val = train[:16], val[:8]
    model, card, source = float_model(args, train, val)
    report.log(f"architecture {card.architecture}, {len(train)} train / {len(val)} val images")
    jobs = {"weights_only": run_job(model, card, train, val, 32, args),
            "binary_activations": run_job(model, card, train, val, 1, args)}
    cache = ImageCache()
    checkpoints = variant_checkpoints(jobs["weights_only"], jobs["binary_activations"])
    exports = {name: export_checkpoint(data) for name, data in checkpoints.items()
               if name != "torch_float" and name not in INT8_OF}
    calibration = [cache.image(r).numpy() for r in train[:INT8_CALIBRATION_IMAGES]]  # as the API takes them
    for name, of in INT8_OF.items():
        started_int8 = time.monotonic()
        exports[name] = int8_export(exports[of], calibration)
        report.log(f"{name}: NNCF int8 of {of} on {len(calibration)} images in {time.monotonic() - started_int8:.0f} s")
    exports = {name: exports[name] for name in VARIANTS if name in exports}
    rows = measure_variants(model, card, exports, val, cache, args.seconds)
    report.log("end-to-end /detect ...")
    variants = {"torch_float": {"data": checkpoints["torch_float"]},
                **{name: {"data": checkpoints[name], "zip": export.zip_bytes()} for name, export in exports.items()}}
    served = serve(variants, *save_model_bytes(model, card), val, args.detect_seconds, threads=1)
    for name, cell in served["cells"].items():
        rows[name].update(detect_p50_ms=cell["p50_ms"], detect_errors=cell["errors"])
    size = _network_input(model, card)
    intel = (intel_reference(args.intel_ir, val, (1, 2), args.seconds, also_at=size if size != (384, 672) else None)
             if args.intel_ir and args.intel_ir.is_dir() else {})
    result = {
        "machine": report.machine(), "git": report.git_commit(), "quick": args.quick,
        "config": {"architecture": card.architecture, "input_size": card.input_size, "float_model": source,
                   "network_input": list(size), "train_images": len(train), "val_images": len(val),
                   "finetune_iters": args.finetune_iters, "learning_rate": args.learning_rate,
                   "layers_per_step": args.layers_per_step, "job_seed": args.seed,
                   "int8_calibration_images": len(calibration),
                   "binary_activation_recipe": binary_recipe(args, 1),
                   "target": {"max_miss_rate_increase": BUDGET}, "timing_seconds_per_cell": args.seconds,
                   "detect_seconds": args.detect_seconds, "serving_threads": 1,
                   "serving_precision": "f32", "openvino_default_precision": default_precision()},
        "jobs": {job: {"selected": r.selected_index, "steps": step_rows(r)} for job, r in jobs.items()},
        "variants": rows, "api": served["api"], "intel": intel,
        "checkpoint_bytes": {"float": len(checkpoints["ov_float"]), "binary_weights": len(checkpoints["ov_binary_weights"]),
                             "binary_activations": len(checkpoints["ov_binary_activations"]),
                             "binary_activations_all": len(checkpoints["ov_binary_activations_all"]),
                             **{f"{k}_zip": len(v["zip"]) for k, v in variants.items() if v.get("zip")}},
    }
    result.update(ratios=ratios(rows), total_seconds=round(time.monotonic() - started, 1))
    result["goals"] = goals(result)
    write(result, args.name or default_name(result), args.quick)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script works")
    parser.add_argument("--float-model", type=Path, default=None,
                        help="folder with weights.safetensors + card.json (any registered architecture)")
    parser.add_argument("--pretrained", choices=["pedestrian_adas_0002"], default=None,
                        help="a detector that ships with FlexBin, at the demo's input size (service/demo.py)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="fine-tuning learning rate (default: the pipeline's; with --pretrained the demo's)")
    parser.add_argument("--layers-per-step", type=int, default=1, help="layers binarized per step (1)")
    parser.add_argument("--train-iters", type=int, default=None, help="PedNet training iterations (default 1500)")
    parser.add_argument("--finetune-iters", type=int, default=None, help="fine-tuning iterations per step (60)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per timing cell (default 3)")
    parser.add_argument("--detect-seconds", type=float, default=None, help="seconds of /detect per variant (10)")
    parser.add_argument("--intel-ir", type=Path, default=DEFAULT_INTEL_IR,
                        help="pedestrian-detection-adas-0002 folder with FP16/ and FP16-INT8/ IRs")
    parser.add_argument("--torch-threads", type=int, default=1, help="threads for training and fine-tuning")
    # the binary-activation job's recipe (issue 19's levers; defaults: the job's own)
    parser.add_argument("--order", default=None, help="the binary-activation job's layer order (e.g. latency)")
    parser.add_argument("--activation-quantizer", default=None, help="its binarizer (e.g. scale_threshold)")
    parser.add_argument("--staged", action="store_true", help="its staged_schedule: inputs first, then weights")
    parser.add_argument("--binarizer-lr", type=float, default=None, help="its binarizer_lr_multiplier (e.g. 100)")
    parser.add_argument("--binary-input-layers", type=int, default=None, help="its binary_input_layers (default: all)")
    parser.add_argument("--min-speedup", type=float, default=None,
                        help="its target: min_speedup over the float model, e.g. NNCF int8's, instead of "
                             f"max_miss_rate_increase {BUDGET} (it then stops once that fast, whatever the miss rate)")
    parser.add_argument("--min-compression-ratio", type=float, default=None,
                        help="its target: min_compression_ratio instead (with --binary-input-layers, the weights-only "
                             "steps after the binary-input ones shrink the file)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the two binarization jobs' seed (default 0; PedNet's float training keeps seed 0, so "
                             "another seed is another draw of the same comparison)")
    parser.add_argument("--name", default=None,
                        help="results name (default speed for PedNet, speed_<architecture> otherwise); "
                             "runs are kept per CPU kind, e.g. speed_intel_xeon_amx")
    add_device_argument(parser)  # training and fine-tuning; the speed figures stay on the CPU
    args = parser.parse_args()
    if args.min_speedup and args.min_compression_ratio:
        parser.error("--min-speedup and --min-compression-ratio are two targets: give one")
    args.device = device_from_args(args, parser)
    args.train_iters = args.train_iters or (60 if args.quick else 1500)
    args.finetune_iters = args.finetune_iters if args.finetune_iters is not None else (3 if args.quick else 60)
    if args.learning_rate is None:
        args.learning_rate = (ADAS_DEMO.learning_rate if args.pretrained else
                              PipelineConfig.model_fields["learning_rate"].default)
    args.seconds = args.seconds or (0.5 if args.quick else 3.0)
    args.detect_seconds = args.detect_seconds or (2.0 if args.quick else 10.0)
    return args


# -- models and checkpoints ---------------------------------------------------------------
def float_model(args: argparse.Namespace, train: list[ImageRecord],
                val: list[ImageRecord]) -> tuple[torch.nn.Module, ModelCard, dict[str, Any]]:
    if args.float_model:
        model, card = load_model(Path(args.float_model))
        return model, card, {"source": str(args.float_model)}
    if args.pretrained:
        model, card = load_pretrained(args.pretrained, input_height=ADAS_DEMO.input_height,
                                      input_width=ADAS_DEMO.input_width)
        return model, card, {"source": f"pretrained {args.pretrained}",
                             "input": [ADAS_DEMO.input_height, ADAS_DEMO.input_width]}
    cached = CACHE / f"pednet_{args.train_iters}"
    if (cached / "card.json").is_file():
        model, card = load_model(cached)
        return model, card, {"source": str(cached), "cached": True}
    report.log(f"training PedNet for {args.train_iters} iterations ...")
    started = time.monotonic()
    model, card = train_float_detector(train, val, iterations=args.train_iters, seed=0, device=args.device)
    model.to("cpu")
    save_model(model, card, cached)
    return model, card, {"source": "trained", "train_seconds": round(time.monotonic() - started, 1)}


def run_job(model: torch.nn.Module, card: ModelCard, train: list[ImageRecord], val: list[ImageRecord],
            activation_bits: int, args: argparse.Namespace) -> PipelineResult:
    # the recipe's own target, when it has one, replaces the miss-rate budget
    recipe = {"target": {"max_miss_rate_increase": BUDGET}, **binary_recipe(args, activation_bits)}
    config = PipelineConfig(activation_bits=activation_bits, finetune_iters=args.finetune_iters,
                            learning_rate=args.learning_rate, layers_per_step=args.layers_per_step, seed=args.seed,
                            **recipe)
    started = time.monotonic()
    result = run(model, card, train, val, config, device=args.device,
                 on_step=lambda s: report.log(f"  step {s.index}: ratio {s.compression_ratio:.1f} MR {s.miss_rate:.3f} "
                                              f"latency {s.latency_ms if s.latency_ms is None else round(s.latency_ms, 2)} ms"))
    report.log(f"job activation_bits={activation_bits}: {len(result.steps)} steps in {time.monotonic() - started:.0f} s, "
               f"selected step {result.selected_index}")
    return result


def binary_recipe(args: argparse.Namespace, activation_bits: int) -> dict[str, Any]:
    """The binary-activation job's options given on the command line (none: the job's defaults), its
    target under "target" when --min-speedup or --min-compression-ratio sets one."""
    if activation_bits != 1:
        return {}
    options = {"order": args.order, "activation_quantizer": args.activation_quantizer,
               "staged_schedule": args.staged or None, "binarizer_lr_multiplier": args.binarizer_lr,
               "binary_input_layers": args.binary_input_layers,
               "target": (args.min_speedup and {"min_speedup": args.min_speedup})
               or (args.min_compression_ratio and {"min_compression_ratio": args.min_compression_ratio})}
    return {k: v for k, v in options.items() if v is not None}


def step_rows(result: PipelineResult) -> list[dict[str, Any]]:
    return [{"index": s.index, "layers": s.layers, "binary_layers": len(s.binary_layers),
             "binary_input_layers": len(s.binary_input_layers), "compression_ratio": round(s.compression_ratio, 3),
             "miss_rate": round(s.miss_rate, 4), "ap50": round(s.ap50, 4),
             "latency_ms": None if s.latency_ms is None else round(s.latency_ms, 3)} for s in result.steps]


def variant_checkpoints(weights_only: PipelineResult, binary_acts: PipelineResult) -> dict[str, bytes]:
    """The packed checkpoint behind each variant: the float step, the weights-only job's
    selection, the binary-activation job's selection and its last step, the float model with every
    conv that can take binary inputs at 1 bit, untrained (`core.export.one_bit.binarize_all`), and
    for an int8 variant its source's checkpoint (`INT8_OF`)."""
    float_ck = weights_only.steps[0].checkpoint
    ceiling, card = unpack_checkpoint(float_ck)
    binarize_all(ceiling)
    checkpoints = {"torch_float": float_ck, "ov_float": float_ck, "ov_all_1bit": pack_checkpoint(ceiling, card),
                   "ov_binary_weights": weights_only.steps[weights_only.selected_index].checkpoint,
                   "ov_binary_activations": binary_acts.steps[binary_acts.selected_index].checkpoint,
                   "ov_binary_activations_all": binary_acts.steps[-1].checkpoint}
    return {name: checkpoints[INT8_OF.get(name, name)] for name in VARIANTS}


# -- measurements -------------------------------------------------------------------------
def median_ms(fn: Any, seconds: float) -> float:
    return round(median_forward_ms(fn, warmup=5, budget_s=seconds, max_runs=2000), 3)


def measure_variants(model: torch.nn.Module, card: ModelCard, exports: dict[str, OpenVinoExport],
                     val: list[ImageRecord], cache: ImageCache, seconds: float) -> dict[str, dict[str, Any]]:
    """Each variant's MR^-2 / AP (OpenVINO's with bootstrap intervals), IR bytes, 1-bit MAC share,
    forward ms at 1 and 2 threads, what its layers run as."""
    metrics = evaluate_model(model, val, cache=cache)
    rows: dict[str, dict[str, Any]] = {"torch_float": {
        "miss_rate": round(metrics.miss_rate, 4), "ap50": round(metrics.ap50, 4),
        **{f"forward_ms_{n}t": torch_forward_ms(model, card, n, seconds) for n in (1, 2)}}}
    resamples = stats.image_resamples(len(val), seed=BOOTSTRAP_SEED)
    samples = {}
    for name, export in exports.items():
        row: dict[str, Any]
        row, samples[name] = ov_metrics(export, val, cache, resamples)
        one_bit = {layer for layer, precision in export.layers.items() if precision == ONE_BIT}
        row.update(ir_bytes=sum(map(len, export.ir_bytes())),
                   one_bit_mac_share=round(one_bit_mac_share(model, one_bit, *_network_input(model, card)), 3))
        if name != "ov_float":
            diff, _ = stats.difference_interval([samples[name]], [samples["ov_float"]])
            row["minus_float_ci95"] = [round(diff.lo, 4), round(diff.hi, 4)]
        for n in (1, 2):
            measured = ov_forward(export, n, seconds, profile=n == 1)
            row[f"forward_ms_{n}t"] = measured.pop("forward_ms")
            row.update(measured)
        row["forward_ms_1t_default"] = ov_forward(export, 1, seconds, profile=False, precision=None)["forward_ms"]
        row["layers"] = layer_report(export, row.pop("runs_as", None))
        rows[name] = row
        report.log(f"{name}: MR {row['miss_rate']} AP {row['ap50']} forward {row['forward_ms_1t']} ms (1 thread), "
                   f"{row['forward_ms_2t']} ms (2 threads); reorders {row['reorder_share']:.0%} of the time")
    report.log(f"torch_float: MR {rows['torch_float']['miss_rate']} forward {rows['torch_float']['forward_ms_1t']} ms")
    return rows


def torch_forward_ms(model: torch.nn.Module, card: ModelCard, threads: int, seconds: float) -> float:
    """The network of the torch model on a fixed [1, 3, S, S] input: for PedNet the same computation
    as the exported graph, for the others the whole detector."""
    torch.set_num_threads(threads)
    network, spec = export_network(model, card)
    x = torch.rand(*spec["input"]["shape"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return median_ms(lambda: network(x), seconds)


def default_precision() -> str:
    """What OpenVINO's CPU plugin picks when no precision is asked for, on this machine."""
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return str(hint.to_string() if hasattr(hint, "to_string") else hint)


def ov_forward(export: OpenVinoExport, threads: int, seconds: float, profile: bool,
               precision: str | None = "f32") -> dict[str, Any]:
    """Forward ms of the compiled IR at its static shape, and (profile) where the time goes."""
    config = compile_config(threads, precision)
    if profile:
        config["PERF_COUNT"] = True
    compiled = ov.Core().compile_model(export.model, "CPU", config)
    request = compiled.create_infer_request()
    canvas = np.random.default_rng(0).random(export.spec["input"]["shape"], dtype=np.float32)
    out: dict[str, Any] = {"forward_ms": median_ms(lambda: request.infer([canvas]), seconds)}
    if profile:
        by_type: dict[str, float] = {}
        reorders = 0
        for info in request.profiling_info:
            us = info.real_time.total_seconds() * 1e6
            by_type[info.node_type] = by_type.get(info.node_type, 0.0) + us
            reorders += info.node_type == "Reorder" and us > 0
        total = sum(by_type.values()) or 1.0
        out.update(runs_as=runtime_layer_precision(compiled), reorder_nodes=reorders,
                   reorder_share=round(by_type.get("Reorder", 0.0) / total, 3),
                   time_by_node_type_us={k: round(v, 1) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:8]})
    return out


def _network_input(model: torch.nn.Module, card: ModelCard) -> tuple[int, int]:
    return (getattr(model, "input_height", card.input_size), getattr(model, "input_width", card.input_size))


def ov_metrics(export: OpenVinoExport, val: list[ImageRecord], cache: ImageCache,
               resamples: np.ndarray) -> tuple[dict[str, Any], stats.MissRateSample]:
    """MR^-2 / AP@0.5 of the exported model at f32, run as `core.train.evaluate_model` runs torch
    (batches of 8, so both see the same canvases), with MR^-2's 95 % interval under the image
    `resamples` (and the sample, for paired differences); on a CPU with bf16 arithmetic also MR^-2
    at bf16 (`FLEXBIN_SERVING_PRECISION=bf16`, or what `auto` may pick) with its paired difference
    from f32."""
    images = [cache.image(r).numpy() for r in val]
    truth = [r.boxes for r in val]

    def predictions(precision: str) -> list[dict[str, torch.Tensor]]:
        detector = export.detector(threads=1, precision=precision)
        preds = []
        for start in range(0, len(images), 8):
            preds += [{"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores)}
                      for d in detector.detect(images[start:start + 8], together=True)]
        return preds

    preds = predictions("f32")
    m = evaluate_detections(preds, truth)
    sample = stats.image_sample(preds, truth, resamples)
    ci = sample.interval()
    row: dict[str, Any] = {"miss_rate": round(m.miss_rate, 4), "ap50": round(m.ap50, 4),
                           "miss_rate_ci95": [round(ci.lo, 4), round(ci.hi, 4)]}
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        bf16 = stats.image_sample(predictions("bf16"), truth, resamples)
        diff, _ = stats.difference_interval([bf16], [sample])
        row.update(miss_rate_bf16=round(bf16.estimate, 4), bf16_minus_f32_ci95=[round(diff.lo, 4), round(diff.hi, 4)])
    return row, sample


def intel_reference(ir_dir: Path, val: list, threads: tuple[int, ...], seconds: float,
                    also_at: tuple[int, int] | None = None) -> dict[str, Any]:
    """Intel's FP16 and FP16-INT8 IRs: forward ms (f32 like FlexBin's exports, and at OpenVINO's
    default precision) and MR^-2 / AP (f32) on the validation images
    (input: the image resized to 672x384, BGR 0-255; output [1, 1, N, 7] in 0..1); with
    `also_at` (height, width) also reshaped to that input size (its prior boxes follow the
    feature maps), as `<precision>@<h>x<w>`."""
    out: dict[str, Any] = {}
    runs = [(p, None) for p in ("FP16", "FP16-INT8")] + [(p, also_at) for p in ("FP16", "FP16-INT8") if also_at]
    for precision, size in runs:
        xml = ir_dir / precision / "pedestrian-detection-adas-0002.xml"
        if not xml.is_file():
            continue
        core = ov.Core()
        model = core.read_model(xml)
        if size:
            model.reshape([1, 3, *size])
        _, _, h, w = (int(d) for d in model.inputs[0].get_shape())
        row: dict[str, Any] = {"input": [1, 3, h, w]}
        x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32) * 255
        # Timed like FlexBin's exports (f32), and at OpenVINO's default precision for this CPU.
        timings: list[tuple[str, int, str | None]] = [(f"forward_ms_{n}t", n, "f32") for n in threads]
        for key, n, hint in timings + [("forward_ms_1t_default", 1, None)]:
            compiled = core.compile_model(model, "CPU", compile_config(n, hint))
            request = compiled.create_infer_request()
            row[key] = median_ms(lambda request=request, x=x: request.infer([x]), seconds)
        compiled = core.compile_model(model, "CPU", compile_config(1))
        preds = []
        for r in val:
            image = decode_image(r.image, name=r.name)
            ih, iw = image.shape[1:]
            x = resize_bilinear(image, h, w)[::-1][None] * np.float32(255.0)  # RGB -> BGR, 0-255
            det = np.asarray(next(iter(compiled(np.ascontiguousarray(x)).values()))).reshape(-1, 7)
            det = det[(det[:, 0] >= 0) & (det[:, 1] == 1)]
            boxes = det[:, 3:7] * np.array([iw, ih, iw, ih], dtype=np.float32)
            preds.append({"boxes": torch.from_numpy(boxes.astype(np.float32)),
                          "scores": torch.from_numpy(det[:, 2].astype(np.float32))})
        m = evaluate_detections(preds, [r.boxes for r in val])
        row.update(miss_rate=round(m.miss_rate, 4), ap50=round(m.ap50, 4))
        out[f"{precision}@{h}x{w}" if size else precision] = row
    return out


# -- /detect end to end -------------------------------------------------------------------
def detect_p50(url: str, checkpoint_id: str, images: list[tuple[str, bytes]], seconds: float) -> dict[str, Any]:
    """One client posting one image per request for `seconds` (after 5 warm-up requests)."""
    latencies, errors = [], 0
    with stack.client(url) as c:
        def post(i: int) -> bool:
            name, data = images[i % len(images)]
            r = c.post("/detect", files={"images": (name, data, "image/png")}, data={"checkpoint_id": checkpoint_id})
            return r.status_code == 200

        for i in range(5):
            post(i)
        started, i = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            t0 = time.perf_counter()
            if post(i):
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += 1
    return {"requests": len(latencies), "errors": errors, "p50_ms": round(stack.pct(latencies, 50) * 1000, 2),
            "p99_ms": round(stack.pct(latencies, 99) * 1000, 2)}


def serve(variants: dict[str, dict[str, Any]], weights: bytes, card_json: str, val: list[ImageRecord],
          seconds: float, threads: int) -> dict[str, Any]:
    """`/detect` p50 of every variant (the torch one from an API with the torch backend, the
    others from the OpenVINO backend) and each API process's memory."""
    tmp, db_url, env = stack.sqlite_env("flexbin_bench_speed_", FLEXBIN_SERVING_TORCH_THREADS=str(threads))
    images = [(f"{r.name}.png", Path(r.image).read_bytes()) for r in val]  # type: ignore[arg-type]
    apis: dict[str, stack.Proc] = {}
    out: dict[str, Any] = {"cells": {}, "api": {}}
    try:
        for backend in ("torch", "openvino"):
            apis[backend], _ = stack.start_api({**env, "FLEXBIN_SERVING_BACKEND": backend}, tmp, f"api-{backend}")
        time.sleep(3)  # let start-up allocations settle
        out["api"] = {backend: {"started_rss_mib": stack.rss_mib(proc.pid)} for backend, proc in apis.items()}
        with stack.client(apis["torch"].url) as c:  # upload validation imports torch: keep it out of the OpenVINO process
            ids = stack.store_finished_job(db_url, **stack.upload(c, weights, card_json), checkpoints=variants,
                                           target=Target(max_miss_rate_increase=BUDGET))
        # the 1-bit checkpoint first: each process's idle RSS with the one checkpoint it serves
        # loaded, as a deployment runs; then the others (several loaded, their shapes compiled)
        first = ("torch_float", "ov_binary_activations")
        for name in [*first, *(n for n in variants if n not in first)]:
            backend = "torch" if name == "torch_float" else "openvino"
            cell = detect_p50(apis[backend].url, ids[name], images, seconds)
            out["cells"][name] = {**cell, "backend": backend}
            report.log(f"  /detect {name}: p50 {cell['p50_ms']} ms ({cell['requests']} requests, {cell['errors']} errors)")
            if name in first:
                time.sleep(2)
                out["api"][backend]["idle_rss_mib"] = stack.rss_mib(apis[backend].pid)
        time.sleep(2)
        for backend, proc in apis.items():
            out["api"][backend].update(all_loaded_rss_mib=stack.rss_mib(proc.pid),
                                       peak_rss_mib=stack.rss_mib(proc.pid, "VmHWM"))
    finally:
        for proc in apis.values():
            proc.stop()
    return out


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def r(a: str, b: str, key: str) -> float | None:
        x, y = rows[a].get(key), rows[b].get(key)
        return round(x / y, 3) if x and y else None

    return {
        "ov_float / torch_float, forward 1t": r("ov_float", "torch_float", "forward_ms_1t"),
        "ov_nncf_int8 / ov_float, forward 1t": r("ov_nncf_int8", "ov_float", "forward_ms_1t"),
        "ov_binary_weights / ov_float, forward 1t": r("ov_binary_weights", "ov_float", "forward_ms_1t"),
        "ov_binary_activations / ov_float, forward 1t": r("ov_binary_activations", "ov_float", "forward_ms_1t"),
        "ov_binary_activations / ov_nncf_int8, forward 1t": r("ov_binary_activations", "ov_nncf_int8", "forward_ms_1t"),
        "ov_all_1bit / ov_nncf_int8, forward 1t": r("ov_all_1bit", "ov_nncf_int8", "forward_ms_1t"),
        "ov_binary_activations_int8 / ov_nncf_int8, forward 1t": r("ov_binary_activations_int8", "ov_nncf_int8",
                                                                   "forward_ms_1t"),
        "ov_binary_activations / torch_float, forward 1t": r("ov_binary_activations", "torch_float", "forward_ms_1t"),
        "ov_binary_activations / ov_float, forward 2t": r("ov_binary_activations", "ov_float", "forward_ms_2t"),
        "torch_float / ov_binary_activations, /detect p50": r("torch_float", "ov_binary_activations", "detect_p50_ms"),
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows, api = result["variants"], result["api"]
    acts, flt, i8, tf = (rows[k] for k in ("ov_binary_activations", "ov_float", "ov_nncf_int8", "torch_float"))
    every = rows["ov_binary_activations_all"]
    layers = acts.get("layers", {})

    def one_bit(variant: dict[str, Any]) -> int:
        return sum(p["runs_as"] == "binary_weights_activations" for p in variant.get("layers", {}).values())

    speed = acts["forward_ms_1t"] / flt["forward_ms_1t"]
    why_speed = (f"{one_bit(acts)} of {len(layers)} layers run 1-bit in the selected checkpoint; layout conversions "
                 f"(Reorder) take {acts.get('reorder_share', 0):.0%} of its forward time; the job's last step "
                 f"({one_bit(every)} layers 1-bit): {every['forward_ms_1t'] / flt['forward_ms_1t']:.2f}x float at MR^-2 {every['miss_rate']}")
    detect = tf["detect_p50_ms"] / acts["detect_p50_ms"] if acts.get("detect_p50_ms") else float("nan")
    out = [
        {"goal": "1-bit checkpoint forward <= 0.5x OpenVINO float (1 thread)", "value": round(speed, 3),
         "met": speed <= 0.5, "why": why_speed},
        {"goal": "1-bit checkpoint forward faster than NNCF int8 of the float model (1 thread)",
         "value": f"{acts['forward_ms_1t']} vs {i8['forward_ms_1t']} ms", "met": acts["forward_ms_1t"] < i8["forward_ms_1t"],
         "why": why_speed},
        {"goal": f"1-bit checkpoint MR^-2 <= float MR^-2 + {BUDGET} (the binary-activation job's selection)",
         "value": f"{acts['miss_rate']} vs {tf['miss_rate']}", "met": acts["miss_rate"] <= tf["miss_rate"] + BUDGET,
         "why": "MR^-2 of the exported model on the validation split vs the torch float model's"},
        {"goal": "/detect p50 of the 1-bit checkpoint >= 1.5x faster than torch float", "value": round(detect, 3),
         "met": detect >= 1.5, "why": "PNG decoding, HTTP and pre/post-processing are the same for both and do "
                                      "not get faster with the network"},
        {"goal": "API idle RSS with the OpenVINO backend <= 400 MiB (the 1-bit checkpoint served)",
         "value": api["openvino"]["idle_rss_mib"], "met": api["openvino"]["idle_rss_mib"] <= 400,
         "why": f"torch backend: {api['torch']['idle_rss_mib']} MiB idle serving torch float; OpenVINO with all "
                f"{len(rows) - 1} of its checkpoints loaded: {api['openvino']['all_loaded_rss_mib']} MiB"},
    ]
    ceiling = rows["ov_all_1bit"]
    out.append({"goal": "the speed ceiling: every conv that can be 1-bit at 1 bit (untrained) faster than NNCF int8 (1 thread)",
                "value": f"{ceiling['forward_ms_1t']} vs {i8['forward_ms_1t']} ms",
                "met": ceiling["forward_ms_1t"] < i8["forward_ms_1t"],
                "why": f"{ceiling['one_bit_mac_share']:.0%} of the conv MACs at 1 bit; NNCF int8 runs every conv int8 "
                       f"({ceiling['forward_ms_1t'] / flt['forward_ms_1t']:.2f}x and "
                       f"{i8['forward_ms_1t'] / flt['forward_ms_1t']:.2f}x OpenVINO float)"})
    out.append(_int8_goal(rows))
    out.append(_intel_goal(result, acts))
    return out


def _int8_goal(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 19's comparison on this detector (`bench.ceiling.int8_goal_checks`): met when a 1-bit
    variant passes every check at 1 thread f32."""
    float_mr, i8 = rows["ov_float"]["miss_rate"], rows["ov_nncf_int8"]
    checked = {name: int8_goal_checks(rows[name], rows[name]["forward_ms_1t"], i8, i8["forward_ms_1t"], float_mr)
               for name in ("ov_binary_activations", "ov_binary_activations_int8", "ov_binary_activations_all")}
    return {"goal": (f"a 1-bit variant faster than NNCF int8 at MR^-2 <= OpenVINO float + {INT8_BUDGET}, its IR at most "
                     "half int8's, >= 50 % of conv MACs 1-bit (issue 19, 1 thread f32)"),
            "value": "; ".join(f"{name}: {rows[name]['forward_ms_1t']} ms, MR^-2 {rows[name]['miss_rate']}, "
                               f"{rows[name]['ir_bytes'] / 1e6:.2f} MB, {rows[name]['one_bit_mac_share']:.0%} of MACs 1-bit"
                               for name in checked),
            "met": any(all(c.values()) for c in checked.values()),
            "why": "; ".join(f"{name} fails: {', '.join(k for k, ok in c.items() if not ok) or 'nothing'}"
                             for name, c in checked.items())
                   + f" (NNCF int8: {i8['forward_ms_1t']} ms, MR^-2 {i8['miss_rate']}, {i8['ir_bytes'] / 1e6:.2f} MB)"}


def _intel_goal(result: dict[str, Any], acts: dict[str, Any]) -> dict[str, Any]:
    """The pretrained detector's 1-bit checkpoint against Intel's FP16-INT8 IR of it."""
    goal = "pretrained detector: 1-bit checkpoint faster than Intel's FP16-INT8 IR at MR^-2 <= its + 0.03"
    h, w = result["config"].get("network_input", [result["config"]["input_size"]] * 2)
    intel = result["intel"].get(f"FP16-INT8@{h}x{w}", result["intel"].get("FP16-INT8"))
    if not intel or "adas" not in result["config"]["architecture"]:
        return {"goal": goal, "value": None, "met": None,
                "why": "not run: needs the pretrained detector's architecture (run with --float-model <its "
                       "converted weights>) and Intel's IR"}
    faster = acts["forward_ms_1t"] < intel["forward_ms_1t"]
    close = acts["miss_rate"] <= intel["miss_rate"] + 0.03
    return {"goal": goal, "value": f"{acts['forward_ms_1t']} vs {intel['forward_ms_1t']} ms; MR "
                                   f"{acts['miss_rate']} vs {intel['miss_rate']}", "met": faster and close,
            "why": (f"both networks at {h}x{w} (Intel's IR reshaped where that differs from its 384x672)"
                    if intel["input"][2:] == [h, w] else f"Intel's IR at {intel['input'][2:]}, ours at {[h, w]}")
            + f"; both at f32; at OpenVINO's default precision ({result['config']['openvino_default_precision']}"
              f"): {acts.get('forward_ms_1t_default')} vs {intel.get('forward_ms_1t_default')} ms"}


# -- output -----------------------------------------------------------------------------------
def _seed_text(cfg: dict[str, Any]) -> str:
    """", jobs' seed n" for a run with another seed than 0 (older files: 0)."""
    return f", jobs' seed {cfg['job_seed']}" if cfg.get("job_seed") else ""


def default_name(result: dict[str, Any]) -> str:
    architecture = result["config"]["architecture"]
    return "speed" if architecture == DEFAULT_ARCHITECTURE else f"speed_{architecture}"


def write(result: dict[str, Any], name: str, quick: bool) -> None:
    name += "_quick" if quick else ""
    report.write_results(name, result, markdown(result))
    plot(result, report.RESULTS / f"{name}.png")
    for g in result["goals"]:
        report.log(f"{report.mark(g['met'], plain=True)}: {g['goal']} ({g['value']})")
    report.log(f"wrote bench/results/{name}.{{json,md,png}} in {result['total_seconds']:.0f} s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _recipe_text(cfg: dict[str, Any]) -> str:
    recipe = cfg.get("binary_activation_recipe")

    def text(value: Any) -> str:
        return " ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)

    return ("; the binary-activation job with " + ", ".join(f"{k} {text(v)}" for k, v in recipe.items())) if recipe else ""


def _size(cfg: dict[str, Any]) -> str:
    return "x".join(map(str, cfg.get("network_input", [cfg["input_size"]] * 2)))


def variant_rows(result: dict[str, Any], labels: dict[str, str] = LABELS) -> list[dict[str, Any]]:
    """The variants and Intel's IRs as table rows (label, MR^-2, AP, forward ms, /detect p50 ...)."""
    rows = [{"label": labels[name], **result["variants"][name]} for name in variants_of(result)]
    rows += [{"label": f"Intel pedestrian-detection-adas-0002 {precision.split('@')[0]} IR "
                       f"({r['input'][3]}x{r['input'][2]})", **r} for precision, r in result["intel"].items()]
    return rows


def variant_table(rows: list[dict[str, Any]], *, reorders: bool = True) -> list[str]:
    columns: list[tuple[str, Any]] = [
        ("variant", "label"),
        ("MR^-2 [95 % CI]", lambda r: f"{r['miss_rate']:.3f}" + (
            f" [{r['miss_rate_ci95'][0]:.3f}, {r['miss_rate_ci95'][1]:.3f}]" if r.get("miss_rate_ci95") else "")),
        ("minus float [95 % CI]", lambda r: report.interval_text(r.get("minus_float_ci95"))),
        ("AP@0.5", lambda r: f"{r['ap50']:.3f}")]
    if any("miss_rate_bf16" in r for r in rows):
        columns.append(("MR^-2 at bf16 [minus f32, 95 % CI]", lambda r: "" if "miss_rate_bf16" not in r else
                        f"{r['miss_rate_bf16']:.3f} {report.interval_text(r['bf16_minus_f32_ci95'])}"))
    if any("ir_bytes" in r for r in rows):
        columns += [("IR MB", lambda r: "" if "ir_bytes" not in r else f"{r['ir_bytes'] / 1e6:.2f}"),
                    ("conv MACs 1-bit", lambda r: _share(r.get("one_bit_mac_share")) if "ir_bytes" in r else "")]
    columns += [("forward ms, 1 thread", lambda r: _ms(r["forward_ms_1t"])),
               ("forward ms, 2 threads", lambda r: _ms(r["forward_ms_2t"])),
               ("/detect p50 ms (1 client)", lambda r: None if "detect_p50_ms" not in r else f"{r['detect_p50_ms']:.1f}")]
    if reorders:
        columns.append(("Reorder share of forward", lambda r: _share(r.get("reorder_share"))))
    columns.append(("forward ms, 1 thread, default precision", lambda r: _ms(r.get("forward_ms_1t_default"))))
    return report.markdown_table(rows, columns, align="l" + "r" * (len(columns) - 1))


def markdown(result: dict[str, Any]) -> str:
    cfg, rows, m = result["config"], result["variants"], result["machine"]
    lines = [
        "# Speed benchmark (`python -m bench.speed`)", "",
        (f"{cfg['architecture']} at {_size(cfg)} px (network input, height x width); Penn-Fudan, {cfg['train_images']} "
         f"train / {cfg['val_images']} validation images; layer-priority jobs with target max_miss_rate_increase "
         f"{BUDGET}, {cfg.get('layers_per_step', 1)} layer(s) and {cfg['finetune_iters']} fine-tuning iterations per "
         f"step, learning rate {cfg.get('learning_rate')}{_recipe_text(cfg)}"
         f"{_seed_text(cfg)}. Machine: {report.machine_text(m)}; commit "
         f"{report.commit_text(result['git'])}{'; QUICK smoke run: numbers mean nothing' if result['quick'] else ''}."), "",
        (f"Forward times at f32 (what FlexBin serves, equal to PyTorch's results) and, in the last column, at "
         f"OpenVINO's default precision on this CPU ({cfg.get('openvino_default_precision', '?')}; MR^-2 and AP are "
         "f32)."), "",
        *variant_table(variant_rows(result)),
        "", "Ratios:", "", *(f"- {k}: {v}" for k, v in result["ratios"].items()),
        "", "## Goals", "",
        *(f"- {report.mark(g['met'])}: {g['goal']} (measured: {g['value']}; {g['why']})" for g in result["goals"]),
        "", "## What each layer runs as (compiled OpenVINO graph)", "",
        *report.markdown_table(list(rows["ov_float"]["layers"]), [("layer", lambda x: x)] + [
            (LABELS[n].split(" (")[0], lambda x, n=n: rows[n]["layers"].get(x, {}).get("runs_as"))
            for n in variants_of(result)[1:]]),
        "", "## API process memory (RSS)", "",
        *report.markdown_table(result["api"].items(), [
            ("backend", lambda kv: kv[0]), ("after start-up MiB", lambda kv: kv[1]["started_rss_mib"]),
            ("idle, one checkpoint served MiB", lambda kv: kv[1]["idle_rss_mib"]),
            ("all its checkpoints loaded MiB", lambda kv: kv[1]["all_loaded_rss_mib"]),
            ("peak MiB", lambda kv: kv[1]["peak_rss_mib"])], align="lrrrr"),
        "", "## The jobs' steps (latency: the step's exported model, 1 thread, measured by the worker code)", "",
    ]
    for job, data in result["jobs"].items():
        lines += [f"{job} (selected step {data['selected']}):", "", *report.markdown_table(data["steps"], [
            ("step", "index"), ("binary layers", "binary_layers"), ("1-bit inputs", "binary_input_layers"),
            ("compression", lambda s: f"{s['compression_ratio']:.2f}"), ("MR^-2", lambda s: f"{s['miss_rate']:.3f}"),
            ("latency ms", "latency_ms")], align="rrrrrr"), ""]
    lines.append(f"Total run time: {result['total_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: forward ms of every variant. Right, the frontier: the jobs' steps (MR^-2 against the
    latency the worker measured) and the OpenVINO variants (marker area by IR size), 1 thread f32."""
    fig, (left, right) = report.figure(2, size=(13, 5))
    rows, names = result["variants"], variants_of(result)
    xs = np.arange(len(names))
    for offset, key, label in ((-0.2, "forward_ms_1t", "1 thread"), (0.2, "forward_ms_2t", "2 threads")):
        left.bar(xs + offset, [rows[v][key] for v in names], width=0.4, label=label)
    left.set_xticks(xs, [LABELS[v].split(" (")[0].replace("OpenVINO ", "OV ") for v in names], rotation=30, ha="right")
    report.label(left, x="", y="forward ms / image", title="network forward time")
    for job, marker in (("weights_only", "o"), ("binary_activations", "s")):
        steps = [s for s in result["jobs"][job]["steps"] if s["latency_ms"]]
        right.plot([s["latency_ms"] for s in steps], [s["miss_rate"] for s in steps], marker=marker, alpha=0.4,
                   label=f"{job} steps")
    for name in names:
        row = rows[name]
        if "ir_bytes" in row:
            right.scatter(row["forward_ms_1t"], row["miss_rate"], s=40 * row["ir_bytes"] / 1e6, alpha=0.7,
                          label=LABELS[name].split(" (")[0].replace("OpenVINO ", "OV "))
    report.label(right, x="forward ms (1 thread f32, log)", y="validation MR^-2 (lower is better)",
                 title="frontier: steps and variants (marker area: IR size)", log_x=True, legend=False)
    right.legend(fontsize=7)
    report.save_figure(fig, path)


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    head = "### Speed: OpenVINO, int8 and 1-bit kernels (`make bench-speed`, [`speed.md`](speed.md))"
    return report.section(head, report.load_all("speed", results), _readme_lines)


def _readme_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [("`python -m bench.speed` trains (or takes, `--float-model` / `--pretrained`) a float detector, runs two "
              f"layer-priority jobs with target `max_miss_rate_increase: {BUDGET}` (weights only, and "
              "`activation_bits: 1`) and compares, on the same validation images: PyTorch float, OpenVINO float, "
              "NNCF int8 of it (`nncf.quantize`: the baseline a user has), OpenVINO binary weights, OpenVINO 1-bit "
              "(binary weights and activations: `BinaryConvolution`) and both selections as `?format=openvino-int8` "
              "(NNCF int8 on what is not 1-bit; runs before NNCF replaced it show a hand-calibrated \"int8\" of the "
              "binary weights instead), each with MR^-2 (newer runs: with 95 % bootstrap intervals) and AP, IR size, "
              "the share of conv MACs at 1 bit, forward ms at 1 and 2 "
              "threads, what each layer runs as on the compiled graph, the share of layout conversions, `/detect` p50 "
              "at 1 client, and the API's RSS with either backend; Intel's own FP16 / FP16-INT8 IRs of "
              "pedestrian-detection-adas-0002 are timed for reference when `../shared/models/` has them. Forward "
              "times are at f32 (what FlexBin serves, so that results equal PyTorch's); the last column, where "
              "recorded, is OpenVINO's default precision on that CPU, which Intel's IRs get when compiled plainly."), ""]
    for name in sorted(runs, key=lambda n: (n != "speed", n)):  # PedNet first
        lines += [*_speed_run(name, runs[name]), ""]
    return lines


def _speed_run(name: str, result: dict[str, Any]) -> list[str]:
    cfg, rows, ratio, m = result["config"], result["variants"], result["ratios"], result["machine"]
    jobs = result["jobs"]
    labels = _labels(result)
    one_bit = [layer for layer, p in rows["ov_binary_activations"]["layers"].items() if p["runs_as"] == ONE_BIT]
    every = [layer for layer, p in rows["ov_binary_activations_all"]["layers"].items() if p["runs_as"] == ONE_BIT]
    acts_steps = jobs["binary_activations"]["steps"]
    after_selected = acts_steps[jobs["binary_activations"]["selected"] + 1:]
    names = variants_of(result)
    int8 = int8_baseline(result)

    def ratio_of(a: str, b: str) -> float:
        return round(rows[a]["forward_ms_1t"] / rows[b]["forward_ms_1t"], 3)

    detect = [rows[v]["detect_p50_ms"] for v in names if "detect_p50_ms" in rows[v]]
    forward = [rows[v]["forward_ms_1t"] for v in names]
    api = result["api"]
    cpu = (f"{m['cpu_model']} ({m.get('cpu_isa', '-')})" if m.get("cpu_model") else
           "a CPU whose model this run did not record")
    text = [
        (f"**{cfg['architecture']} at {_size(cfg)}** ([`{name}.md`]({name}.md), {m['date']}, "
         f"{report.minutes(result['total_seconds'])}, {m['cpus']} CPUs: {cpu}; float model: {cfg['float_model']['source']}): "
         f"{cfg['train_images']} training / {cfg['val_images']} validation images, "
         f"{report.plural(cfg.get('layers_per_step', 1), 'layer')} and {cfg['finetune_iters']} iterations per step"
         + (f", lr {report.rate(cfg['learning_rate'])}" if cfg.get("learning_rate") else "") + _recipe_text(cfg)
         + _seed_text(cfg) + "."),
        "",
        *variant_table(variant_rows(result, labels), reorders=False), "",
        *report.markdown_table(result["goals"], [("goal", "goal"), ("measured", "value"), ("met", lambda g: report.mark(g["met"])),
                                                 ("why", "why")]), "",
        (f"The 1-bit checkpoint runs {len(one_bit)} layers 1-bit ({', '.join(one_bit) or 'none'}); the job's last step "
         f"adds {', '.join(x for x in every if x not in one_bit) or 'nothing'}"
         + (f" and its MR^-2 goes to {after_selected[-1]['miss_rate']:.3f}" if after_selected else "")
         + f". Its forward is {ratio['ov_binary_activations / ov_float, forward 1t']}x OpenVINO float "
         f"({ratio_of('ov_binary_activations', int8)}x {LABELS[int8].split(' (')[0]}, "
         f"{ratio['ov_binary_activations / torch_float, forward 1t']}x the PyTorch float forward); binary weights "
         f"alone run at {ratio['ov_binary_weights / ov_float, forward 1t']}x float and "
         f"{LABELS[int8].split(' (')[0]} at {ratio_of(int8, 'ov_float')}x. Layout "
         f"conversions (Reorder) take {report.span((100 * rows[v]['reorder_share'] for v in names[1:]), '.0f')} % of the "
         f"OpenVINO forwards. A `/detect` request costs {report.span(detect, '.0f')} ms whatever the variant, of which the "
         f"forward is {report.span(forward, '.0f')} ms: `/detect` p50 is "
         f"{ratio['torch_float / ov_binary_activations, /detect p50']}x faster than the torch path. API memory: "
         f"{api['openvino']['idle_rss_mib']:.0f} MiB idle serving the 1-bit checkpoint on OpenVINO against "
         f"{api['torch']['idle_rss_mib']:.0f} MiB on the torch backend; {api['openvino']['all_loaded_rss_mib']:.0f} MiB "
         f"with all {len(names) - 1} OpenVINO variants loaded."),
    ]
    h, w = cfg.get("network_input", [cfg["input_size"]] * 2)
    same = result["intel"].get(f"FP16@{h}x{w}")
    if same:
        text[-1] += (f" FlexBin's float IR of this network: {rows['ov_float']['forward_ms_1t']:.2f} ms against Intel's "
                     f"FP16 IR reshaped to the same input: {same['forward_ms_1t']:.2f} ms (f32, 1 thread).")
    note = NOTES.get(name, NOTES.get(default_name(result)))  # else the note of the runs kept per CPU kind
    if note:
        text += ["", note]
    return text


def _labels(result: dict[str, Any]) -> dict[str, str]:
    """The variants' names with what each checkpoint holds (layers 1-bit, compression)."""
    jobs = result["jobs"]

    def step(job: str, index: int) -> dict[str, Any]:
        return jobs[job]["steps"][index]

    w = step("weights_only", jobs["weights_only"]["selected"])
    a = step("binary_activations", jobs["binary_activations"]["selected"])
    last = jobs["binary_activations"]["steps"][-1]
    return {**LABELS,
            "ov_binary_weights": f"OpenVINO binary weights (the weights-only job's selection: "
                                 f"{report.plural(w['binary_layers'], 'layer')}, {w['compression_ratio']:.1f}x)",
            "ov_int8": "OpenVINO int8 (those binary weights + calibrated 8-bit inputs)",
            "ov_binary_weights_int8": "OpenVINO binary weights, NNCF int8 (that selection's ?format=openvino-int8)",
            "ov_binary_activations_int8": "OpenVINO 1-bit, NNCF int8 elsewhere (that selection's ?format=openvino-int8)",
            "ov_binary_activations": f"**OpenVINO 1-bit** (the binary-activation job's selection: "
                                     f"{report.plural(a['binary_layers'], 'layer')}, {a['compression_ratio']:.1f}x)",
            "ov_binary_activations_all": f"OpenVINO 1-bit, that job's last step ({report.plural(last['binary_layers'], 'layer')}, "
                                         f"{last['compression_ratio']:.1f}x)"}



NOTES = {  # what a number cannot say about one result file
    "speed_pednet_staged": (
        "Issue 19's recipe on PedNet: the `latency` order binarizes the conv that saves the most time first "
        "(`features.4.0`, 16 % of the conv MACs), and with binary inputs it moves MR^-2 from 0.167 to 0.242 after "
        "300 iterations, past the job's 0.05 budget, so the job stops after one step and selects the float model. "
        "PedNet's 3x3 convs on few channels lose more to binary inputs than the pointwise convs of "
        "pedestrian_adas_0002. The untrained all-1-bit row shows the speed that is there to win."),
    "speed": (
        "Why the forward misses 0.5x: deepest-first binarizes the cheap end of the network first, and the job's "
        "miss-rate budget stopped it before the first convolutions, where the feature maps are largest and most of "
        "the multiply-adds are (the first one also stays float by design: too few weights for `min_layer_params`, "
        "and RGB inputs, which the 1-bit kernel cannot take). PNG decoding, multipart parsing, resizing and HTTP "
        "on the same cores dominate a `/detect` request and do not get faster with the network. Where the CPU has "
        "AMX (the run's CPU line says), int8 and bf16 convolutions run on its matrix engine and 1-bit ones cannot: "
        "NNCF int8 then beats even the untrained all-1-bit graph, and OpenVINO's default bf16 runs the float model "
        "nearly as fast as int8."),
    "speed_pedestrian_adas_0002": (
        "On a CPU with AVX-512 and AMX, OpenVINO's float and int8 kernels are much stronger than on an AVX2-only one, "
        "so these ratios are not comparable with a run on another CPU. Why the 1-bit checkpoint is not faster: "
        "binarizing inputs breaks this network early. With binary inputs the job stops in the SSD extra layers and "
        "the heads on the smallest feature maps, which hold little of the compute; the backbone convs that hold the "
        "time were never reached, and the depthwise convs and the stem stay float by design. Intel's binary version "
        "of this network was trained with binary layers from the start on its own large dataset; the few Penn-Fudan "
        "images and iterations per step here do not recover that much with the default recipe; issue 19's (the "
        "`latency` order, NNCF's binarizer, 600 iterations a step) reached 24 convs once (bench.ceiling's "
        "ceiling_amd_epyc_staged rows). The export itself is not the problem: "
        "FlexBin's float IR runs about as fast as Intel's FP16 IR of the same network (above)."),
}


if __name__ == "__main__":
    main()

"""Pretrained benchmark: Intel's pedestrian-detection-adas-0002 binarized by FlexBin.

    python -m bench.pretrained            # the full benchmark (make bench-pretrained)
    python -m bench.pretrained --quick    # minutes, tiny budgets: checks the script works

1. Parity: the PyTorch module against the original FP16 IR run by OpenVINO (float32) on all
   Penn-Fudan images at the IR's 384x672: MR^-2 and AP@0.5 of both, and the images whose
   detections scoring >= 0.05 lack a twin (IoU >= 0.95, score within 0.01). Skipped, and
   said so, when the IR is not at `$FLEXBIN_SHARED_MODELS` (default ../shared/models).
2. The float model on the validation split, at 384x672 and at the job's resolution, before
   and after fine-tuning it on the training split (`--float-finetune-iters`).
3. The layer-priority job on the pretrained float model (by default the demo's recipe,
   service/demo.py) over every dense layer: each step's compression ratio, MR^-2, AP@0.5 and
   seconds; the demo's job time is the steps up to its target (8x).
4. Depthwise convolutions: their share of the weights, and MR^-2 with all of them binarized
   (no fine-tuning, and after one step's fine-tuning).
5. Milliseconds per image on 1 thread: this model at both resolutions, PedNet (FlexBin's
   default detector, untrained: speed only) and OpenCV's HOG people detector.
Writes bench/results/pretrained.{json,md} (`--quick`: pretrained_quick.*); every goal of
issue 10 is computed and printed as met / missed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import report
from bench.baselines.hog import HogPeopleDetector
from core.binary import binarize_module
from core.checkpoint import ModelCard
from core.data import ImageRecord, read_pennfudan, split_records
from core.detection_metrics import DetectionMetrics, evaluate_detections
from core.device import add_device_argument, device_from_args
from core.models.adas_reference import (
    OpenVinoReference,
    default_ir_path,
    unmatched_top_detections,
)
from core.paths import default_data_dir
from core.pipeline import PipelineConfig, Target, eligible_layers, run
from core.pretrained import load_pretrained
from core.priority import discover_layers
from core.train import ImageCache, evaluate_model, predict, train_detector
from service.demo import ADAS_DEMO
from service.settings import Settings

NAME = "pedestrian_adas_0002"
EVERY_LAYER = Target(min_compression_ratio=32.0)  # unreachable: binarize every eligible layer
DEMO_MINUTES = 30
FULL_SIZE = "384x672"  # the IR's own input


@dataclass
class Data:
    records: list[ImageRecord]
    train: list[ImageRecord]
    val: list[ImageRecord]
    cache: ImageCache


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    torch.manual_seed(0)
    data = load_data(args.data)
    result: dict[str, Any] = {"quick": args.quick, "data": {
        "images": len(data.records), "train_images": len(data.train), "val_images": len(data.val),
        "val_pedestrians": sum(len(r.boxes) for r in data.val)}}
    result["parity"] = parity(data, args.parity_limit)
    size = {"input_height": args.input_height, "input_width": args.input_width}
    full, _ = load_pretrained(NAME)
    model, card = load_pretrained(NAME, **size)
    result["float"] = float_model(full, model, data, args)
    config, result["job"] = layer_priority_job(model, card, data, args)
    result["depthwise"] = depthwise(model, card, data, config, args.device)
    result["speed"] = speed(full, model, data, f"{args.input_height}x{args.input_width}")
    result["goals"] = goals(result, args)
    result.update(total_seconds=round(time.monotonic() - started, 1),
                  environment=report.machine(threads=torch.get_num_threads(), load_average_at_end=report.load_average(),
                                             date=time.strftime("%Y-%m-%d")))
    write(result, args.out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pretrained", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script")
    parser.add_argument("--input-height", type=int, default=ADAS_DEMO.input_height)
    parser.add_argument("--input-width", type=int, default=ADAS_DEMO.input_width)
    settings = Settings(demo_model=NAME)
    parser.add_argument("--finetune-iters", type=int, default=settings.demo_finetune_iters)
    parser.add_argument("--layers-per-step", type=int, default=ADAS_DEMO.layers_per_step)
    parser.add_argument("--learning-rate", type=float, default=ADAS_DEMO.learning_rate)
    parser.add_argument("--float-finetune-iters", type=int, default=300)
    parser.add_argument("--target", type=float, default=settings.demo_min_compression_ratio,
                        help="the demo's compression target: its job time is the steps until it")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    add_device_argument(parser)
    args = parser.parse_args()
    args.device = device_from_args(args, parser)
    args.parity_limit = None
    if args.quick:
        args.input_height, args.input_width = 96, 160
        args.finetune_iters, args.float_finetune_iters, args.layers_per_step = 1, 2, 8
        args.parity_limit = 6
    return args


# -- phases -----------------------------------------------------------------------------------
def load_data(root: Path) -> Data:
    records = read_pennfudan(root)
    train, val = split_records(records)
    report.log(f"data: {len(records)} images, {len(train)} train / {len(val)} val, from {root}")
    return Data(records, train, val, ImageCache())


def metrics_row(metrics: DetectionMetrics) -> dict[str, float]:
    return {"miss_rate": round(metrics.miss_rate, 4), "ap50": round(metrics.ap50, 4)}


def parity(data: Data, limit: int | None) -> dict[str, Any]:
    """The PyTorch module against Intel's FP16 IR on OpenVINO, on the same images."""
    xml = default_ir_path()
    if not xml.is_file():
        report.log(f"parity: skipped, no IR at {xml}")
        return {"skipped": f"no IR at {xml}"}
    chosen = data.records[:limit] if limit else data.records
    model, _ = load_pretrained(NAME)
    images = [data.cache.image(r) for r in chosen]
    t0 = time.monotonic()
    reference = OpenVinoReference(xml)(model, images)
    ours = predict(model, images, batch_size=4)
    truth = [r.boxes for r in chosen]
    ref_m, our_m = evaluate_detections(reference, truth), evaluate_detections(ours, truth)
    mismatches = {}
    for record, ref, det in zip(chosen, reference, ours, strict=True):
        missing = unmatched_top_detections(ref, det, min_score=0.05) + unmatched_top_detections(det, ref, min_score=0.05)
        if missing:
            mismatches[record.name] = missing
    report.log(f"parity on {len(chosen)} images: OpenVINO MR^-2 {ref_m.miss_rate:.4f} AP {ref_m.ap50:.4f}, torch MR^-2 "
               f"{our_m.miss_rate:.4f} AP {our_m.ap50:.4f}; {len(mismatches)} images differ")
    return {"images": len(chosen), "openvino": metrics_row(ref_m), "torch": metrics_row(our_m),
            "miss_rate_difference": round(abs(ref_m.miss_rate - our_m.miss_rate), 5),
            "images_with_unmatched_top_detections": len(mismatches), "unmatched": mismatches,
            "seconds": round(time.monotonic() - t0, 1)}


def float_model(full: torch.nn.Module, model: torch.nn.Module, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """The float model on the validation split at both resolutions, and fine-tuned at the job's."""
    size = f"{args.input_height}x{args.input_width}"
    before = {FULL_SIZE: metrics_row(evaluate_model(full, data.val, cache=data.cache, device=args.device)),
              size: metrics_row(evaluate_model(model, data.val, cache=data.cache, device=args.device))}
    tuned, _ = load_pretrained(NAME, input_height=args.input_height, input_width=args.input_width)
    t0 = time.monotonic()
    train_detector(tuned, data.train, iterations=args.float_finetune_iters, batch_size=8,
                   learning_rate=args.learning_rate, seed=0, cache=data.cache, device=args.device)
    after = metrics_row(evaluate_model(tuned, data.val, cache=data.cache, device=args.device))
    report.log(f"float val: {before}; fine-tuned {args.float_finetune_iters} iterations: "
               f"MR^-2 {after['miss_rate']:.4f} AP {after['ap50']:.4f}")
    return {"before_finetuning": before,
            "after_finetuning": {**after, "iterations": args.float_finetune_iters, "learning_rate": args.learning_rate,
                                 "batch_size": 8, "seconds": round(time.monotonic() - t0, 1)},
            "params": sum(p.numel() for p in model.parameters())}


def layer_priority_job(model: torch.nn.Module, card: ModelCard, data: Data,
                       args: argparse.Namespace) -> tuple[PipelineConfig, dict[str, Any]]:
    """The demo's layer-priority job, run on over every dense layer; the demo's job time is
    its steps until `--target`."""
    config = PipelineConfig(target=EVERY_LAYER, layers_per_step=args.layers_per_step,
                            finetune_iters=args.finetune_iters, learning_rate=args.learning_rate)
    t0 = time.monotonic()
    result = run(model, card, data.train, data.val, config, on_step=lambda s: report.log(
        f"step {s.index} ({len(s.binary_layers)} binary layers) ratio {s.compression_ratio:.2f} "
        f"MR^-2 {s.miss_rate:.3f} AP {s.ap50:.3f} {s.step_seconds:.0f}s"), device=args.device)
    steps = report.step_rows(result.steps)
    reached = next((s for s in steps if s["compression_ratio"] >= args.target), None)
    demo_seconds = None if reached is None else sum(s["step_seconds"] for s in steps[: reached["index"] + 1])
    return config, {"config": config.model_dump(mode="json"), "threads": torch.get_num_threads(),
                    "seconds": round(time.monotonic() - t0, 1), "steps": steps, "demo_target": args.target,
                    "demo_job_seconds": demo_seconds and round(demo_seconds, 1)}


def depthwise(model: torch.nn.Module, card: ModelCard, data: Data, config: PipelineConfig,
              device: str = "cpu") -> dict[str, Any]:
    """What binarizing every depthwise conv costs (and saves) on the float model."""
    layers = discover_layers(model, card.input_size)
    dw = [layer for layer in layers if layer.groups > 1]
    total = sum(layer.num_params for layer in layers)
    dense = eligible_layers(model, card, config)
    with_dw = eligible_layers(model, card, config.model_copy(update={"binarize_depthwise": True, "min_layer_params": 0}))
    binary = copy.deepcopy(model)
    modules = dict(binary.named_modules())
    for layer in dw:
        binarize_module(modules[layer.name], config.bits)
    before = evaluate_model(binary, data.val, cache=data.cache, device=device)
    train_detector(binary, data.train, iterations=config.finetune_iters, batch_size=config.batch_size,
                   learning_rate=config.learning_rate, seed=config.seed, cache=data.cache, device=device)
    after = evaluate_model(binary, data.val, cache=data.cache, device=device)
    report.log(f"depthwise: {len(dw)} convs, {100 * sum(x.num_params for x in dw) / total:.1f} % of conv weights; all "
               f"binarized: MR^-2 {before.miss_rate:.3f} (no fine-tuning), {after.miss_rate:.3f} after "
               f"{config.finetune_iters} iterations")
    return {"num_depthwise": len(dw), "weight_fraction": round(sum(x.num_params for x in dw) / total, 4),
            "dense_eligible_fraction": round(sum(x.num_params for x in dense) / total, 4),
            "eligible_with_depthwise": len(with_dw),
            "all_depthwise_binarized": metrics_row(before),
            "all_depthwise_binarized_finetuned": metrics_row(after), "finetune_iters": config.finetune_iters}


def ms_per_image(detect: Callable[[list[torch.Tensor]], Any], images: list[torch.Tensor]) -> float:
    detect(images[:2])  # warm-up
    started = time.perf_counter()
    for image in images:
        detect([image])
    return 1000 * (time.perf_counter() - started) / len(images)


def speed(full: torch.nn.Module, model: torch.nn.Module, data: Data, size: str) -> dict[str, Any]:
    """Milliseconds per image on one thread: this model at both sizes, PedNet and HOG."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = [data.cache.image(r) for r in data.val]
    pednet = ModelCard(architecture="flexbin_pednet").build().eval()
    hog = HogPeopleDetector(num_threads=1)
    out = {"threads": 1,
           f"adas_{FULL_SIZE}_ms": round(ms_per_image(lambda ims: predict(full, ims), images), 2),
           f"adas_{size}_ms": round(ms_per_image(lambda ims: predict(model, ims), images), 2),
           "pednet_224_ms": round(ms_per_image(lambda ims: predict(pednet, ims), images), 2),
           "hog_ms": round(ms_per_image(hog, images), 2),
           "hog": metrics_row(evaluate_detections(hog(images), [r.boxes for r in data.val]))}
    torch.set_num_threads(threads)
    report.log(f"speed (1 thread, ms/image): {out}")
    return out


def goals(result: dict[str, Any], args: argparse.Namespace) -> dict[str, bool | None]:
    p, f, job = result["parity"], result["float"], result["job"]
    steps, demo_seconds = job["steps"], job["demo_job_seconds"]
    skipped = "skipped" in p
    return {
        "module MR^-2 on all images <= 0.18 (no fine-tuning)": None if skipped else p["torch"]["miss_rate"] <= 0.18,
        "parity: MR^-2 within 0.005 of OpenVINO": None if skipped else p["miss_rate_difference"] <= 0.005,
        "parity: top detections at IoU >= 0.95, scores within 0.01":
            None if skipped else p["images_with_unmatched_top_detections"] == 0,
        "fine-tuning the float model does not make it worse (val MR^-2)":
            f["after_finetuning"]["miss_rate"] <= f["before_finetuning"][f"{args.input_height}x{args.input_width}"]["miss_rate"],
        "deepest point >= 10x whole-model compression": steps[-1]["compression_ratio"] >= 10,
        "a checkpoint at >= 8x keeps MR^-2 within +0.05 of the float model":
            any(s["miss_rate"] <= steps[0]["miss_rate"] + 0.05 for s in steps if s["compression_ratio"] >= 8.0),
        f"demo job within {DEMO_MINUTES} minutes": demo_seconds is not None and demo_seconds <= DEMO_MINUTES * 60,
    }


# -- output -----------------------------------------------------------------------------------
def write(result: dict[str, Any], out: Path) -> None:
    report.write_results("pretrained_quick" if result["quick"] else "pretrained", result, markdown(result), out=out)
    report.log_goals(result["goals"])


def markdown(result: dict[str, Any]) -> str:
    env, d, f, job = result["environment"], result["data"], result["float"], result["job"]
    c, size = job["config"], list(f["before_finetuning"])[-1]
    demo = job["demo_job_seconds"]
    lines = [
        (f"# pedestrian-detection-adas-0002 in FlexBin ({env['date']}, torch {env['torch']}, {env['threads']} threads, "
         f"{env.get('cpus', '?')} CPUs, load average at the end {env['load_average_at_end']})"), "",
        (f"Penn-Fudan: {d['images']} images, {d['train_images']} train / {d['val_images']} val "
         f"({d['val_pedestrians']} pedestrians in val)."), "",
        "## Parity with the original IR (OpenVINO, float32), 384x672", "", *_parity_lines(result["parity"]), "",
        "## The float model on the validation split", "", *_float_table(f), "",
        (f"## Layer priority (inverse depth), {c['layers_per_step']} layers per step, {c['finetune_iters']} iterations "
         f"per step, lr {c['learning_rate']:g}, at {size}"), "",
        *_steps_table(job["steps"]), "",
        (f"The demo's job (the steps until {job['demo_target']:g}x) took "
         + (report.minutes(demo) if demo is not None else "- (target never reached)")
         + f" here, with {job['threads']} torch threads."), "",
        "## Depthwise convolutions", "", _depthwise_text(result["depthwise"], job["steps"][0]["miss_rate"]), "",
        "## Milliseconds per image, 1 thread (validation images)", "",
        *report.markdown_table([(k, v) for k, v in result["speed"].items() if k.endswith("_ms")],
                               [("detector", lambda kv: kv[0].removesuffix("_ms").replace("_", " ")),
                         ("ms / image", lambda kv: f"{kv[1]:.1f}")], align="lr"), "",
        (f"HOG on the validation split: MR^-2 {result['speed']['hog']['miss_rate']:.3f}, AP "
         f"{result['speed']['hog']['ap50']:.3f}."), "",
        "## Goals", "", *report.goal_lines(result["goals"]), "", f"Total time: {report.minutes(result['total_seconds'])}.",
    ]
    return "\n".join(lines) + "\n"


def _parity_lines(p: dict[str, Any]) -> list[str]:
    if "skipped" in p:
        return [f"Skipped: {p['skipped']}."]
    return [*report.markdown_table([("OpenVINO, FP16 IR", p["openvino"]), ("FlexBin PyTorch module", p["torch"])], [
        ("runtime", lambda r: r[0]), ("images", lambda r: p["images"]), ("MR^-2", lambda r: f"{r[1]['miss_rate']:.4f}"),
        ("AP@0.5", lambda r: f"{r[1]['ap50']:.4f}")], align="lrrr"), "",
        (f"Images whose detections scoring >= 0.05 lack a twin (IoU >= 0.95, score within 0.01): "
         f"{p['images_with_unmatched_top_detections']}.")]


def _float_table(f: dict[str, Any]) -> list[str]:
    after, size = f["after_finetuning"], list(f["before_finetuning"])[-1]
    rows = [(f"pretrained, {s}", m) for s, m in f["before_finetuning"].items()]
    rows.append(((f"fine-tuned {after['iterations']} iterations (batch {after['batch_size']}, lr "
                  f"{after['learning_rate']:g}) at {size}"), after))
    return report.markdown_table(rows, [("model", lambda r: r[0]), ("MR^-2", lambda r: f"{r[1]['miss_rate']:.4f}"),
                                        ("AP@0.5", lambda r: f"{r[1]['ap50']:.4f}")], align="lrr")


def _steps_table(steps: list[dict[str, Any]], bold: int | None = None) -> list[str]:
    def cell(fmt: str) -> Callable[[dict[str, Any]], str]:
        return lambda s: f"**{fmt.format(**s)}**" if s["index"] == bold else fmt.format(**s)

    return report.markdown_table(steps, [
        ("step", cell("{index}")), ("layers binarized", cell("{num_binary_layers}")),
        ("whole-model compression", cell("{compression_ratio:.2f}x")), ("MR^-2", cell("{miss_rate:.3f}")),
        ("AP@0.5", cell("{ap50:.3f}")), ("step s", cell("{step_seconds:.0f}"))], align="rrrrrr")


def _depthwise_text(dw: dict[str, Any], float_miss_rate: float) -> str:
    return (f"{dw['num_depthwise']} depthwise convs hold {100 * dw['weight_fraction']:.1f} % of the conv weights "
            f"(the dense convs FlexBin binarizes by default: {100 * dw['dense_eligible_fraction']:.1f} %). All of them "
            f"binarized: MR^-2 {dw['all_depthwise_binarized']['miss_rate']:.3f} without fine-tuning, "
            f"{dw['all_depthwise_binarized_finetuned']['miss_rate']:.3f} after {dw['finetune_iters']} iterations "
            f"(float: {float_miss_rate:.3f}).")


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    head = "### Pretrained detector (`make bench-pretrained`, [`pretrained.md`](pretrained.md))"
    return report.section(head, report.load_results("pretrained", results), _readme_lines)


def _readme_lines(result: dict[str, Any]) -> list[str]:
    p, f, job, env = result["parity"], result["float"], result["job"], result["environment"]
    steps, size = job["steps"], list(f["before_finetuning"])[-1]
    target = next((s for s in steps if s["compression_ratio"] >= job["demo_target"]), None)
    demo = " (the demo's resolution)" if size == f"{ADAS_DEMO.input_height}x{ADAS_DEMO.input_width}" else ""
    rows = [] if "skipped" in p else [
        (f"Intel's FP16 IR on OpenVINO, all {p['images']} images, {FULL_SIZE}", p["openvino"]),
        ((f"FlexBin's PyTorch module, same images ({p['images_with_unmatched_top_detections']} images with a "
          "detection ≥ 0.05 lacking its twin at IoU ≥ 0.95, score ± 0.01)"), p["torch"])]
    rows += [((f"pretrained, validation split ({result['data']['val_images']} images, "
               f"{result['data']['val_pedestrians']} pedestrians), {s}") + (demo if s == size else ""), m)
             for s, m in f["before_finetuning"].items()]
    rows.append(((f"float fine-tuned {f['after_finetuning']['iterations']} iterations on the "
                  f"{result['data']['train_images']} training images, {size}"), f["after_finetuning"]))
    lines = [
        ("`python -m bench.pretrained` runs `pedestrian_adas_0002` through FlexBin: parity with OpenVINO, the float "
         "model on the validation split before and after fine-tuning, the demo's layer-priority job over every "
         "dense layer (each step's compression and MR^-2), what binarizing the depthwise convs costs, and ms per "
         f"image on 1 thread next to PedNet and HOG, and checks issue 10's goals. One run, {env['date']}, "
         f"{env['threads']} torch threads, {report.minutes(result['total_seconds'])}; its steps took "
         f"{statistics.median(s['step_seconds'] for s in steps[1:]):.0f} s (median; slowest "
         f"{max(s['step_seconds'] for s in steps[1:]):.0f} s)."), "",
        *report.markdown_table(rows, [("what", lambda r: r[0]), ("MR^-2", lambda r: f"{r[1]['miss_rate']:.4f}"),
                                      ("AP@0.5", lambda r: f"{r[1]['ap50']:.4f}")], align="lrr"), "",
        (f"The demo's job ({report.plural(job['config']['layers_per_step'], 'dense layer')} per step, "
         f"{job['config']['finetune_iters']} iterations per step, lr {report.rate(job['config']['learning_rate'])}, {size}), a few of its {len(steps) - 1} steps "
         "(all in `pretrained.md`; bold: the first step at the demo's target, where the demo's job stops):"), "",
        *_steps_table(_some_steps(steps, target), bold=target["index"] if target else None), "",
        _pretrained_goals(result, target), "",
    ]
    return lines


def _some_steps(steps: list[dict[str, Any]], target: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Step 0, the best, the first at 2x and 4x, the three around the target, the deepest."""
    picks = {0, min(steps, key=lambda s: s["miss_rate"])["index"], steps[-1]["index"]}
    picks |= {next((s["index"] for s in steps if s["compression_ratio"] >= x), 0) for x in (2.0, 4.0)}
    if target:
        picks |= {i for i in range(target["index"] - 1, target["index"] + 2) if 0 <= i < len(steps)}
    return [s for s in steps if s["index"] in picks]


def _pretrained_goals(result: dict[str, Any], target: dict[str, Any] | None) -> str:
    g, f, job, sp, dw = result["goals"], result["float"], result["job"], result["speed"], result["depthwise"]
    steps, tuned = job["steps"], f["after_finetuning"]["miss_rate"]
    deepest = steps[-1]
    parity = result["parity"]
    size_keys = [k for k in sp if k.startswith("adas_") and k.endswith("_ms")]
    text = (f"Goals: deepest point ≥ 10x — {report.mark(g['deepest point >= 10x whole-model compression'])} "
            f"({deepest['compression_ratio']:.1f}x); a checkpoint at ≥ 8x within +0.05 MR^-2 of the float model — "
            f"{report.mark(g['a checkpoint at >= 8x keeps MR^-2 within +0.05 of the float model'])} against the float model "
            "the job starts from")
    if target:
        text += (f" ({target['compression_ratio']:.1f}x at {target['miss_rate']:.3f} vs {steps[0]['miss_rate']:.3f}), "
                 f"but note what that hides: fine-tuning alone takes the float model to {tuned:.3f} on this split, so "
                 f"the binarization itself costs about {target['miss_rate'] - tuned:+.2f} MR^-2 at "
                 f"{target['compression_ratio']:.1f}x (and {deepest['miss_rate'] - tuned:+.2f} at "
                 f"{deepest['compression_ratio']:.1f}x)")
    demo = job["demo_job_seconds"]
    text += (f"; the demo's job within {DEMO_MINUTES} minutes — {report.mark(g[f'demo job within {DEMO_MINUTES} minutes'])}"
             + (f" (the steps until {job['demo_target']:g}x took {report.minutes(demo)})" if demo else "") + ".")
    if "skipped" not in parity:
        text += (f" Parity ≤ 0.005 and the module's MR^-2 ≤ 0.18 without fine-tuning — "
                 f"{report.mark(g['parity: MR^-2 within 0.005 of OpenVINO'] and g['module MR^-2 on all images <= 0.18 (no fine-tuning)'])} "
                 f"({parity['torch']['miss_rate']:.4f}).")
    text += (f" Binarizing the {dw['num_depthwise']} depthwise convs ({100 * dw['weight_fraction']:.1f} % of the conv "
             f"weights) with everything else float: MR^-2 {dw['all_depthwise_binarized']['miss_rate']:.3f}, "
             f"{dw['all_depthwise_binarized_finetuned']['miss_rate']:.3f} after {dw['finetune_iters']} iterations, "
             "which is why they stay float. Forward ms per image on 1 thread (PyTorch): "
             + ", ".join(f"{sp[k]:.1f} at {k.removeprefix('adas_').removesuffix('_ms')}" for k in size_keys)
             + f"; PedNet {sp['pednet_224_ms']:.1f} at 224; OpenCV's HOG people detector {sp['hog_ms']:.1f} (MR^-2 "
             f"{sp['hog']['miss_rate']:.3f}, AP {sp['hog']['ap50']:.3f} on the same split). The validation split has "
             f"{result['data']['val_pedestrians']} pedestrians: step-to-step differences of a few hundredths are "
             "within its noise.")
    return text


if __name__ == "__main__":
    main()

"""Pretrained benchmark: Intel's pedestrian-detection-adas-0002 binarized by FlexBin.

    python bench/pretrained.py            # the full benchmark (make bench-pretrained)
    python bench/pretrained.py --quick    # minutes, tiny budgets: checks the script works

1. Parity: the PyTorch module against the original FP16 IR run by OpenVINO (float32) on all
   Penn-Fudan images at the IR's 384x672: MR^-2 and AP@0.5 of both, and the images whose
   detections scoring >= 0.05 lack a twin (IoU >= 0.95, score within 0.01). Skipped, and
   said so, when the IR is not at `$FLEXBIN_SHARED_MODELS` (default ../shared/models).
2. The float model on the validation split, at 384x672 and at the job's resolution, before
   and after fine-tuning it on the training split (`--float-finetune-iters`).
3. The layer-priority job on the pretrained float model (by default the demo's recipe,
   core/demo.py) over every dense layer: each step's compression ratio, MR^-2, AP@0.5 and
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
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.baselines.hog import HogPeopleDetector
from core.binary import binarize_module
from core.checkpoint import ModelCard
from core.data import read_pennfudan, split_records
from core.demo import ADAS_DEMO
from core.device import add_device_argument, device_from_args
from core.metrics import evaluate_detections
from core.models import load_pretrained
from core.models.adas_reference import (
    OpenVinoReference,
    default_ir_path,
    unmatched_top_detections,
)
from core.paths import default_data_dir
from core.pipeline import PipelineConfig, Target, eligible_layers, run
from core.priority import discover_layers
from core.settings import Settings
from core.train import ImageCache, evaluate_model, predict, train_detector

RESULTS = ROOT / "bench" / "results"
NAME = "pedestrian_adas_0002"
EVERY_LAYER = Target(min_compression_ratio=32.0)  # unreachable: binarize every eligible layer
DEMO_MINUTES = 30


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ms_per_image(detect, images: list[torch.Tensor]) -> float:
    detect(images[:2])  # warm-up
    started = time.perf_counter()
    for image in images:
        detect([image])
    return 1000 * (time.perf_counter() - started) / len(images)


def metrics_row(metrics) -> dict:
    return {"miss_rate": round(metrics.miss_rate, 4), "ap50": round(metrics.ap50, 4)}


def parity(records, cache: ImageCache, limit: int | None) -> dict:
    xml = default_ir_path()
    if not xml.is_file():
        log(f"parity: skipped, no IR at {xml}")
        return {"skipped": f"no IR at {xml}"}
    chosen = records[:limit] if limit else records
    model, _ = load_pretrained(NAME)
    images = [cache.image(r) for r in chosen]
    t0 = time.monotonic()
    reference = OpenVinoReference(xml)(model, images)
    ours = predict(model, images, batch_size=4)
    truth = [r.boxes for r in chosen]
    ref_m, our_m = evaluate_detections(reference, truth), evaluate_detections(ours, truth)
    mismatches = {}
    for record, ref, det in zip(chosen, reference, ours):
        missing = unmatched_top_detections(ref, det, min_score=0.05) + unmatched_top_detections(det, ref, min_score=0.05)
        if missing:
            mismatches[record.name] = missing
    log(f"parity on {len(chosen)} images: OpenVINO MR^-2 {ref_m.miss_rate:.4f} AP {ref_m.ap50:.4f}, torch MR^-2 "
        f"{our_m.miss_rate:.4f} AP {our_m.ap50:.4f}; {len(mismatches)} images differ")
    return {"images": len(chosen), "openvino": metrics_row(ref_m), "torch": metrics_row(our_m),
            "miss_rate_difference": round(abs(ref_m.miss_rate - our_m.miss_rate), 5),
            "images_with_unmatched_top_detections": len(mismatches), "unmatched": mismatches,
            "seconds": round(time.monotonic() - t0, 1)}


def depthwise(model, card: ModelCard, train, val, cache: ImageCache, config: PipelineConfig,
              device: str = "cpu") -> dict:
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
    before = evaluate_model(binary, val, cache=cache, device=device)
    train_detector(binary, train, iterations=config.finetune_iters, batch_size=config.batch_size,
                   learning_rate=config.learning_rate, seed=config.seed, cache=cache, device=device)
    after = evaluate_model(binary, val, cache=cache, device=device)
    log(f"depthwise: {len(dw)} convs, {100 * sum(x.num_params for x in dw) / total:.1f} % of conv weights; all "
        f"binarized: MR^-2 {before.miss_rate:.3f} (no fine-tuning), {after.miss_rate:.3f} after "
        f"{config.finetune_iters} iterations")
    return {"num_depthwise": len(dw), "weight_fraction": round(sum(x.num_params for x in dw) / total, 4),
            "dense_eligible_fraction": round(sum(x.num_params for x in dense) / total, 4),
            "eligible_with_depthwise": len(with_dw),
            "all_depthwise_binarized": metrics_row(before),
            "all_depthwise_binarized_finetuned": metrics_row(after), "finetune_iters": config.finetune_iters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    add_device_argument(parser)
    args = parser.parse_args()
    device = device_from_args(args, parser)
    parity_limit = None
    if args.quick:
        args.input_height, args.input_width = 96, 160
        args.finetune_iters, args.float_finetune_iters, args.layers_per_step = 1, 2, 8
        parity_limit = 6
    started = time.monotonic()
    torch.manual_seed(0)
    records = read_pennfudan(args.data)
    train, val = split_records(records)
    cache = ImageCache()
    log(f"data: {len(records)} images, {len(train)} train / {len(val)} val, from {args.data}")
    report: dict = {"quick": args.quick, "data": {
        "images": len(records), "train_images": len(train), "val_images": len(val),
        "val_pedestrians": sum(len(r.boxes) for r in val)}}

    # 1. Parity with the original IR.
    report["parity"] = parity(records, cache, parity_limit)

    # 2. The float model before and after fine-tuning.
    size = {"input_height": args.input_height, "input_width": args.input_width}
    full, _ = load_pretrained(NAME)
    model, card = load_pretrained(NAME, **size)
    float_rows = {"384x672": metrics_row(evaluate_model(full, val, cache=cache, device=device)),
                  f"{args.input_height}x{args.input_width}": metrics_row(evaluate_model(model, val, cache=cache,
                                                                                        device=device))}
    tuned, _ = load_pretrained(NAME, **size)
    t0 = time.monotonic()
    train_detector(tuned, train, iterations=args.float_finetune_iters, batch_size=8,
                   learning_rate=args.learning_rate, seed=0, cache=cache, device=device)
    tuned_metrics = evaluate_model(tuned, val, cache=cache, device=device)
    report["float"] = {
        "before_finetuning": float_rows,
        "after_finetuning": {**metrics_row(tuned_metrics), "iterations": args.float_finetune_iters,
                             "learning_rate": args.learning_rate, "batch_size": 8,
                             "seconds": round(time.monotonic() - t0, 1)},
        "params": sum(p.numel() for p in model.parameters())}
    log(f"float val: {float_rows}; fine-tuned {args.float_finetune_iters} iterations: "
        f"MR^-2 {tuned_metrics.miss_rate:.4f} AP {tuned_metrics.ap50:.4f}")

    # 3. The layer-priority job over every dense layer.
    config = PipelineConfig(target=EVERY_LAYER, layers_per_step=args.layers_per_step,
                            finetune_iters=args.finetune_iters, learning_rate=args.learning_rate)
    t0 = time.monotonic()
    result = run(model, card, train, val, config, on_step=lambda s: log(
        f"step {s.index} ({len(s.binary_layers)} binary layers) ratio {s.compression_ratio:.2f} "
        f"MR^-2 {s.miss_rate:.3f} AP {s.ap50:.3f} {s.step_seconds:.0f}s"), device=device)
    steps = [{"index": s.index, "layers": s.layers, "num_binary_layers": len(s.binary_layers),
              "compression_ratio": round(s.compression_ratio, 3),
              "binary_layer_compression": s.binary_layer_compression and round(s.binary_layer_compression, 2),
              "miss_rate": round(s.miss_rate, 4), "ap50": round(s.ap50, 4),
              "step_seconds": round(s.step_seconds, 1), "checkpoint_bytes": s.checkpoint_bytes}
             for s in result.steps]
    reached = next((s for s in steps if s["compression_ratio"] >= args.target), None)
    demo_seconds = None if reached is None else sum(s["step_seconds"] for s in steps[: reached["index"] + 1])
    report["job"] = {"config": config.model_dump(mode="json"), "threads": torch.get_num_threads(),
                     "seconds": round(time.monotonic() - t0, 1), "steps": steps,
                     "demo_target": args.target, "demo_job_seconds": demo_seconds and round(demo_seconds, 1)}

    # 4. Depthwise convolutions.
    report["depthwise"] = depthwise(model, card, train, val, cache, config, device=device)

    # 5. Speed on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    val_images = [cache.image(r) for r in val]
    pednet = ModelCard(architecture="flexbin_pednet").build().eval()
    hog = HogPeopleDetector(num_threads=1)
    hog_metrics = evaluate_detections(hog(val_images), [r.boxes for r in val])
    report["speed"] = {
        "threads": 1,
        "adas_384x672_ms": round(ms_per_image(lambda ims: predict(full, ims), val_images), 2),
        f"adas_{args.input_height}x{args.input_width}_ms": round(ms_per_image(lambda ims: predict(model, ims),
                                                                              val_images), 2),
        "pednet_224_ms": round(ms_per_image(lambda ims: predict(pednet, ims), val_images), 2),
        "hog_ms": round(ms_per_image(hog, val_images), 2),
        "hog": metrics_row(hog_metrics)}
    torch.set_num_threads(threads)
    log(f"speed (1 thread, ms/image): {report['speed']}")

    float_mr = steps[0]["miss_rate"]
    at_8x = [s for s in steps if s["compression_ratio"] >= 8.0]
    p = report["parity"]
    goals: dict[str, bool | None] = {
        "module MR^-2 on all images <= 0.18 (no fine-tuning)": None if "skipped" in p else p["torch"]["miss_rate"] <= 0.18,
        "parity: MR^-2 within 0.005 of OpenVINO": None if "skipped" in p else p["miss_rate_difference"] <= 0.005,
        "parity: top detections at IoU >= 0.95, scores within 0.01": None if "skipped" in p
        else p["images_with_unmatched_top_detections"] == 0,
        "fine-tuning the float model does not make it worse (val MR^-2)":
            tuned_metrics.miss_rate <= float_rows[f"{args.input_height}x{args.input_width}"]["miss_rate"],
        "deepest point >= 10x whole-model compression": steps[-1]["compression_ratio"] >= 10,
        "a checkpoint at >= 8x keeps MR^-2 within +0.05 of the float model":
            any(s["miss_rate"] <= float_mr + 0.05 for s in at_8x),
        f"demo job within {DEMO_MINUTES} minutes": demo_seconds is not None and demo_seconds <= DEMO_MINUTES * 60,
    }
    report.update({
        "goals": goals, "total_seconds": round(time.monotonic() - started, 1),
        "environment": {"torch": torch.__version__, "threads": threads, "cpus": os.cpu_count(),
                        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                        "python": platform.python_version(), "machine": platform.machine(),
                        "date": time.strftime("%Y-%m-%d")}})
    write(report, args.out)
    for goal, ok in goals.items():
        log(f"{'not run' if ok is None else 'met' if ok else 'MISSED'}: {goal}")


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "pretrained_quick" if report["quick"] else "pretrained"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    env, d, p, f, job = report["environment"], report["data"], report["parity"], report["float"], report["job"]
    res = f"{job['config']['layers_per_step']} layers per step"
    lines = [
        (f"# pedestrian-detection-adas-0002 in FlexBin ({env['date']}, torch {env['torch']}, {env['threads']} threads, "
        f"{env['cpus']} CPUs, load average at the end {env['load_average_at_end']})"),
        "",
        (f"Penn-Fudan: {d['images']} images, {d['train_images']} train / {d['val_images']} val "
        f"({d['val_pedestrians']} pedestrians in val)."),
        "",
        "## Parity with the original IR (OpenVINO, float32), 384x672",
        "",
    ]
    if "skipped" in p:
        lines.append(f"Skipped: {p['skipped']}.")
    else:
        lines += [
            "| runtime | images | MR^-2 | AP@0.5 |", "|---|---|---|---|",
            f"| OpenVINO, FP16 IR | {p['images']} | {p['openvino']['miss_rate']:.4f} | {p['openvino']['ap50']:.4f} |",
            f"| FlexBin PyTorch module | {p['images']} | {p['torch']['miss_rate']:.4f} | {p['torch']['ap50']:.4f} |",
            "", (f"Images whose detections scoring >= 0.05 lack a twin (IoU >= 0.95, score within 0.01): "
            f"{p['images_with_unmatched_top_detections']}.")]
    before, after = f["before_finetuning"], f["after_finetuning"]
    lines += ["", "## The float model on the validation split", "", "| model | MR^-2 | AP@0.5 |", "|---|---|---|"]
    lines += [f"| pretrained, {size} | {m['miss_rate']:.4f} | {m['ap50']:.4f} |" for size, m in before.items()]
    lines += [(f"| fine-tuned {after['iterations']} iterations (batch {after['batch_size']}, lr {after['learning_rate']:g}) "
              f"at {list(before)[-1]} | {after['miss_rate']:.4f} | {after['ap50']:.4f} |")]
    c = job["config"]
    lines += ["", (f"## Layer priority (inverse depth), {res}, {c['finetune_iters']} iterations per step, "
              f"lr {c['learning_rate']:g}, at {list(before)[-1]}"), "",
              "| step | layers binarized | whole-model compression | MR^-2 | AP@0.5 | step s |", "|---|---|---|---|---|---|"]
    for s in job["steps"]:
        lines.append(f"| {s['index']} | {s['num_binary_layers']} | {s['compression_ratio']:.2f}x | {s['miss_rate']:.3f} "
                     f"| {s['ap50']:.3f} | {s['step_seconds']:.0f} |")
    demo = job["demo_job_seconds"]
    lines += ["", f"The demo's job (the steps until {job['demo_target']:g}x) took "
              + (f"{demo / 60:.1f} min" if demo is not None else "- (target never reached)")
              + f" here, with {job['threads']} torch threads."]
    dw = report["depthwise"]
    lines += ["", "## Depthwise convolutions", "",
              (f"{dw['num_depthwise']} depthwise convs hold {100 * dw['weight_fraction']:.1f} % of the conv weights "
              f"(the dense convs FlexBin binarizes by default: {100 * dw['dense_eligible_fraction']:.1f} %). All of them "
              f"binarized: MR^-2 {dw['all_depthwise_binarized']['miss_rate']:.3f} without fine-tuning, "
              f"{dw['all_depthwise_binarized_finetuned']['miss_rate']:.3f} after {dw['finetune_iters']} iterations "
              f"(float: {job['steps'][0]['miss_rate']:.3f}).")]
    sp = report["speed"]
    lines += ["", "## Milliseconds per image, 1 thread (validation images)", "", "| detector | ms / image |", "|---|---|"]
    lines += [f"| {key.removesuffix('_ms').replace('_', ' ')} | {value:.1f} |" for key, value in sp.items()
              if key.endswith("_ms")]
    lines += ["", f"HOG on the validation split: MR^-2 {sp['hog']['miss_rate']:.3f}, AP {sp['hog']['ap50']:.3f}.",
              "", "## Goals", ""]
    lines += [f"- {'not run' if ok is None else 'met' if ok else '**missed**'}: {goal}" for goal, ok in report["goals"].items()]
    lines += ["", f"Total time: {report['total_seconds'] / 60:.1f} min."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

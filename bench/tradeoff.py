"""Trade-off benchmark: layer-priority binarization vs all-at-once (XNOR/BWN), plus HOG.

    python bench/tradeoff.py            # the full benchmark (make bench)
    python bench/tradeoff.py --quick    # minutes, tiny budgets: checks the script works

Trains FlexBin's default detector on the Penn-Fudan training split, runs layer-priority
binarization with each order over every layer, then the all-at-once baseline with the same
layer sets and the same total fine-tuning iterations at matched compression ratios, and
OpenCV's HOG people detector on the same validation images. Writes
bench/results/tradeoff.{json,md,png}; every goal of the benchmark is checked and printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baselines.hog import HogPeopleDetector
from core.checkpoint import ModelCard, load_model
from core.data import read_pennfudan, split_records
from core.detection_metrics import evaluate_detections
from core.job_spec import PipelineConfig, Target
from core.paths import default_data_dir
from core.pipeline import PipelineResult, run
from core.train import DEFAULT_RECIPE, ImageCache, predict, train_float_detector

RESULTS = ROOT / "bench" / "results"
ALL_LAYERS = Target(min_compression_ratio=32.0)  # unreachable: binarize every layer


def seconds_per_image(detect, images: list[torch.Tensor], repeats: int = 1) -> float:
    detect(images[:2])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            detect([image])
    return (time.perf_counter() - started) / (repeats * len(images))


def step_rows(result: PipelineResult) -> list[dict]:
    return [{"index": s.index, "layers": s.layers, "num_binary_layers": len(s.binary_layers),
             "compression_ratio": round(s.compression_ratio, 3),
             "binary_layer_compression": s.binary_layer_compression and round(s.binary_layer_compression, 2),
             "miss_rate": round(s.miss_rate, 4), "ap50": round(s.ap50, 4),
             "step_seconds": round(s.step_seconds, 1), "checkpoint_bytes": s.checkpoint_bytes}
            for s in result.steps]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script")
    parser.add_argument("--train-iters", type=int, default=DEFAULT_RECIPE["iterations"])
    parser.add_argument("--finetune-iters", type=int, default=60)
    parser.add_argument("--baseline-layers", default="2,4,6,8",
                        help="layer counts at which all-at-once is run (matched ratios)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--float-model", type=Path,
                        help="reuse a float model folder trained by `python -m core train` (its card "
                        "records the training time) instead of training one here")
    parser.add_argument("--learning-rate", type=float, default=PipelineConfig.model_fields["learning_rate"].default,
                        help="fine-tuning learning rate, for both methods")
    parser.add_argument("--tag", default="", help="suffix of the result files (tradeoff_<tag>.*)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    builder_kwargs: dict = {}
    if args.quick:
        args.train_iters, args.finetune_iters, args.baseline_layers = 20, 2, "2,8"
        builder_kwargs = {"width": 8, "input_size": 128}
    started = time.monotonic()
    torch.manual_seed(0)
    train, val = split_records(read_pennfudan(args.data))
    cache = ImageCache()
    val_images = [cache.image(r) for r in val]
    log(f"data: {len(train)} train / {len(val)} val images from {args.data}")

    # 1. The float detector, trained here from scratch.
    t0 = time.monotonic()
    if args.float_model:
        model, card = load_model(args.float_model)
        float_train_s = float(card.provenance["train_seconds"])
        args.train_iters = int(card.provenance["iterations"])
        if card.provenance.get("val_images") != len(val):
            raise SystemExit(f"{args.float_model} was not trained on this split")
        log(f"float model from {args.float_model} (trained {float_train_s:.0f}s there)")
    else:
        model, card = train_float_detector(
            train, val, builder_kwargs=builder_kwargs, iterations=args.train_iters,
            on_iteration=lambda it: it.iteration % 100 == 0 and log(
                f"train {it.iteration}/{it.total} loss {it.loss:.3f}"))
        float_train_s = time.monotonic() - t0
    float_s_img = seconds_per_image(lambda ims: predict(model, ims), val_images)
    log(f"float: MR^-2 {card.metrics['miss_rate']:.3f} AP50 {card.metrics['ap50']:.3f} "
        f"train {float_train_s:.0f}s, {1000 * float_s_img:.1f} ms/img")

    # 2. HOG people detector on the same images.
    hog = HogPeopleDetector(num_threads=torch.get_num_threads())  # same CPU threads as torch
    hog_metrics = evaluate_detections(hog(val_images), [r.boxes for r in val])
    hog_s_img = seconds_per_image(hog, val_images)
    log(f"HOG: MR^-2 {hog_metrics.miss_rate:.3f} AP50 {hog_metrics.ap50:.3f}, {1000 * hog_s_img:.1f} ms/img")

    # 3. Layer priority, each order, over every layer.
    runs: dict[str, dict] = {}
    for order in ("inverse_depth", "forward", "sensitivity"):
        t0 = time.monotonic()
        config = PipelineConfig(target=ALL_LAYERS, order=order, finetune_iters=args.finetune_iters,
                                learning_rate=args.learning_rate)
        result = run(model, card, train, val, config, on_step=lambda s, o=order: log(
            f"{o} step {s.index} {s.layers} ratio {s.compression_ratio:.2f} MR^-2 {s.miss_rate:.3f}"))
        runs[order] = {"seconds": round(time.monotonic() - t0, 1), "steps": step_rows(result)}

    # 4. All-at-once with the same layer sets and iteration budgets as inverse_depth.
    baseline = []
    num_layers = len(runs["inverse_depth"]["steps"]) - 1
    for k in sorted({min(int(k), num_layers) for k in args.baseline_layers.split(",")}):
        t0 = time.monotonic()
        config = PipelineConfig(target=ALL_LAYERS, method="all_at_once", num_layers=k,
                                finetune_iters=args.finetune_iters, learning_rate=args.learning_rate)
        step = run(model, card, train, val, config).steps[-1]
        priority = runs["inverse_depth"]["steps"][k]
        baseline.append({
            "num_layers": k, "fine_tune_iterations": k * args.finetune_iters,
            "compression_ratio": round(step.compression_ratio, 3),
            "miss_rate": round(step.miss_rate, 4), "ap50": round(step.ap50, 4),
            "seconds": round(time.monotonic() - t0, 1),
            "layer_priority_miss_rate": priority["miss_rate"],
            "layer_priority_ap50": priority["ap50"],
            "miss_rate_gain": round(step.miss_rate - priority["miss_rate"], 4),
        })
        log(f"all-at-once {k} layers: ratio {step.compression_ratio:.2f} MR^-2 {step.miss_rate:.3f} "
            f"(layer priority {priority['miss_rate']:.3f})")

    deepest = runs["inverse_depth"]["steps"][-1]
    total_s = time.monotonic() - started
    if args.float_model:  # the training ran elsewhere; count it in
        total_s += float_train_s
    goals = {
        "float beats HOG on MR^-2": card.metrics["miss_rate"] < hog_metrics.miss_rate,
        "float faster than HOG per image": float_s_img < hog_s_img,
        "layer priority no worse than all-at-once at every matched ratio":
            all(b["miss_rate_gain"] >= 0 for b in baseline),
        "deepest point >= 20x whole-model compression": deepest["compression_ratio"] >= 20,
        "binarized layers stored at >= 28x": (deepest["binary_layer_compression"] or 0) >= 28,
        "benchmark within 45 minutes": total_s <= 45 * 60,
    }
    report = {
        "quick": args.quick,
        "float_model_reused": str(args.float_model) if args.float_model else None,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                        "python": platform.python_version(), "machine": platform.machine(),
                        "date": time.strftime("%Y-%m-%d")},
        "data": {"train_images": len(train), "val_images": len(val),
                 "val_pedestrians": sum(len(r.boxes) for r in val)},
        "float": {"architecture": card.architecture, "builder_kwargs": card.builder_kwargs,
                  "params": sum(p.numel() for p in model.parameters()),
                  "miss_rate": round(card.metrics["miss_rate"], 4), "ap50": round(card.metrics["ap50"], 4),
                  "train_iterations": args.train_iters, "train_seconds": round(float_train_s, 1),
                  "ms_per_image": round(1000 * float_s_img, 2)},
        "hog": {"miss_rate": round(hog_metrics.miss_rate, 4), "ap50": round(hog_metrics.ap50, 4),
                "ms_per_image": round(1000 * hog_s_img, 2)},
        "finetune_iters": args.finetune_iters,
        "learning_rate": args.learning_rate,
        "tag": args.tag,
        "layer_priority": runs,
        "all_at_once": baseline,
        "goals": goals,
        "total_seconds": round(total_s, 1),  # includes the float model's training
    }
    write(report, card, args.out)
    for goal, ok in goals.items():
        log(f"{'PASS' if ok else 'MISS'}: {goal}")


def write(report: dict, card: ModelCard, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "tradeoff_quick" if report["quick"] else "tradeoff"
    if report["tag"]:
        name += f"_{report['tag']}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    f, h = report["float"], report["hog"]
    lines = [
        (f"# Trade-off benchmark ({report['environment']['date']}, torch {report['environment']['torch']}, "
        f"{report['environment']['threads']} CPU threads)"),
        "",
        (f"Penn-Fudan: {report['data']['train_images']} train / {report['data']['val_images']} val images "
        f"({report['data']['val_pedestrians']} pedestrians). Fine-tuning: {report['finetune_iters']} "
        f"iterations at learning rate {report['learning_rate']:g} (both methods) "
        "per layer-priority step; all-at-once gets k x that for k layers."),
        "",
        "| detector | MR^-2 | AP@0.5 | ms / image |",
        "|---|---|---|---|",
        f"| HOG people detector (OpenCV) | {h['miss_rate']:.3f} | {h['ap50']:.3f} | {h['ms_per_image']:.1f} |",
        (f"| FlexBin PedNet, float ({f['params'] / 1e6:.2f} M params, trained {f['train_seconds']:.0f} s) "
        f"| {f['miss_rate']:.3f} | {f['ap50']:.3f} | {f['ms_per_image']:.1f} |"),
        "",
        "## Layer priority (inverse depth) vs all-at-once at matched compression",
        "",
        "| layers binarized | compression | MR^-2 layer priority | MR^-2 all-at-once | all-at-once worse by |",
        "|---|---|---|---|---|",
    ]
    for b in report["all_at_once"]:
        lines.append(f"| {b['num_layers']} | {b['compression_ratio']:.1f}x | {b['layer_priority_miss_rate']:.3f} "
                     f"| {b['miss_rate']:.3f} | {b['miss_rate_gain']:+.3f} |")
    lines += ["", "## Every step, each order", "",
              "| order | step | layer | compression | MR^-2 | AP@0.5 | step s |", "|---|---|---|---|---|---|---|"]
    for order, r in report["layer_priority"].items():
        for s in r["steps"]:
            lines.append(f"| {order} | {s['index']} | {', '.join(s['layers']) or '(float)'} | "
                         f"{s['compression_ratio']:.2f}x | {s['miss_rate']:.3f} | {s['ap50']:.3f} | {s['step_seconds']:.1f} |")
    deepest = report["layer_priority"]["inverse_depth"]["steps"][-1]
    lines += ["", (f"Deepest point: {deepest['compression_ratio']:.1f}x whole model, binarized layers stored at "
              f"{deepest['binary_layer_compression']}x."), "", "## Goals", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {goal}" for goal, ok in report["goals"].items()]
    lines += ["", f"Total time: {report['total_seconds'] / 60:.1f} min."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(report, out / f"{name}.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for order, r in report["layer_priority"].items():
        xs = [s["compression_ratio"] for s in r["steps"]]
        ax.plot(xs, [s["miss_rate"] for s in r["steps"]], marker="o", ms=4, label=f"layer priority: {order}")
    b = report["all_at_once"]
    ax.plot([x["compression_ratio"] for x in b], [x["miss_rate"] for x in b], marker="s", ls="--",
            color="black", label="all at once (XNOR/BWN)")
    ax.axhline(report["hog"]["miss_rate"], color="gray", ls=":", label="HOG (float, 1x)")
    ax.set_xscale("log")
    ax.set_xlabel("whole-model compression ratio (float32 bytes / packed bytes)")
    ax.set_ylabel("log-average miss rate MR^-2 (lower is better)")
    ax.set_title("Penn-Fudan val: miss rate vs compression")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

"""FlexBin command line: `python -m core {train,binarize,evaluate,detect,export} ...`.

    python -m core train --out var/models/pednet                 # --device auto|cpu|cuda|cuda:1 (auto: CUDA when present)
    python -m core binarize --model var/models/pednet --out var/runs/r1 --min-compression-ratio 8
    python -m core binarize ... --activation-bits 1        # binary inputs too: 1-bit kernels
    python -m core evaluate --checkpoint var/runs/r1/step_05.safetensors
    python -m core detect --checkpoint var/runs/r1/step_05.safetensors img1.png img2.jpg
    python -m core export --checkpoint var/runs/r1/step_05.safetensors --out step05_openvino.zip
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from core.device import add_device_argument, device_from_args
from core.paths import default_data_dir

if TYPE_CHECKING:
    from torch import nn

    from core.checkpoint import ModelCard
    from core.data import ImageRecord
    from core.pipeline import Progress
    from core.train import IterationReport


def _records(data: Path) -> tuple[list[ImageRecord], list[ImageRecord]]:
    # CLI start-up: torch loads only for the command that runs
    from core.data import read_dataset_dir, split_records

    return split_records(read_dataset_dir(data))


def _load(args: argparse.Namespace) -> tuple[nn.Module, ModelCard]:
    # CLI start-up: torch loads only for the command that runs
    from core.checkpoint import load_model, unpack_checkpoint

    if args.checkpoint:
        return unpack_checkpoint(Path(args.checkpoint).read_bytes())
    return load_model(Path(args.model))


def cmd_train(args: argparse.Namespace) -> None:
    # CLI start-up: torch loads only for the command that runs
    from core.checkpoint import save_model
    from core.train import train_float_detector

    train, val = _records(args.data)
    bar = tqdm(total=args.iterations, desc="train", unit="it")

    def on_iteration(report: IterationReport) -> None:
        bar.update(1)
        if report.iteration % 25 == 0 or report.iteration == report.total:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{report.loss:.3f}")

    kwargs = {k: v for k, v in (("width", args.width), ("input_size", args.input_size)) if v is not None}
    model, card = train_float_detector(train, val, builder_kwargs=kwargs, iterations=args.iterations,
                                       seed=args.seed, on_iteration=on_iteration, device=args.device)
    model.to("cpu")
    bar.close()
    save_model(model, card, args.out)
    print(json.dumps({"out": str(args.out), **card.metrics}, indent=2))


def cmd_binarize(args: argparse.Namespace) -> None:
    # CLI start-up: torch loads only for the command that runs
    from core.checkpoint import load_model
    from core.job_spec import PipelineConfig, Target
    from core.pipeline import StepOutcome, run

    model, card = load_model(Path(args.model))
    train, val = _records(args.data)
    target = Target(min_compression_ratio=args.min_compression_ratio,
                    max_miss_rate_increase=args.max_miss_rate_increase, patience=args.patience)
    config = PipelineConfig(target=target, method=args.method, order=args.order, bits=args.bits,
                            finetune_iters=args.finetune_iters, seed=args.seed,
                            layers_per_step=args.layers_per_step, binarize_depthwise=args.binarize_depthwise,
                            activation_bits=args.activation_bits,
                            **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    completed = []
    for meta in sorted(out.glob("step_*.json")):  # resume: a re-run repeats no finished step
        stem = meta.with_suffix("")
        completed.append(StepOutcome(**json.loads(meta.read_text()),
                                     checkpoint=stem.with_suffix(".safetensors").read_bytes(),
                                     state=stem.with_suffix(".state").read_bytes()))
    if completed:
        print(f"resuming after step {completed[-1].index}", file=sys.stderr)
    bar = tqdm(total=100.0, desc="binarize", unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}")

    def on_step(step: StepOutcome) -> None:
        stem = out / f"step_{step.index:02d}"
        stem.with_suffix(".safetensors").write_bytes(step.checkpoint)
        stem.with_suffix(".state").write_bytes(step.state)
        if step.openvino:
            (out / f"{stem.name}_openvino.zip").write_bytes(step.openvino)
        stem.with_suffix(".json").write_text(step.model_dump_json(indent=2))  # last: marks it done
        latency = "" if step.latency_ms is None else f"  {step.latency_ms:.2f} ms (OpenVINO, 1 thread)"
        tqdm.write(f"step {step.index:2d} {','.join(step.layers) or '(float)':>20} "
                   f"ratio {step.compression_ratio:6.2f}x  MR^-2 {step.miss_rate:.3f}  AP50 {step.ap50:.3f}{latency}")

    def on_progress(p: Progress) -> None:
        bar.n = p.percent
        bar.set_postfix_str(f"step {p.step}/{p.total_steps}")
        bar.refresh()

    result = run(model, card, train, val, config, completed=completed, on_step=on_step,
                 on_progress=on_progress, device=args.device)
    bar.close()
    summary = {"selected_step": result.selected_index, "target_met": result.target_met,
               "steps": [s.model_dump(exclude={"fppi_curve"}) for s in result.steps]}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("selected_step", "target_met")}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    # CLI start-up: torch loads only for the command that runs
    from core.train import evaluate_model

    model, _ = _load(args)
    _, val = _records(args.data)
    metrics = evaluate_model(model, val, device=args.device)
    print(metrics.model_dump_json(indent=2, exclude={"fppi_curve"}))


def cmd_detect(args: argparse.Namespace) -> None:
    # CLI start-up: torch loads only for the command that runs
    from core.data import load_image
    from core.train import predict

    model, _ = _load(args)
    results = []
    for path in tqdm(args.images, desc="detect", unit="img"):
        image = load_image(Path(path), name=str(path))
        pred = predict(model, [image])[0]
        keep = pred["scores"] >= args.score_threshold
        results.append({
            "filename": str(path), "width": image.shape[-1], "height": image.shape[-2],
            "detections": [{"box": [round(v, 1) for v in box], "score": round(score, 4)}
                           for box, score in zip(pred["boxes"][keep].tolist(), pred["scores"][keep].tolist())],
        })
    text = json.dumps({"results": results}, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


def cmd_export(args: argparse.Namespace) -> None:
    # CLI start-up: torch loads only for the command that runs
    from core.checkpoint import load_model, pack_checkpoint
    from core.export.openvino import export_checkpoint, layer_report, measure_latency

    if args.checkpoint:
        data = Path(args.checkpoint).read_bytes()
    else:
        model, card = load_model(Path(args.model))
        data = pack_checkpoint(model, card)
    export = export_checkpoint(data)
    if args.calibrate:
        # CLI start-up: NNCF and the images load only for the command that runs
        from core.export.int8 import int8_export
        from core.train import ImageCache

        train, _ = _records(args.data)
        cache = ImageCache()
        images = [cache.image(r).numpy() for r in sorted(train, key=lambda r: r.name)[: args.calibrate]]
        export = int8_export(export, images, int8_after_1bit=args.int8_after_1bit)
    Path(args.out).write_bytes(export.zip_bytes())
    latency, runs_as = measure_latency(export, threads=1)
    print(json.dumps({"out": str(args.out), "latency_ms_1_thread": round(latency, 3),
                      "layers": layer_report(export, runs_as)}, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def data_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, default=default_data_dir(),
                       help="dataset folder, Penn-Fudan or COCO layout (default: %(default)s)")

    p = sub.add_parser("train", help="train the default detector from scratch")
    data_arg(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--width", type=int, help="PedNet width (default: the registry's)")
    p.add_argument("--input-size", type=int, help="longer image side fed to the net (default: the registry's)")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("binarize", help="layer-priority (or all-at-once) binarization")
    data_arg(p)
    p.add_argument("--model", type=Path, required=True, help="folder with weights.safetensors + card.json")
    p.add_argument("--out", type=Path, required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--min-compression-ratio", type=float)
    target.add_argument("--max-miss-rate-increase", type=float)
    p.add_argument("--patience", type=int, default=None,
                   help="with --max-miss-rate-increase: steps over the budget to go on through (default 0)")
    p.add_argument("--method", choices=["layer_priority", "all_at_once"], default="layer_priority")
    p.add_argument("--order", choices=["inverse_depth", "forward", "sensitivity"], default="inverse_depth")
    p.add_argument("--bits", type=int, default=1)
    p.add_argument("--finetune-iters", type=int, default=200)
    p.add_argument("--learning-rate", type=float, help="fine-tuning learning rate (default: the pipeline's)")
    p.add_argument("--layers-per-step", type=int, default=1, help="consecutive layers binarized per step")
    p.add_argument("--binarize-depthwise", action="store_true", help="also binarize depthwise (grouped) convs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activation-bits", type=int, default=32, choices=[1, 32],
                   help="1: binarized layers take binary inputs too (1-bit kernels once exported)")
    add_device_argument(p)
    p.set_defaults(func=cmd_binarize)

    p = sub.add_parser("export", help="export a checkpoint to an OpenVINO IR zip (runs with plain OpenVINO)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="packed checkpoint (.safetensors)")
    source.add_argument("--model", help="float model folder")
    p.add_argument("--out", type=Path, required=True, help="the zip to write")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="int8 by NNCF (1-bit layers stay 1-bit, as ?format=openvino-int8 serves), "
                        "calibrated on N training images")
    p.add_argument("--int8-after-1bit", action="store_true",
                   help="with --calibrate: the convs a 1-bit conv feeds int8 too (the job option int8_after_1bit)")
    data_arg(p)
    p.set_defaults(func=cmd_export)

    for name, func, text in (("evaluate", cmd_evaluate, "MR^-2 and AP@0.5 on the val split"),
                             ("detect", cmd_detect, "detect pedestrians in image files")):
        p = sub.add_parser(name, help=text)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="packed checkpoint (.safetensors)")
        source.add_argument("--model", help="float model folder")
        if name == "evaluate":
            data_arg(p)
            add_device_argument(p)
        else:
            p.add_argument("images", nargs="+")
            p.add_argument("--score-threshold", type=float, default=0.3)
            p.add_argument("--out", help="write the detections JSON here")
        p.set_defaults(func=func)

    args = parser.parse_args(argv)
    if hasattr(args, "device"):
        args.device = device_from_args(args, parser)
    args.func(args)


if __name__ == "__main__":
    main()

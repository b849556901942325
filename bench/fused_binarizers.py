"""Fused binarizer kernels (issue 19's job time): ms per fine-tuning iteration with the input
binarizers' straight-through estimators compiled by torch.compile (`core.binary.fusion`,
`TrainOptions.fuse_binarizers`, the default) against the same loop unfused, in one run.

    python -m bench.fused_binarizers            # about 3 minutes on 2 idle cores
    python -m bench.fused_binarizers --quick    # a minute: checks the script

The network is the one issue 19's recipe fine-tunes: pedestrian_adas_0002 at 192x336, batch 8,
2 torch threads, its layers binarized as the `inverse_depth` job's plan has them after step k
(1-bit weights and `scale_threshold` binary inputs, 2 layers a step) for k = 10, 16 and 19, the
untrained binarizers started on a first batch. For each k:

- compile s: the first fused call's two iterations, less two unfused ones (what a worker pays
  once; Inductor's on-disk cache makes later processes' compiles shorter);
- ms per iteration, fused and unfused, in alternating rounds of 10 iterations (the median round:
  the machine is shared, and bursts of other load inflate single rounds);
- agreement: the largest difference between the two gradients of every parameter on one batch,
  relative to that gradient's largest magnitude (the sums run in another order, so it is float
  rounding, not zero).

Writes bench/results/fused_binarizers.{json,md} (`_quick` with --quick).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from bench import report
from core.binary import binarize_input, binarize_module
from core.data import split_records
from core.data.readers import read_pennfudan
from core.job_spec import PipelineConfig, Target
from core.paths import default_data_dir
from core.pipeline import (
    binary_input_layers,
    input_binarizer_for,
    layer_quantizer,
    plan_steps,
)
from core.pretrained import load_pretrained
from core.train import ImageCache, TrainOptions, fixed_batches, train_detector

STEPS = (10, 16, 19)
RECIPE = PipelineConfig(target=Target(min_compression_ratio=32.0), activation_bits=1, order="inverse_depth",
                        layers_per_step=2, finetune_iters=200, learning_rate=1e-4, activation_quantizer="scale_threshold",
                        staged_schedule=True, binarizer_lr_multiplier=100, iters_per_mac_percent=100)


def recipe_model(steps: int) -> tuple[nn.Module, int]:
    """pedestrian_adas_0002 at 192x336 binarized as the recipe's plan has it after `steps` steps,
    and its number of binary-input layers."""
    model, card = load_pretrained("pedestrian_adas_0002", input_height=192, input_width=336)
    plan = plan_steps(model, card, RECIPE, None, None, done=[])
    modules = dict(model.named_modules())
    binary_inputs = binary_input_layers(plan, modules, RECIPE)
    layers = [name for step in plan.steps[:steps] for name in step]
    for name in layers:  # as the job's step does it, without the staged schedule's order
        binarize_module(modules[name], layer_quantizer(RECIPE))
        if name in binary_inputs:
            binarize_input(modules[name], input_binarizer_for(modules[name], RECIPE))
    return model, sum(name in binary_inputs for name in layers)


def timed(model: nn.Module, train: list[Any], cache: ImageCache, iterations: int, *, fuse: bool) -> float:
    """Seconds for `iterations` fine-tuning iterations (the job's lr and binarizer lr)."""
    started = time.monotonic()
    train_detector(model, train, iterations=iterations, learning_rate=1e-4, cache=cache, binarizer_lr_multiplier=100,
                   options=TrainOptions(fuse_binarizers=fuse))
    return time.monotonic() - started


def gradient_agreement(model: nn.Module, train: list[Any], cache: ImageCache) -> float:
    """max over parameters of max|g_fused - g_unfused| / max|g_unfused| on one batch of 8."""
    from core.binary.fusion import fusing

    [(images, targets)] = fixed_batches(sorted(train, key=lambda r: r.name)[:8], cache, 8)
    grads = []
    for fuse in (False, True):
        twin = copy.deepcopy(model).train()
        with fusing(fuse):
            loss = sum(twin(images, targets).values())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in twin.named_parameters() if p.grad is not None})
    worst = 0.0
    for name, g in grads[0].items():
        scale = float(g.abs().max())
        if scale > 0:
            worst = max(worst, float((grads[1][name] - g).abs().max()) / scale)
    return worst


def cell(steps: int, train: list[Any], cache: ImageCache, *, rounds: int, iterations: int) -> dict[str, Any]:
    model, binary_inputs = recipe_model(steps)
    unfused_warmup = timed(model, train, cache, 2, fuse=False)  # also starts the binarizers' scales
    fused_warmup = timed(model, train, cache, 2, fuse=True)
    ms: dict[str, list[float]] = {"fused": [], "unfused": []}
    for _ in range(rounds):
        for mode, rounds_ms in ms.items():
            rounds_ms.append(timed(model, train, cache, iterations, fuse=mode == "fused") / iterations * 1000)
    fused, unfused = statistics.median(ms["fused"]), statistics.median(ms["unfused"])
    row = {"steps": steps, "binary_input_layers": binary_inputs, "compile_s": round(fused_warmup - unfused_warmup, 1),
           "fused_ms": [round(v, 1) for v in ms["fused"]], "unfused_ms": [round(v, 1) for v in ms["unfused"]],
           "fused_median_ms": round(fused, 1), "unfused_median_ms": round(unfused, 1),
           "speedup": round(unfused / fused, 3), "gradient_difference": gradient_agreement(model, train, cache)}
    report.log(f"step {steps}: {binary_inputs} binary-input layers, unfused {unfused:.0f} ms, fused {fused:.0f} ms "
               f"({row['speedup']:.2f}x), compile {row['compile_s']} s, gradients within {row['gradient_difference']:.1e}")
    return row


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join([
        (f"# Fused binarizer kernels ({m.get('date', '')}, {report.machine_text(m)}, "
         f"commit {report.commit_text(result.get('git'))})"), "",
        ("Written by `python -m bench.fused_binarizers`. pedestrian_adas_0002 at 192x336, batch 8, 2 torch threads, "
         "binarized as issue 19's `inverse_depth` recipe has it after the step shown (1-bit weights, `scale_threshold` "
         f"binary inputs); {result['rounds']} alternating rounds of {result['iterations']} iterations each; ms per "
         "iteration is the median round. Compile s: the first fused call, less an unfused one of the same length. "
         "Gradient difference: the largest fused-unfused difference of any parameter's gradient on one batch, "
         "relative to that gradient's largest magnitude."), "",
        *_table(result), ""])


def _table(result: dict[str, Any]) -> list[str]:
    return report.markdown_table(result["cells"], [
        ("after step", "steps"), ("binary-input layers", "binary_input_layers"),
        ("unfused ms", lambda r: f"{r['unfused_median_ms']:.0f}"), ("fused ms", lambda r: f"{r['fused_median_ms']:.0f}"),
        ("speed-up", lambda r: f"{r['speedup']:.2f}x"),
        ("rounds unfused / fused", lambda r: f"{', '.join(f'{v:.0f}' for v in r['unfused_ms'])} / "
                                             f"{', '.join(f'{v:.0f}' for v in r['fused_ms'])}"),
        ("compile s", "compile_s"), ("gradient difference", lambda r: f"{r['gradient_difference']:.1e}")],
        align="rrrrrlrr")


def readme_section(results: Any) -> str:
    head = "### Fused binarizer kernels (`make bench-fused_binarizers`, [`fused_binarizers.md`](fused_binarizers.md))"
    return report.section(head, report.load_results("fused_binarizers", results), _readme_lines)


def _readme_lines(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    return [(f"`python -m bench.fused_binarizers` times a fine-tuning iteration of issue 19's recipe with the input "
             f"binarizers compiled by torch.compile and without, in alternating rounds ({m.get('date', '?')}, "
             f"{report.machine_text(m)}; median ms per iteration, batch 8, 2 threads):"), "", *_table(result)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fused_binarizers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one network, 2 rounds of 2 iterations: checks the script")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per round (default 10)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps, rounds, iterations = ((4,), 2, 2) if args.quick else (STEPS, args.rounds, args.iterations)
    train, _ = split_records(read_pennfudan(default_data_dir()))
    cache = ImageCache()
    started = time.monotonic()
    cells = [cell(k, train, cache, rounds=rounds, iterations=iterations) for k in steps]
    result = {"machine": report.machine(threads=torch.get_num_threads()), "git": report.git_commit(),
              "rounds": rounds, "iterations": iterations, "cells": cells,
              "seconds": round(time.monotonic() - started, 1)}
    name = "fused_binarizers_quick" if args.quick else "fused_binarizers"
    path = report.write_results(name, result, markdown(result))
    report.log(f"wrote {path}")


if __name__ == "__main__":
    main()

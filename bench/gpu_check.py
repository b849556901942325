#!/usr/bin/env python3
"""FlexBin's fine-tuning on a CUDA device (issue 18): where an iteration's time goes with the old
and the new training loop, a demo-style job at 192x336 and at 384x672, CPU/CUDA parity of the float
model, and bf16 autocast against float32 on the same job.

    cd <FlexBin checkout> && python -m bench.gpu_check --data PENNFUDAN_DIR --out gpu_check.json

PENNFUDAN_DIR is the Penn-Fudan folder (PNGImages/, Annotation/). Runs within 8 minutes (`--budget`,
default 450 s, shared by the phases in order of importance; each phase is time-boxed). Every result
is appended as one JSON line to OUT with the suffix .jsonl as soon as it exists, and OUT (one JSON
document: every phase, and the issue's goals checked) is rewritten after each phase, so a run cut
off still leaves what it measured. Nothing here imports OpenVINO (the jobs run with
`export_openvino=False`) or the service (no pydantic-settings, FastAPI, Celery, SQLAlchemy).

Needs torch, torchvision, numpy, pillow, safetensors, tqdm and pydantic (with pydantic-core,
annotated-types, typing-inspection, typing-extensions).

Phases:
1. env: versions, the GPU, host cores, the loader workers the new loop picks.
2. parity: validation MR^-2 of the float pedestrian_adas_0002 (192x336) evaluated on the CPU and
   on the device.
3. iteration: ms per iteration, data wait against compute, old loop (a8b4147's, kept in
   bench/training_loops.py) and new loop (`core.train.train_detector`) in the same run: ADAS 192x336
   at batch 8 and 32 (the new loop also with 0 loader workers and with bf16), ADAS 384x672 batch
   32, PedNet batch 8.
4. job_192x336: the demo's job (one layer per step, 60 iterations per step, lr 1e-4, target 8x),
   time-boxed: every finished step with its seconds and validation MR^-2.
5. job_384x672: 300 iterations per step, target 14x, time-boxed (as measured before issue 18).
6. job_192x336_bf16: phase 4 with bf16 autocast, the same time box: MR^-2 step by step against
   phase 4 (is bf16 equal within noise?).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.training_loops import OldImageCache, build_model, merge, time_loop
from core.data import ImageRecord, read_dataset_dir, split_records
from core.device import resolve_device
from core.job_spec import PipelineConfig, Target
from core.paths import REPO_ROOT as ROOT
from core.pipeline import Cancelled, run
from core.pretrained import load_pretrained
from core.train import ImageCache, TrainOptions, evaluate_model

CPU_RESULTS = ROOT / "bench" / "results" / "train_speed.json"


class Check:
    """The run: its data (decoded once), its time budget, and the records written so far."""

    def __init__(self, out: Path, budget_s: float, device: str, train: list[ImageRecord],
                 val: list[ImageRecord]) -> None:
        self.out, self.lines = out, out.with_suffix(".jsonl")
        self.device, self.train, self.val = device, train, val
        self.cache, self.old_cache = ImageCache(), OldImageCache()
        for r in train:
            self.cache.pixels(r)
            self.old_cache.image(r)
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        self.records: list[dict[str, Any]] = []
        out.parent.mkdir(parents=True, exist_ok=True)
        self.lines.write_text("")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, record: dict[str, Any]) -> None:
        record = {**record, "t": round(time.monotonic() - self.started, 1)}
        self.records.append(record)
        with self.lines.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record)[:600], flush=True)

    def phase(self, name: str, budget_s: float, minimum_s: float, fn: Callable[[Check, float], None]) -> None:
        """Run `fn(self, seconds)` with at most `budget_s` (less if the run's budget is nearly spent);
        skipped below `minimum_s`; an error is recorded and the next phase runs."""
        seconds = min(budget_s, self.left())
        if seconds < minimum_s:
            self.emit({"phase": name, "status": "skipped", "reason": f"{self.left():.0f} s left of the budget"})
            return
        t0 = time.monotonic()
        try:
            fn(self, seconds)
        except Exception as exc:  # noqa: BLE001 - the next phase still runs
            self.emit({"phase": name, "status": "error", "error": repr(exc), "traceback": traceback.format_exc()[-3000:]})
        finally:
            self.emit({"phase": name, "status": "done", "seconds": round(time.monotonic() - t0, 1)})
            self.write()

    def write(self) -> None:
        self.out.write_text(json.dumps({"records": self.records, "goals": goals(self.records)}, indent=2) + "\n")


def goals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's CUDA goals, from what was measured (and bench/results/train_speed.json)."""
    cells = [r for r in records if r.get("phase") == "iteration" and "ms_per_iteration" in r]

    def cell(model: str, batch: int, loop: str, variant: str = "default") -> dict[str, Any] | None:
        return next((c for c in cells if (c["model"], c["batch"], c["loop"], c["variant"]) == (model, batch, loop, variant)),
                    None)

    out: dict[str, Any] = {}
    old, new = cell("adas_192x336", 8, "old"), cell("adas_192x336", 8, "new")
    if old and new:
        speedup = old["ms_per_iteration"] / new["ms_per_iteration"]
        out["new_vs_old_192x336_batch8"] = {"old_ms": old["ms_per_iteration"], "new_ms": new["ms_per_iteration"],
                                            "speedup": round(speedup, 2), "goal": ">= 5x", "met": speedup >= 5}
    new_cells = [c for c in cells if c["loop"] == "new" and c["variant"] == "default"]
    if new_cells:
        worst = max(new_cells, key=lambda c: c["data_wait_share"])
        out["data_wait_share_new_loop"] = {"worst": worst["data_wait_share"], "cell": f"{worst['model']} b{worst['batch']}",
                                           "goal": "<= 10 %", "met": worst["data_wait_share"] <= 0.10}
    big = cell("adas_384x672", 32, "new")
    if big and CPU_RESULTS.is_file():
        cpu = next((r for r in json.loads(CPU_RESULTS.read_text()).get("cells", [])
                    if (r["model"], r["batch"], r["device"], r["threads"], r["loop"], r["loader_workers"])
                    == ("adas_384x672", 32, "cpu", 2, "new", "auto")), None)
        if cpu:
            ratio = cpu["ms_per_iteration"] / big["ms_per_iteration"]
            out["cuda_vs_2core_cpu_384x672_batch32"] = {"cpu_ms": cpu["ms_per_iteration"], "cuda_ms": big["ms_per_iteration"],
                                                       "ratio": round(ratio, 1), "goal": ">= 10x", "met": ratio >= 10}
    fp32 = next((r for r in records if r.get("phase") == "job_192x336" and "steps" in r), None)
    bf16 = next((r for r in records if r.get("phase") == "job_192x336_bf16" and "steps" in r), None)
    if fp32 and bf16:
        pairs = [(a["mr"], b["mr"]) for a, b in zip(fp32["steps"], bf16["steps"]) if a["i"] == b["i"] and a["i"] > 0]
        if pairs:
            out["bf16_vs_fp32_job_192x336"] = {
                "steps_compared": len(pairs), "mean_abs_mr_difference": round(sum(abs(a - b) for a, b in pairs) / len(pairs), 4),
                "mean_mr_difference_bf16_minus_fp32": round(sum(b - a for a, b in pairs) / len(pairs), 4),
                "note": "step-to-step noise of the 32-image validation MR^-2 is about +-0.05"}
    return out


ITERATION_PLAN: list[tuple[str, int, str, str, dict[str, Any]]] = [  # (model, batch, loop, variant, options)
    ("adas_192x336", 8, "old", "default", {}), ("adas_192x336", 8, "new", "default", {}),
    ("adas_192x336", 8, "new", "0 loader workers", {"workers": 0}),
    ("adas_192x336", 8, "new", "bf16", {"bf16": True}),
    ("adas_192x336", 32, "old", "default", {}), ("adas_192x336", 32, "new", "default", {}),
    ("adas_384x672", 32, "old", "default", {}), ("adas_384x672", 32, "new", "default", {}),
    ("adas_384x672", 32, "new", "bf16", {"bf16": True}),
    ("pednet", 8, "old", "default", {}), ("pednet", 8, "new", "default", {}),
]


def environment(check: Check) -> None:
    on_cuda = torch.device(check.device).type == "cuda"
    check.emit({"phase": "env", "torch": torch.__version__, "cuda": torch.version.cuda, "device": check.device,
                "gpu": torch.cuda.get_device_name(0) if on_cuda else None, "host_cpus": len(os.sched_getaffinity(0)),
                "loader_workers": TrainOptions().workers(check.device), "python": sys.version.split()[0],
                "train_images": len(check.train), "val_images": len(check.val)})


def parity(check: Check, _seconds: float) -> None:
    """Validation MR^-2 of the float model evaluated on the CPU and on the device."""
    model = build_model("adas_192x336")
    t0 = time.monotonic()
    cpu = evaluate_model(model, check.val, cache=check.cache, device="cpu")
    t1 = time.monotonic()
    dev = evaluate_model(model, check.val, cache=check.cache, device=check.device)
    check.emit({"phase": "parity", "cpu_mr": round(cpu.miss_rate, 5), "device_mr": round(dev.miss_rate, 5),
                "cpu_ap50": round(cpu.ap50, 5), "device_ap50": round(dev.ap50, 5),
                "cpu_eval_s": round(t1 - t0, 1), "device_eval_s": round(time.monotonic() - t1, 1),
                "equal_within_0.005": abs(cpu.miss_rate - dev.miss_rate) <= 0.005})


def iteration(check: Check, seconds: float) -> None:
    """ms per iteration of each ITERATION_PLAN cell, while the phase's time box lasts."""
    deadline = time.monotonic() + seconds
    models: dict[str, Any] = {}
    for name, batch, loop, variant, extra in ITERATION_PLAN:
        cell = {"phase": "iteration", "model": name, "batch": batch, "loop": loop, "variant": variant}
        if deadline - time.monotonic() < 15:
            check.emit({**cell, "status": "skipped (phase time box)"})
            continue
        model = models.setdefault(name, build_model(name))
        result = time_loop(loop, model, check.train, batch_size=batch, device=check.device, budget_s=4.0, min_iters=3,
                           old_cache=check.old_cache, cache=check.cache, **extra)
        check.emit({**cell, "loader_workers": extra.get("workers", TrainOptions().workers(check.device))
                    if loop == "new" else 0, **merge([result])})


def job(name: str, h: int, w: int, ratio: float, iters: int, bf16: bool = False) -> Callable[[Check, float], None]:
    """A phase: a binarization job on pedestrian_adas_0002 at h x w, stopped at the time box."""
    def run_job(check: Check, seconds: float) -> None:
        model, card = load_pretrained("pedestrian_adas_0002", input_height=h, input_width=w)
        config = PipelineConfig(target=Target(min_compression_ratio=ratio), finetune_iters=iters,
                                learning_rate=1e-4, layers_per_step=1, seed=0)
        deadline = time.monotonic() + seconds
        steps: list[dict[str, Any]] = []

        def on_step(s: Any) -> None:
            steps.append({"i": s.index, "layers": list(s.layers), "cr": round(s.compression_ratio, 2),
                          "mr": round(s.miss_rate, 4), "ap": round(s.ap50, 4), "s": round(s.step_seconds, 2)})

        started, status = time.monotonic(), "finished"
        try:
            run(model, card, check.train, check.val, config, on_step=on_step, device=check.device,
                export_openvino=False, should_stop=lambda: time.monotonic() > deadline,
                train_options=TrainOptions(bf16=bf16))
        except Cancelled:
            status = "time-boxed"
        fine_tuned = [s["s"] for s in steps if s["i"] > 0]
        check.emit({"phase": name, "status": status, "wall_s": round(time.monotonic() - started, 1), "input": [h, w],
                    "bf16": bf16, "config": config.model_dump(mode="json"), "steps": steps,
                    "mean_step_s": round(sum(fine_tuned) / len(fine_tuned), 2) if fine_tuned else None,
                    "ms_per_finetune_iteration_incl_eval": round(1000 * sum(fine_tuned) / (len(fine_tuned) * iters), 1)
                    if fine_tuned else None})
    return run_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="Penn-Fudan folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for everything (default 450)")
    args = ap.parse_args()
    train, val = split_records(read_dataset_dir(args.data))
    check = Check(args.out, args.budget, resolve_device(args.device, what="--device"), train, val)
    environment(check)
    check.phase("parity", 60, 10, parity)
    check.phase("iteration", 150, 30, iteration)
    check.phase("job_192x336", 70, 20, job("job_192x336", 192, 336, 8.0, 60))
    check.phase("job_384x672", 90, 30, job("job_384x672", 384, 672, 14.0, 300))
    check.phase("job_192x336_bf16", 70, 20, job("job_192x336_bf16", 192, 336, 8.0, 60, bf16=True))
    check.cache.close()
    check.emit({"phase": "end", "goals": goals(check.records)})
    check.write()


if __name__ == "__main__":
    main()

"""Training-loop speed (issue 18): ms per fine-tuning iteration, data wait against compute, the
old loop against the new one in the same run.

    python -m bench.train_speed                    # about 10-15 minutes on 2 idle cores
    python -m bench.train_speed --quick            # a minute: checks the script
    python -m bench.train_speed --demo-only        # the demo's job only (15-25 min), merged into the results
    python -m bench.train_speed --demo             # both
    python -m bench.train_speed --device cuda      # the cells on CUDA too (threads do not apply there)

Cells: pedestrian_adas_0002 at 192x336 and 384x672 and PedNet (flexbin_pednet, registry
defaults), batch 8 and 32, on the CPU at 1 and 2 torch threads (and on CUDA when asked or
present); each cell times the old loop, then the new one, on the same images and the same model.

- The old loop is the training loop as it was at commit a8b4147 (`core.train.train_detector`
  with `_batches`): torchvision v2 transforms per sample on full-resolution images in the main
  process, the detector resizing inside its forward, the loss read every iteration. It is kept
  here, bench-local (`old_train_loop`), so that later changes to core do not change what the
  new loop is compared with; bench/gpu_check.py imports it from here.
- The new loop is `core.train.train_detector` (its default `TrainOptions`: loader workers
  chosen for the device, channels_last).
- ms per iteration is the wall time of the timed call over its iterations; data wait is the
  time the loop waited for batches (for the new loop, `IterationReport.data_wait`), compute the
  rest. Each cell first runs a short warm-up call (image decoding, loader start-up), untimed.

`--demo`: the demo's job (core/demo.py: pedestrian_adas_0002 at 192x336, one layer per step,
60 iterations per step, lr 1e-4, target 8x; OpenVINO export of every step as the worker does
when OpenVINO is installed): its wall time and its selected checkpoint's validation MR^-2,
against the figures measured before this loop (bench/results/pretrained.md: 9.91x at 0.106,
22.9 min until 8x).
Writes bench/results/train_speed.{json,md} (`_quick` with --quick).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.data import ImageRecord, load_image, read_dataset_dir, split_records
from core.device import add_device_argument, device_from_args
from core.paths import REPO_ROOT, default_data_dir
from core.train import ImageCache, train_detector

RESULTS = REPO_ROOT / "bench" / "results"
# The demo's job before issue 18 (bench/results/pretrained.md, README "The demo").
DEMO_BEFORE = {"selected_compression_ratio": 9.91, "selected_miss_rate": 0.106, "minutes_until_target": 22.9}
CELL_MODELS = ("adas_192x336", "adas_384x672", "pednet")
GOAL_SPEEDUP, GOAL_DATA_SHARE = 1.5, 0.10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the old loop (a8b4147), bench-local ----------------------------------------------------
def old_train_transforms() -> Any:
    """a8b4147's `core.data.train_transforms`: the v2 pipeline, per sample, full resolution."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: 0.5, "others": 0}, side_range=(1.0, 1.5), p=0.3),
        v2.RandomApply([v2.RandomIoUCrop(min_scale=0.5)], p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0),
    ])


class OldImageCache:
    """a8b4147's `core.train.ImageCache`: uint8 in memory, converted to float on every access."""

    def __init__(self) -> None:
        self._images: dict[str, Tensor] = {}

    def image(self, record: ImageRecord) -> Tensor:
        if record.name not in self._images:
            image = load_image(record.image, name=record.name)
            self._images[record.name] = (image * 255).round().to(torch.uint8)
        return self._images[record.name].float() / 255


def _old_sample(record: ImageRecord, transforms: Any, cache: OldImageCache) -> tuple[Tensor, dict[str, Tensor]]:
    """a8b4147's `DetectionDataset.__getitem__` with the cache as its loader."""
    from torchvision import tv_tensors

    image = cache.image(record)
    boxes = tv_tensors.BoundingBoxes(record.boxes.float(), format="XYXY", canvas_size=tuple(image.shape[-2:]))
    target: dict[str, Any] = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
    image, target = transforms(image, target)
    return (image.as_subclass(torch.Tensor).float(),
            {"boxes": target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
             "labels": target["labels"].as_subclass(torch.Tensor).long()})


def old_batches(records: Sequence[ImageRecord], batch_size: int, generator: torch.Generator,
                cache: OldImageCache) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """a8b4147's `core.train._batches`."""
    transforms = old_train_transforms()
    while True:
        order = torch.randperm(len(records), generator=generator).tolist()
        for start in range(0, max(1, len(order) - batch_size + 1), batch_size):
            items = [_old_sample(records[i], transforms, cache) for i in order[start:start + batch_size]]
            yield [img for img, _ in items], [tgt for _, tgt in items]


def old_train_loop(model: nn.Module, records: Sequence[ImageRecord], *, iterations: int, batch_size: int = 8,
                   learning_rate: float = 1e-3, seed: int = 0, warmup: int = 0, cache: OldImageCache | None = None,
                   on_iteration: Callable[[int, float, float, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, device: str = "cpu") -> float:
    """a8b4147's `core.train.train_detector`, plus the time spent waiting for batches:
    `on_iteration(iteration, seconds, data_wait_seconds, loss)` (1-based, since the call started)."""
    cache = cache or OldImageCache()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, iterations - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start, waited, loss_value = time.monotonic(), 0.0, float("nan")
    batches = old_batches(records, batch_size, generator, cache)
    for i in range(iterations):
        if should_stop is not None and should_stop():
            break
        fetch = time.monotonic()
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        waited += time.monotonic() - fetch
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())  # type: ignore[union-attr]
        if on_iteration is not None:
            on_iteration(i + 1, time.monotonic() - start, waited, loss_value)
    model.eval()
    return loss_value


# -- models ----------------------------------------------------------------------------------
def build_model(name: str) -> nn.Module:
    """A fresh detector for a cell: pedestrian_adas_0002 (bundled weights) at an input size, or
    PedNet at the registry's defaults (untrained: speed does not depend on the weights)."""
    if name.startswith("adas_"):
        from core.pretrained import load_pretrained

        h, w = (int(v) for v in name.removeprefix("adas_").split("x"))
        model, _ = load_pretrained("pedestrian_adas_0002", input_height=h, input_width=w)
        return model
    if name == "pednet":
        from core.checkpoint import ModelCard

        torch.manual_seed(0)
        return ModelCard(architecture="flexbin_pednet").build()
    raise ValueError(f"unknown cell model {name!r}")


# -- timing ----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_loop(loop: str, model: nn.Module, records: Sequence[ImageRecord], *, batch_size: int, device: str,
              budget_s: float, min_iters: int = 3, max_iters: int = 200, warmup_iters: int = 2,
              old_cache: OldImageCache | None = None, cache: ImageCache | None = None,
              workers: int | None = None, bf16: bool = False) -> dict[str, Any]:
    """ms per iteration of `loop` ("old" or "new") on a copy of `model`: a warm-up call, then a
    call that stops after `budget_s` (at least `min_iters` iterations). Mean (wall time of the
    call / iterations, after a device sync) and median of the per-iteration host times (on the
    CPU the robust figure on a shared machine; on CUDA the host runs ahead, so use the mean)."""
    from core.train import TrainOptions

    model = copy.deepcopy(model)
    options = TrainOptions(loader_workers=workers, bf16=bf16)
    marks: list[tuple[float, float]] = []  # (seconds, data wait) since the call started

    def run(iterations: int, stop: Callable[[], bool] | None) -> None:
        if loop == "old":
            def on_old(_i: int, seconds: float, waited: float, _loss: float) -> None:
                marks.append((seconds, waited))

            old_train_loop(model, records, iterations=iterations, batch_size=batch_size, learning_rate=1e-4,
                           seed=1, cache=old_cache, on_iteration=on_old, should_stop=stop, device=device)
        else:
            def on_new(report: Any) -> None:
                marks.append((report.seconds, report.data_wait))

            train_detector(model, records, iterations=iterations, batch_size=batch_size, learning_rate=1e-4,
                           seed=1, cache=cache, on_iteration=on_new, should_stop=stop, device=device,
                           options=options)

    if warmup_iters:
        run(warmup_iters, None)
    _sync(device)
    marks.clear()
    started = time.monotonic()
    run(max_iters, lambda: len(marks) >= min_iters and time.monotonic() - started > budget_s)
    _sync(device)
    wall = time.monotonic() - started
    n = len(marks)
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip([(0.0, 0.0), *marks[:-1]], marks)]
    ms = 1000 * wall / n
    data_ms = 1000 * marks[-1][1] / n
    median_ms = 1000 * statistics.median(dt for dt, _ in steps)
    median_data = 1000 * statistics.median(dw for _, dw in steps)
    return {"iterations": n, "ms_per_iteration": round(ms, 1), "data_wait_ms": round(data_ms, 1),
            "compute_ms": round(ms - data_ms, 1), "data_wait_share": round(data_ms / ms, 3),
            "median_ms": round(median_ms, 1), "median_data_wait_ms": round(median_data, 1),
            "raw": {"wall": wall, "waited": marks[-1][1], "steps": steps}}


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several `time_loop` results of one variant (rounds alternating with the other loop) as one."""
    n = sum(r["iterations"] for r in results)
    wall = sum(r["raw"]["wall"] for r in results)
    waited = sum(r["raw"]["waited"] for r in results)
    steps = [s for r in results for s in r["raw"]["steps"]]
    ms, data_ms = 1000 * wall / n, 1000 * waited / n
    return {"iterations": n, "rounds": len(results), "ms_per_iteration": round(ms, 1), "data_wait_ms": round(data_ms, 1),
            "compute_ms": round(ms - data_ms, 1), "data_wait_share": round(data_ms / ms, 3),
            "median_ms": round(1000 * statistics.median(dt for dt, _ in steps), 1),
            "median_data_wait_ms": round(1000 * statistics.median(dw for _, dw in steps), 1)}


def speed_cells(train: Sequence[ImageRecord], *, devices: Sequence[str], threads: Sequence[int],
                models: Sequence[str], batches: Sequence[int], budget_s: float, rounds: int = 3,
                extra_workers: bool = True, emit: Callable[[dict[str, Any]], None] | None = None
                ) -> list[dict[str, Any]]:
    """Old and new loop for every (model, batch, device, threads) cell, in `rounds` alternating
    rounds of `budget_s / rounds` each (so that a burst of load on a shared machine hits both; a
    warm-up iteration in the first round only);
    with `extra_workers`, the new loop with 1 loader worker too on the CPU at the most threads,
    for the first model and batch (is a worker worth it on this machine?)."""
    rows: list[dict[str, Any]] = []
    old_cache, cache = OldImageCache(), ImageCache()
    for r in train:  # decode once, outside any timing
        old_cache.image(r)
        cache.pixels(r)
    for name in models:
        base = build_model(name)
        for batch in batches:
            for device in devices:
                cpu = torch.device(device).type == "cpu"
                for n_threads in (threads if cpu else [torch.get_num_threads()]):
                    torch.set_num_threads(n_threads)
                    variants: list[tuple[str, int | None]] = [("old", None), ("new", None)]
                    if extra_workers and cpu and n_threads == max(threads) and name == models[0] and batch == batches[0]:
                        variants.append(("new", 1))
                    results: dict[tuple[str, int | None], list[dict[str, Any]]] = {v: [] for v in variants}
                    for round_ in range(rounds):
                        for loop, workers in variants:
                            results[(loop, workers)].append(time_loop(
                                loop, base, train, batch_size=batch, device=device, budget_s=budget_s / rounds,
                                min_iters=1, warmup_iters=1 if round_ == 0 else 0, old_cache=old_cache, cache=cache,
                                workers=workers))
                    for (loop, workers), parts in results.items():
                        row = {"model": name, "batch": batch, "device": device, "threads": n_threads if cpu else None,
                               "loop": loop, "loader_workers": workers if workers is not None else
                               ("auto" if loop == "new" else None), **merge(parts)}
                        rows.append(row)
                        log(json.dumps(row))
                        if emit is not None:
                            emit(row)
    cache.close()
    return rows


# -- the demo's job ---------------------------------------------------------------------------
def demo_job(train: Sequence[ImageRecord], val: Sequence[ImageRecord], *, device: str, export: bool) -> dict[str, Any]:
    """The demo's job as the worker runs it; its wall time and its selected checkpoint."""
    from core.pipeline import run
    from service.demo import demo_float_model, demo_pipeline_config
    from service.settings import Settings

    settings = Settings(demo_model="pedestrian_adas_0002")
    started = time.monotonic()
    model, card = demo_float_model(settings, train, val, device=device)
    config = demo_pipeline_config(settings)
    steps: list[dict[str, Any]] = []

    def on_step(s: Any) -> None:
        steps.append({"index": s.index, "compression_ratio": round(s.compression_ratio, 3),
                      "miss_rate": round(s.miss_rate, 4), "ap50": round(s.ap50, 4),
                      "step_seconds": round(s.step_seconds, 1),
                      "at_s": round(time.monotonic() - started, 1)})
        log(f"demo step {s.index}: {s.compression_ratio:.2f}x MR^-2 {s.miss_rate:.3f} {s.step_seconds:.0f}s")

    result = run(model, card, train, val, config, on_step=on_step, device=device, export_openvino=export)
    wall = time.monotonic() - started
    selected = steps[result.selected_index]
    return {"config": config.model_dump(mode="json"), "device": device, "threads": torch.get_num_threads(),
            "export_openvino": export, "wall_seconds": round(wall, 1), "wall_minutes": round(wall / 60, 2),
            "target_met": result.target_met, "selected": selected, "float_miss_rate": steps[0]["miss_rate"],
            "steps": steps, "before": DEMO_BEFORE,
            "miss_rate_delta_vs_before": round(selected["miss_rate"] - DEMO_BEFORE["selected_miss_rate"], 4)}


# -- report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg()}


def speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old / new ms per iteration for each cell (the new loop at its default workers): on the
    median iteration and on the mean."""
    out = []
    for new in rows:
        if new["loop"] != "new" or new["loader_workers"] != "auto":
            continue
        old = next((r for r in rows if r["loop"] == "old" and all(r[k] == new[k] for k in
                                                                  ("model", "batch", "device", "threads"))), None)
        if old is not None:
            out.append({k: new[k] for k in ("model", "batch", "device", "threads")}
                       | {"old_median_ms": old["median_ms"], "new_median_ms": new["median_ms"],
                          "speedup_median": round(old["median_ms"] / new["median_ms"], 2),
                          "old_mean_ms": old["ms_per_iteration"], "new_mean_ms": new["ms_per_iteration"],
                          "speedup_mean": round(old["ms_per_iteration"] / new["ms_per_iteration"], 2),
                          "old_data_wait_share": old["data_wait_share"],
                          "new_data_wait_share": new["data_wait_share"]})
    return out


def goals(report: dict[str, Any]) -> list[str]:
    lines = []
    ups = report.get("speedups", [])
    key = next((u for u in ups if u["model"] == "adas_192x336" and u["batch"] == 8 and u["device"] == "cpu"
                and u["threads"] == 2), None)
    if key:
        met = "met" if key["speedup_median"] >= GOAL_SPEEDUP else "missed"
        lines.append(f"- CPU, 2 threads, ADAS 192x336 batch 8: {key['old_median_ms']:.0f} -> {key['new_median_ms']:.0f} "
                     f"ms per iteration (median), {key['speedup_median']:.2f}x; on the mean {key['old_mean_ms']:.0f} -> "
                     f"{key['new_mean_ms']:.0f} ms, {key['speedup_mean']:.2f}x (goal >= {GOAL_SPEEDUP}x): {met}.")
    new_rows = [r for r in report.get("cells", []) if r["loop"] == "new" and r["loader_workers"] == "auto"]
    if new_rows:
        worst = max(new_rows, key=lambda r: r["data_wait_share"])
        over = [r for r in new_rows if r["data_wait_share"] > GOAL_DATA_SHARE]
        lines.append(f"- Data wait of the new loop at most {GOAL_DATA_SHARE:.0%} of the iteration: "
                     f"{'met' if not over else 'missed'} in {len(new_rows) - len(over)} of {len(new_rows)} cells "
                     f"(worst {worst['data_wait_share']:.1%}: {worst['model']}, batch {worst['batch']}, "
                     f"{worst['device']}, {worst['threads']} threads).")
    demo = report.get("demo")
    if demo:
        sel = demo["selected"]
        ok = sel["compression_ratio"] >= 8 and demo["miss_rate_delta_vs_before"] <= 0.02
        lines.append(f"- Demo job: selected step {sel['index']} at {sel['compression_ratio']:.2f}x, val MR^-2 "
                     f"{sel['miss_rate']:.3f} (before: {DEMO_BEFORE['selected_compression_ratio']}x at "
                     f"{DEMO_BEFORE['selected_miss_rate']}; goal >= 8x within +0.02): {'met' if ok else 'missed'}; "
                     f"wall time {demo['wall_minutes']:.1f} min (before: {DEMO_BEFORE['minutes_until_target']} min "
                     f"until the target; goal <= 15 min: {'met' if demo['wall_minutes'] <= 15 else 'missed'}).")
    return lines


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    m = report.get("machine", {})
    lines = [(f"# Training-loop speed (issue 18; {m.get('date', '')}, torch {m.get('torch', '')}, "
             f"{m.get('cpus', '')} CPUs: {m.get('cpu_model', '')}, commit {str(m.get('commit', ''))[:10]})"), "",
             ("Written by `python -m bench.train_speed`. The old loop is a8b4147's (v2 transforms per sample at full "
             "resolution in the main process, resize inside the model, loss read every iteration); the new one is "
             "`core.train.train_detector`. ms per iteration = wall time of the timed call / iterations; data wait = "
             "time the loop waited for its batch (the new loop's photometric distortion runs on the batch, as "
             "compute). Each cell alternates old and new in three rounds; on this shared 2-core machine the median "
             "iteration is the robust figure (bursts of other users' load inflate the mean)."), ""]
    if report.get("goals"):
        lines += ["## Goals", "", *report["goals"], ""]
    if report.get("speedups"):
        lines += ["## Old against new", "", ("| model | batch | device | threads | old ms (median / mean) | "
                  "new ms (median / mean) | speed-up (median / mean) | data wait old / new |"),
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for u in report["speedups"]:
            lines.append(f"| {u['model']} | {u['batch']} | {u['device']} | {u['threads'] or '-'} | "
                         f"{u['old_median_ms']:.0f} / {u['old_mean_ms']:.0f} | {u['new_median_ms']:.0f} / "
                         f"{u['new_mean_ms']:.0f} | {u['speedup_median']:.2f}x / {u['speedup_mean']:.2f}x | "
                         f"{u['old_data_wait_share']:.1%} / {u['new_data_wait_share']:.1%} |")
        lines.append("")
    if report.get("cells"):
        lines += ["## Every cell", "", ("| model | batch | device | threads | loop | loader workers | iterations | "
                  "median ms | mean ms | data wait ms (mean) | compute ms (mean) | data share |"),
                  "|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["cells"]:
            lines.append(f"| {r['model']} | {r['batch']} | {r['device']} | {r['threads'] or '-'} | {r['loop']} | "
                         f"{r['loader_workers'] if r['loader_workers'] is not None else '-'} | {r['iterations']} | "
                         f"{r['median_ms']:.0f} | {r['ms_per_iteration']:.0f} | {r['data_wait_ms']:.1f} | "
                         f"{r['compute_ms']:.0f} | {r['data_wait_share']:.1%} |")
        lines.append("")
    demo = report.get("demo")
    if demo:
        lines += ["## The demo's job", "",
                  (f"pedestrian_adas_0002 at 192x336, one layer per step, 60 iterations per step, lr 1e-4, target 8x, "
                  f"on {demo['device']} with {demo['threads']} threads, OpenVINO export "
                  f"{'on' if demo['export_openvino'] else 'off'}: {demo['wall_minutes']:.1f} min in all (the float "
                  f"model's evaluation included), {len(demo['steps']) - 1} steps."), "",
                  *([(f"Right before the job, the same machine timed an ADAS 192x336 batch-8 iteration at "
                     f"{demo['speed_right_before'][0]['old_median_ms']:.0f} ms (old loop) and "
                     f"{demo['speed_right_before'][0]['new_median_ms']:.0f} ms (new loop), medians; the job before "
                     f"issue 18 ({DEMO_BEFORE['minutes_until_target']} min) ran in another session, on a machine "
                     "whose speed is not known to have been the same."), ""] if demo.get("speed_right_before") else []),
                  "| step | compression | val MR^-2 | AP@0.5 | step s |", "|---:|---:|---:|---:|---:|"]
        for s in demo["steps"]:
            bold = "**" if s["index"] == demo["selected"]["index"] else ""
            lines.append(f"| {bold}{s['index']}{bold} | {s['compression_ratio']:.2f}x | {s['miss_rate']:.3f} | "
                         f"{s['ap50']:.3f} | {s['step_seconds']:.0f} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one model: checks the script")
    parser.add_argument("--budget", type=float, default=12.0, help="seconds per timed call (default 12)")
    parser.add_argument("--threads", default="1,2", help="CPU torch threads (default 1,2)")
    parser.add_argument("--models", default=",".join(CELL_MODELS))
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--demo", action="store_true", help="also run the demo's job (15-25 min on 2 cores)")
    parser.add_argument("--demo-only", action="store_true", help="only the demo's job, merged into existing results")
    parser.add_argument("--no-export", action="store_true", help="demo job without the OpenVINO export of each step")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = device_from_args(args, parser)
    out = args.out or RESULTS / ("train_speed_quick" if args.quick else "train_speed")
    train, val = split_records(read_dataset_dir(args.data))
    report: dict[str, Any] = {}
    if out.with_suffix(".json").is_file():  # a run updates the sections it measures, keeps the others
        report = json.loads(out.with_suffix(".json").read_text())
    if not args.demo_only:
        devices = ["cpu"] + ([device] if torch.device(device).type != "cpu" else [])
        models = ["adas_192x336"] if args.quick else args.models.split(",")
        batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
        started = time.monotonic()
        rows = speed_cells(train, devices=devices, threads=threads, models=models, batches=batches,
                           budget_s=2.0 if args.quick else args.budget)
        report.update(cells=rows, speedups=speedups(rows), speed_seconds=round(time.monotonic() - started, 1))
    if args.demo or args.demo_only:
        try:
            import openvino  # noqa: F401
            export = not args.no_export
        except ImportError:
            export = False
        n_threads = max(int(t) for t in args.threads.split(","))
        # The machine's speed drifts (shared cores): the key cell again, right before the job.
        calibration = speed_cells(train, devices=["cpu"], threads=[n_threads], models=["adas_192x336"], batches=[8],
                                  budget_s=2.0 if args.quick else 30.0, extra_workers=False)
        torch.set_num_threads(n_threads)
        report["demo"] = {**demo_job(train, val, device=device, export=export), "machine": machine(),
                          "speed_right_before": speedups(calibration)}
    if not args.demo_only or "machine" not in report:
        report["machine"] = machine()
    report["goals"] = goals(report)
    write(report, out)
    log(f"wrote {out.with_suffix('.json')} and .md")
    for line in report["goals"]:
        log(line)


if __name__ == "__main__":
    main()

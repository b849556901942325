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
  in bench/training_loops.py (`old_train_loop`), so that later changes to core do not change
  what the new loop is compared with; bench/gpu_check.py times it too.
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
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import report
from bench.training_loops import OldImageCache, build_model, merge, time_loop
from core.data import ImageRecord, read_dataset_dir, split_records
from core.device import add_device_argument, device_from_args
from core.paths import default_data_dir
from core.pipeline import run
from core.train import ImageCache
from service.demo import demo_float_model, demo_pipeline_config
from service.settings import Settings

# The demo's job before issue 18 (bench/results/pretrained.md, README "The demo").
DEMO_BEFORE = {"selected_compression_ratio": 9.91, "selected_miss_rate": 0.106, "minutes_until_target": 22.9}
CELL_MODELS = ("adas_192x336", "adas_384x672", "pednet")
GOAL_SPEEDUP, GOAL_DATA_SHARE = 1.5, 0.10

log = report.log


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
    return report.machine(cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          load_average=report.load_average(), git=report.git_commit())


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


def goals(result: dict[str, Any]) -> list[str]:
    lines = []
    ups = result.get("speedups", [])
    key = next((u for u in ups if u["model"] == "adas_192x336" and u["batch"] == 8 and u["device"] == "cpu"
                and u["threads"] == 2), None)
    if key:
        met = "met" if key["speedup_median"] >= GOAL_SPEEDUP else "missed"
        lines.append(f"- CPU, 2 threads, ADAS 192x336 batch 8: {key['old_median_ms']:.0f} -> {key['new_median_ms']:.0f} "
                     f"ms per iteration (median), {key['speedup_median']:.2f}x; on the mean {key['old_mean_ms']:.0f} -> "
                     f"{key['new_mean_ms']:.0f} ms, {key['speedup_mean']:.2f}x (goal >= {GOAL_SPEEDUP}x): {met}.")
    new_rows = [r for r in result.get("cells", []) if r["loop"] == "new" and r["loader_workers"] == "auto"]
    if new_rows:
        worst = max(new_rows, key=lambda r: r["data_wait_share"])
        over = [r for r in new_rows if r["data_wait_share"] > GOAL_DATA_SHARE]
        lines.append(f"- Data wait of the new loop at most {GOAL_DATA_SHARE:.0%} of the iteration: "
                     f"{'met' if not over else 'missed'} in {len(new_rows) - len(over)} of {len(new_rows)} cells "
                     f"(worst {worst['data_wait_share']:.1%}: {worst['model']}, batch {worst['batch']}, "
                     f"{worst['device']}, {worst['threads']} threads).")
    demo = result.get("demo")
    if demo:
        sel = demo["selected"]
        ok = sel["compression_ratio"] >= 8 and demo["miss_rate_delta_vs_before"] <= 0.02
        lines.append(f"- Demo job: selected step {sel['index']} at {sel['compression_ratio']:.2f}x, val MR^-2 "
                     f"{sel['miss_rate']:.3f} (before: {DEMO_BEFORE['selected_compression_ratio']}x at "
                     f"{DEMO_BEFORE['selected_miss_rate']}; goal >= 8x within +0.02): {'met' if ok else 'missed'}; "
                     f"wall time {demo['wall_minutes']:.1f} min (before: {DEMO_BEFORE['minutes_until_target']} min "
                     f"until the target; goal <= 15 min: {'met' if demo['wall_minutes'] <= 15 else 'missed'}).")
    return lines


def markdown(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [(f"# Training-loop speed (issue 18; {m.get('date', '')}, {report.machine_text(m)}, "
              f"commit {report.commit_text(m.get('git') or str(m.get('commit'))[:10])})"), "",
             ("Written by `python -m bench.train_speed`. The old loop is a8b4147's (v2 transforms per sample at full "
             "resolution in the main process, resize inside the model, loss read every iteration); the new one is "
             "`core.train.train_detector`. ms per iteration = wall time of the timed call / iterations; data wait = "
             "time the loop waited for its batch (the new loop's photometric distortion runs on the batch, as "
             "compute). Each cell alternates old and new in three rounds; on this shared 2-core machine the median "
             "iteration is the robust figure (bursts of other users' load inflate the mean)."), ""]
    if result.get("goals"):
        lines += ["## Goals", "", *result["goals"], ""]
    if result.get("speedups"):
        lines += ["## Old against new", "", *report.markdown_table(result["speedups"], [
            ("model", "model"), ("batch", "batch"), ("device", "device"), ("threads", lambda u: u["threads"] or "-"),
            ("old ms (median / mean)", lambda u: f"{u['old_median_ms']:.0f} / {u['old_mean_ms']:.0f}"),
            ("new ms (median / mean)", lambda u: f"{u['new_median_ms']:.0f} / {u['new_mean_ms']:.0f}"),
            ("speed-up (median / mean)", lambda u: f"{u['speedup_median']:.2f}x / {u['speedup_mean']:.2f}x"),
            ("data wait old / new", lambda u: f"{u['old_data_wait_share']:.1%} / {u['new_data_wait_share']:.1%}")],
            align="lrlrrrrr"), ""]
    if result.get("cells"):
        lines += ["## Every cell", "", *report.markdown_table(result["cells"], [
            ("model", "model"), ("batch", "batch"), ("device", "device"), ("threads", lambda r: r["threads"] or "-"),
            ("loop", "loop"), ("loader workers", "loader_workers"), ("iterations", "iterations"),
            ("median ms", lambda r: f"{r['median_ms']:.0f}"), ("mean ms", lambda r: f"{r['ms_per_iteration']:.0f}"),
            ("data wait ms (mean)", lambda r: f"{r['data_wait_ms']:.1f}"),
            ("compute ms (mean)", lambda r: f"{r['compute_ms']:.0f}"),
            ("data share", lambda r: f"{r['data_wait_share']:.1%}")], align="lrlrllrrrrrr"), ""]
    demo = result.get("demo")
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
                  *report.markdown_table(demo["steps"], [
                      ("step", lambda s: f"**{s['index']}**" if s["index"] == demo["selected"]["index"] else s["index"]),
                      ("compression", lambda s: f"{s['compression_ratio']:.2f}x"),
                      ("val MR^-2", lambda s: f"{s['miss_rate']:.3f}"), ("AP@0.5", lambda s: f"{s['ap50']:.3f}"),
                      ("step s", lambda s: f"{s['step_seconds']:.0f}")], align="rrrrr"), ""]
    return "\n".join(lines)


def readme_section(results: Path) -> str:
    head = "### Training-loop speed (`make bench-train_speed`, [`train_speed.md`](train_speed.md))"
    return report.section(head, report.load_results("train_speed", results), _readme_lines)


def _readme_lines(result: dict[str, Any]) -> list[str]:
    m = result.get("machine", {})
    lines = [(f"`python -m bench.train_speed` times the fine-tuning loop before issue 18 (a8b4147's, kept in "
              f"`bench/training_loops.py`) and today's `core.train.train_detector` in alternating rounds on the same "
              f"images and model ({m.get('date', '?')}, {report.machine_text(m)}; median ms per iteration):"), "",
             *report.markdown_table(result.get("speedups", []), [
                 ("model", "model"), ("batch", "batch"), ("device", "device"),
                 ("threads", lambda u: u["threads"] or "-"),
                 ("old ms", lambda u: f"{u['old_median_ms']:.0f}"), ("new ms", lambda u: f"{u['new_median_ms']:.0f}"),
                 ("speed-up", lambda u: f"{u['speedup_median']:.2f}x"),
                 ("data wait old / new", lambda u: f"{u['old_data_wait_share']:.1%} / {u['new_data_wait_share']:.1%}")],
                 align="lrllrrrr"), ""]
    return lines + (result.get("goals") or [])


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
    out = args.out or report.RESULTS / ("train_speed_quick" if args.quick else "train_speed")
    train, val = split_records(read_dataset_dir(args.data))
    result: dict[str, Any] = {}
    if out.with_suffix(".json").is_file():  # a run updates the sections it measures, keeps the others
        result = json.loads(out.with_suffix(".json").read_text())
    if not args.demo_only:
        devices = ["cpu"] + ([device] if torch.device(device).type != "cpu" else [])
        models = ["adas_192x336"] if args.quick else args.models.split(",")
        batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
        started = time.monotonic()
        rows = speed_cells(train, devices=devices, threads=threads, models=models, batches=batches,
                           budget_s=2.0 if args.quick else args.budget)
        result.update(cells=rows, speedups=speedups(rows), speed_seconds=round(time.monotonic() - started, 1))
    if args.demo or args.demo_only:
        export = not args.no_export and importlib.util.find_spec("openvino") is not None
        n_threads = max(int(t) for t in args.threads.split(","))
        # The machine's speed drifts (shared cores): the key cell again, right before the job.
        calibration = speed_cells(train, devices=["cpu"], threads=[n_threads], models=["adas_192x336"], batches=[8],
                                  budget_s=2.0 if args.quick else 30.0, extra_workers=False)
        torch.set_num_threads(n_threads)
        result["demo"] = {**demo_job(train, val, device=device, export=export), "machine": machine(),
                          "speed_right_before": speedups(calibration)}
    if not args.demo_only or "machine" not in result:
        result["machine"] = machine()
    result["goals"] = goals(result)
    report.write_results(out.name, result, markdown(result), out=out.parent)
    log(f"wrote {out.with_suffix('.json')} and .md")
    for line in result["goals"]:
        log(line)


if __name__ == "__main__":
    main()

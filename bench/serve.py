"""Serving benchmark: `POST /detect` throughput and latency on loopback.

    python -m bench.serve            # make bench-serve (about 5 minutes on 2 busy cores)
    python -m bench.serve --quick    # a smaller run that checks the script works

What it does, on this machine only (127.0.0.1, an embedded SQLite database in a temp folder):
1. Trains FlexBin's default detector (`core.train.train_float_detector`) for a *small*
   number of iterations (150 at batch 2 by default; cached under var/bench_serve/). It is
   the serving path being measured, not detection quality.
2. Makes two packed checkpoints of it: the float model (no binary layer, like a job's step 0)
   and a binary one (every binarizable layer but the first convolution binarized with
   `core.binary.binarize_module`, packed with `core.checkpoint.pack_checkpoint`; not
   fine-tuned, so its boxes are poor - its serving cost is what is measured).
3. Starts three API processes (`python -m api.run`) on one database: micro-batching on
   (the defaults), on with a 10 ms max wait, and off (max batch size 1: one forward per
   image). For each checkpoint it deploys it (`PUT /deployment`), waits for `/readyz` on
   all three, and runs 1, 4 and 16 concurrent clients, each posting one Penn-Fudan
   validation image per request for a fixed time, interleaving the three processes. Reports
   images/s, p50/p99 latency, errors, and the API process's peak RSS.
4. Runs the HOG people detector (`bench.baselines.hog.HogPeopleDetector`) in-process on the
   same images as the classic reference (no HTTP).
Writes bench/results/serve.json and serve.md and says which goals are met.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from api.serving import torch_threads
from bench import report, stack
from bench.baselines.hog import HogPeopleDetector
from core.binary import binarize_module
from core.checkpoint import (
    compression_ratio,
    load_model_bytes,
    pack_checkpoint,
    save_model_bytes,
)
from core.data import load_image, read_pennfudan, split_records
from core.paths import default_data_dir
from core.priority import discover_layers
from core.train import train_float_detector
from service.settings import Settings

CACHE = report.ROOT / "var" / "bench_serve"
CLIENTS = (1, 4, 16)
# "on": the defaults (max wait 0: a batch is whatever queued while the previous forward ran);
# "on_wait10": a batch also waits up to 10 ms for more images; "off": max batch size 1.
MODES: dict[str, dict[str, str]] = {"on": {}, "on_wait10": {"FLEXBIN_SERVING_MAX_WAIT_MS": "10"},
                                    "off": {"FLEXBIN_SERVING_MAX_BATCH_SIZE": "1"}}


def main() -> None:
    args = parse_args()
    seconds = args.seconds or (2.0 if args.quick else 7.0)
    run_started = time.monotonic()
    _, val = split_records(read_pennfudan(default_data_dir()))
    images = [(f"{r.name}.png", Path(r.image).read_bytes()) for r in val]  # type: ignore[arg-type]
    report.log(f"training the float detector ({args.train_iters} iterations at batch {args.train_batch}) ...")
    weights, card_json, train_info = float_model(args.train_iters, args.train_batch)
    checkpoints = packed_checkpoints(weights, card_json)
    cells, servers = measure_serving(weights, card_json, checkpoints, images, seconds, args.torch_threads)
    defaults = Settings(serving_torch_threads=args.torch_threads or 0)
    decoded = [load_image(Path(r.image)) for r in val]  # type: ignore[arg-type]
    hog = hog_reference(decoded, seconds)
    forward = forward_cost(weights, card_json, decoded, torch_threads(defaults))
    report.log(f"forward in-process: {forward}; HOG in-process: {hog['images_per_s']} img/s, p50 {hog['p50_ms']} ms")
    result = {
        "machine": report.machine(note="shared, busy 2-core machine (another benchmark ran at the same time)"),
        "config": {"seconds_per_cell": seconds, "clients": list(CLIENTS), "images": len(images),
                   "image_source": "Penn-Fudan validation split (PNG, one image per request)",
                   "serving_max_batch_size": defaults.serving_max_batch_size,
                   "serving_max_wait_ms": defaults.serving_max_wait_ms,
                   "serving_torch_threads": torch_threads(defaults),
                   "train_iterations": args.train_iters, "train_batch_size": args.train_batch, **train_info,
                   "quick": args.quick},
        "checkpoints": {
            "float_weights_bytes": len(weights),
            **{f"{k}_packed_bytes": len(v["data"]) for k, v in checkpoints.items()},
            "binary_compression_ratio": checkpoints["binary"]["compression_ratio"],
            "binary_layers": len(checkpoints["binary"]["binary_layers"]),
        },
        "api_process": servers,
        "cells": cells,
        "hog_in_process": hog,
        "forward_in_process": forward,
        "goals": goals(cells),
        "total_seconds": round(time.monotonic() - run_started, 1),
    }
    name = "serve_quick" if args.quick else "serve"
    report.write_results(name, result, markdown(result))
    report.log(f"wrote {report.RESULTS / name}.json and .md")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short cells; checks the script works")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measured cell (default 7)")
    parser.add_argument("--train-iters", type=int, default=150)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="FLEXBIN_SERVING_TORCH_THREADS of the API (default: the setting's default)")
    return parser.parse_args()


# -- models -------------------------------------------------------------------------------
def float_model(iterations: int, batch_size: int) -> tuple[bytes, str, dict[str, Any]]:
    """(weights, card JSON, info) of the trained float detector, cached across runs."""
    weights_path = CACHE / f"pednet_{iterations}x{batch_size}.safetensors"
    card_path = weights_path.with_suffix(".json")
    if weights_path.is_file() and card_path.is_file():
        return weights_path.read_bytes(), card_path.read_text(), {"trained_seconds": None, "cached": True}
    train, val = split_records(read_pennfudan(default_data_dir()))
    started = time.monotonic()
    model, card = train_float_detector(train, val, iterations=iterations, batch_size=batch_size, seed=0)
    seconds = time.monotonic() - started
    weights, card_json = save_model_bytes(model, card)
    CACHE.mkdir(parents=True, exist_ok=True)
    weights_path.write_bytes(weights)
    card_path.write_text(card_json)
    return weights, card_json, {"trained_seconds": round(seconds, 1), "cached": False}


def packed_checkpoints(weights: bytes, card_json: str) -> dict[str, dict[str, Any]]:
    """{"float": ..., "binary": ...}: packed checkpoint bytes ("data") and what they hold."""
    model, card = load_model_bytes(weights, card_json)
    out = {"float": {"data": pack_checkpoint(model, card), "binary_layers": [], "compression_ratio": 1.0}}
    layers = discover_layers(model, card.builder_kwargs.get("input_size", 320))
    modules = dict(model.named_modules())
    chosen = [layer.name for layer in layers[1:]]  # all but the first convolution (3 input channels)
    for name in chosen:
        binarize_module(modules[name], 1)
    out["binary"] = {"data": pack_checkpoint(model, card), "binary_layers": chosen,
                     "compression_ratio": round(compression_ratio(model), 2)}
    return out


# -- the API processes ----------------------------------------------------------------------
def measure_serving(weights: bytes, card_json: str, checkpoints: dict[str, dict[str, Any]],
                    images: list[tuple[str, bytes]], seconds: float,
                    threads: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (checkpoint, client count, batching mode) cell, and each API process's peak RSS.
    All three API processes run side by side on the same database and the cells are
    interleaved (on, wait10, off for each model and client count), so the load of the shared
    machine drifts over all modes alike."""
    tmp, db_url, env = stack.sqlite_env("flexbin_bench_serve_")
    if threads is not None:
        env["FLEXBIN_SERVING_TORCH_THREADS"] = str(threads)
    apis: dict[str, stack.Proc] = {}
    cells: list[dict[str, Any]] = []
    try:
        for mode, extra in MODES.items():
            apis[mode], _ = stack.start_api({**env, **extra}, tmp, f"api-{mode}")
        with stack.client(apis["on"].url) as c:
            ids = stack.store_finished_job(db_url, **stack.upload(c, weights, card_json), checkpoints=checkpoints)
            for variant in ("float", "binary"):
                c.put("/deployment", json={"checkpoint_id": ids[variant]}).raise_for_status()
                cells += measure_checkpoint(apis, variant, ids[variant], images, seconds)
        return cells, {mode: {"peak_rss_mib": stack.rss_mib(api.pid, "VmHWM"), "env": MODES[mode]}
                       for mode, api in apis.items()}
    finally:
        for api in apis.values():
            api.stop()


def measure_checkpoint(apis: dict[str, stack.Proc], variant: str, checkpoint_id: str,
                       images: list[tuple[str, bytes]], seconds: float) -> list[dict[str, Any]]:
    """The deployed checkpoint, once every API serves it: each client count on each mode."""
    ready = {mode: round(wait_ready(api.url), 2) for mode, api in apis.items()}
    for api in apis.values():
        stack.run_clients(api.url, images, 2, 1.0)  # warm the connection pool and caches
    cells = []
    for n in CLIENTS:
        for mode, api in apis.items():
            before = stack.batch_sizes(api.url)
            cell = stack.run_clients(api.url, images, n, seconds)
            cell.update(model=variant, batching=mode, checkpoint_id=checkpoint_id,
                        mean_batch_size=stack.mean_batch_size(before, stack.batch_sizes(api.url)),
                        ready_after_deploy_s=ready[mode])
            cells.append(cell)
            report.log(f"{variant:6s} batching {mode:9s} {n:2d} clients: {cell['images_per_s']:6.2f} img/s "
                       f"p50 {cell['p50_ms']:7.1f} ms p99 {cell['p99_ms']:7.1f} ms "
                       f"batch {cell['mean_batch_size']} errors {cell['errors']}")
    return cells


def wait_ready(url: str, timeout: float = 120) -> float:
    """Seconds until `/readyz` answers 200 (the deployed checkpoint loaded)."""
    started = time.monotonic()
    stack.wait_until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, timeout,
                     f"{url}/readyz", interval=0.1)
    return time.monotonic() - started


# -- in-process references -----------------------------------------------------------------
def hog_reference(images: list[Any], seconds: float) -> dict[str, Any]:
    detector = HogPeopleDetector()
    latencies = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds or i == 0:
        t0 = time.perf_counter()
        detector([images[i % len(images)]])
        latencies.append(time.perf_counter() - t0)
        i += 1
    wall = time.monotonic() - started
    return {"images": len(latencies), "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(stack.pct(latencies, 50) * 1000, 1), "p99_ms": round(stack.pct(latencies, 99) * 1000, 1),
            "note": "in-process, one image at a time, no HTTP"}


def forward_cost(weights: bytes, card_json: str, images: list[Any], threads: int) -> dict[str, float]:
    """In-process forward time per image at batch 1 and 8, with the API's thread count: whether
    batching can pay off at all on this machine."""
    torch.set_num_threads(threads)
    model, _ = load_model_bytes(weights, card_json)
    model.eval()
    out = {}
    with torch.inference_mode():
        model(images[:1])
        for batch in (1, 8):
            started = time.perf_counter()
            for i in range(0, len(images), batch):
                model(images[i:i + batch])
            out[f"batch_{batch}_ms_per_image"] = round((time.perf_counter() - started) / len(images) * 1000, 1)
    return out


def goals(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def cell(model: str, batching: str, clients: int) -> dict[str, Any]:
        return next(c for c in cells if (c["model"], c["batching"], c["clients"]) == (model, batching, clients))

    out = []
    for model in ("float", "binary"):
        off = cell(model, "off", 16)["images_per_s"]
        speedup = cell(model, "on", 16)["images_per_s"] / off if off else float("nan")
        wait10 = cell(model, "on_wait10", 16)["images_per_s"] / off if off else 0.0
        out += [{"goal": f"{model}: micro-batching >= 1.5x one-forward-per-request throughput at 16 clients",
                 "value": round(speedup, 2), "met": speedup >= 1.5},
                {"goal": f"{model}: the same with max wait 10 ms", "value": round(wait10, 2), "met": wait10 >= 1.5}]
        for batching in ("on", "off"):
            c4 = cell(model, batching, 4)
            ratio = c4["p99_ms"] / c4["p50_ms"] if c4["p50_ms"] else float("nan")
            out.append({"goal": f"{model}, batching {batching}: p99 <= 3x p50 at 4 clients",
                        "value": round(ratio, 2), "met": ratio <= 3.0})
    errors = sum(c["errors"] for c in cells)
    out.append({"goal": "zero errors", "value": errors, "met": errors == 0})
    return out


# -- output -----------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    ck, cfg, hog, fwd = result["checkpoints"], result["config"], result["hog_in_process"], result["forward_in_process"]
    peaks = ", ".join(f"{m['peak_rss_mib']:.0f} MiB ({mode})" for mode, m in result["api_process"].items())
    rows = [*result["cells"], {"model": "HOG (in-process, no HTTP)", "clients": 1, **hog}]
    lines = [
        "# Serving benchmark (`python -m bench.serve`)", "",
        (f"Measured on a {result['machine']['note']}: numbers are indicative and noisy. Loopback HTTP, "
         f"{cfg['seconds_per_cell']:.0f} s per cell, one Penn-Fudan validation PNG per request. The detector is "
         f"FlexBin's default PedNet trained for only {cfg['train_iterations']} iterations (batch "
         f"{cfg['train_batch_size']}): the serving path is measured, not detection quality; the binary checkpoint "
         "is not fine-tuned."), "",
        (f"Micro-batching on (the defaults): max batch {cfg['serving_max_batch_size']}, max wait "
         f"{cfg['serving_max_wait_ms']:.0f} ms (a batch is whatever queued while the previous forward ran); off: max "
         f"batch 1 (one forward per image). {cfg['serving_torch_threads']} torch threads, one inference thread."), "",
        *report.markdown_table(rows, [("model", "model"), ("batching", "batching"), ("clients", "clients"),
                                      ("images/s", lambda c: f"{c['images_per_s']:.2f}"),
                                      ("p50 ms", lambda c: f"{c['p50_ms']:.0f}"), ("p99 ms", lambda c: f"{c['p99_ms']:.0f}"),
                                      ("mean batch", "mean_batch_size"), ("errors", "errors")], align="llrrrrrr"),
        "", "## Goals", "",
        *(f"- {report.mark(g['met'])}: {g['goal']} (measured {g['value']})" for g in result["goals"]), "",
        (f"Forward pass in-process with {cfg['serving_torch_threads']} torch thread(s): "
         f"{fwd['batch_1_ms_per_image']} ms per image at batch 1, {fwd['batch_8_ms_per_image']} ms per image at "
         "batch 8. Micro-batching raises throughput only when a batch costs less per image than single images "
         "(per-call overhead to amortize: GPUs, many intra-op threads); when it does not, it cannot, and the "
         "requests' own work (PNG decoding, multipart parsing, HTTP) shares the same cores."),
        "", "## Memory and checkpoint bytes", "",
        f"- Peak RSS of the API process: {peaks}; both checkpoints were loaded in each.",
        (f"- Float weights (safetensors): {ck['float_weights_bytes']:,} bytes; packed float checkpoint: "
         f"{ck['float_packed_bytes']:,} bytes; packed binary checkpoint ({ck['binary_layers']} binary layers): "
         f"{ck['binary_packed_bytes']:,} bytes (compression ratio {ck['binary_compression_ratio']})."),
        ("- The binary checkpoint is unpacked to float weights at load, so it costs the same per forward as the "
         "float model: binarization saves storage and transfer here, not CPU time."),
        "", f"Total run time: {result['total_seconds']:.0f} s.", "",
    ]
    return "\n".join(lines)


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    head = "### Serving (`make bench-serve`, [`serve.md`](serve.md))"
    return report.section(head, report.load_results("serve", results), _readme_lines)


def _readme_lines(result: dict[str, Any]) -> list[str]:
    cfg, ck, fwd, hog = result["config"], result["checkpoints"], result["forward_in_process"], result["hog_in_process"]
    cells = result["cells"]
    pairs = sorted({(c["model"], c["batching"]) for c in cells}, key=lambda p: (p[0] != "float", list(MODES).index(p[1])))

    def at(model: str, batching: str, n: int) -> str | None:
        c = next((c for c in cells if (c["model"], c["batching"], c["clients"]) == (model, batching, n)), None)
        return None if c is None else f"{c['images_per_s']:.1f} ({c['p50_ms']:.0f} / {c['p99_ms']:.0f} ms)"

    modes = {"on": f"on (max batch {cfg['serving_max_batch_size']})", "on_wait10": "on, max wait 10 ms",
             "off": "off (max batch 1)"}
    rows = [{"checkpoint": model, "batching": modes.get(batching, batching),
             **{n: at(model, batching, n) for n in cfg["clients"]}} for model, batching in pairs]
    rows.append({"checkpoint": "HOG, in-process (no HTTP)",
                 1: f"{hog['images_per_s']:.1f} ({hog['p50_ms']:.0f} / {hog['p99_ms']:.0f} ms)"})
    saving = 1 - fwd["batch_8_ms_per_image"] / fwd["batch_1_ms_per_image"]
    peaks = [m["peak_rss_mib"] for m in result["api_process"].values()]
    lines = [
        (f"Loopback HTTP, one Penn-Fudan validation PNG per request, {cfg['seconds_per_cell']:.0f} s per cell, "
         f"{report.plural(cfg['serving_torch_threads'], 'torch thread')}, on a {result['machine']['note']}: noisy. The detector "
         f"is the default PedNet trained for only {cfg['train_iterations']} iterations — the serving path is measured, "
         f"not detection quality; the binary checkpoint has {ck['binary_layers']} layers binarized (all but the first "
         f"convolution; not fine-tuned), a {ck['binary_compression_ratio']}x smaller file "
         f"({ck['float_packed_bytes'] / 1e6:.1f} MB → {ck['binary_packed_bytes'] / 1e3:.0f} KB)."), "",
        *report.markdown_table(rows, [("checkpoint", "checkpoint"), ("batching", "batching")] + [
            (f"{n} client{'s' if n > 1 else ''}: img/s (p50 / p99)", lambda r, n=n: r.get(n)) for n in cfg["clients"]]),
        "", "Goals:", "",
        *report.markdown_table(result["goals"], [("goal", "goal"), ("measured", "value"), ("met", lambda g: report.mark(g["met"]))]),
        "",
        (f"A PedNet forward costs {fwd['batch_1_ms_per_image']} ms per image at batch 1 and "
         f"{fwd['batch_8_ms_per_image']} ms at batch 8 here, so batching can save at most {100 * saving:.0f} % of the "
         "model's time, while PNG decoding, multipart parsing and HTTP share the same cores. On a GPU, where a batch "
         "costs little more than one image, the same batcher is where the gain would come from (not measured: no "
         "GPU here). The checkpoints are stored without an OpenVINO IR, so the API serves them with PyTorch: the "
         "binary checkpoint is unpacked to float weights at load, and binarization shrinks the file, not the CPU "
         f"time. The API processes peaked at {report.span(peaks, '.0f')} MiB RSS. The \"Speed\" section below measures the "
         f"OpenVINO backend. Whole run: {report.minutes(result['total_seconds'])}."),
    ]
    return lines


if __name__ == "__main__":
    main()

"""Serving benchmark: `POST /detect` throughput and latency on loopback.

    python bench/serve.py            # make bench-serve (about 5 minutes on 2 busy cores)
    python bench/serve.py --quick    # a smaller run that checks the script works

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
   validation image per request for a fixed time, interleaving the three processes. Reports images/s, p50/p99 latency, errors, and the API process's peak RSS.
4. Runs the HOG people detector (`bench.baselines.hog.HogPeopleDetector`) in-process on the
   same images as the classic reference (no HTTP).
Writes bench/results/serve.json and serve.md and says which goals are met.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import (
    KEY,
    RESULTS,
    ROOT,
    cpu_model,
    dataset_zip,
    pct,
    service_env,
    start_api,
)
from core.paths import default_data_dir

CACHE = ROOT / "var" / "bench_serve"
CLIENTS = (1, 4, 16)


# -- models -------------------------------------------------------------------------------
def float_model(iterations: int, batch_size: int) -> tuple[bytes, str, dict[str, Any]]:
    """(weights, card JSON, info) of the trained float detector, cached across runs."""
    from core.checkpoint import save_model_bytes
    from core.data import read_pennfudan, split_records
    from core.train import train_float_detector

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
    """{"float": ..., "binary": ...}: packed checkpoint bytes and what they hold."""
    from core.binary import binarize_module
    from core.checkpoint import compression_ratio, load_model_bytes, pack_checkpoint
    from core.priority import discover_layers

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


def store_checkpoints(db_url: str, model_id: str, dataset_id: str,
                      checkpoints: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Insert a finished job with one checkpoint per variant, as a job's steps would be."""
    from core.job_spec import PipelineConfig, Target
    from service.store import Checkpoint, DetectorModel, Job, put_blob, session_scope
    from service.store.jobs import JobStatus

    ids = {}
    with session_scope(db_url) as s:
        model = s.get(DetectorModel, model_id)
        job = Job(tenant_id=model.tenant_id, model_id=model_id, dataset_id=dataset_id, status=JobStatus.SUCCEEDED,
                  config=PipelineConfig(target=Target(min_compression_ratio=2.0)).model_dump(mode="json"))
        s.add(job)
        s.flush()
        for step, (name, ck) in enumerate(checkpoints.items()):
            blob = put_blob(s, ck["data"])
            row = Checkpoint(tenant_id=model.tenant_id, job_id=job.id, model_id=model_id, step=step,
                             architecture=model.architecture, binary_layers=ck["binary_layers"], bits=1,
                             compression_ratio=ck["compression_ratio"], binary_layer_compression=None,
                             miss_rate=0.0, ap50=0.0, size_bytes=len(ck["data"]),
                             blob_id=blob.id)
            s.add(row)
            s.flush()
            ids[name] = row.id
    return ids


# -- the API process ----------------------------------------------------------------------
class Api:
    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.proc, self.url = start_api(env, log_dir, name)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def wait_ready(self, timeout: float = 120) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError("API not ready")

    def stop(self) -> None:
        self.proc.stop()


def run_clients(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float,
                timeout: float = 120) -> dict[str, Any]:
    """`clients` threads, each posting one image per request until the time is up (each request
    at most `timeout` seconds). Errors: any answer but 200, and transport errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout) as c:
            i = index
            start_gate.wait()
            while time.monotonic() < deadline[0]:
                name, data = images[i % len(images)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = c.post("/detect", files={"images": (name, data, "image/png")})
                    ok = r.status_code == 200
                    problem = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, problem = False, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds
    started = time.monotonic()
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return {"clients": clients, "seconds": round(wall, 2), "images": len(latencies),
            "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(pct(latencies, 50) * 1000, 1), "p95_ms": round(pct(latencies, 95) * 1000, 1),
            "p99_ms": round(pct(latencies, 99) * 1000, 1), "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
            "errors": len(errors), "error_examples": errors[:3]}


def batch_sizes(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("flexbin_detect_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("flexbin_detect_batch_size_count"):
            count = float(line.split()[-1])
    return {"batches": count, "images": total}


def hog_reference(images: list[Any], seconds: float) -> dict[str, Any]:
    from bench.baselines.hog import HogPeopleDetector

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
            "p50_ms": round(pct(latencies, 50) * 1000, 1), "p99_ms": round(pct(latencies, 99) * 1000, 1),
            "note": "in-process, one image at a time, no HTTP"}


def forward_cost(weights: bytes, card_json: str, images: list[Any], threads: int) -> dict[str, float]:
    """In-process forward time per image at batch 1 and 8, with the API's thread count: whether
    batching can pay off at all on this machine."""
    import torch

    from core.checkpoint import load_model_bytes

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


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short cells; checks the script works")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measured cell (default 7)")
    parser.add_argument("--train-iters", type=int, default=150)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="FLEXBIN_SERVING_TORCH_THREADS of the API (default: the setting's default)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 7.0)
    run_started = time.monotonic()

    from core.data import load_image, read_pennfudan, split_records

    _, val = split_records(read_pennfudan(default_data_dir()))
    images = [(f"{r.name}.png", Path(r.image).read_bytes()) for r in val]  # type: ignore[arg-type]

    print(f"training the float detector ({args.train_iters} iterations at batch {args.train_batch}) ...",
          flush=True)
    weights, card_json, train_info = float_model(args.train_iters, args.train_batch)
    checkpoints = packed_checkpoints(weights, card_json)

    tmp = Path(tempfile.mkdtemp(prefix="flexbin_bench_serve_"))
    db_url = f"sqlite:///{tmp}/flexbin.db"
    env = service_env(db_url, f"sqla+sqlite:///{tmp}/broker.db")
    if args.torch_threads is not None:
        env["FLEXBIN_SERVING_TORCH_THREADS"] = str(args.torch_threads)
    # "on": the defaults (max wait 0: a batch is whatever queued while the previous forward ran);
    # "on_wait10": a batch also waits up to 10 ms for more images; "off": max batch size 1.
    modes = {"on": {}, "on_wait10": {"FLEXBIN_SERVING_MAX_WAIT_MS": "10"},
             "off": {"FLEXBIN_SERVING_MAX_BATCH_SIZE": "1"}}
    cells: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}
    # All three API processes run side by side on the same database and the cells are
    # interleaved (on, wait10, off for each model and client count), so the load of the
    # shared machine drifts over all modes alike.
    apis: dict[str, Api] = {}
    try:
        for mode, extra in modes.items():
            apis[mode] = Api({**env, **extra}, tmp, f"api-{mode}")
        first = apis["on"]
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            m = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card_json})
            d = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(2))})
            m.raise_for_status()
            d.raise_for_status()
            ids = store_checkpoints(db_url, m.json()["id"], d.json()["id"], checkpoints)
            for variant in ("float", "binary"):
                c.put("/deployment", json={"checkpoint_id": ids[variant]}).raise_for_status()
                ready = {mode: round(api.wait_ready(), 2) for mode, api in apis.items()}
                for api in apis.values():
                    run_clients(api.url, images, 2, 1.0)  # warm the connection pool and caches
                for n in CLIENTS:
                    for mode, api in apis.items():
                        before = batch_sizes(api.url)
                        cell = run_clients(api.url, images, n, seconds)
                        after = batch_sizes(api.url)
                        batches = after["batches"] - before["batches"]
                        cell.update(model=variant, batching=mode, checkpoint_id=ids[variant],
                                    mean_batch_size=round((after["images"] - before["images"]) / batches, 2)
                                    if batches else None, ready_after_deploy_s=ready[mode])
                        cells.append(cell)
                        print(f"{variant:6s} batching {mode:9s} {n:2d} clients: {cell['images_per_s']:6.2f} img/s "
                              f"p50 {cell['p50_ms']:7.1f} ms p99 {cell['p99_ms']:7.1f} ms "
                              f"batch {cell['mean_batch_size']} errors {cell['errors']}", flush=True)
        for mode, api in apis.items():
            servers[mode] = {"peak_rss_mib": round(api.peak_rss_mib(), 1), "env": modes[mode]}
    finally:
        for api in apis.values():
            api.stop()

    from api.serving import torch_threads
    from service.settings import Settings

    defaults = Settings(serving_torch_threads=args.torch_threads or 0)
    hog_images = [load_image(Path(r.image)) for r in val]  # type: ignore[arg-type]
    hog = hog_reference(hog_images, seconds)
    forward = forward_cost(weights, card_json, hog_images, torch_threads(defaults))
    print(f"forward in-process: {forward}", flush=True)
    print(f"HOG in-process: {hog['images_per_s']} img/s, p50 {hog['p50_ms']} ms", flush=True)

    def cell(model: str, batching: str, clients: int) -> dict[str, Any]:
        return next(c for c in cells if (c["model"], c["batching"], c["clients"]) == (model, batching, clients))

    goals = []
    for model in ("float", "binary"):
        on, off = cell(model, "on", 16), cell(model, "off", 16)
        speedup = on["images_per_s"] / off["images_per_s"] if off["images_per_s"] else float("nan")
        goals.append({"goal": f"{model}: micro-batching >= 1.5x one-forward-per-request throughput at 16 clients",
                      "value": round(speedup, 2), "met": speedup >= 1.5})
        wait10 = cell(model, "on_wait10", 16)["images_per_s"] / off["images_per_s"] if off["images_per_s"] else 0.0
        goals.append({"goal": f"{model}: the same with max wait 10 ms", "value": round(wait10, 2),
                      "met": wait10 >= 1.5})
        for batching in ("on", "off"):
            c4 = cell(model, batching, 4)
            ratio = c4["p99_ms"] / c4["p50_ms"] if c4["p50_ms"] else float("nan")
            goals.append({"goal": f"{model}, batching {batching}: p99 <= 3x p50 at 4 clients",
                          "value": round(ratio, 2), "met": ratio <= 3.0})
    errors = sum(c["errors"] for c in cells)
    goals.append({"goal": "zero errors", "value": errors, "met": errors == 0})
    result = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), **cpu_model(),
                    "python": platform.python_version(),
                    "note": "shared, busy 2-core machine (another benchmark ran at the same time)"},
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
        "goals": goals,
        "total_seconds": round(time.monotonic() - run_started, 1),
    }
    write_results(result, "serve_quick" if args.quick else "serve")


def write_results(result: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    ck, cfg = result["checkpoints"], result["config"]
    lines = [
        "# Serving benchmark (`bench/serve.py`)",
        "",
        (f"Measured on a {result['machine']['note']}: numbers are indicative and noisy. Loopback HTTP, "
        f"{cfg['seconds_per_cell']:.0f} s per cell, one Penn-Fudan validation PNG per request. The detector "
        f"is FlexBin's default PedNet trained for only {cfg['train_iterations']} iterations (batch "
        f"{cfg['train_batch_size']}): the serving path is measured, not detection quality; the binary "
        "checkpoint is not fine-tuned."),
        "",
        (f"Micro-batching on (the defaults): max batch {cfg['serving_max_batch_size']}, max wait "
         f"{cfg['serving_max_wait_ms']:.0f} ms (a batch is whatever queued while the previous forward ran); "
        f"off: max batch 1 (one forward per image). {cfg['serving_torch_threads']} torch threads, one inference "
        "thread."),
        "",
        "| model | batching | clients | images/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cells"]:
        lines.append(f"| {c['model']} | {c['batching']} | {c['clients']} | {c['images_per_s']:.2f} | "
                     f"{c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {c['mean_batch_size']} | {c['errors']} |")
    hog = result["hog_in_process"]
    lines += [
        (f"| HOG (in-process, no HTTP) | - | 1 | {hog['images_per_s']:.2f} | {hog['p50_ms']:.0f} | "
        f"{hog['p99_ms']:.0f} | - | - |"),
        "",
        "## Goals",
        "",
    ]
    for g in result["goals"]:
        lines.append(f"- {'MET' if g['met'] else 'NOT MET'}: {g['goal']} (measured {g['value']})")
    fwd = result["forward_in_process"]
    lines += [
        "",
        (f"Forward pass in-process with {cfg['serving_torch_threads']} torch thread(s): "
        f"{fwd['batch_1_ms_per_image']} ms per image at batch 1, {fwd['batch_8_ms_per_image']} ms per image at "
        "batch 8. Micro-batching raises throughput only when a batch costs less per image than single images "
        "(per-call overhead to amortize: GPUs, many intra-op threads); when it does not, it cannot, and the "
        "requests' own work (PNG decoding, multipart parsing, HTTP) shares the same cores."),
        "",
        "## Memory and checkpoint bytes",
        "",
        (f"- Peak RSS of the API process: {result['api_process']['on']['peak_rss_mib']:.0f} MiB (batching on), "
        f"{result['api_process']['on_wait10']['peak_rss_mib']:.0f} MiB (on, wait 10 ms), "
         f"{result['api_process']['off']['peak_rss_mib']:.0f} MiB (off); both checkpoints were loaded in each."),
        (f"- Float weights (safetensors): {ck['float_weights_bytes']:,} bytes; packed float checkpoint: "
        f"{ck['float_packed_bytes']:,} bytes; packed binary checkpoint ({ck['binary_layers']} binary layers): "
        f"{ck['binary_packed_bytes']:,} bytes (compression ratio {ck['binary_compression_ratio']})."),
        ("- The binary checkpoint is unpacked to float weights at load, so it costs the same per forward as the "
        "float model: binarization saves storage and transfer here, not CPU time."),
        "",
        f"Total run time: {result['total_seconds']:.0f} s.",
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

"""Job service benchmark on PostgreSQL + Redis: throughput with 1 and 2 worker processes,
and `GET /jobs/{id}` latency under concurrent pollers.

    python bench/jobs.py            # make bench-jobs
    python bench/jobs.py --quick    # a smaller run that checks the script works

Starts everything for real on this machine: a fresh database `flexbin_bench_<pid>` on the
local PostgreSQL (dropped after), a Redis DB (flushed), the API (`python -m api.run`) and
Celery workers (`python -m worker.main`). Submits the same batch of small jobs (a small
PedNet on a few Penn-Fudan images) at once to 1 and then 2 workers, and reports queue wait
(created -> claimed by a worker), per-step time and jobs per hour; then 20 concurrent
pollers hit `GET /jobs/{id}` on loopback for a bounded time. Writes bench/results/jobs.json
and jobs.md (`--no-openvino-export`: jobs_no_export.*, steps without the OpenVINO export and
timing that every step has done since issue 11: the service as it was before).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import (
    KEY,
    RESULTS,
    Proc,
    dataset_zip,
    fresh_database,
    fresh_redis_db,
    pct,
    service_env,
    start_api,
    start_worker,
    tiny_model,
    wait_until,
)
from service.store import Job, JobStep, get_sessionmaker

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 128, "width": 8}


def run_batch(client: httpx.Client, db_url: str, env: dict[str, str], log_dir: Path, workers: int,
              body: dict[str, Any], jobs: int, timeout: float, threads_per_worker: int) -> dict[str, Any]:
    threads = threads_per_worker or max(1, (os.cpu_count() or 2) // workers)
    worker_env = {**env, "OMP_NUM_THREADS": str(threads), "FLEXBIN_LOG_LEVEL": "INFO"}
    procs: list[Proc] = []
    try:
        for i in range(workers):
            procs.append(start_worker(worker_env, log_dir, f"worker{workers}-{i}"))
        started = time.time()
        ids = [client.post("/jobs", json=body).json()["id"] for _ in range(jobs)]

        def all_done() -> bool:
            statuses = [client.get(f"/jobs/{i}").json()["status"] for i in ids]
            return all(s in ("succeeded", "failed", "cancelled") for s in statuses)

        wait_until(all_done, timeout, f"{jobs} jobs on {workers} worker(s)", interval=1.0)
        makespan = time.time() - started
    finally:
        for p in procs:
            p.stop()
    with get_sessionmaker(db_url)() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        steps = s.scalars(select(JobStep.step_seconds).where(JobStep.job_id.in_(ids), JobStep.index > 0)).all()
    waits = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    runs = [(r.finished_at - r.started_at).total_seconds() for r in rows if r.started_at and r.finished_at]
    return {
        "workers": workers,
        "torch_threads_per_worker": threads,
        "jobs": jobs,
        "succeeded": sum(r.status == "succeeded" for r in rows),
        "makespan_s": round(makespan, 2),
        "jobs_per_hour": round(jobs / makespan * 3600, 1),
        "queue_wait_s": {"mean": round(statistics.mean(waits), 2), "p50": round(pct(waits, 50), 2),
                         "max": round(max(waits), 2)},
        "job_run_s": {"mean": round(statistics.mean(runs), 2), "max": round(max(runs), 2)},
        "step_s": {"mean": round(statistics.mean(steps), 3), "p50": round(pct(list(steps), 50), 3),
                   "max": round(max(steps), 3), "count": len(steps)},
    }


def poll_latency(url: str, job_id: str, pollers: int, seconds: float, max_requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def poller() -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            for _ in range(max_requests):  # bounded in count and in time
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = c.get(f"/jobs/{job_id}")
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    with lock:
                        errors[0] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=poller) for _ in range(pollers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ms = [x * 1000 for x in latencies]
    return {
        "pollers": pollers, "requests": len(ms), "errors": errors[0], "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ms) / elapsed, 1),
        "latency_ms": {"p50": round(pct(ms, 50), 1), "p95": round(pct(ms, 95), 1), "p99": round(pct(ms, 99), 1),
                       "max": round(max(ms), 1), "mean": round(statistics.mean(ms), 1)},
    }


def write_results(result: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Job service benchmark (`bench/jobs.py`)", "",
        f"{result['machine']}. PostgreSQL + Redis on loopback; each job: {result['job']['description']}.", "",
        "| workers | jobs | succeeded | makespan (s) | jobs/hour | queue wait mean / max (s) | step mean / max (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in result["throughput"]:
        lines.append(f"| {b['workers']} | {b['jobs']} | {b['succeeded']} | {b['makespan_s']} | {b['jobs_per_hour']} "
                     f"| {b['queue_wait_s']['mean']} / {b['queue_wait_s']['max']} "
                     f"| {b['step_s']['mean']} / {b['step_s']['max']} |")
    lat = result["latency"]
    lines += [
        "", (f"`GET /jobs/{{id}}` with {lat['pollers']} concurrent pollers for {lat['seconds']} s "
        f"(a finished job with {lat['steps']} steps): {lat['requests']} requests, {lat['errors']} errors, "
        f"{lat['requests_per_s']} req/s; latency p50 {lat['latency_ms']['p50']} ms, "
        f"p95 {lat['latency_ms']['p95']} ms, p99 {lat['latency_ms']['p99']} ms, max {lat['latency_ms']['max']} ms."),
        "", ("Queue wait is job creation to a worker claiming it. Each worker runs one job at a time "
        f"with {result['throughput'][0]['torch_threads_per_worker']} torch thread(s); on 2 cores a second "
        "worker overlaps data loading, evaluation and database writes with another job's compute. "
        "(With 2 torch threads per worker on these small jobs, one worker ran steps about 8x slower "
        "than with 1: OpenMP threads contend with the API and PostgreSQL for the 2 cores.)"), "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0: cores / workers); small jobs run best on 1")
    parser.add_argument("--no-openvino-export", action="store_true",
                        help="FLEXBIN_EXPORT_OPENVINO=false: steps without the IR export and its timing")
    args = parser.parse_args()
    export = not args.no_openvino_export
    name = "jobs" if export else "jobs_no_export"
    jobs = args.jobs or (2 if args.quick else 6)
    finetune_iters = 2 if args.quick else 10
    images = 8 if args.quick else 12
    poll_seconds = 3.0 if args.quick else 15.0

    log_dir = Path(tempfile.mkdtemp(prefix="flexbin-bench-"))
    with (fresh_database(f"flexbin_bench_{os.getpid()}") as db_url,
          fresh_redis_db(1 + os.getpid() % 15) as broker_url):
        env = service_env(db_url, broker_url, FLEXBIN_EXPORT_OPENVINO=str(export).lower())
        api, url = start_api(env, log_dir)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
                weights, card = tiny_model(CARD)
                model_id = client.post("/models", files={"weights": ("w.safetensors", weights)},
                                       data={"card": card}).json()["id"]
                dataset_id = client.post("/datasets", files={"archive": ("d.zip", dataset_zip(images))}).json()["id"]
                body = {"model_id": model_id, "dataset_id": dataset_id, "target": {"min_compression_ratio": 4.0},
                        "finetune_iters": finetune_iters, "batch_size": 4}
                throughput = []
                for workers in (1, 2):
                    print(f"{jobs} jobs on {workers} worker(s) ...", flush=True)
                    throughput.append(run_batch(client, db_url, env, log_dir, workers, body, jobs, 1800,
                                                args.threads))
                    print(json.dumps(throughput[-1]), flush=True)
                listing = client.get("/jobs", params={"limit": 1}).json()["data"][0]
            print("latency ...", flush=True)
            latency = poll_latency(url, listing["id"], 20, poll_seconds, 2000)
            latency["steps"] = len(listing["steps"])
            print(json.dumps(latency), flush=True)
        finally:
            api.stop()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "quick": args.quick,
        "openvino_export": export,
        "job": {"description": f"PedNet width 8 at 128 px, {images} Penn-Fudan images, target ratio 4, "
                               f"{finetune_iters} fine-tuning iterations per step, batch 4, "
                               f"OpenVINO export of every step {'on' if export else 'off'}",
                "body": {k: v for k, v in body.items() if not k.endswith("_id")}},
        "throughput": throughput,
        "latency": latency,
    }
    write_results(result, name)
    print(f"wrote {RESULTS / name}.json and .md (logs in {log_dir})")


if __name__ == "__main__":
    main()

"""Job service benchmark on PostgreSQL + Redis: throughput with 1 and 2 worker processes,
and `GET /jobs/{id}` latency under concurrent pollers.

    python -m bench.jobs            # make bench-jobs
    python -m bench.jobs --quick    # a smaller run that checks the script works

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
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench import report, stack
from service.store import Job, JobStep, get_sessionmaker

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 128, "width": 8}
POLLERS = 20


def main() -> None:
    args = parse_args()
    export = not args.no_openvino_export
    name = "jobs" if export else "jobs_no_export"
    log_dir = Path(tempfile.mkdtemp(prefix="flexbin-bench-"))
    with stack.postgres_stack("flexbin_bench", FLEXBIN_EXPORT_OPENVINO=str(export).lower()) as (db_url, env):
        api, url = stack.start_api(env, log_dir)
        try:
            with stack.client(url) as client:
                body = {**stack.upload(client, *stack.tiny_model(CARD), images=args.images),
                        "target": {"min_compression_ratio": 4.0}, "finetune_iters": args.finetune_iters,
                        "batch_size": 4}
                throughput = [run_batch(client, db_url, env, log_dir, workers, body, args) for workers in (1, 2)]
                listing = client.get("/jobs", params={"limit": 1}).json()["data"][0]
            report.log("latency ...")
            latency = {**poll_latency(url, listing["id"], POLLERS, args.poll_seconds, 2000),
                       "steps": len(listing["steps"])}
            report.log(json.dumps(latency))
        finally:
            api.stop()
    result = {
        "machine": report.machine(),
        "quick": args.quick,
        "openvino_export": export,
        "job": {"description": f"PedNet width 8 at 128 px, {args.images} Penn-Fudan images, target ratio 4, "
                               f"{args.finetune_iters} fine-tuning iterations per step, batch 4, "
                               f"OpenVINO export of every step {'on' if export else 'off'}",
                "body": {k: v for k, v in body.items() if not k.endswith("_id")}},
        "throughput": throughput,
        "latency": latency,
    }
    report.write_results(name, result, markdown(result))
    report.log(f"wrote {report.RESULTS / name}.json and .md (logs in {log_dir})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0: cores / workers); small jobs run best on 1")
    parser.add_argument("--no-openvino-export", action="store_true",
                        help="FLEXBIN_EXPORT_OPENVINO=false: steps without the IR export and its timing")
    args = parser.parse_args()
    args.jobs = args.jobs or (2 if args.quick else 6)
    args.finetune_iters = 2 if args.quick else 10
    args.images = 8 if args.quick else 12
    args.poll_seconds = 3.0 if args.quick else 15.0
    return args


def run_batch(client: httpx.Client, db_url: str, env: dict[str, str], log_dir: Path, workers: int,
              body: dict[str, Any], args: argparse.Namespace, timeout: float = 1800) -> dict[str, Any]:
    """`args.jobs` jobs submitted at once to `workers` fresh worker processes, until all end."""
    report.log(f"{args.jobs} jobs on {workers} worker(s) ...")
    threads = args.threads or max(1, (os.cpu_count() or 2) // workers)
    worker_env = {**env, "OMP_NUM_THREADS": str(threads), "FLEXBIN_LOG_LEVEL": "INFO"}
    procs: list[stack.Proc] = []
    try:
        for i in range(workers):
            procs.append(stack.start_worker(worker_env, log_dir, f"worker{workers}-{i}"))
        started = time.time()
        ids = [client.post("/jobs", json=body).json()["id"] for _ in range(args.jobs)]
        stack.wait_until(lambda: all(client.get(f"/jobs/{i}").json()["status"] in stack.TERMINAL for i in ids),
                         timeout, f"{args.jobs} jobs on {workers} worker(s)", interval=1.0)
        makespan = time.time() - started
    finally:
        for p in procs:
            p.stop()
    batch = {"workers": workers, "torch_threads_per_worker": threads, "jobs": args.jobs,
             **job_times(db_url, ids, makespan)}
    report.log(json.dumps(batch))
    return batch


def job_times(db_url: str, ids: list[str], makespan: float) -> dict[str, Any]:
    """What the database says about finished jobs: queue waits, run times, step times."""
    with get_sessionmaker(db_url)() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        steps = list(s.scalars(select(JobStep.step_seconds).where(JobStep.job_id.in_(ids), JobStep.index > 0)).all())
    waits = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    runs = [(r.finished_at - r.started_at).total_seconds() for r in rows if r.started_at and r.finished_at]
    return {
        "succeeded": sum(r.status == "succeeded" for r in rows),
        "makespan_s": round(makespan, 2),
        "jobs_per_hour": round(len(ids) / makespan * 3600, 1),
        "queue_wait_s": {"mean": round(statistics.mean(waits), 2), "p50": round(stack.pct(waits, 50), 2),
                         "max": round(max(waits), 2)},
        "job_run_s": {"mean": round(statistics.mean(runs), 2), "max": round(max(runs), 2)},
        "step_s": {"mean": round(statistics.mean(steps), 3), "p50": round(stack.pct(steps, 50), 3),
                   "max": round(max(steps), 3), "count": len(steps)},
    }


def poll_latency(url: str, job_id: str, pollers: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`pollers` threads reading `GET /jobs/{id}` until `seconds` pass (at most `max_requests` each)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def poller() -> None:
        mine: list[float] = []
        with stack.client(url, timeout=30) as c:
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
        "latency_ms": {"p50": round(stack.pct(ms, 50), 1), "p95": round(stack.pct(ms, 95), 1),
                       "p99": round(stack.pct(ms, 99), 1), "max": round(max(ms), 1),
                       "mean": round(statistics.mean(ms), 1)},
    }


# -- output -----------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lat = result["latency"]
    lines = [
        "# Job service benchmark (`python -m bench.jobs`)", "",
        f"{report.machine_text(result['machine'])}. PostgreSQL + Redis on loopback; each job: {result['job']['description']}.",
        "",
        *report.markdown_table(result["throughput"], [
            ("workers", "workers"), ("jobs", "jobs"), ("succeeded", "succeeded"), ("makespan (s)", "makespan_s"),
            ("jobs/hour", "jobs_per_hour"),
            ("queue wait mean / max (s)", lambda b: f"{b['queue_wait_s']['mean']} / {b['queue_wait_s']['max']}"),
            ("step mean / max (s)", lambda b: f"{b['step_s']['mean']} / {b['step_s']['max']}")], align="rrrrrrr"),
        "", _latency_text(lat), "",
        ("Queue wait is job creation to a worker claiming it. Each worker runs one job at a time with "
         f"{report.plural(result['throughput'][0]['torch_threads_per_worker'], 'torch thread')}; on 2 cores a second worker overlaps "
         "data loading, evaluation and database writes with another job's compute. (With 2 torch threads per worker "
         "on these small jobs, one worker ran steps about 8x slower than with 1: OpenMP threads contend with the API "
         "and PostgreSQL for the 2 cores.)"), "",
    ]
    return "\n".join(lines)


def _latency_text(lat: dict[str, Any]) -> str:
    ms = lat["latency_ms"]
    return (f"`GET /jobs/{{id}}` with {lat['pollers']} concurrent pollers for {lat['seconds']} s (a finished job with "
            f"{lat['steps']} steps): {lat['requests']} requests, {lat['errors']} errors, {lat['requests_per_s']} req/s; "
            f"latency p50 {ms['p50']} ms, p95 {ms['p95']} ms, p99 {ms['p99']} ms, max {ms['max']} ms.")


# -- bench/results/README.md ----------------------------------------------------------------
def readme_section(results: Path) -> str:
    """The runs with and without the per-step OpenVINO export, side by side."""
    head = "### Job service (`make bench-jobs`, [`jobs.md`](jobs.md))"
    runs = {name: r for name in ("jobs_no_export", "jobs") if (r := report.load_results(name, results))}
    pretrained = report.load_results("pretrained", results)  # what a real job's steps take
    return report.section(head, runs, lambda r: _readme_lines(r, pretrained))


def _readme_lines(runs: dict[str, dict[str, Any]], pretrained: dict[str, Any] | None) -> list[str]:
    labels = {name: ("with the per-step OpenVINO export" if r.get("openvino_export", True) else "no export")
              for name, r in runs.items()}
    first = next(iter(runs.values()))
    workers = [b["workers"] for b in first["throughput"]]

    def cell(run: dict[str, Any], n: int) -> str:
        b = next(b for b in run["throughput"] if b["workers"] == n)
        return (f"{b['jobs_per_hour']:.0f} jobs/h; wait {b['queue_wait_s']['mean']:.1f} / {b['queue_wait_s']['max']:.1f} s; "
                f"step {b['step_s']['mean']:.2f} s")

    lines = [
        (f"PostgreSQL + Redis on loopback, real worker processes ({first['throughput'][0]['torch_threads_per_worker']} "
         f"torch thread each); {first['throughput'][0]['jobs']} small jobs submitted at once "
         f"({first['job']['description'].split(', OpenVINO')[0]}). One run with the OpenVINO export of every step "
         "that jobs do since issue 11 and one without it (`--no-openvino-export`, "
         "[`jobs_no_export.md`](jobs_no_export.md): the service as before issue 11). Wait: queue wait mean / max; "
         "step: mean step time."), "",
        *report.markdown_table(workers, [("workers", lambda n: n)] + [
            (labels[name], lambda n, r=r: cell(r, n)) for name, r in runs.items()], align="rll"), "",
        *(f"- {labels[name]}: {_latency_text(r['latency'])}" for name, r in runs.items()), "",
    ]
    if len(runs) == 2:
        lines.append(_export_cost(runs["jobs_no_export"], runs["jobs"], pretrained))
    return lines


def _export_cost(without: dict[str, Any], with_export: dict[str, Any], pretrained: dict[str, Any] | None) -> str:
    pairs = list(zip(without["throughput"], with_export["throughput"], strict=True))
    extra = [b["step_s"]["mean"] - a["step_s"]["mean"] for a, b in pairs]
    factor = pairs[0][1]["step_s"]["mean"] / pairs[0][0]["step_s"]["mean"]
    real = ""
    if pretrained:
        steps = [s["step_seconds"] for s in pretrained["job"]["steps"][1:]]
        real = f" (the pretrained detector's steps: median {statistics.median(steps):.0f} s, `pretrained.md`)"
    return (f"The per-step OpenVINO export (convert, compile, time the forward) adds {extra[0]:.2f} s per step with "
            f"one worker ({', '.join(f'{x:.2f}' for x in extra[1:])} s with more, sharing the cores): {factor:.1f}x "
            f"these tiny steps' time; on real jobs, whose steps take tens of seconds{real}, it is a few per cent, "
            "and `FLEXBIN_EXPORT_OPENVINO=false` turns it off (such checkpoints are then served by the torch backend).")


if __name__ == "__main__":
    main()

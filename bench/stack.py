"""The service stack the benchmarks measure, on this machine, and how they drive it.

- Processes: a fresh PostgreSQL database + Redis DB (`postgres_stack`) or an embedded SQLite
  database in a temp folder (`sqlite_env`), the API (`start_api`) and Celery workers
  (`start_worker`) as real subprocesses: the same ones the integration tests use (`testkit`,
  re-exported here so each is written once), with `service_env`'s settings.
- Clients: `client(url)` (the bench key), `upload(client, weights, card)` (a model and a
  Penn-Fudan dataset), `store_finished_job` (checkpoint rows made outside a job, to serve).
- Load: `run_clients` (concurrent `/detect` clients for a fixed time), `batch_sizes` (the
  API's micro-batch counters), `pct` (percentiles), `rss_mib` (a process's memory).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from core.job_spec import PipelineConfig, Target
from service.store import Checkpoint, DetectorModel, Job, put_blob, session_scope
from service.store.jobs import JobStatus
from testkit.factories import dataset_zip, tiny_model
from testkit.servers import free_port
from testkit.stack import (
    Proc,
    fresh_database,
    fresh_redis_db,
    start_api_process,
    start_worker_process,
    wait_until,
    wait_worker_ready,
)

KEY = "bench-key"  # tenant "bench"
# Rate limiting on, far above anything a benchmark sends (its cost is part of what is measured,
# its 429s are not): one tenant's clients here send thousands of requests a minute.
UNREACHED_RATE_LIMIT = "1000000/minute"
TERMINAL = ("succeeded", "failed", "cancelled")

__all__ = ["KEY", "TERMINAL", "Proc", "batch_sizes", "client", "dataset_zip", "free_port", "fresh_database",
           "fresh_redis_db", "mean_batch_size", "pct", "postgres_stack", "rss_mib", "run_clients", "service_env", "sqlite_env",
           "start_api", "start_worker", "store_finished_job", "tiny_model", "upload", "wait_until"]


# -- processes --------------------------------------------------------------------------------
def service_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without any FlexBin setting, plus the stack's: no demo, no
    embedded worker, CPU, the `bench` key, rate limits that are never reached."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXBIN_", "DATABASE_URL", "CELERY_"))}
    env.update(DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, FLEXBIN_API_KEYS=f"bench:{KEY}",
               FLEXBIN_DEMO="false", FLEXBIN_EMBEDDED_WORKER="false", FLEXBIN_DEVICE="cpu",
               FLEXBIN_RATE_LIMIT=UNREACHED_RATE_LIMIT, FLEXBIN_RATE_LIMIT_DETECT=UNREACHED_RATE_LIMIT,
               FLEXBIN_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@contextlib.contextmanager
def postgres_stack(name: str, **extra: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(database URL, service environment) of a fresh PostgreSQL database `<name>_<pid>` and a
    flushed Redis DB, both removed after."""
    pid = os.getpid()
    with fresh_database(f"{name}_{pid}") as db_url, fresh_redis_db(1 + pid % 15) as broker_url:
        yield db_url, service_env(db_url, broker_url, **extra)


def sqlite_env(prefix: str, **extra: str) -> tuple[Path, str, dict[str, str]]:
    """(temp folder, database URL, service environment) of an embedded SQLite database and
    SQLite-backed queue in a new temp folder: for benches that need the API but no worker."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    db_url = f"sqlite:///{tmp}/flexbin.db"
    return tmp, db_url, service_env(db_url, f"sqla+sqlite:///{tmp}/broker.db", **extra)


def start_api(env: dict[str, str], log_dir: Path, name: str = "api", timeout: float = 120) -> tuple[Proc, str]:
    """`python -m api.run` on a free loopback port (also its `url`); returns once /healthz answers."""
    proc, proc.url = start_api_process(name, env, log_dir, timeout)
    return proc, proc.url


def start_worker(env: dict[str, str], log_dir: Path, name: str, timeout: float = 120) -> Proc:
    """`python -m worker.main`; returns once Celery logs "ready."."""
    proc = start_worker_process(name, env, log_dir)
    wait_worker_ready(proc, timeout)
    return proc


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (`VmHWM`: its peak) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


# -- clients ----------------------------------------------------------------------------------
def client(url: str, timeout: float = 120) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)


def upload(c: httpx.Client, weights: bytes, card: str, images: int = 2) -> dict[str, str]:
    """A model and a dataset of the first `images` Penn-Fudan images: {"model_id", "dataset_id"}."""
    model = c.post("/models", files={"weights": ("model.safetensors", weights)}, data={"card": card})
    dataset = c.post("/datasets", files={"archive": ("pennfudan.zip", dataset_zip(images))})
    model.raise_for_status()
    dataset.raise_for_status()
    return {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}


def store_finished_job(db_url: str, model_id: str, dataset_id: str, checkpoints: dict[str, dict[str, Any]],
                       target: Target | None = None) -> dict[str, str]:
    """A finished job with one checkpoint row per entry, as a job's steps would leave them, for
    checkpoints made outside a job: {name: checkpoint id}. Each entry: "data" (packed checkpoint
    bytes), optionally "zip" (its OpenVINO IR, what that backend serves), "binary_layers" and
    "compression_ratio"."""
    config = PipelineConfig(target=target or Target(min_compression_ratio=2.0))
    ids = {}
    with session_scope(db_url) as s:
        model = s.get(DetectorModel, model_id)
        assert model is not None, model_id
        job = Job(tenant_id=model.tenant_id, model_id=model_id, dataset_id=dataset_id, status=JobStatus.SUCCEEDED,
                  config=config.model_dump(mode="json"))
        s.add(job)
        s.flush()
        for step, (name, ck) in enumerate(checkpoints.items()):
            blob = put_blob(s, ck["data"])
            ir = put_blob(s, ck["zip"]) if ck.get("zip") else None
            row = Checkpoint(tenant_id=model.tenant_id, job_id=job.id, model_id=model_id, step=step,
                             architecture=model.architecture, binary_layers=ck.get("binary_layers", []), bits=1,
                             compression_ratio=ck.get("compression_ratio", 1.0), binary_layer_compression=None,
                             miss_rate=0.0, ap50=0.0, size_bytes=len(ck["data"]), blob_id=blob.id,
                             openvino_blob_id=ir.id if ir else None)
            s.add(row)
            s.flush()
            ids[name] = row.id
    return ids


# -- load -------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_clients(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float,
                timeout: float = 120) -> dict[str, Any]:
    """`clients` threads, each posting one image per `/detect` request until the time is up
    (each request at most `timeout` seconds). Errors: any answer but 200, and transport errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def post(c: httpx.Client, name: str, data: bytes) -> str:
        try:
            r = c.post("/detect", files={"images": (name, data, "image/png")})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "" if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"

    def one_client(index: int) -> None:
        with client(url, timeout) as c:
            i = index
            start_gate.wait()
            while time.monotonic() < deadline[0]:
                t0 = time.perf_counter()
                problem = post(c, *images[i % len(images)])
                elapsed = time.perf_counter() - t0
                i += clients
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(clients)]
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
    """The API's `/detect` micro-batch counters: {"batches", "images"} so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("flexbin_detect_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("flexbin_detect_batch_size_count"):
            count = float(line.split()[-1])
    return {"batches": count, "images": total}


def mean_batch_size(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The mean micro-batch between two `batch_sizes` readings (None: no batch ran)."""
    batches = after["batches"] - before["batches"]
    return round((after["images"] - before["images"]) / batches, 2) if batches else None

"""What the benchmarks share: the service stack on this machine (a fresh PostgreSQL database, a
Redis DB, the API and worker processes, the same ones the integration tests use), and small
helpers. The process and database helpers and the tiny inputs live in `testkit` (stack,
factories, servers); this module re-exports them so each is written once.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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

RESULTS = ROOT / "bench" / "results"
KEY = "bench-key"  # tenant "bench"
# Rate limiting on, far above anything a benchmark sends (its cost is part of what is measured,
# its 429s are not): one tenant's clients here send thousands of requests a minute.
UNREACHED_RATE_LIMIT = "1000000/minute"

__all__ = ["KEY", "RESULTS", "ROOT", "Proc", "dataset_zip", "free_port", "fresh_database", "fresh_redis_db",
           "git_commit", "machine", "pct", "service_env", "start_api", "start_worker", "tiny_model", "wait_until"]


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


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


def start_api(env: dict[str, str], log_dir: Path, name: str = "api", timeout: float = 120) -> tuple[Proc, str]:
    """`python -m api.run` on a free loopback port; returns once /healthz answers."""
    return start_api_process(name, env, log_dir, timeout)


def start_worker(env: dict[str, str], log_dir: Path, name: str, timeout: float = 120) -> Proc:
    """`python -m worker.main`; returns once Celery logs "ready."."""
    proc = start_worker_process(name, env, log_dir)
    wait_worker_ready(proc, timeout)
    return proc


def git_commit() -> dict[str, Any]:
    """The commit the working tree is on, and whether it had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine() -> dict[str, Any]:
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            **cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


#: Instruction sets that change what the CPU kernels can do (OpenVINO picks bf16 with AMX / AVX-512 BF16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_model() -> dict[str, str]:
    """The CPU's model name and which of ISA_FLAGS it has (Linux /proc/cpuinfo): timings from
    different sessions may come from different CPUs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "?"), "cpu_isa": " ".join(f for f in ISA_FLAGS if f in flags) or "-"}

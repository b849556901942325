"""`python -m worker.main` (`make worker`): one Celery worker process on the `binarize` queue.

One job at a time per process (solo pool); run several processes to use several GPUs or
cores. Extra arguments go to `celery worker` (e.g. `-n gpu1@%h`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from service.queue import BINARIZE_QUEUE
from service.settings import get_settings
from worker.celery_app import celery_app


def _die_with_parent() -> None:
    """An embedded worker (started by `api.run`) gets SIGTERM when the API process dies, even
    by SIGKILL, instead of living on as an orphan (Linux; elsewhere it is a no-op)."""
    parent = os.environ.get("FLEXBIN_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl
        sys.exit("worker: the API process that started this worker is gone")


def main(argv: list[str] | None = None) -> None:
    _die_with_parent()
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
    )
    try:
        settings.check_secrets()
    except ValueError as exc:
        sys.exit(f"worker: {exc}")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)

    args = [
        "worker", "-Q", BINARIZE_QUEUE, "--pool", "solo", "--concurrency", "1",
        "--loglevel", settings.log_level.upper(), "-n", f"flexbin-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
    ]
    celery_app.worker_main([*args, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()

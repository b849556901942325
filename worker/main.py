"""`python -m worker.main` (`make worker`): one Celery worker process on the `binarize` queue.

One job at a time per process (solo pool); run several processes to use several GPUs or
cores. Extra arguments go to `celery worker` (e.g. `-n gpu1@%h`).
"""
from __future__ import annotations

import logging
import os
import sys

from core.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
    )
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from worker.celery_app import BINARIZE_QUEUE, celery_app

    args = [
        "worker", "-Q", BINARIZE_QUEUE, "--pool", "solo", "--concurrency", "1",
        "--loglevel", settings.log_level.upper(), "-n", f"flexbin-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
    ]
    celery_app.worker_main([*args, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()

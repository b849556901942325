"""Celery tasks. They take ids only; the work is in `worker.jobs` and `service.demo`."""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from core.device import resolve_device
from service.demo import DemoInterrupted, seed_demo
from service.queue import BINARIZE_QUEUE, BINARIZE_TASK, DEMO_TASK, send_job
from service.settings import get_settings
from service.store import TRANSIENT_DB_ERRORS, session_scope
from service.store.jobs import requeue_orphans, unsent_jobs
from worker.celery_app import celery_app
from worker.jobs import SHUTTING_DOWN, run_job

log = logging.getLogger(__name__)


DATABASE_RETRY_COUNTDOWN = 10  # seconds between task retries while the database stays away


@celery_app.task(
    name=BINARIZE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, queue=BINARIZE_QUEUE,
    # The database stayed away longer than the worker's own retries: Celery tries the job
    # again later, for as long as it takes (it resumes from its committed steps), instead of
    # dropping its message.
    autoretry_for=TRANSIENT_DB_ERRORS, retry_kwargs={"countdown": DATABASE_RETRY_COUNTDOWN}, max_retries=None,
)
def binarize_run(self: Task, job_id: str) -> str:
    """Run (or resume) job `job_id`; a job owned by a live worker is retried after its lease."""
    try:
        outcome = run_job(job_id, get_settings())
    except TRANSIENT_DB_ERRORS:
        log.warning("job %s: database unavailable; retrying the task in %ds", job_id, DATABASE_RETRY_COUNTDOWN)
        raise
    if outcome.retry_after is not None:
        raise self.retry(countdown=outcome.retry_after)
    return outcome.status


@celery_app.task(name=DEMO_TASK, acks_late=True, reject_on_worker_lost=True, queue=BINARIZE_QUEUE)
def demo_seed() -> str:
    """Train the demo detector, store it with the Penn-Fudan dataset, start its job."""
    try:
        settings = get_settings()
        return seed_demo(settings, device=resolve_device(settings.device, what="FLEXBIN_DEVICE"),
                         interrupted=SHUTTING_DOWN.is_set, send_job=lambda job_id: send_job(celery_app, settings, job_id))
    except DemoInterrupted as exc:
        log.warning("demo: %s", exc)
        return "interrupted"


# -- orphan recovery -------------------------------------------------------------------------
_stop = threading.Event()


def _recover_loop() -> None:
    """Requeue jobs whose worker died, and send every queued job that has no message."""
    settings = get_settings()
    interval = max(1.0, settings.job_lease_seconds / 2)
    while True:
        try:
            with session_scope(settings.database_url) as s:
                requeued = requeue_orphans(s)
            for job_id in requeued:
                log.warning("job %s: its worker stopped renewing the lease; requeued", job_id)
            with session_scope(settings.database_url) as s:
                unsent = unsent_jobs(s, settings.stranded_job_seconds)
            for job_id in unsent:
                send_job(celery_app, settings, job_id)
                log.warning("job %s: queued with no message in the broker; sent it", job_id)
        except Exception:
            log.exception("orphan recovery failed; will retry")
        if _stop.wait(interval):
            return


@worker_ready.connect
def _start_recovery(**_: Any) -> None:
    threading.Thread(target=_recover_loop, name="flexbin-recovery", daemon=True).start()


@worker_shutting_down.connect
def _hand_back_running_job(**_: Any) -> None:
    SHUTTING_DOWN.set()


@worker_shutdown.connect
def _stop_recovery(**_: Any) -> None:
    _stop.set()

"""The queue contract between the API and the workers: task names, the one queue, and a Celery
app factory with no side effects.

Both sides import this module (the API to send, `worker.celery_app` to run the tasks); it
builds nothing at import, holds no task code and pulls in no torch. The API enqueues by task
name with ids only (`send_task("binarize.run", [job_id])`) and never imports `worker/`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from kombu import Exchange, Queue

from service.settings import Settings
from service.store import TRANSIENT_DB_ERRORS, session_scope
from service.store.jobs import mark_enqueued

log = logging.getLogger(__name__)

BINARIZE_QUEUE = "binarize"
"""The one declared queue: jobs and the demo. A typo in a queue name fails, it creates nothing."""
BINARIZE_TASK = "binarize.run"
"""args: [job_id]. Runs (or resumes) the job; harmless when it runs elsewhere or has ended."""
DEMO_TASK = "demo.seed"
"""args: []. Trains the demo detector, stores it with the Penn-Fudan dataset, starts its job."""


def make_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """A Celery app on `settings.celery_broker_url`, configured for FlexBin: one declared queue,
    late acknowledgement (a killed worker's job is redelivered), JSON only, bounded publish
    retries. `include`: the task modules a worker loads (the API loads none)."""
    app = Celery("flexbin", broker=settings.celery_broker_url, include=list(include))
    exchange = Exchange(BINARIZE_QUEUE, type="direct")
    # Redis redelivers an unacknowledged job after the visibility timeout; the SQLAlchemy
    # transport hands its options to create_engine and takes none of these.
    transport_options = (
        {"visibility_timeout": settings.broker_visibility_timeout,
         "socket_timeout": settings.broker_timeout_seconds,
         "socket_connect_timeout": settings.broker_timeout_seconds,
         "retry_on_timeout": True, "health_check_interval": 30}
        if settings.celery_broker_url.startswith(("redis", "rediss")) else {}
    )
    app.conf.update(
        # One explicit queue; a typo in a queue name fails instead of creating a queue.
        task_queues=(Queue(BINARIZE_QUEUE, exchange, routing_key=BINARIZE_QUEUE),),
        task_create_missing_queues=False,
        task_default_queue=BINARIZE_QUEUE,
        task_default_exchange=BINARIZE_QUEUE,
        task_default_routing_key=BINARIZE_QUEUE,
        # A job is acknowledged only when it ends; a killed worker's job is redelivered
        # (and the job lease in the database lets another worker resume it sooner).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Results live in the database, not in Celery.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A worker keeps reconnecting through a broker outage of any length; a send from the
        # API gives up after a few quick retries and answers 503 instead of hanging.
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.broker_timeout_seconds,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": settings.broker_publish_retries, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2.0},
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def send_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Hand job `job_id` to the broker and record that it was sent (`jobs.enqueued_at`).
    Raises when the broker cannot be reached within the publish retries. When only the record
    fails, the job is sent again later (a duplicate message is harmless)."""
    app.send_task(BINARIZE_TASK, args=[job_id], queue=BINARIZE_QUEUE)
    try:
        with session_scope(settings.database_url) as s:
            mark_enqueued(s, job_id)
    except TRANSIENT_DB_ERRORS:
        log.warning("job %s: sent, but the database was unavailable to record it", job_id)


def send_demo(app: Celery) -> None:
    """Queue the demo seeding (a worker trains; the API never does)."""
    app.send_task(DEMO_TASK, args=[], queue=BINARIZE_QUEUE)

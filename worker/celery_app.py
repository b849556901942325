"""The Celery app, configured from `core.settings`, and `send_job` (no task code, no torch: the API
imports it)."""
from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

BINARIZE_QUEUE = "binarize"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("flexbin", broker=settings.celery_broker_url, include=["worker.tasks"])
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
    from core.store import TRANSIENT_DB_ERRORS, session_scope
    from core.store.jobs import mark_enqueued

    app.send_task("binarize.run", args=[job_id], queue=BINARIZE_QUEUE)
    try:
        with session_scope(settings.database_url) as s:
            mark_enqueued(s, job_id)
    except TRANSIENT_DB_ERRORS:
        log.warning("job %s: sent, but the database was unavailable to record it", job_id)


celery_app = make_celery()

"""The Celery app, configured from `core.settings` (no task code, no torch: the API imports it)."""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from core.settings import Settings, get_settings

BINARIZE_QUEUE = "binarize"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("flexbin", broker=settings.celery_broker_url, include=["worker.tasks"])
    exchange = Exchange(BINARIZE_QUEUE, type="direct")
    # Redis redelivers an unacknowledged job after the visibility timeout; the SQLAlchemy
    # transport hands its options to create_engine and takes none of these.
    transport_options = (
        {"visibility_timeout": settings.broker_visibility_timeout}
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
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


celery_app = make_celery()

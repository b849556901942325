"""Enqueue work by task name with ids only (`service.queue`); the API never imports `worker/`."""
from __future__ import annotations

import threading

from celery import Celery

from service import queue
from service.settings import Settings

_apps: dict[str, Celery] = {}
_lock = threading.Lock()


def _celery(settings: Settings) -> Celery:
    """One sending app per broker URL, built on first use (configuration only: no tasks)."""
    with _lock:
        if settings.celery_broker_url not in _apps:
            _apps[settings.celery_broker_url] = queue.make_celery(settings)
        return _apps[settings.celery_broker_url]


def enqueue_job(settings: Settings, job_id: str) -> None:
    queue.send_job(_celery(settings), settings, job_id)


def enqueue_demo(settings: Settings) -> None:
    queue.send_demo(_celery(settings))


def broker_ok(settings: Settings, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        with _celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - any broker failure means not ready
        return False, f"{type(exc).__name__}: {exc}"

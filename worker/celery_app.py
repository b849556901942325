"""The worker's Celery app: `core.queue.make_celery` with this package's tasks, configured from
`core.settings`. Only worker processes import it (the API sends through `api.queue`)."""
from __future__ import annotations

from core.queue import make_celery
from core.settings import get_settings

celery_app = make_celery(get_settings(), include=["worker.tasks"])

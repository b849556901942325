"""The worker's Celery app: `service.queue.make_celery` with this package's tasks, configured from
`service.settings`. Only worker processes import it (the API sends through `api.queue`)."""
from __future__ import annotations

from service.queue import make_celery
from service.settings import get_settings

celery_app = make_celery(get_settings(), include=["worker.tasks"])

"""A worker's side of job ownership: who it is (`new_worker_id`) and the heartbeat thread
that renews a claimed job's lease while the job runs.

The lease itself (claim, renew, requeue of orphans whose worker vanished) is part of the job
lifecycle, `service.store.jobs`; `worker.tasks` runs the periodic orphan recovery.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Self

from service.store import TRANSIENT_DB_ERRORS, session_scope
from service.store.jobs import renew_lease

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """Unique per claim attempt, so a redelivery in the same process is a different owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews a job's lease every `lease_seconds / 4` from a daemon thread."""

    def __init__(self, url: str, job_id: str, owner: str, lease_seconds: float) -> None:
        self.url, self.job_id, self.owner, self.lease_seconds = url, job_id, owner, lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = max(0.5, self.lease_seconds / 4)
        while not self._stop.wait(interval):
            try:
                with session_scope(self.url) as s:
                    renewed = renew_lease(s, self.job_id, self.owner, self.lease_seconds)
                if not renewed:
                    log.warning("job %s: lease lost (taken over or finished elsewhere)", self.job_id)
                    self.lost.set()
                    return
            except TRANSIENT_DB_ERRORS as exc:  # the database is away: keep trying; it may come back in time
                log.warning("job %s: lease renewal failed (%s)", self.job_id, str(exc).splitlines()[0][:200])
            except Exception:
                log.exception("job %s: lease renewal failed", self.job_id)

"""Job ownership across workers: a lease in the `jobs` row.

A worker *claims* a queued job (or a running one whose lease expired) and renews the lease
from a heartbeat thread while it runs. Every write a worker makes to a job is conditioned on
still owning the lease, so two deliveries of the same job never both write. A job whose
worker vanished (kill -9, machine lost) is put back in the queue by `requeue_orphans`, which
every worker runs periodically; the new owner resumes from the committed steps.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Self

from sqlalchemy import or_, select, update

from core.store import TRANSIENT_DB_ERRORS, Job, session_scope, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def new_worker_id() -> str:
    """Unique per claim attempt, so a redelivery in the same process is a different owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claim:
    state: str  # "claimed", "done" (terminal or gone), "busy" (another live owner)
    retry_after: float = 0.0
    status: str = ""


def claim(url: str, job_id: str, owner: str, lease_seconds: float) -> Claim:
    now = utcnow()
    with session_scope(url) as s:
        claimed = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_(("queued", "running")),
                # (lease_owner == owner: a retried claim whose first commit did go through)
                or_(Job.lease_owner.is_(None), Job.lease_expires_at < now, Job.lease_owner == owner),
            )
            .values(
                status="running",
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                progress_updated_at=now,
                progress_message="starting",
            )
        ).rowcount
        if claimed:
            job = s.get(Job, job_id)
            assert job is not None
            if job.started_at is None:
                job.started_at = now
            return Claim("claimed")
        row = s.execute(select(Job.status, Job.lease_expires_at).where(Job.id == job_id)).one_or_none()
    if row is None or row[0] not in ("queued", "running"):
        return Claim("done", status=row[0] if row else "missing")
    remaining = (row[1] - now).total_seconds() if row[1] is not None else lease_seconds
    return Claim("busy", retry_after=max(1.0, remaining + 1.0))


def renew(url: str, job_id: str, owner: str, lease_seconds: float) -> bool:
    with session_scope(url) as s:
        return bool(
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            ).rowcount
        )


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
                if not renew(self.url, self.job_id, self.owner, self.lease_seconds):
                    log.warning("job %s: lease lost (taken over or finished elsewhere)", self.job_id)
                    self.lost.set()
                    return
            except TRANSIENT_DB_ERRORS as exc:  # the database is away: keep trying; it may come back in time
                log.warning("job %s: lease renewal failed (%s)", self.job_id, str(exc).splitlines()[0][:200])
            except Exception:
                log.exception("job %s: lease renewal failed", self.job_id)


def requeue_orphans(url: str, grace_seconds: float = 0.0) -> list[str]:
    """Jobs left `running` by a dead worker (lease expired) go back to `queued` with no message
    (`core.store.dispatch.unsent_jobs` finds them); returns their ids. Jobs past MAX_ATTEMPTS
    fail instead."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    requeued: list[str] = []
    with session_scope(url) as s:
        stale = s.execute(
            select(Job.id, Job.attempts).where(Job.status == "running", Job.lease_expires_at < cutoff)
        ).all()
        for job_id, attempts in stale:
            gave_up = attempts >= MAX_ATTEMPTS
            values = (
                {"status": "failed", "error": f"gave up after {attempts} attempts (worker lost each time)",
                 "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None}
                if gave_up
                else {"status": "queued", "lease_owner": None, "lease_expires_at": None, "enqueued_at": None,
                      "progress_message": "worker lost; requeued"}
            )
            done = s.execute(
                update(Job).where(Job.id == job_id, Job.status == "running", Job.lease_expires_at < cutoff)
                .values(**values)
            ).rowcount
            if done and not gave_up:
                requeued.append(job_id)
            elif done:
                log.error("job %s failed: gave up after %d attempts", job_id, attempts)
    return requeued

"""Which queued jobs have a message in the broker.

The API commits a job row and then sends its message; a process can die in between, and a
requeued job needs a new message. `jobs.enqueued_at` records the last successful send, so
workers can find queued jobs with no known message and send one (`unsent_jobs`). Sending a
job twice is harmless: a worker claims a job through its lease, and a delivery for a job
that is running elsewhere or finished does nothing.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update

from core.store.models import Job, utcnow
from core.store.session import session_scope


def mark_enqueued(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=utcnow()))


def unsent_jobs(url: str, older_than_seconds: float) -> list[str]:
    """Queued jobs with no message sent: requeued ones (attempted before) at once, new ones
    once they are `older_than_seconds` old (the API sends those itself, normally at once)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with session_scope(url) as s:
        return list(s.scalars(
            select(Job.id).where(
                Job.status == "queued", Job.enqueued_at.is_(None),
                or_(Job.attempts > 0, Job.created_at < cutoff),
            ).order_by(Job.created_at)
        ))

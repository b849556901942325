"""The job lifecycle: one `JobStatus`, and one function per transition of a job row.

Every write to a `jobs` row goes through this module (the API, the worker, its lease thread,
the recovery loop and the demo call it), so which status may follow which is decided here:

    (new) ──create──▶ queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
                       │  ▲                │ ▲
                       │  └── hand back ───┤ └─ claim again (lease expired), renew, commit step,
                       │      requeue      │    progress, request cancel
                       └── cancel ─────────┴──────────▶ cancelled        (give up ─▶ failed)

A worker owns a running job through a lease (`lease_owner`, `lease_expires_at`) that it
renews while alive; every write a worker makes is conditioned on still holding it, so two
deliveries of the same job never both write. A job whose worker vanished (kill -9, machine
lost) is put back in the queue by `requeue_orphans`; its next owner resumes from the
committed steps. `enqueued_at` records the last time the job's message was handed to the
broker: a queued job without one (the API died between commit and send; a requeued job) is
found by `unsent_jobs` and sent by a worker. Sending a job twice is harmless, the lease lets
one delivery run it.

Each function works in the caller's session (its transaction is the caller's unit of work)
and is the only place that spells the statuses it reads and writes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.job_spec import INT8, PipelineConfig, StepMetrics
from service.store.blobs import put_blob
from service.store.deployments import deploy, serve_float_step
from service.store.session import rows_changed
from service.store.tables import (
    Checkpoint,
    DetectorModel,
    Job,
    JobStep,
    columns_of,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
"""A job whose worker was lost this many times fails instead of being requeued again."""


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Transition:
    """A write to a job row: the statuses it applies to and the status it leaves (None: the
    status stays what it was)."""

    name: str
    sources: frozenset[JobStatus]
    target: JobStatus | None = None


CLAIM = Transition("claim", ACTIVE, JobStatus.RUNNING)  # running: only once its lease expired
RENEW_LEASE = Transition("renew lease", frozenset({JobStatus.RUNNING}))
COMMIT_STEP = Transition("commit step", frozenset({JobStatus.RUNNING}))
PROGRESS = Transition("progress", frozenset({JobStatus.RUNNING}))
REQUEST_CANCEL = Transition("request cancel", ACTIVE)  # the flag a running job's worker polls
CANCEL_QUEUED = Transition("cancel", frozenset({JobStatus.QUEUED}), JobStatus.CANCELLED)
SUCCEED = Transition("succeed", frozenset({JobStatus.RUNNING}), JobStatus.SUCCEEDED)
FAIL = Transition("fail", frozenset({JobStatus.RUNNING}), JobStatus.FAILED)
CANCEL_RUNNING = Transition("stop cancelled", frozenset({JobStatus.RUNNING}), JobStatus.CANCELLED)
HAND_BACK = Transition("hand back", frozenset({JobStatus.RUNNING}), JobStatus.QUEUED)
REQUEUE_ORPHAN = Transition("requeue orphan", frozenset({JobStatus.RUNNING}), JobStatus.QUEUED)
GIVE_UP = Transition("give up", frozenset({JobStatus.RUNNING}), JobStatus.FAILED)
MARK_ENQUEUED = Transition("mark enqueued", frozenset({JobStatus.QUEUED}))
WITHDRAW = Transition("withdraw unsent", frozenset({JobStatus.QUEUED}))  # deletes the row

TRANSITIONS = (CLAIM, RENEW_LEASE, COMMIT_STEP, PROGRESS, REQUEST_CANCEL, CANCEL_QUEUED, SUCCEED, FAIL,
               CANCEL_RUNNING, HAND_BACK, REQUEUE_ORPHAN, GIVE_UP, MARK_ENQUEUED, WITHDRAW)
FINISH = {JobStatus.SUCCEEDED: SUCCEED, JobStatus.FAILED: FAIL, JobStatus.CANCELLED: CANCEL_RUNNING}

ALLOWED: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    (source, t.target or source) for t in TRANSITIONS for source in t.sources
)
"""Every (status before, status after) a write may make; a terminal status has no way out."""


class LeaseLost(Exception):
    """Another worker owns the job now (or it ended); stop without writing anything."""


class JobEnded(ValueError):
    """The job has already ended; the message says how."""


@dataclass(frozen=True)
class Claim:
    state: str  # "claimed", "done" (terminal or gone), "busy" (another live owner)
    retry_after: float = 0.0
    status: str = ""


def _in(transition: Transition) -> Any:
    return Job.status.in_(sorted(transition.sources))


def _owned(job_id: str, owner: str, transition: Transition) -> Any:
    """The job, only while `owner` holds its lease (and the transition applies)."""
    return (Job.id == job_id) & (Job.lease_owner == owner) & _in(transition)


# -- the API's side -------------------------------------------------------------------------
def create_job(session: Session, *, tenant_id: str, model_id: str, dataset_id: str, config: PipelineConfig,
               deploy_on_success: bool = False) -> Job:
    """A new queued job with no message sent yet (the caller commits, then enqueues)."""
    job = Job(tenant_id=tenant_id, model_id=model_id, dataset_id=dataset_id, config=config.model_dump(mode="json"),
              status=JobStatus.QUEUED, deploy_on_success=deploy_on_success)
    session.add(job)
    session.flush()
    return job


def withdraw_unsent(session: Session, job: Job) -> None:
    """Delete a queued job whose message could not be sent: it never existed for the client."""
    if job.status in WITHDRAW.sources and job.enqueued_at is None:
        session.delete(job)
        session.flush()


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job no worker holds is cancelled at once; a queued or running one gets the
    flag its worker polls. JobEnded when it has already ended."""
    cancel_now = (
        update(Job).where(Job.id == job.id, _in(CANCEL_QUEUED), Job.lease_owner.is_(None))
        .values(status=CANCEL_QUEUED.target, cancel_requested=True, finished_at=utcnow(),
                progress_message=str(CANCEL_QUEUED.target))
    )
    if not rows_changed(session, cancel_now):
        flag = (
            update(Job).where(Job.id == job.id, _in(REQUEST_CANCEL))
            .values(cancel_requested=True, progress_message="cancel requested")
        )
        if not rows_changed(session, flag):
            session.refresh(job)
            raise JobEnded(f"job {job.id} already {job.status}")
    session.flush()
    session.refresh(job)
    return job


# -- the broker's side ----------------------------------------------------------------------
def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that the job's message was handed to the broker."""
    session.execute(update(Job).where(Job.id == job_id, _in(MARK_ENQUEUED)).values(enqueued_at=utcnow()))


def unsent_jobs(session: Session, older_than_seconds: float) -> list[str]:
    """Queued jobs with no message sent: requeued ones (attempted before) at once, new ones
    once they are `older_than_seconds` old (the API sends those itself, normally at once)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    return list(session.scalars(
        select(Job.id).where(
            Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None),
            or_(Job.attempts > 0, Job.created_at < cutoff),
        ).order_by(Job.created_at)
    ))


# -- the worker's side ----------------------------------------------------------------------
def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> Claim:
    """Take the job's lease: a queued job, or a running one whose lease expired (or that this
    `owner` already holds: a retried claim whose first commit did go through)."""
    now = utcnow()
    take = (
        update(Job)
        .where(Job.id == job_id, _in(CLAIM),
               or_(Job.lease_owner.is_(None), Job.lease_expires_at < now, Job.lease_owner == owner))
        .values(status=CLAIM.target, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1, progress_updated_at=now, progress_message="starting")
    )
    if rows_changed(session, take):
        job = session.get(Job, job_id)
        assert job is not None
        if job.started_at is None:
            job.started_at = now
        return Claim("claimed")
    row = session.execute(select(Job.status, Job.lease_expires_at).where(Job.id == job_id)).one_or_none()
    if row is None or row[0] not in CLAIM.sources:
        return Claim("done", status=row[0] if row else "missing")
    remaining = (row[1] - now).total_seconds() if row[1] is not None else lease_seconds
    return Claim("busy", retry_after=max(1.0, remaining + 1.0))


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Push the lease's expiry on; False when `owner` no longer holds it."""
    renew = (update(Job).where(_owned(job_id, owner, RENEW_LEASE))
             .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    return rows_changed(session, renew) > 0


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def commit_step(session: Session, job_id: str, owner: str, step: StepMetrics, checkpoint: bytes,
                state: bytes, *, openvino: bytes | None = None, openvino_int8: bytes | None = None) -> str | None:
    """Store a finished step: its packed checkpoint, resume state, OpenVINO IR zip and int8 IR zip (blobs), the checkpoint
    row, the `job_steps` row and the job's progress, in the caller's transaction, while
    `owner` holds the lease (LeaseLost otherwise). Returns the checkpoint id, or None when this
    owner had already committed the step (a retry whose first commit went through before the
    connection dropped). Step 0, the float model, is deployed at once where the tenant's
    deployment waits for this job's model (`deployments.serve_float_step`)."""
    job = session.scalars(select(Job).where(_owned(job_id, owner, COMMIT_STEP)).with_for_update()).one_or_none()
    if job is None:
        raise LeaseLost()
    writer = session.scalar(select(JobStep.worker).where(JobStep.job_id == job_id, JobStep.index == step.index))
    if writer is not None:
        if writer == owner:
            return None
        raise LeaseLost()
    architecture = session.scalar(select(DetectorModel.architecture).where(DetectorModel.id == job.model_id))
    metrics = step.model_dump(mode="json")
    row = Checkpoint(**columns_of(Checkpoint, metrics), tenant_id=job.tenant_id, job_id=job.id,
                     model_id=job.model_id, step=step.index, architecture=architecture,
                     size_bytes=len(checkpoint), blob_id=put_blob(session, checkpoint).id,
                     openvino_blob_id=put_blob(session, openvino).id if openvino else None,
                     openvino_int8_blob_id=put_blob(session, openvino_int8).id if openvino_int8 else None)
    session.add(row)
    session.flush()
    session.add(JobStep(**columns_of(JobStep, metrics), job_id=job.id, checkpoint_id=row.id,
                        state_blob_id=put_blob(session, state).id, worker=owner))
    job.progress_step = step.index
    job.progress_updated_at = utcnow()
    job.progress_message = f"step {step.index} committed"
    try:
        session.flush()
    except IntegrityError as exc:  # (job_id, index) exists: another writer got there first
        raise LeaseLost() from exc
    if step.index == 0 and serve_float_step(session, job.tenant_id, job.model_id, row.id):
        log.info("job %s: deployed step 0 (float model) checkpoint %s until the job ends", job.id, row.id)
    return row.id


def report_progress(session: Session, job_id: str, owner: str, *, step: int, total_steps: int | None,
                    percent: float, eta_seconds: float | None, message: str | None) -> bool:
    """Write the running job's progress; False when `owner` no longer holds the lease."""
    write = update(Job).where(_owned(job_id, owner, PROGRESS)).values(
        progress_step=step, progress_total_steps=total_steps, progress_percent=min(float(percent), 99.9),
        progress_eta_seconds=eta_seconds, progress_message=message or None, progress_updated_at=utcnow(),
    )
    return rows_changed(session, write) > 0


def hand_back(session: Session, job_id: str, owner: str) -> bool:
    """Put the running job back in the queue with no message (its committed steps stay; the
    caller sends it again). False when `owner` no longer holds the lease."""
    requeue = update(Job).where(_owned(job_id, owner, HAND_BACK)).values(
        status=HAND_BACK.target, lease_owner=None, lease_expires_at=None, enqueued_at=None,
        progress_updated_at=utcnow(), progress_message="worker shut down; requeued",
    )
    return rows_changed(session, requeue) > 0


def finish(session: Session, job_id: str, owner: str, status: JobStatus, *, selected: int | None = None,
           error: str | None = None) -> bool:
    """End the running job as `status` (succeeded with the selected step, failed with the
    error, or cancelled) and release its lease; a succeeded job with `deploy_on_success`
    deploys its selected checkpoint, as the file its `deploy_format` judged where it was made.
    False when `owner` no longer holds the lease."""
    transition = FINISH[status]
    now = utcnow()
    values: dict[str, Any] = {
        "status": transition.target, "finished_at": now, "lease_owner": None, "lease_expires_at": None,
        "progress_message": "done" if transition is SUCCEED else str(status), "progress_updated_at": now,
        "error": error,
    }
    if transition is SUCCEED:
        values.update(selected_step_index=selected, progress_percent=100.0, progress_eta_seconds=0.0)
    if not rows_changed(session, update(Job).where(_owned(job_id, owner, transition)).values(**values)):
        return False
    job = session.get(Job, job_id)
    assert job is not None
    if transition is SUCCEED and job.deploy_on_success and selected is not None:
        checkpoint = session.scalars(
            select(Checkpoint).join(JobStep, JobStep.checkpoint_id == Checkpoint.id)
            .where(JobStep.job_id == job.id, JobStep.index == selected)
        ).one()
        as_int8 = job.config.get("deploy_format") == INT8 and checkpoint.openvino_int8_blob_id is not None
        deploy(session, job.tenant_id, checkpoint_id=checkpoint.id, model_id=job.model_id,
               format=INT8 if as_int8 else None)
        log.info("job %s: deployed checkpoint %s%s", job.id, checkpoint.id, " as its int8 file" if as_int8 else "")
    return True


def requeue_orphans(session: Session, grace_seconds: float = 0.0) -> list[str]:
    """Jobs left running by a dead worker (lease expired) go back to queued with no message
    (`unsent_jobs` finds them); returns their ids. A job past MAX_ATTEMPTS fails instead."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    requeued: list[str] = []
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < cutoff)
    for job_id, attempts in session.execute(select(Job.id, Job.attempts).where(expired)).all():
        gave_up = attempts >= MAX_ATTEMPTS
        values = (
            {"status": GIVE_UP.target, "error": f"gave up after {attempts} attempts (worker lost each time)",
             "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None}
            if gave_up
            else {"status": REQUEUE_ORPHAN.target, "lease_owner": None, "lease_expires_at": None,
                  "enqueued_at": None, "progress_message": "worker lost; requeued"}
        )
        done = rows_changed(session, update(Job).where(Job.id == job_id, expired).values(**values))
        if done and not gave_up:
            requeued.append(job_id)
        elif done:
            log.error("job %s failed: gave up after %d attempts", job_id, attempts)
    return requeued


def completed_steps(session: Session, job_id: str) -> list[tuple[StepMetrics, str, str]]:
    """The job's committed steps in order: (metrics, checkpoint blob id, resume-state blob id)."""
    rows = session.execute(
        select(JobStep, Checkpoint.blob_id).join(Checkpoint, Checkpoint.id == JobStep.checkpoint_id)
        .where(JobStep.job_id == job_id).order_by(JobStep.index)
    ).all()
    return [(StepMetrics.model_validate(step, from_attributes=True), blob_id, step.state_blob_id)
            for step, blob_id in rows]

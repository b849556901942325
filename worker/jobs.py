"""Run one binarization job: load from the store, call `core.pipeline.run`, write back.

Each finished step is committed in ONE transaction (checkpoint blob + resume-state blob +
checkpoint row + job_steps row + progress), conditioned on this worker still owning the
job's lease; `job_steps` is unique on (job_id, index). A redelivered or requeued job
resumes from its committed steps, so no step is computed into the database twice.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from core.settings import Settings
from core.store import (
    TRANSIENT_DB_ERRORS,
    Checkpoint,
    Dataset,
    Deployment,
    Job,
    JobStep,
    Model,
    get_blob_bytes,
    put_blob,
    retry_transient,
    session_scope,
    utcnow,
)
from worker.device import resolve_device
from worker.lease import Heartbeat, claim, new_worker_id

log = logging.getLogger(__name__)

SHUTTING_DOWN = threading.Event()
"""Set on the worker's warm shutdown (SIGTERM): a running job hands itself back to the queue
at its next fine-tuning iteration instead of holding the shutdown up until it ends."""


PROGRESS_LOG_SECONDS = 15.0


class LeaseLost(Exception):
    """Another worker owns the job now; stop without writing anything."""


@dataclass(frozen=True)
class JobRun:
    status: str
    retry_after: float | None = None


def _deploy_float_step(session: Any, job: Job, checkpoint_id: str) -> None:
    """Serve step 0 (the float model, packed) while the job runs, when the tenant's deployment
    names this job's model but no checkpoint yet (the demo: "/detect serves the float model
    until its job ends"). A deployment that already names a checkpoint is left alone."""
    deployment = session.get(Deployment, job.tenant_id)
    if deployment is not None and deployment.checkpoint_id is None and deployment.model_id == job.model_id:
        deployment.checkpoint_id = checkpoint_id
        deployment.updated_at = utcnow()
        log.info("job %s: deployed step 0 (float model) checkpoint %s until the job ends", job.id, checkpoint_id)


def run_job(job_id: str, settings: Settings) -> JobRun:
    url = settings.database_url
    owner = new_worker_id()
    got = retry_transient(lambda: claim(url, job_id, owner, settings.job_lease_seconds),
                          what=f"job {job_id}: claim", within=settings.database_retry_seconds)
    if got.state == "done":
        log.info("job %s: nothing to do (%s)", job_id, got.status)
        return JobRun(got.status)
    if got.state == "busy":
        log.info("job %s: owned by a live worker; retry in %.0fs", job_id, got.retry_after)
        return JobRun("busy", retry_after=got.retry_after)
    log.info("job %s: claimed by %s", job_id, owner)
    with Heartbeat(url, job_id, owner, settings.job_lease_seconds) as heartbeat:
        return _JobExecution(job_id, owner, settings, heartbeat).execute()


class _JobExecution:
    def __init__(self, job_id: str, owner: str, settings: Settings, heartbeat: Heartbeat) -> None:
        self.job_id, self.owner, self.settings, self.heartbeat = job_id, owner, settings, heartbeat
        self.url = settings.database_url
        self._last_progress = 0.0
        self._last_logged = 0.0
        self._last_poll = 0.0
        self._cancel = False
        self.tenant_id = ""
        self._retry_within = settings.database_retry_seconds
        self._db_warned = 0.0

    # -- the run ----------------------------------------------------------------------------
    def execute(self) -> JobRun:
        from core.pipeline import Cancelled

        try:
            if self._cancel_requested(force=True):
                raise Cancelled("cancelled before start")
            inputs = retry_transient(self._load, what=f"job {self.job_id}: load", within=self._retry_within)
            result = self._run_pipeline(*inputs)
        except Cancelled:
            if self.heartbeat.lost.is_set():
                return JobRun("lease-lost")
            if SHUTTING_DOWN.is_set() and not self._cancel:
                self._hand_back()
                return JobRun("requeued")
            self._finish("cancelled", message="cancelled")
            log.info("job %s: cancelled", self.job_id)
            return JobRun("cancelled")
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to its new owner", self.job_id)
            return JobRun("lease-lost")
        except TRANSIENT_DB_ERRORS:
            # The database stayed away past our retries: the task retries the job later (it
            # resumes from its committed steps) rather than failing it for good.
            log.exception("job %s: database unavailable; the job will be retried", self.job_id)
            raise
        except Exception as exc:
            if self.heartbeat.lost.is_set():
                return JobRun("lease-lost")
            # Bad user data reads as the core message; anything else also names its type.
            error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s: failed", self.job_id)
            self._finish("failed", error=error[:4000], message="failed")
            return JobRun("failed")
        self._finish("succeeded", selected=result.selected_index, message="done")
        log.info("job %s: succeeded, selected step %d", self.job_id, result.selected_index)
        return JobRun("succeeded")

    def _load(self) -> tuple[Any, ...]:
        from core.checkpoint import load_model_bytes
        from core.data import read_dataset_zip, split_records
        from core.pipeline import PipelineConfig, StepOutcome

        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            self.tenant_id = job.tenant_id
            model_row = s.get(Model, job.model_id)
            dataset_row = s.get(Dataset, job.dataset_id)
            assert model_row is not None and dataset_row is not None
            weights = get_blob_bytes(s, model_row.weights_blob_id)
            card_json = json.dumps(model_row.card)
            archive = get_blob_bytes(s, dataset_row.archive_blob_id)
            config = PipelineConfig.model_validate(job.config)
            completed = []
            rows = s.execute(
                select(JobStep, Checkpoint.blob_id)
                .join(Checkpoint, Checkpoint.id == JobStep.checkpoint_id)
                .where(JobStep.job_id == self.job_id)
                .order_by(JobStep.index)
            ).all()
            for step, checkpoint_blob in rows:
                completed.append(StepOutcome(
                    index=step.index, layers=step.layers, binary_layers=step.binary_layers, bits=step.bits,
                    compression_ratio=step.compression_ratio,
                    binary_layer_compression=step.binary_layer_compression, miss_rate=step.miss_rate,
                    ap50=step.ap50, step_seconds=step.step_seconds, checkpoint_bytes=step.checkpoint_bytes,
                    checkpoint=get_blob_bytes(s, checkpoint_blob), state=get_blob_bytes(s, step.state_blob_id),
                    fppi_curve=[tuple(p) for p in step.fppi_curve], latency_ms=step.latency_ms,
                ))
            self.model_id = model_row.id
            self.architecture = model_row.architecture
        if completed:
            log.info("job %s: resuming after step %d", self.job_id, completed[-1].index)
        model, card = load_model_bytes(weights, card_json)
        records = read_dataset_zip(archive, **self.settings.dataset_zip_limits())
        train, val = split_records(records)
        if not train or not val:
            raise ValueError(f"dataset of {len(records)} images is too small to split into train and validation")
        return model, card, train, val, config, completed

    def _run_pipeline(self, model: Any, card: Any, train: Any, val: Any, config: Any, completed: Any) -> Any:
        from core import pipeline

        device = resolve_device(self.settings.device)
        log.info("job %s: running on %s (%d train / %d val images)", self.job_id, device, len(train), len(val))
        return pipeline.run(
            model, card, train, val, config,
            completed=completed, on_step=self._on_step, on_progress=self._on_progress,
            should_stop=self._should_stop, device=device, export_openvino=self.settings.export_openvino,
        )

    # -- callbacks --------------------------------------------------------------------------
    def _owned(self) -> Any:
        return (Job.id == self.job_id) & (Job.lease_owner == self.owner) & (Job.status == "running")

    def _on_step(self, outcome: Any) -> None:
        """Commit the step, its checkpoint and its resume state in one transaction, retried
        with backoff while the database is away."""
        retry_transient(lambda: self._commit_step(outcome), what=f"job {self.job_id}: commit step {outcome.index}",
                        within=self._retry_within)
        log.info(
            "job %s: step %d committed (ratio %.2f, MR %.3f, AP50 %.3f, %.1fs, latency %s)", self.job_id, outcome.index,
            outcome.compression_ratio, outcome.miss_rate, outcome.ap50, outcome.step_seconds,
            "n/a" if outcome.latency_ms is None else f"{outcome.latency_ms:.2f} ms",
        )

    def _commit_step(self, outcome: Any) -> None:
        try:
            with session_scope(self.url) as s:
                job = s.scalars(select(Job).where(self._owned()).with_for_update()).one_or_none()
                if job is None:
                    raise LeaseLost()
                checkpoint_blob = put_blob(s, outcome.checkpoint)
                state_blob = put_blob(s, outcome.state)
                openvino_blob = put_blob(s, outcome.openvino) if outcome.openvino else None
                checkpoint = Checkpoint(
                    tenant_id=job.tenant_id, job_id=job.id, model_id=job.model_id, step=outcome.index,
                    architecture=self.architecture, binary_layers=list(outcome.binary_layers), bits=outcome.bits,
                    compression_ratio=outcome.compression_ratio,
                    binary_layer_compression=outcome.binary_layer_compression, miss_rate=outcome.miss_rate,
                    ap50=outcome.ap50, size_bytes=len(outcome.checkpoint), blob_id=checkpoint_blob.id,
                    openvino_blob_id=openvino_blob.id if openvino_blob else None, latency_ms=outcome.latency_ms,
                    layer_precision=outcome.layer_precision or None,
                )
                s.add(checkpoint)
                s.flush()
                s.add(JobStep(
                    job_id=job.id, index=outcome.index, layers=list(outcome.layers),
                    binary_layers=list(outcome.binary_layers), bits=outcome.bits,
                    compression_ratio=outcome.compression_ratio,
                    binary_layer_compression=outcome.binary_layer_compression, miss_rate=outcome.miss_rate,
                    ap50=outcome.ap50, step_seconds=outcome.step_seconds,
                    checkpoint_bytes=outcome.checkpoint_bytes,
                    fppi_curve=[list(p) for p in outcome.fppi_curve], checkpoint_id=checkpoint.id,
                    state_blob_id=state_blob.id, worker=self.owner, latency_ms=outcome.latency_ms,
                ))
                job.progress_step = outcome.index
                job.progress_updated_at = utcnow()
                job.progress_message = f"step {outcome.index} committed"
                if outcome.index == 0:
                    _deploy_float_step(s, job, checkpoint.id)
        except IntegrityError as exc:  # (job_id, index) exists: committed already
            if self._step_writer(outcome.index) == self.owner:
                return  # by us: a retry whose first commit went through before the connection dropped
            raise LeaseLost() from exc

    def _step_writer(self, index: int) -> str | None:
        with session_scope(self.url) as s:
            return s.scalar(select(JobStep.worker).where(JobStep.job_id == self.job_id, JobStep.index == index))

    def _on_progress(self, progress: Any) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.settings.progress_interval_seconds and progress.percent < 100:
            return
        self._last_progress = now
        try:
            with session_scope(self.url) as s:
                updated = s.execute(
                    update(Job).where(self._owned()).values(
                        progress_step=progress.step, progress_total_steps=progress.total_steps,
                        progress_percent=min(float(progress.percent), 99.9),
                        progress_eta_seconds=progress.eta_seconds,
                        progress_message=progress.message or None, progress_updated_at=utcnow(),
                    )
                ).rowcount
        except TRANSIENT_DB_ERRORS as exc:  # progress is best effort: keep training, report later
            self._warn_db_unavailable("progress update skipped", exc)
            return
        if not updated:
            raise LeaseLost()
        if now - self._last_logged >= PROGRESS_LOG_SECONDS:
            self._last_logged = now
            eta = "?" if progress.eta_seconds is None else f"{progress.eta_seconds:.0f}s"
            log.info("job %s: step %d/%d, %s, %.1f%% done, ETA %s", self.job_id, progress.step,
                     progress.total_steps, progress.message, progress.percent, eta)

    def _cancel_requested(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_poll < self.settings.cancel_poll_seconds:
            return self._cancel
        self._last_poll = now
        try:
            with session_scope(self.url) as s:
                self._cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
        except TRANSIENT_DB_ERRORS as exc:  # keep the last answer until the database is back
            self._warn_db_unavailable("cancel check skipped", exc)
        return self._cancel

    def _warn_db_unavailable(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._db_warned >= PROGRESS_LOG_SECONDS:
            self._db_warned = now
            log.warning("job %s: database unavailable, %s (%s)", self.job_id, what, str(exc).splitlines()[0][:200])

    def _should_stop(self) -> bool:
        return SHUTTING_DOWN.is_set() or self.heartbeat.lost.is_set() or self._cancel_requested()

    def _hand_back(self) -> None:
        """Put the job back in the queue (committed steps stay) and enqueue it again."""
        with session_scope(self.url) as s:
            done = s.execute(update(Job).where(self._owned()).values(
                status="queued", lease_owner=None, lease_expires_at=None, enqueued_at=None,
                progress_updated_at=utcnow(), progress_message="worker shut down; requeued",
            )).rowcount
        if done:
            from worker.celery_app import celery_app, send_job

            try:
                send_job(celery_app, self.settings, self.job_id)
            except Exception:  # another worker's recovery loop sends it (enqueued_at is NULL)
                log.exception("job %s: could not send it back to the broker", self.job_id)
            log.info("job %s: worker shutting down; job handed back to the queue", self.job_id)

    # -- the end ----------------------------------------------------------------------------
    def _finish(self, status: str, *, selected: int | None = None, error: str | None = None,
                message: str | None = None) -> None:
        values: dict[str, Any] = {
            "status": status, "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None,
            "progress_message": message, "progress_updated_at": utcnow(), "error": error,
        }
        if status == "succeeded":
            values.update(selected_step_index=selected, progress_percent=100.0, progress_eta_seconds=0.0)
        retry_transient(lambda: self._write_finish(status, selected, values), what=f"job {self.job_id}: finish",
                        within=self._retry_within)

    def _write_finish(self, status: str, selected: int | None, values: dict[str, Any]) -> None:
        with session_scope(self.url) as s:
            done = s.execute(update(Job).where(self._owned()).values(**values)).rowcount
            if not done:
                log.warning("job %s: lease lost before it could be marked %s", self.job_id, status)
                return
            job = s.get(Job, self.job_id)
            assert job is not None
            if status == "succeeded" and job.deploy_on_success and selected is not None:
                checkpoint_id = s.scalar(
                    select(JobStep.checkpoint_id).where(JobStep.job_id == job.id, JobStep.index == selected)
                )
                deployment = s.get(Deployment, job.tenant_id) or Deployment(tenant_id=job.tenant_id)
                deployment.checkpoint_id = checkpoint_id
                deployment.model_id = job.model_id
                deployment.updated_at = utcnow()
                s.add(deployment)
                log.info("job %s: deployed checkpoint %s", job.id, checkpoint_id)

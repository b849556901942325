"""Run one binarization job: load from the store, call `core.pipeline.run`, write back.

Every write goes through the job lifecycle (`service.store.jobs`): claim, commit each step,
progress, finish, hand back. Each finished step is committed in ONE transaction (checkpoint
blob + resume-state blob + checkpoint row + job_steps row + progress), conditioned on this
worker still owning the job's lease; `job_steps` is unique on (job_id, index). A redelivered
or requeued job resumes from its committed steps, so no step is computed into the database
twice.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from core import pipeline
from core.checkpoint import load_model_bytes
from core.data import read_dataset_zip, split_records
from core.device import resolve_device
from core.job_spec import PipelineConfig
from core.pipeline import Cancelled, PipelineResult, Progress, StepOutcome
from core.train import TrainOptions
from service.queue import send_job
from service.settings import Settings
from service.store import (
    TRANSIENT_DB_ERRORS,
    Dataset,
    DetectorModel,
    Job,
    get_blob_bytes,
    jobs,
    run_in_transaction,
    session_scope,
)
from service.store.jobs import JobStatus, LeaseLost
from worker.celery_app import celery_app
from worker.lease import Heartbeat, new_worker_id

log = logging.getLogger(__name__)
T = TypeVar("T")

SHUTTING_DOWN = threading.Event()
"""Set on the worker's warm shutdown (SIGTERM): a running job hands itself back to the queue
at its next fine-tuning iteration instead of holding the shutdown up until it ends."""


PROGRESS_LOG_SECONDS = 15.0


@dataclass(frozen=True)
class JobRun:
    """How a delivery of the task ended: a job status, or "busy" (another live worker owns
    the job: retry after `retry_after` seconds), "lease-lost" or "requeued"."""

    status: str
    retry_after: float | None = None


def run_job(job_id: str, settings: Settings) -> JobRun:
    owner = new_worker_id()
    got = run_in_transaction(settings.database_url,
                             lambda s: jobs.claim(s, job_id, owner, settings.job_lease_seconds),
                             what=f"job {job_id}: claim", within=settings.database_retry_seconds)
    if got.state == "done":
        log.info("job %s: nothing to do (%s)", job_id, got.status)
        return JobRun(got.status)
    if got.state == "busy":
        log.info("job %s: owned by a live worker; retry in %.0fs", job_id, got.retry_after)
        return JobRun("busy", retry_after=got.retry_after)
    log.info("job %s: claimed by %s", job_id, owner)
    with Heartbeat(settings.database_url, job_id, owner, settings.job_lease_seconds) as heartbeat:
        return _JobExecution(job_id, owner, settings, heartbeat).execute()


class _JobExecution:
    def __init__(self, job_id: str, owner: str, settings: Settings, heartbeat: Heartbeat) -> None:
        self.job_id, self.owner, self.settings, self.heartbeat = job_id, owner, settings, heartbeat
        self.url = settings.database_url
        self._last_progress = 0.0
        self._last_logged = 0.0
        self._last_poll = 0.0
        self._cancel = False
        self._db_warned = 0.0

    def _transaction(self, work: Callable[[Session], T], what: str) -> T:
        """One unit of work, retried with backoff while the database is away."""
        return run_in_transaction(self.url, work, what=f"job {self.job_id}: {what}",
                                  within=self.settings.database_retry_seconds)

    # -- the run ----------------------------------------------------------------------------
    def execute(self) -> JobRun:
        try:
            if self._cancel_requested(force=True):
                raise Cancelled("cancelled before start")
            inputs = self._transaction(self._load, "load")
            result = self._run_pipeline(*self._prepare(*inputs))
        except Cancelled:
            if self.heartbeat.lost.is_set():
                return JobRun("lease-lost")
            if SHUTTING_DOWN.is_set() and not self._cancel:
                self._hand_back()
                return JobRun("requeued")
            self._finish(JobStatus.CANCELLED)
            log.info("job %s: cancelled", self.job_id)
            return JobRun(JobStatus.CANCELLED)
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
            self._finish(JobStatus.FAILED, error=error[:4000])
            return JobRun(JobStatus.FAILED)
        self._finish(JobStatus.SUCCEEDED, selected=result.selected_index)
        log.info("job %s: succeeded, selected step %d", self.job_id, result.selected_index)
        return JobRun(JobStatus.SUCCEEDED)

    def _load(self, s: Session) -> tuple[bytes, str, bytes, dict[str, Any], list[StepOutcome]]:
        """The job's inputs as stored: weights, card, dataset zip, config, committed steps."""
        job = s.get(Job, self.job_id)
        assert job is not None
        model_row = s.get(DetectorModel, job.model_id)
        dataset_row = s.get(Dataset, job.dataset_id)
        assert model_row is not None and dataset_row is not None
        completed = [
            StepOutcome(**dict(metrics), checkpoint=get_blob_bytes(s, checkpoint_blob),
                        state=get_blob_bytes(s, state_blob))
            for metrics, checkpoint_blob, state_blob in jobs.completed_steps(s, self.job_id)
        ]
        return (get_blob_bytes(s, model_row.weights_blob_id), json.dumps(model_row.card),
                get_blob_bytes(s, dataset_row.archive_blob_id), job.config, completed)

    def _prepare(self, weights: bytes, card_json: str, archive: bytes, config: dict[str, Any],
                 completed: list[StepOutcome]) -> tuple[Any, ...]:
        if completed:
            log.info("job %s: resuming after step %d", self.job_id, completed[-1].index)
        model, card = load_model_bytes(weights, card_json)
        records = read_dataset_zip(archive, **self.settings.dataset_zip_limits())
        train, val = split_records(records)
        if not train or not val:
            raise ValueError(f"dataset of {len(records)} images is too small to split into train and validation")
        return model, card, train, val, PipelineConfig.model_validate(config), completed

    def _run_pipeline(self, model: Any, card: Any, train: Any, val: Any, config: Any,
                      completed: Any) -> PipelineResult:
        device = resolve_device(self.settings.device, what="FLEXBIN_DEVICE")
        log.info("job %s: running on %s (%d train / %d val images)", self.job_id, device, len(train), len(val))
        return pipeline.run(
            model, card, train, val, config,
            completed=completed, on_step=self._on_step, on_progress=self._on_progress,
            should_stop=self._should_stop, device=device, export_openvino=self.settings.export_openvino,
            train_options=TrainOptions(bf16=self.settings.train_bf16,
                                       fuse_binarizers=self.settings.train_fuse_binarizers),
            int8_calibration_images=self.settings.int8_calibration_images,
        )

    # -- callbacks --------------------------------------------------------------------------
    def _on_step(self, outcome: StepOutcome) -> None:
        """Commit the step, its checkpoint and its resume state in one transaction, retried
        with backoff while the database is away."""
        self._transaction(
            lambda s: jobs.commit_step(s, self.job_id, self.owner, outcome, outcome.checkpoint, outcome.state,
                                      openvino=outcome.openvino, openvino_int8=outcome.openvino_int8),
            f"commit step {outcome.index}")
        log.info(
            "job %s: step %d committed (ratio %.2f, MR %.3f, AP50 %.3f, %.1fs, latency %s)", self.job_id, outcome.index,
            outcome.compression_ratio, outcome.miss_rate, outcome.ap50, outcome.step_seconds,
            "n/a" if outcome.latency_ms is None else f"{outcome.latency_ms:.2f} ms",
        )
        if outcome.int8 is not None:
            log.info("job %s: step %d as int8: MR %.3f, AP50 %.3f, latency %.2f ms, %d bytes", self.job_id,
                     outcome.index, outcome.int8.miss_rate, outcome.int8.ap50, outcome.int8.latency_ms,
                     outcome.int8.file_bytes)

    def _on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.settings.progress_interval_seconds and progress.percent < 100:
            return
        self._last_progress = now
        try:
            with session_scope(self.url) as s:
                updated = jobs.report_progress(
                    s, self.job_id, self.owner, step=progress.step, total_steps=progress.total_steps,
                    percent=progress.percent, eta_seconds=progress.eta_seconds, message=progress.message)
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
                self._cancel = jobs.cancel_requested(s, self.job_id)
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
            handed_back = jobs.hand_back(s, self.job_id, self.owner)
        if handed_back:
            try:
                send_job(celery_app, self.settings, self.job_id)
            except Exception:  # another worker's recovery loop sends it (enqueued_at is NULL)
                log.exception("job %s: could not send it back to the broker", self.job_id)
            log.info("job %s: worker shutting down; job handed back to the queue", self.job_id)

    # -- the end ----------------------------------------------------------------------------
    def _finish(self, status: JobStatus, *, selected: int | None = None, error: str | None = None) -> None:
        ended = self._transaction(
            lambda s: jobs.finish(s, self.job_id, self.owner, status, selected=selected, error=error), "finish")
        if not ended:
            log.warning("job %s: lease lost before it could be marked %s", self.job_id, status)

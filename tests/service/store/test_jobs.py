"""The job state machine (`service.store.jobs`): every transition function, tried from every
status, changes the row exactly when the allowed-transition table says it may, and into the
status the table names; a terminal status has no way out."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.job_spec import PipelineConfig, StepMetrics, Target
from core.paths import REPO_ROOT
from service.store import (
    Deployment,
    Job,
    JobStep,
    Tenant,
    jobs,
    put_blob,
    session_scope,
    utcnow,
)
from service.store.jobs import (
    ALLOWED,
    TERMINAL,
    JobEnded,
    JobStatus,
    LeaseLost,
    Transition,
)
from service.store.migrate import upgrade_head
from service.store.tables import Dataset, DetectorModel

Q, R, S, F, C = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED,
                 JobStatus.CANCELLED)
OWNER, OTHER = "worker-a", "worker-b"


def test_the_allowed_transitions_are_the_documented_graph() -> None:
    assert ALLOWED == {(Q, R), (Q, Q), (Q, C), (R, R), (R, Q), (R, S), (R, F), (R, C)}
    assert not {source for source, _ in ALLOWED} & TERMINAL


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle')}/jobs.db"
    upgrade_head(url)
    return url


@pytest.fixture
def job_in(url: str) -> Iterator[Callable[..., str]]:
    """`job_in(status, ...)`: a new job put straight into `status` (held by OWNER when running,
    its lease live or expired; attempted once unless queued), to try a transition from there."""

    def make(status: JobStatus, *, lease_expired: bool = False, attempts: int | None = None,
             deploy_on_success: bool = False) -> str:
        with session_scope(url) as s:
            tenant = Tenant(name=f"t-{utcnow().timestamp()}-{status}")
            s.add(tenant)
            s.flush()
            blob = put_blob(s, b"weights")
            model = DetectorModel(tenant_id=tenant.id, architecture="flexbin_pednet", num_classes=2, card={},
                          num_params=1, size_bytes=1, weights_blob_id=blob.id)
            dataset = Dataset(tenant_id=tenant.id, num_images=1, num_boxes=1, size_bytes=1, archive_blob_id=blob.id)
            s.add_all([model, dataset])
            s.flush()
            job = jobs.create_job(s, tenant_id=tenant.id, model_id=model.id, dataset_id=dataset.id,
                                  config=PipelineConfig(target=Target(min_compression_ratio=2.0)),
                                  deploy_on_success=deploy_on_success)
            assert job.status == Q
            expires = utcnow() + timedelta(seconds=-30 if lease_expired else 300)
            held = {"lease_owner": OWNER, "lease_expires_at": expires} if status == R else {}
            tries = (0 if status == Q else 1) if attempts is None else attempts
            s.execute(update(Job).where(Job.id == job.id).values(status=status, attempts=tries, **held))
            return job.id

    yield make


def _status(url: str, job_id: str) -> str | None:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        return None if job is None else job.status


def _step(index: int = 0) -> StepMetrics:
    return StepMetrics(index=index, layers=[], binary_layers=[], bits=1, compression_ratio=1.0,
                       binary_layer_compression=None, miss_rate=0.5, ap50=0.5, step_seconds=1.0,
                       checkpoint_bytes=3, fppi_curve=[(0.1, 0.9)])


def _raises_lease_lost(work: Callable[[], object]) -> bool:
    try:
        work()
    except LeaseLost:
        return False
    return True


# Each write to a job row, as a function of (session, job id) that says whether it applied.
WRITES: list[tuple[Transition, Callable[[Session, str], bool]]] = [
    (jobs.RENEW_LEASE, lambda s, j: jobs.renew_lease(s, j, OWNER, 60)),
    (jobs.PROGRESS, lambda s, j: jobs.report_progress(s, j, OWNER, step=1, total_steps=3, percent=50.0,
                                                      eta_seconds=1.0, message="fine-tuning")),
    (jobs.COMMIT_STEP, lambda s, j: _raises_lease_lost(lambda: jobs.commit_step(s, j, OWNER, _step(), b"ck", b"st"))),
    (jobs.SUCCEED, lambda s, j: jobs.finish(s, j, OWNER, S, selected=0)),
    (jobs.FAIL, lambda s, j: jobs.finish(s, j, OWNER, F, error="boom")),
    (jobs.CANCEL_RUNNING, lambda s, j: jobs.finish(s, j, OWNER, C)),
    (jobs.HAND_BACK, lambda s, j: jobs.hand_back(s, j, OWNER)),
]


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize(("transition", "write"), WRITES, ids=[t.name for t, _ in WRITES])
def test_each_owner_write_applies_exactly_where_allowed(
        url: str, job_in: Callable[..., str], status: JobStatus, transition: Transition,
        write: Callable[[Session, str], bool]) -> None:
    job_id = job_in(status)
    with session_scope(url) as s:
        applied = write(s, job_id)
    after = _status(url, job_id)
    assert applied == (status in transition.sources)
    assert after == ((transition.target or status) if applied else status)
    assert not applied or (status, after) in ALLOWED


@pytest.mark.parametrize("status", list(JobStatus))
def test_claim(url: str, job_in: Callable[..., str], status: JobStatus) -> None:
    live, expired = job_in(status), job_in(status, lease_expired=True)
    with session_scope(url) as s:
        got_live, got_expired = jobs.claim(s, live, OTHER, 60), jobs.claim(s, expired, OTHER, 60)
    if status == Q:
        assert got_live.state == got_expired.state == "claimed"
        assert _status(url, live) == R
    elif status == R:  # another worker's job: only once its lease expired
        assert (got_live.state, got_expired.state) == ("busy", "claimed") and got_live.retry_after > 1
    else:
        assert got_live.state == got_expired.state == "done" and got_live.status == status
        assert _status(url, live) == status
    with session_scope(url) as s:
        claimed = s.get(Job, expired)
        assert claimed is not None
        assert (claimed.lease_owner == OTHER) == (status in jobs.CLAIM.sources)


def test_a_retried_claim_by_the_same_owner_and_a_renewal_by_another(url: str, job_in: Callable[..., str]) -> None:
    job_id = job_in(R)
    with session_scope(url) as s:
        assert jobs.claim(s, job_id, OWNER, 60).state == "claimed"  # its first commit went through
        assert not jobs.renew_lease(s, job_id, OTHER, 60)
        assert not jobs.finish(s, job_id, OTHER, S, selected=0)
    assert _status(url, job_id) == R


@pytest.mark.parametrize("status", list(JobStatus))
def test_request_cancel(url: str, job_in: Callable[..., str], status: JobStatus) -> None:
    job_id = job_in(status)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        if status in TERMINAL:
            with pytest.raises(JobEnded, match=f"already {status}"):
                jobs.request_cancel(s, job)
        else:
            assert jobs.request_cancel(s, job).cancel_requested
    with session_scope(url) as s:
        assert jobs.cancel_requested(s, job_id) == (status not in TERMINAL)
    # a queued job no worker holds is cancelled at once; a running one only flagged
    assert _status(url, job_id) == {Q: C}.get(status, status)


@pytest.mark.parametrize("status", list(JobStatus))
def test_requeue_orphans_and_give_up(url: str, job_in: Callable[..., str], status: JobStatus) -> None:
    orphan = job_in(status, lease_expired=True)
    hopeless = job_in(status, lease_expired=True, attempts=jobs.MAX_ATTEMPTS)
    alive = job_in(status)
    with session_scope(url) as s:
        requeued = jobs.requeue_orphans(s)
    assert (orphan in requeued) == (status == R) and hopeless not in requeued and alive not in requeued
    assert _status(url, orphan) == (jobs.REQUEUE_ORPHAN.target if status == R else status)
    assert _status(url, hopeless) == (jobs.GIVE_UP.target if status == R else status)
    assert _status(url, alive) == status
    with session_scope(url) as s:
        assert (orphan in jobs.unsent_jobs(s, older_than_seconds=3600)) == (status == R)


@pytest.mark.parametrize("status", list(JobStatus))
def test_mark_enqueued_and_withdraw(url: str, job_in: Callable[..., str], status: JobStatus) -> None:
    job_id = job_in(status)
    with session_scope(url) as s:
        jobs.mark_enqueued(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None and (job.enqueued_at is not None) == (status in jobs.MARK_ENQUEUED.sources)
    unsent = job_in(status)
    with session_scope(url) as s:
        job = s.get(Job, unsent)
        assert job is not None
        jobs.withdraw_unsent(s, job)
    assert (_status(url, unsent) is None) == (status in jobs.WITHDRAW.sources)


def test_commit_step_is_idempotent_for_its_owner_and_deploys_step_zero(url: str, job_in: Callable[..., str]) -> None:
    job_id = job_in(R, deploy_on_success=True)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.add(Deployment(tenant_id=job.tenant_id, model_id=job.model_id, checkpoint_id=None))
    with session_scope(url) as s:
        checkpoint_id = jobs.commit_step(s, job_id, OWNER, _step(0), b"packed", b"state")
        assert checkpoint_id is not None
    with session_scope(url) as s:  # a retry whose first commit went through: nothing written twice
        assert jobs.commit_step(s, job_id, OWNER, _step(0), b"packed", b"state") is None
        (metrics, _, _), = jobs.completed_steps(s, job_id)
        assert metrics == _step(0)
        job = s.get(Job, job_id)
        assert job is not None and job.progress_message == "step 0 committed"
        deployment = s.get(Deployment, job.tenant_id)
        assert deployment is not None and deployment.checkpoint_id == checkpoint_id
        assert s.scalars(select(JobStep.worker).where(JobStep.job_id == job_id)).all() == [OWNER]
    with session_scope(url) as s:  # the selected checkpoint replaces it when the job succeeds
        jobs.commit_step(s, job_id, OWNER, _step(1), b"packed1", b"state1")
        assert jobs.finish(s, job_id, OWNER, S, selected=1)
        job = s.get(Job, job_id)
        deployment = s.get(Deployment, job.tenant_id)  # type: ignore[union-attr]
        assert deployment is not None and deployment.checkpoint_id != checkpoint_id
        assert job is not None and job.selected_step_index == 1 and job.lease_owner is None


def test_only_the_lifecycle_module_writes_job_rows() -> None:
    """No module of the service creates, updates or deletes a jobs row itself."""
    writes = re.compile(r"update\(Job\)|\bJob\(|delete\(job\)|\bjob\.(status|lease_\w+|progress_\w+|"
                        r"started_at|finished_at|cancel_requested|enqueued_at|attempts|error)\s*=[^=]")
    owners = {REPO_ROOT / "core" / "store" / "jobs.py", REPO_ROOT / "core" / "store" / "models.py"}
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for package in ("core", "api", "worker") for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path not in owners
        for n, line in enumerate(path.read_text().splitlines(), 1) if writes.search(line)
    ]
    assert not offenders, offenders

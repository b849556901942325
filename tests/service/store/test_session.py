"""The store's outage handling: `retry_transient` backs off and gives up on time, and
`unsent_jobs` finds the queued jobs that have no message in the broker."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from service.store import (
    Dataset,
    DetectorModel,
    Job,
    Tenant,
    put_blob,
    retry_transient,
    session_scope,
    utcnow,
)
from service.store.jobs import mark_enqueued, unsent_jobs
from service.store.migrate import upgrade_head


def _outage(times: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return "done"

    return calls, work


def test_retry_transient_backs_off_until_the_database_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    calls, work = _outage(times=4)
    assert retry_transient(work, what="test", within=60) == "done"  # type: ignore[arg-type]
    assert len(calls) == 5
    assert sleeps == [0.25, 0.5, 1.0, 2.0]


def test_retry_transient_gives_up_after_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    calls, work = _outage(times=1000)
    with pytest.raises(OperationalError):
        retry_transient(work, what="test", within=10)  # type: ignore[arg-type]
    assert clock[0] <= 10 and len(calls) < 20


def test_retry_transient_does_not_retry_other_errors() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retry_transient(work, what="test", within=60)
    assert len(calls) == 1


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/dispatch.db"
    upgrade_head(url)
    return url


def _job(url: str, *, age_seconds: float, attempts: int = 0, status: str = "queued") -> str:
    with session_scope(url) as s:
        tenant = Tenant(name=f"t{utcnow().timestamp()}")
        s.add(tenant)
        s.flush()
        blob = put_blob(s, b"x")
        model = DetectorModel(tenant_id=tenant.id, architecture="a", num_classes=2, card={}, num_params=1, size_bytes=1,
                      weights_blob_id=blob.id)
        dataset = Dataset(tenant_id=tenant.id, num_images=1, num_boxes=1, size_bytes=1, archive_blob_id=blob.id)
        s.add_all([model, dataset])
        s.flush()
        job = Job(tenant_id=tenant.id, model_id=model.id, dataset_id=dataset.id, config={}, status=status,
                  attempts=attempts, created_at=utcnow() - timedelta(seconds=age_seconds))
        s.add(job)
        s.flush()
        return job.id


def test_unsent_jobs_are_new_ones_past_the_grace_and_requeued_ones_at_once(db_url: str) -> None:
    fresh = _job(db_url, age_seconds=1)  # the API is still sending it
    stranded = _job(db_url, age_seconds=120)  # the API died between commit and send
    requeued = _job(db_url, age_seconds=1, attempts=1)  # its worker died; requeue_orphans cleared it
    sent = _job(db_url, age_seconds=120)
    with session_scope(db_url) as s:
        mark_enqueued(s, sent)
    _job(db_url, age_seconds=120, status="running")
    _job(db_url, age_seconds=120, status="succeeded")
    with session_scope(db_url) as s:
        assert unsent_jobs(s, older_than_seconds=60) == [stranded, requeued]
        assert fresh not in unsent_jobs(s, older_than_seconds=60)
        mark_enqueued(s, stranded)
        assert unsent_jobs(s, older_than_seconds=60) == [requeued]

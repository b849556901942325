"""kill -9 a worker in the middle of a job: another worker resumes it from the committed
steps and every step ends up in the database exactly once."""
from __future__ import annotations

import time

from sqlalchemy import select

from service.store import Checkpoint, Job, JobStep, get_sessionmaker
from testkit.factories import upload_tiny
from testkit.stack import wait_until


def test_sigkill_mid_job_resumes_without_duplicate_steps(client, start_worker, database_url) -> None:
    uploads = upload_tiny(client, 8, seed=3)
    first = start_worker("doomed-worker")
    r = client.post("/jobs", json={**uploads, "target": {"min_compression_ratio": 4.0}, "finetune_iters": 30,
                                   "batch_size": 2})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def two_steps_in() -> dict | None:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        return job if len(job["steps"]) >= 2 else None

    before = wait_until(two_steps_in, 180, "two committed steps")
    first.kill9()  # mid-step: the step in progress is lost, the committed ones are not
    committed = {s["index"]: s["checkpoint_id"] for s in client.get(f"/jobs/{job_id}").json()["steps"]}
    assert len(committed) >= len(before["steps"])  # type: ignore[index]
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"

    # two fresh workers race for it: the lease lets exactly one of them resume it
    rescuers = [start_worker("rescuer-a"), start_worker("rescuer-b")]

    def finished() -> dict | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(finished, 240, "the resumed job to finish")
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2
    indexes = [s["index"] for s in job["steps"]]
    assert indexes == list(range(len(indexes))) and len(indexes) > len(committed)
    # the steps committed before the kill were kept, not recomputed
    for index, checkpoint_id in committed.items():
        assert job["steps"][index]["checkpoint_id"] == checkpoint_id

    with get_sessionmaker(database_url)() as s:
        rows = s.execute(select(JobStep.index, JobStep.worker).where(JobStep.job_id == job_id)).all()
        assert sorted(i for i, _ in rows) == indexes  # each step exactly once
        assert len({w for _, w in rows}) >= 2  # written by the killed worker and its successor
        checkpoints = s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)).all()
        assert sorted(checkpoints) == indexes  # no checkpoint of the lost step in progress
        row = s.get(Job, job_id)
        assert row is not None and row.lease_owner is None
    for proc in rescuers:
        proc.stop()


def test_sigterm_hands_the_running_job_back(client, start_worker, database_url) -> None:
    uploads = upload_tiny(client, 8, seed=4)
    first = start_worker("stopping-worker")
    job_id = client.post("/jobs", json={**uploads, "target": {"min_compression_ratio": 4.0}, "finetune_iters": 200,
                                        "batch_size": 2}).json()["id"]
    wait_until(lambda: len(client.get(f"/jobs/{job_id}").json()["steps"]) >= 1, 120, "a committed step")
    t0 = time.monotonic()
    first.stop(timeout=60)  # SIGTERM: warm shutdown
    assert time.monotonic() - t0 < 20, "the worker held its shutdown up for the whole job"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["steps"], job
    assert "requeued" in job["progress"]["message"]
    successor = start_worker("next-worker")
    kept = len(job["steps"])
    wait_until(lambda: len(client.get(f"/jobs/{job_id}").json()["steps"]) > kept, 120, "the successor's first step")
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202  # no need to wait for the whole run
    job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] == "cancelled" and j, 60,
                     "the cancel")
    indexes = [s["index"] for s in job["steps"]]  # type: ignore[index]
    assert indexes == list(range(len(indexes))) and job["attempts"] == 2  # type: ignore[index]
    with get_sessionmaker(database_url)() as s:
        assert sorted(s.scalars(select(JobStep.index).where(JobStep.job_id == job_id)).all()) == indexes
    successor.stop()

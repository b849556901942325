"""Faults during jobs, on a private PostgreSQL + Redis pair with real API and worker processes.

Every job must end `succeeded`, every step must exist exactly once, every checkpoint's blob
must match its checksum, and each job must end exactly like a fault-free run of the same job
(same seed): same steps, same selected step, same metrics, byte-identical checkpoints.

Faults: SIGKILL of the worker running a job at a random moment (10 runs; the seed is printed
and `FLEXBIN_FAULT_SEED` replays it), worker kills while a queue of jobs drains, a Redis
restart mid-job and a PostgreSQL restart mid-job (the API answers 503 meanwhile, not 500).
"""
from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.job_spec import PipelineConfig
from service.store import (
    Blob,
    Checkpoint,
    Job,
    JobStep,
    get_engine,
    get_sessionmaker,
    session_scope,
)
from service.store.jobs import create_job
from service.store.migrate import upgrade_head
from testkit.factories import dataset_zip, tiny_model
from testkit.servers import PrivatePostgres, PrivateRedis
from testkit.stack import (
    KEYS,
    Proc,
    service_environment,
    start_api_process,
    start_worker_process,
    wait_until,
    wait_worker_ready,
)

JOB = {"target": {"min_compression_ratio": 4.0}, "finetune_iters": 20, "batch_size": 2, "seed": 11}
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    env: dict[str, str]
    log_dir: Path
    api: Proc
    url: str
    workers: list[Proc] = field(default_factory=list)
    uploads: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=60)

    def start_worker(self, wait: bool = True) -> Proc:
        proc = start_worker_process(f"fault-worker{len(self.workers)}", self.env, self.log_dir)
        self.workers.append(proc)
        if wait:
            wait_worker_ready(proc)
        return proc

    def ensure_workers(self, n: int) -> None:
        while len(self.live_workers()) < n:
            self.start_worker()

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.stop()

    def post_job(self, client: httpx.Client) -> str:
        r = client.post("/jobs", json={**self.uploads, **JOB})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def running_job(self, client: httpx.Client) -> str:
        """A new job on a live worker, once it is running with a committed step (mid-job)."""
        self.ensure_workers(1)
        job_id = self.post_job(client)
        wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] == "running"
                   and len(j["steps"]) >= 1, 180, "a committed step")
        return job_id

    def job_row(self, job_id: str) -> Job:
        with get_sessionmaker(self.pg.url)() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def owner_process(self, job_id: str) -> Proc | None:
        """The worker process holding the job's lease (its id is host:pid:nonce)."""
        owner = self.job_row(job_id).lease_owner
        if not owner:
            return None
        pid = int(owner.split(":")[1])
        return next((w for w in self.workers if w.pid == pid and w.alive()), None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pg, broker = PrivatePostgres(), PrivateRedis()
    api: Proc | None = None
    stack: Stack | None = None
    try:
        pg.start()
        pg.create_database()
        upgrade_head(pg.url)
        broker.start()
        env = {**service_environment(pg.url, broker.url), "FLEXBIN_DATABASE_RETRY_SECONDS": "90",
               "FLEXBIN_STRANDED_JOB_SECONDS": "5"}
        log_dir = tmp_path_factory.mktemp("fault-logs")
        api, url = start_api_process("fault-api", env, log_dir)
        stack = Stack(pg, broker, env, log_dir, api, url)
        with stack.client() as c:
            weights, card = tiny_model(seed=5)
            model = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
            dataset = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(8))})
            assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
            stack.uploads = {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}
        yield stack
    finally:
        if stack is not None:
            stack.stop_workers()
        if api is not None:
            api.stop()
        get_engine(pg.url).dispose()
        pg.close()
        broker.close()


@dataclass(frozen=True)
class Outcome:
    status: str
    selected: int | None
    attempts: int
    steps: list[tuple[int, float, float, float, str]]  # index, ratio, MR, AP50, checkpoint sha256
    step_rows: int
    checkpoint_rows: int
    checksums_ok: int
    workers: int


def outcome(stack: Stack, job_id: str) -> Outcome:
    """The job as stored, with every checkpoint blob's checksum recomputed."""
    with get_sessionmaker(stack.pg.url)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        rows = s.execute(
            select(JobStep.index, JobStep.compression_ratio, JobStep.miss_rate, JobStep.ap50, Blob.sha256,
                   Blob.data, JobStep.worker)
            .join(Checkpoint, Checkpoint.id == JobStep.checkpoint_id).join(Blob, Blob.id == Checkpoint.blob_id)
            .where(JobStep.job_id == job_id).order_by(JobStep.index)
        ).all()
        checkpoint_rows = s.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id))
        return Outcome(
            status=job.status, selected=job.selected_step_index, attempts=job.attempts,
            steps=[(i, ratio, mr, ap, sha) for i, ratio, mr, ap, sha, _, _ in rows],
            step_rows=len(rows), checkpoint_rows=checkpoint_rows or 0,
            checksums_ok=sum(hashlib.sha256(data).hexdigest() == sha for *_, sha, data, _ in rows),
            workers=len({w for *_, w in rows}),
        )


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    def done() -> dict | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    return wait_until(done, timeout, f"job {job_id} to end", interval=0.3)  # type: ignore[return-value]


@dataclass
class Tally:
    """What the faulted jobs ended as, against the fault-free reference."""

    jobs: int = 0
    succeeded: int = 0
    steps_expected: int = 0
    steps_duplicated: int = 0
    steps_lost: int = 0
    checksums_verified: int = 0
    checksum_failures: int = 0
    matching_reference: int = 0
    resumed_by_another_worker: int = 0

    def add(self, got: Outcome, reference: Outcome) -> None:
        self.jobs += 1
        self.succeeded += got.status == "succeeded"
        indexes = [s[0] for s in got.steps]
        expected = [s[0] for s in reference.steps]
        self.steps_expected += len(expected)
        self.steps_duplicated += (len(indexes) - len(set(indexes))) + max(0, got.checkpoint_rows - len(set(indexes)))
        self.steps_lost += len(set(expected) - set(indexes))
        self.checksums_verified += got.checksums_ok
        self.checksum_failures += got.step_rows - got.checksums_ok
        self.matching_reference += got.steps == reference.steps and got.selected == reference.selected
        self.resumed_by_another_worker += got.workers >= 2

    def assert_clean(self) -> None:
        assert self.succeeded == self.jobs, self
        assert self.steps_duplicated == 0 and self.steps_lost == 0, self
        assert self.checksum_failures == 0, self
        assert self.matching_reference == self.jobs, self

    def figures(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Reference:
    outcome: Outcome
    seconds: float  # the job's run, claim to end
    step_seconds: list[float]  # each step's own time


@pytest.fixture(scope="module")
def reference(stack: Stack) -> Reference:
    """The job run once with no fault."""
    worker = stack.start_worker()
    with stack.client() as c:
        job_id = stack.post_job(c)
        wait_terminal(c, job_id)
    row = stack.job_row(job_id)
    assert row.started_at is not None and row.finished_at is not None
    ref = outcome(stack, job_id)
    worker.stop()
    assert ref.status == "succeeded" and ref.step_rows >= 3, (ref, worker.tail())
    assert ref.checksums_ok == ref.step_rows
    with get_sessionmaker(stack.pg.url)() as s:
        step_seconds = list(s.scalars(select(JobStep.step_seconds).where(JobStep.job_id == job_id)
                                      .order_by(JobStep.index)))
    return Reference(ref, (row.finished_at - row.started_at).total_seconds(), step_seconds)


def committed_steps(stack: Stack, job_id: str) -> int:
    with get_sessionmaker(stack.pg.url)() as s:
        return s.scalar(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id)) or 0


def fault_seed() -> int:
    seed = int(os.environ.get("FLEXBIN_FAULT_SEED") or time.time_ns() % 1_000_000)
    print(f"fault injection seed: FLEXBIN_FAULT_SEED={seed}")
    return seed


def test_sigkill_at_random_moments_over_ten_runs(stack: Stack, reference: Reference, record_figures) -> None:
    """Ten runs in which the worker running the job is SIGKILLed at a random moment of it: a
    random point (while it loads, or after a random number of committed steps), then a random
    part of the next step's fault-free time. A job that ends before its moment is not a run
    (at most 20 tries)."""
    ref, last = reference.outcome, len(reference.step_seconds) - 1
    seed = fault_seed()
    rng = random.Random(seed)
    stack.ensure_workers(2)
    tally, tries, kills, moments = Tally(), 0, 0, []
    with stack.client() as c:
        while kills < 10 and tries < 20:
            tries += 1
            for proc in stack.live_workers():  # the last replacement may still be importing torch
                wait_worker_ready(proc)
            job_id = stack.post_job(c)
            after = rng.randint(-1, last - 1)  # committed steps before the kill; -1: while it loads
            delay = rng.uniform(0.0, 0.8 * reference.step_seconds[after + 1] if after >= 0 else 0.5)
            wait_until(lambda: stack.owner_process(job_id) or stack.job_row(job_id).status in TERMINAL, 60,  # noqa: B023
                       "a worker to claim the job")
            wait_until(lambda: committed_steps(stack, job_id) > after  # noqa: B023
                       or stack.job_row(job_id).status in TERMINAL, 60, f"step {after}", interval=0.02)  # noqa: B023
            time.sleep(delay)
            victim = stack.owner_process(job_id)
            if victim is not None:
                victim.kill9()
                kills += 1
                moments.append({"after_step": after, "delay_s": round(delay, 2)})
                stack.start_worker(wait=False)  # its replacement
            job = wait_terminal(c, job_id)
            tally.add(outcome(stack, job_id), ref)
            assert job["status"] == "succeeded", (f"try {tries} (seed {seed})", job, stack.live_workers()[0].tail())
    record_figures("faults.sigkill", seed=seed, runs=kills, tries=tries, kills=kills, kills_mid_job=kills,
                   kill_moments=moments, **tally.figures())
    tally.assert_clean()
    assert kills == 10, f"only {kills} of {tries} jobs were still running at their kill moment (seed {seed})"


def test_worker_kills_while_a_queue_of_jobs_drains(stack: Stack, reference: Reference, record_figures) -> None:
    ref, ref_seconds = reference.outcome, reference.seconds
    seed = fault_seed()
    rng = random.Random(seed)
    stack.ensure_workers(3)
    kills = 0
    with stack.client() as c:
        job_ids = [stack.post_job(c) for _ in range(8)]
        for _ in range(3):  # three rounds: kill two workers at once, start two more
            time.sleep(rng.uniform(0.3, 1.0) * ref_seconds)
            busy = [p for p in (stack.owner_process(j) for j in job_ids) if p is not None]
            for victim in (busy or stack.live_workers())[:2]:
                if victim.alive():
                    victim.kill9()
                    kills += 1
                    stack.start_worker(wait=False)
        for job_id in job_ids:
            wait_terminal(c, job_id, timeout=600)
    tally = Tally()
    for job_id in job_ids:
        tally.add(outcome(stack, job_id), ref)
    record_figures("faults.drain", seed=seed, kills=kills, **tally.figures())
    tally.assert_clean()
    assert kills >= 4


def test_redis_restart_mid_job(stack: Stack, reference: Reference, record_figures) -> None:
    ref = reference.outcome
    with stack.client() as c:
        job_id = stack.running_job(c)
        jobs_before = c.get("/jobs").json()["count"]
        stack.redis.stop()
        try:
            t0 = time.monotonic()
            refused = c.post("/jobs", json={**stack.uploads, **JOB})
            refused_seconds = time.monotonic() - t0
            assert refused.status_code == 503, refused.text
            assert "queue" in refused.json()["detail"] and refused.headers.get("retry-after")
            assert c.get("/jobs").json()["count"] == jobs_before  # the refused job was not kept
            assert c.get(f"/jobs/{job_id}").status_code == 200  # reads need no broker
            not_ready = c.get("/readyz").status_code
            time.sleep(2)
        finally:
            stack.redis.start()
        after_id = stack.post_job(c)  # the API reconnects to the restarted broker
        wait_terminal(c, job_id)
        wait_terminal(c, after_id)  # ... and a worker picks new work up from it
    tally = Tally()
    tally.add(outcome(stack, job_id), ref)
    tally.add(outcome(stack, after_id), ref)
    record_figures("faults.redis_restart", restarts=1, post_while_down_status=refused.status_code,
                   post_while_down_seconds=round(refused_seconds, 2), readyz_while_down=not_ready, **tally.figures())
    tally.assert_clean()
    assert not_ready == 503
    assert refused_seconds < 30


def test_postgres_restart_mid_job(stack: Stack, reference: Reference, record_figures) -> None:
    ref = reference.outcome
    with stack.client() as c:
        job_id = stack.running_job(c)
        stack.pg.stop("fast")  # every connection is cut; the worker is mid-step
        try:
            t0 = time.monotonic()
            during = c.get(f"/jobs/{job_id}")
            answer_seconds = time.monotonic() - t0
            healthz = c.get("/healthz").status_code
            time.sleep(3)
        finally:
            stack.pg.start()
        assert during.status_code == 503, during.text
        assert "database" in during.json()["detail"]
        wait_terminal(c, job_id)
    tally = Tally()
    tally.add(outcome(stack, job_id), ref)
    record_figures("faults.postgres_restart", restarts=1, get_while_down_status=during.status_code,
                   get_while_down_seconds=round(answer_seconds, 2), **tally.figures())
    tally.assert_clean()
    assert healthz == 200 and answer_seconds < 30


def test_a_job_whose_message_was_never_sent_still_runs(stack: Stack, reference: Reference, record_figures) -> None:
    """The API committed the job and died before sending its message: a worker sends it."""
    ref = reference.outcome
    stack.ensure_workers(1)
    with stack.client() as c:
        template = stack.job_row(stack.post_job(c))  # a real job's row, to copy its tenant and config
        wait_terminal(c, template.id)
        with session_scope(stack.pg.url) as s:  # what POST /jobs commits before it sends the message
            job_id = create_job(s, tenant_id=template.tenant_id, model_id=template.model_id,
                                dataset_id=template.dataset_id,
                                config=PipelineConfig.model_validate(template.config)).id
        job = wait_terminal(c, job_id, timeout=120)
    tally = Tally()
    tally.add(outcome(stack, job_id), ref)
    record_figures("faults.unsent_message", **tally.figures())
    assert job["status"] == "succeeded"
    tally.assert_clean()

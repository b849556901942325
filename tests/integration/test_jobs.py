"""Jobs end to end: API -> Redis -> a real Celery worker process -> PostgreSQL -> API."""
from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import func, select

from service.store import Checkpoint, JobStep, get_sessionmaker
from testkit.factories import dataset_zip, tiny_model
from testkit.stack import wait_until


@pytest.fixture(scope="module")
def uploads(api_url: str) -> dict[str, str]:
    from testkit.stack import KEYS

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        weights, card = tiny_model()
        model = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
        dataset = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(8))})
        assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
        return {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float) -> dict:
    def done() -> dict | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_until(done, timeout, f"job {job_id} to be {statuses}", interval=0.3)  # type: ignore[return-value]


def test_job_runs_to_success(client, other_client, worker, uploads, database_url) -> None:
    r = client.post("/jobs", json={**uploads, "target": {"min_compression_ratio": 2.0},
                                   "finetune_iters": 3, "batch_size": 2, "seed": 1})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued"
    job = wait_status(client, created["id"], {"succeeded", "failed", "cancelled"}, 180)
    assert job["status"] == "succeeded", (job["error"], worker.tail())
    assert job["error"] is None
    assert job["progress"]["percent"] == 100.0
    steps = job["steps"]
    assert [s["index"] for s in steps] == list(range(len(steps)))
    assert len(steps) >= 2
    # API.md: step 0 is the float model, ratio exactly 1.0
    assert steps[0]["compression_ratio"] == 1.0 and steps[0]["layers"] == []
    assert steps[-1]["compression_ratio"] >= 2.0
    assert {"index", "layers", "compression_ratio", "miss_rate", "ap50", "checkpoint_id"} <= steps[0].keys()
    assert job["selected_checkpoint_id"] in {s["checkpoint_id"] for s in steps}
    assert job["target"] == {"min_compression_ratio": 2.0}
    assert (job["method"], job["order"]) == ("layer_priority", "inverse_depth")

    # in the database: one job_steps row and one checkpoint per step
    with get_sessionmaker(database_url)() as s:
        assert s.scalar(select(func.count()).select_from(JobStep).where(JobStep.job_id == job["id"])) == len(steps)
        assert s.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job["id"])) \
            == len(steps)

    # checkpoints: metadata and download (a packed checkpoint core can load)
    from core.checkpoint import unpack_checkpoint

    last = steps[-1]
    meta = client.get(f"/checkpoints/{last['checkpoint_id']}").json()
    assert meta["job_id"] == job["id"] and meta["step"] == last["index"]
    assert meta["compression_ratio"] == pytest.approx(last["compression_ratio"])
    assert set(meta["binary_layers"]) == set(last["binary_layers"]) and meta["bits"] == 1
    download = client.get(f"/checkpoints/{last['checkpoint_id']}/download")
    assert download.status_code == 200 and len(download.content) == meta["size_bytes"]
    _model, card = unpack_checkpoint(download.content)
    assert set(card.binary_layers) == set(last["binary_layers"])

    # listing, newest first
    listing = client.get("/jobs", params={"limit": 5}).json()
    assert listing["count"] >= 1 and listing["data"][0]["id"] == job["id"]

    # deployment stores the chosen checkpoint
    r = client.put("/deployment", json={"checkpoint_id": job["selected_checkpoint_id"]})
    assert r.status_code == 200 and r.json()["checkpoint_id"] == job["selected_checkpoint_id"]
    assert client.get("/deployment").json()["checkpoint_id"] == job["selected_checkpoint_id"]

    # another tenant sees none of it
    for path in (f"/jobs/{job['id']}", f"/checkpoints/{last['checkpoint_id']}",
                 f"/checkpoints/{last['checkpoint_id']}/download"):
        assert other_client.get(path).status_code == 404, path
    assert other_client.post(f"/jobs/{job['id']}/cancel").status_code == 404
    assert other_client.put("/deployment", json={"checkpoint_id": last["checkpoint_id"]}).status_code == 404
    assert job["id"] not in {j["id"] for j in other_client.get("/jobs").json()["data"]}

    # a finished job cannot be cancelled
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]


def test_cancel_queued_and_running_jobs(client, worker, uploads) -> None:
    long = {**uploads, "target": {"max_miss_rate_increase": 0.5}, "finetune_iters": 100_000, "batch_size": 2}
    running = client.post("/jobs", json=long).json()["id"]
    queued = client.post("/jobs", json=long).json()["id"]  # waits behind it (one solo worker)

    # progress is written while the step runs
    def fine_tuning() -> dict | None:
        job = client.get(f"/jobs/{running}").json()
        return job if job["status"] == "running" and job["progress"]["updated_at"] and job["steps"] else None

    first = wait_until(fine_tuning, 120, "the job to be fine-tuning")
    time.sleep(1.5)
    later = client.get(f"/jobs/{running}").json()
    assert later["progress"]["updated_at"] != first["progress"]["updated_at"]  # type: ignore[index]
    assert later["progress"]["total_steps"] and later["progress"]["eta_seconds"] is not None

    r = client.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 202 and r.json() == {"id": queued, "status": "cancelled", "cancel_requested": True}

    r = client.post(f"/jobs/{running}/cancel")
    assert r.status_code == 202 and r.json()["status"] in ("running", "cancelled") and r.json()["cancel_requested"]
    t0 = time.monotonic()
    job = wait_status(client, running, {"cancelled", "failed", "succeeded"}, 30)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - t0 < 10
    assert job["steps"], "committed steps stay after a cancel"
    # the queued one never ran
    job = client.get(f"/jobs/{queued}").json()
    assert job["status"] == "cancelled" and job["steps"] == [] and job["attempts"] == 0


def test_job_on_a_too_small_dataset_fails_with_a_clear_error(client, worker, uploads) -> None:
    dataset = client.post("/datasets", files={"archive": ("d.zip", dataset_zip(2))})
    assert dataset.status_code == 201, dataset.text
    r = client.post("/jobs", json={"model_id": uploads["model_id"], "dataset_id": dataset.json()["id"],
                                   "target": {"min_compression_ratio": 2.0}, "finetune_iters": 1})
    job = wait_status(client, r.json()["id"], {"succeeded", "failed", "cancelled"}, 60)
    assert job["status"] == "failed"
    assert "too small" in job["error"], job["error"]
    assert job["steps"] == []

"""The embedded default (`make run` with no configuration): SQLite + the SQLite-backed Celery
transport + a worker subprocess started by `python -m api.run`, and the demo seeded on the
empty database (here with tiny iteration counts)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from core.paths import default_data_dir
from testkit.servers import free_port
from testkit.stack import Proc, wait_until


def test_embedded_default_seeds_and_runs_the_demo(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXBIN_", "DATABASE_URL", "CELERY_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path}/flexbin.db",
        CELERY_BROKER_URL=f"sqla+sqlite:///{tmp_path}/broker.db",
        FLEXBIN_PORT=str(port),
        FLEXBIN_DEMO_DATA=str(default_data_dir()),
        FLEXBIN_DEMO_TRAIN_ITERS="2",
        FLEXBIN_DEMO_FINETUNE_ITERS="1",
        FLEXBIN_DEMO_MIN_COMPRESSION_RATIO="1.05",  # the default demo model (pretrained SSD): 5 steps
        FLEXBIN_DEVICE="cpu",
        PYTHONUNBUFFERED="1",
    )
    api = Proc("embedded", [sys.executable, "-m", "api.run"], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert api.alive(), api.tail()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 90, "the embedded API")
        assert "API key 'dev' for tenant 'dev'" in api.log_path.read_text()
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer dev"}, timeout=60) as client:
            assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok", "models": "ok"}

            def demo_job() -> dict | None:
                jobs = client.get("/jobs").json()["data"]
                return jobs[0] if jobs and jobs[0]["status"] in ("succeeded", "failed", "cancelled") else None

            job = wait_until(demo_job, 400, "the demo job to finish", interval=1.0)
            assert job["status"] == "succeeded", (job, api.tail())  # type: ignore[index]
            assert job["target"] == {"min_compression_ratio": 1.05}  # type: ignore[index]
            assert job["config"]["learning_rate"] == 1e-4  # type: ignore[index]
            model = client.get(f"/models/{job['model_id']}").json()  # type: ignore[index]
            assert model["architecture"] == "pedestrian_adas_0002" and model["card"]["input_height"] == 192
            deployment = client.get("/deployment").json()
            assert deployment["checkpoint_id"] == job["selected_checkpoint_id"]  # type: ignore[index]
            assert deployment["model_id"] == job["model_id"]  # type: ignore[index]
            dataset = client.get(f"/datasets/{job['dataset_id']}").json()  # type: ignore[index]
            assert dataset["num_images"] == len(list((default_data_dir() / "PNGImages").glob("*.png")))
    finally:
        api.stop(timeout=30)
    assert not api.alive()
    assert "Warm shutdown" in api.log_path.read_text()  # the embedded worker was stopped with it

"""Serving end to end over real HTTP: a real job makes packed checkpoints, `/detect` runs them
through the model cache and the micro-batcher, deployments switch under load, readiness."""
from __future__ import annotations

import io
import math
import sys
import threading
import time
from collections import Counter

import httpx
import pytest
from PIL import Image

from core.paths import default_data_dir
from service.store import Deployment, get_sessionmaker
from service.store.tenants import ensure_tenant
from testkit.factories import dataset_zip
from testkit.fixtures import EXPORT_ON
from testkit.servers import free_port
from testkit.stack import (
    KEYS,
    MAX_DETECT_BYTES,
    MAX_DETECT_IMAGES,
    Proc,
    wait_until,
)

WORKER_ENV = EXPORT_ON  # checkpoints with an OpenVINO IR: /detect serves them on OpenVINO

# A PedNet whose prediction does not depend on the image: every convolution weight is zero, so
# the heatmap and the box regression are their biases at every cell of the (fixed-size) input
# canvas. Its boxes are therefore a pure function of the image's size, which isolates what
# this file tests: boxes come back in the frame of the image as uploaded. Binarizing zeros
# gives zeros, so every step of its job predicts the same.
DETERMINISTIC_CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 4,
                      "detections_per_img": 6}


def deterministic_model() -> tuple[bytes, str]:
    import json

    import torch
    from torch import nn

    from core.checkpoint import ModelCard, save_model_bytes

    card = ModelCard.model_validate(DETERMINISTIC_CARD)
    model = card.build()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.fill_(0.5)
        model.heatmap.bias.fill_(2.0)  # score sigmoid(2) = 0.88 everywhere
        model.regression.bias.copy_(torch.tensor([0.5, 0.5, math.log(2.0), math.log(3.0)]))
    return save_model_bytes(model, card)[0], json.dumps(DETERMINISTIC_CARD)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def val_image() -> Image.Image:
    return Image.open(default_data_dir() / "PNGImages" / "FudanPed00001.png").convert("RGB")


@pytest.fixture(scope="module")
def served(api_url: str, worker, database_url: str) -> dict:
    """Alpha uploads the deterministic model, "deploys" it as the demo does (model, no
    checkpoint yet), and runs a job; its step 0 gets deployed as soon as it is committed."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=120) as c:
        weights, card = deterministic_model()
        model = c.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
        dataset = c.post("/datasets", files={"archive": ("d.zip", dataset_zip(6))})
        assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
        model_id = model.json()["id"]
        with get_sessionmaker(database_url)() as s:
            tenant = ensure_tenant(s, "alpha")
            row = s.get(Deployment, tenant.id) or Deployment(tenant_id=tenant.id)
            row.model_id, row.checkpoint_id = model_id, None
            s.add(row)
            s.commit()
        before_step0 = c.post("/detect", files={"images": ("a.png", png(val_image()), "image/png")})
        job = c.post("/jobs", json={"model_id": model_id, "dataset_id": dataset.json()["id"],
                                    "target": {"min_compression_ratio": 2.0}, "finetune_iters": 0,
                                    "batch_size": 2})
        assert job.status_code == 202, job.text

        def finished() -> dict | None:
            body = c.get(f"/jobs/{job.json()['id']}").json()
            return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

        done = wait_until(finished, 120, "the job to finish", interval=0.3)
        assert done["status"] == "succeeded", (done["error"], worker.tail())  # type: ignore[index]
        steps = [s["checkpoint_id"] for s in done["steps"]]  # type: ignore[index]
        return {"model_id": model_id, "steps": steps, "before_step0": before_step0,
                "deployment": c.get("/deployment").json()}


def test_float_step_deployed_when_committed(served) -> None:
    r = served["before_step0"]
    assert r.status_code == 409 and "no checkpoint yet" in r.json()["detail"]
    assert served["deployment"]["checkpoint_id"] == served["steps"][0]
    assert len(served["steps"]) >= 2


def test_boxes_in_original_frame(client, served) -> None:
    image = val_image()
    big = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
    r = client.post("/detect", files=[("images", ("small.png", png(image), "image/png")),
                                      ("images", ("big.png", png(big), "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checkpoint_id"] == served["steps"][0] and body["model_id"] == served["model_id"]
    small, large = body["results"]
    assert (small["filename"], small["width"], small["height"]) == ("small.png", image.width, image.height)
    assert (large["filename"], large["width"], large["height"]) == ("big.png", big.width, big.height)
    assert small["detections"] and len(small["detections"]) == len(large["detections"])
    for result in (small, large):
        scores = [d["score"] for d in result["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in result["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= result["width"] and 0 <= y1 <= y2 <= result["height"]
    boxes_small = sorted(d["box"] for d in small["detections"])
    boxes_large = sorted(d["box"] for d in large["detections"])
    for a, b in zip(boxes_small, boxes_large, strict=True):
        assert all(abs(2 * u - v) <= 2.0 for u, v in zip(a, b, strict=True)), (a, b)
    # the same from a named (binary) checkpoint, and the score threshold filters
    last = served["steps"][-1]
    r = client.post("/detect", data={"checkpoint_id": last, "score_threshold": "0.95"},
                    files={"images": ("small.png", png(image), "image/png")})
    assert r.status_code == 200 and r.json()["checkpoint_id"] == last
    assert r.json()["results"][0]["detections"] == []


def test_exif_grayscale_rgba(client, served) -> None:
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: a 120x80 file shows as 80x120
    Image.new("RGB", (120, 80), (200, 10, 10)).save(rotated, "JPEG", exif=exif)
    files = [("images", ("rotated.jpg", rotated.getvalue(), "image/jpeg")),
             ("images", ("gray.png", png(Image.new("L", (90, 60), 128)), "image/png")),
             ("images", ("alpha.png", png(Image.new("RGBA", (70, 50), (0, 0, 255, 100))), "image/png"))]
    r = client.post("/detect", files=files)
    assert r.status_code == 200, r.text
    sizes = [(x["filename"], x["width"], x["height"]) for x in r.json()["results"]]
    assert sizes == [("rotated.jpg", 80, 120), ("gray.png", 90, 60), ("alpha.png", 70, 50)]


def test_bad_inputs(client, other_client, api_url, served) -> None:
    good = png(val_image())
    truncated = good[: len(good) // 2]

    def post(files, data=None, c=client):
        r = c.post("/detect", files=files, data=data)
        assert r.headers["content-type"].startswith("application/json"), r.text
        return r.status_code, r.json()["detail"]

    status, detail = post({"images": ("notes.txt", b"hello", "text/plain")})
    assert status == 415 and "notes.txt" in detail
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    assert post({"images": ("anim.gif", gif.getvalue(), "image/gif")})[0] == 415
    status, detail = post([("images", (f"{i}.png", good, "image/png")) for i in range(MAX_DETECT_IMAGES + 1)])
    assert status == 413 and "limit" in detail
    status, detail = post({"images": ("huge.png", png(Image.new("RGB", (2000, 1200))), "image/png")})
    assert status == 413 and "huge.png" in detail and "pixels" in detail
    status, _ = post({"images": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_DETECT_BYTES + (2 << 20)),
                                 "image/png")})
    assert status == 413
    status, detail = post({"images": ("cut.png", truncated, "image/png")})
    assert status == 422 and "cut.png" in detail
    status, detail = post([("images", ("ok.png", good, "image/png")),
                           ("images", ("fake.jpg", b"not a jpeg at all", "image/jpeg"))])
    assert status == 422 and "fake.jpg" in detail
    assert post({"images": ("empty.png", b"", "image/png")})[0] == 422
    assert post({"images": ("ok.png", good, "image/png")}, {"score_threshold": "2"})[0] == 422
    assert client.post("/detect", data={"checkpoint_id": "x"}).status_code == 422  # no images at all
    # tenant scoping: alpha's checkpoint is unknown to beta; beta has nothing deployed
    status, _ = post({"images": ("ok.png", good, "image/png")}, {"checkpoint_id": served["steps"][0]},
                     c=other_client)
    assert status == 404
    assert post({"images": ("ok.png", good, "image/png")}, {"checkpoint_id": "nope"})[0] == 404
    status, detail = post({"images": ("ok.png", good, "image/png")}, c=other_client)
    assert status == 409 and "nothing is deployed" in detail
    # auth
    assert httpx.post(f"{api_url}/detect", files={"images": ("ok.png", good, "image/png")}).status_code == 401
    assert httpx.post(f"{api_url}/detect", files={"images": ("ok.png", good, "image/png")},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_switch_deployment_under_load(client, api_url, served) -> None:
    first, last = served["steps"][0], served["steps"][-1]
    assert client.put("/deployment", json={"checkpoint_id": first}).status_code == 200
    image = png(val_image())
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {KEYS['alpha']}"},
                          timeout=60) as c:
            while not stop.is_set():
                r = c.post("/detect", files={"images": ("p.png", image, "image/png")})
                with lock:
                    outcomes[r.json()["checkpoint_id"] if r.status_code == 200 else f"HTTP {r.status_code}"] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for checkpoint in (last, first, last):
            time.sleep(0.8)
            assert client.put("/deployment", json={"checkpoint_id": checkpoint}).status_code == 200
        time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert set(outcomes) == {first, last}, outcomes  # no failed request, both served
    assert sum(outcomes.values()) >= 8
    r = client.post("/detect", files={"images": ("p.png", image, "image/png")})
    assert r.json()["checkpoint_id"] == last  # the latest switch holds


def test_client_cli(api_url, served, tmp_path, capsys) -> None:
    from api.client import main

    folder = tmp_path / "photos"
    folder.mkdir()
    image = val_image()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(png(image))
    image.save(folder / "p3.JPG", "JPEG")
    (folder / "readme.txt").write_text("not an image")
    out = tmp_path / "detections.json"
    code = main(["detect", "--url", api_url, "--key", KEYS["alpha"], str(folder), "--out", str(out),
                 "--images-per-request", "2", "--concurrency", "2"])
    assert code == 0, capsys.readouterr().err
    import json

    doc = json.loads(out.read_text())
    assert [r["filename"] for r in doc["results"]] == ["p0.png", "p1.png", "p2.png", "p3.JPG"]
    assert doc["checkpoint_id"] in served["steps"]
    assert all(r["width"] == image.width and r["detections"] for r in doc["results"])
    assert main(["detect", "--url", api_url, "--key", "wrong", str(folder)]) == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_metrics(client, api_url, served) -> None:
    text = httpx.get(f"{api_url}/metrics").text
    for needle in ('flexbin_http_requests_total{method="POST",route="/detect",status="200"}',
                   'flexbin_http_request_seconds_bucket{le="0.1",method="POST",route="/detect"}',
                   "flexbin_detect_images_total", "flexbin_detect_batch_size_bucket",
                   "flexbin_model_cache_hits_total", "flexbin_model_cache_misses_total",
                   'flexbin_jobs{status="succeeded"}'):
        assert needle in text, needle


def test_readiness_waits_for_warm_up(client, served, service_env, log_dir) -> None:
    """A second API process: ready only once alpha's deployed checkpoint is loaded and warmed;
    a deployment switch (made through the first API) makes it not ready until loaded again."""
    first, last = served["steps"][0], served["steps"][-1]
    assert client.put("/deployment", json={"checkpoint_id": first}).status_code == 200
    port = free_port()
    env = {**service_env, "FLEXBIN_PORT": str(port), "FLEXBIN_SERVING_REFRESH_SECONDS": "3600"}
    proc = Proc("api-readiness", [sys.executable, "-m", "api.run"], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> int | None:
            assert proc.alive(), proc.tail()
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code
            except httpx.TransportError:
                return None

        wait_until(answers, 90, "the second API to answer")
        wait_until(lambda: answers() == 200, 60, "the second API to be ready")
        assert f"loaded and warmed checkpoint {first}" in proc.log_path.read_text()

        # switched elsewhere: this process has not loaded `last` (refresh is an hour away)
        assert client.put("/deployment", json={"checkpoint_id": last}).status_code == 200
        r = httpx.get(f"{url}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["checks"]["models"] == "loading 1 deployed checkpoint(s)", r.text
        assert last not in r.text  # /readyz takes no key: it names no tenant's checkpoint
        wait_until(lambda: answers() == 200, 60, "the second API to load the new deployment")
        checks = httpx.get(f"{url}/readyz", timeout=5).json()["checks"]
        assert checks == {"database": "ok", "broker": "ok", "models": "ok"}
        r = httpx.post(f"{url}/detect", files={"images": ("p.png", png(val_image()), "image/png")},
                       headers={"Authorization": f"Bearer {KEYS['alpha']}"}, timeout=60)
        assert r.status_code == 200 and r.json()["checkpoint_id"] == last
    finally:
        proc.stop()

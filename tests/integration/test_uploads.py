"""Uploads: valid ones are stored; every bad one is a clear 4xx and leaves the database as it was."""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import httpx
import pytest

from testkit.factories import (
    TINY_CARD,
    dataset_zip,
    pennfudan_names,
    tiny_model,
)
from testkit.stack import MAX_DATASET_BYTES, MAX_MODEL_BYTES


def post_model(client: httpx.Client, weights: bytes, card: str) -> httpx.Response:
    return client.post("/models", files={"weights": ("weights.safetensors", weights, "application/octet-stream")},
                       data={"card": card})


def post_dataset(client: httpx.Client, archive: bytes) -> httpx.Response:
    return client.post("/datasets", files={"archive": ("data.zip", archive, "application/zip")})


def test_valid_model_and_dataset_are_stored(client, other_client, db_counts) -> None:
    before = db_counts()
    weights, card = tiny_model()
    r = post_model(client, weights, card)
    assert r.status_code == 201, r.text
    model = r.json()
    assert {"id", "architecture", "num_params", "size_bytes", "created_at"} <= model.keys()
    assert model["architecture"] == "flexbin_pednet" and model["size_bytes"] == len(weights)
    assert model["num_params"] > 0
    assert client.get(f"/models/{model['id']}").json()["id"] == model["id"]
    # the card may also come as a file part (curl -F card=@card.json)
    r = client.post("/models", files={"weights": ("w.safetensors", weights), "card": ("card.json", card.encode())})
    assert r.status_code == 201, r.text
    before["models"] += 1
    before["blobs"] += 1

    r = post_dataset(client, dataset_zip(4))
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["num_images"] == 4 and dataset["num_boxes"] >= 4
    after = db_counts()
    assert after["models"] == before["models"] + 1
    assert after["datasets"] == before["datasets"] + 1
    assert after["blobs"] == before["blobs"] + 2

    # another tenant's ids answer 404, exactly like unknown ones
    assert other_client.get(f"/models/{model['id']}").status_code == 404
    assert other_client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert client.get("/models/does-not-exist").status_code == 404

    # listings: newest first, paged, counted, only the tenant's own
    models = client.get("/models", params={"limit": 1}).json()
    assert models["count"] >= 2 and len(models["data"]) == 1
    assert models["data"][0]["id"] != model["id"]  # the card-as-file upload came after it
    assert model["id"] in {m["id"] for m in client.get("/models").json()["data"]}
    datasets = client.get("/datasets").json()
    assert datasets["data"][0]["id"] == dataset["id"] and datasets["count"] >= 1
    assert model["id"] not in {m["id"] for m in other_client.get("/models").json()["data"]}
    assert dataset["id"] not in {d["id"] for d in other_client.get("/datasets").json()["data"]}
    assert client.get("/models", params={"limit": 0}).status_code == 422


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _bad_models() -> list[tuple[str, bytes, str, int, str]]:
    weights, card = tiny_model()
    wide_weights, _ = tiny_model({**TINY_CARD, "width": 8})
    return [
        ("unknown architecture", weights, json.dumps({**TINY_CARD, "architecture": "resnet9000"}), 422,
         "unknown architecture"),
        ("wrong-shape weights", wide_weights, card, 422, "shape"),
        ("pickle posing as weights", pickle.dumps({"features.0.0.weight": [1.0, 2.0]}), card, 422, "safetensors"),
        ("card is not JSON", weights, "{architecture: flexbin_pednet", 422, "card"),
        ("unknown builder argument", weights, json.dumps({**TINY_CARD, "depth": 3}), 422, "depth"),
        ("empty weights", b"", card, 422, "empty"),
    ]


@pytest.mark.parametrize(("case", "weights", "card", "status", "says"), _bad_models(),
                         ids=[c[0] for c in _bad_models()])
def test_bad_model_is_rejected_and_nothing_stored(client, db_counts, case, weights, card, status, says) -> None:
    before = db_counts()
    r = post_model(client, weights, card)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and says.lower() in detail.lower(), detail
    assert db_counts() == before


def _bad_datasets() -> list[tuple[str, bytes, str]]:
    stem = pennfudan_names(1)[0]
    good = dataset_zip(2)
    annotation = (dataset_zip.__globals__["default_data_dir"]() / "Annotation" / f"{stem}.txt").read_text()
    outside = annotation.replace("Image size (X x Y x C) : ", "Image size (X x Y x C) : ", 1)
    # move the first box far outside the image
    lines = outside.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Bounding box for object 1"):
            lines[i] = line.split(":")[0] + ": (10, 10) - (5000, 5000)"
            break
    return [
        ("corrupt zip", good[: len(good) // 2], "zip"),
        ("not a zip at all", b"hello, I am a text file", "zip"),
        ("non-image file", dataset_zip(2, extra={"PNGImages/notes.txt": b"not an image"}), "notes.txt"),
        ("undecodable image", dataset_zip(2, replace={f"PNGImages/{stem}.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64}),
         stem),
        ("box outside the image", dataset_zip(2, replace={f"Annotation/{stem}.txt": "\n".join(lines).encode()}),
         stem),
        ("unknown layout", _zip({"readme.md": b"# nothing here"}), "layout"),
    ]


@pytest.mark.parametrize(("case", "archive", "says"), _bad_datasets(), ids=[c[0] for c in _bad_datasets()])
def test_bad_dataset_is_rejected_and_nothing_stored(client, db_counts, case, archive, says) -> None:
    before = db_counts()
    r = post_dataset(client, archive)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and says.lower() in detail.lower(), detail
    assert db_counts() == before


def test_oversized_uploads_answer_413(client, db_counts) -> None:
    before = db_counts()
    _, card = tiny_model()
    r = post_model(client, b"\0" * (MAX_MODEL_BYTES + 10), card)
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["detail"]
    r = post_dataset(client, b"\0" * (MAX_DATASET_BYTES + 2_000_000))
    assert r.status_code == 413, r.text

    # no Content-Length (chunked): the limit is enforced while the body streams in
    def chunks():
        yield (b'--x\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n'
               b"Content-Type: application/zip\r\n\r\n")
        for _ in range((MAX_DATASET_BYTES // 1_000_000) + 3):
            yield b"\0" * 1_000_000
        yield b"\r\n--x--\r\n"

    r = client.post("/datasets", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413, r.text
    assert db_counts() == before


def test_missing_or_wrong_api_key_is_401(api_url, db_counts) -> None:
    before = db_counts()
    weights, card = tiny_model()
    with httpx.Client(base_url=api_url, timeout=30) as anonymous:
        for path in ("/architectures", "/jobs", "/models/x", "/checkpoints/x", "/deployment"):
            r = anonymous.get(path)
            assert r.status_code == 401 and "API key" in r.json()["detail"], (path, r.text)
        r = post_model(anonymous, weights, card)
        assert r.status_code == 401
        r = anonymous.get("/jobs", headers={"Authorization": "Bearer not-a-key"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
        r = anonymous.get("/jobs", headers={"Authorization": "Basic a2V5LWFscGhhOg=="})
        assert r.status_code == 401
        # open endpoints
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "models": "ok"}
    assert db_counts() == before


def test_architectures(client) -> None:
    r = client.get("/architectures")
    assert r.status_code == 200
    names = {a["name"] for a in r.json()}
    assert "flexbin_pednet" in names
    assert all({"name", "description", "default_kwargs"} <= a.keys() for a in r.json())


def test_bad_job_requests(client, other_client, db_counts) -> None:
    weights, card = tiny_model()
    model_id = post_model(client, weights, card).json()["id"]
    dataset_id = post_dataset(client, dataset_zip(4)).json()["id"]
    before = db_counts()
    body = {"model_id": model_id, "dataset_id": dataset_id, "target": {"min_compression_ratio": 4.0}}
    cases = [
        ({**body, "target": {}}, 422, "exactly one"),
        ({**body, "target": {"min_compression_ratio": 4.0, "max_miss_rate_increase": 0.1}}, 422, "exactly one"),
        ({**body, "method": "magic"}, 422, "method"),
        ({**body, "bits": 9}, 422, "bits"),
        ({**body, "seed": -1}, 422, "seed"),
        ({**body, "seed": 2**31}, 422, "seed"),
        ({**body, "seed": 10**30}, 422, "seed"),
        ({**body, "method": "all_at_once", "num_layers": 0}, 422, "num_layers"),
        ({**body, "method": "all_at_once", "num_layers": 10**9}, 422, "num_layers"),
        ({**body, "model_id": "nope"}, 404, "model nope not found"),
        ({**body, "dataset_id": "nope"}, 404, "dataset nope not found"),
        ({**body, "surprise": 1}, 422, "surprise"),
        ({**body, "method": "all_at_once", "target": {"max_miss_rate_increase": 0.1}}, 422, "all_at_once"),
        ({**body, "target": {"min_compression_ratio": 4.0, "patience": 2}}, 422, "patience applies only"),
        ({**body, "target": {"max_miss_rate_increase": 0.1, "patience": -1}}, 422, "patience"),
    ]
    for payload, status, says in cases:
        r = client.post("/jobs", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert says in r.json()["detail"], r.text
    # beta cannot use alpha's model and dataset
    r = other_client.post("/jobs", json=body)
    assert r.status_code == 404
    r = client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert db_counts() == before
    for path in ("/jobs/nope", "/checkpoints/nope", "/checkpoints/nope/download"):
        assert client.get(path).status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404
    assert client.put("/deployment", json={"checkpoint_id": "nope"}).status_code == 404
    assert db_counts() == before

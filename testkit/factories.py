"""Tiny inputs for tests and benchmarks: a small untrained PedNet and a few Penn-Fudan images,
and the uploads + job that use them."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import ModelCard, save_model_bytes
from core.paths import default_data_dir
from testkit.stack import wait_until

TINY_CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 4}


def tiny_model(card: dict | None = None, *, seed: int = 0) -> tuple[bytes, str]:
    """(safetensors weights, card JSON) of an untrained tiny PedNet."""
    torch.manual_seed(seed)
    parsed = ModelCard.model_validate(card or TINY_CARD)
    return save_model_bytes(parsed.build(), parsed)[0], json.dumps(card or TINY_CARD)


def pennfudan_names(n: int, root: Path | None = None) -> list[str]:
    """The first `n` Penn-Fudan image names; FileNotFoundError naming the folder and the
    setting when there are fewer (e.g. a checkout without ../shared beside it)."""
    root = root or default_data_dir()
    names = sorted(p.stem for p in (root / "PNGImages").glob("*.png"))[:n]
    if len(names) < n:
        raise FileNotFoundError(f"{len(names)} Penn-Fudan images under {root / 'PNGImages'}, the tests need {n}: "
                                "set FLEXBIN_DEMO_DATA to the PennFudanPed folder")
    return names


def dataset_zip(n: int = 8, *, extra: dict[str, bytes] | None = None,
                replace: dict[str, bytes] | None = None, root: Path | None = None) -> bytes:
    """A Penn-Fudan-layout zip of the first `n` images under `root` (default: the demo data);
    `extra` adds entries, `replace` swaps some."""
    root = root or default_data_dir()
    entries: dict[str, bytes] = {}
    for stem in pennfudan_names(n, root):
        entries[f"PNGImages/{stem}.png"] = (root / "PNGImages" / f"{stem}.png").read_bytes()
        entries[f"Annotation/{stem}.txt"] = (root / "Annotation" / f"{stem}.txt").read_bytes()
    entries.update(replace or {})
    entries.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def upload_tiny(client: Any, images: int = 4, *, seed: int = 0) -> dict[str, str]:
    """Upload a tiny model and a dataset of `images` Penn-Fudan images: their ids."""
    weights, card = tiny_model(seed=seed)
    model = client.post("/models", files={"weights": ("w.safetensors", weights)}, data={"card": card})
    dataset = client.post("/datasets", files={"archive": ("d.zip", dataset_zip(images))})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    return {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}


def run_tiny_job(client: Any, job: dict[str, Any], images: int = 4, timeout: float = 180) -> dict[str, Any]:
    """Upload a tiny model and dataset, run `job` on them (a worker must be up) and return the
    job once it has ended; fails unless it succeeded."""
    created = client.post("/jobs", json={**upload_tiny(client, images), **job})
    assert created.status_code == 202, created.text

    def ended() -> dict[str, Any] | None:
        body = client.get(f"/jobs/{created.json()['id']}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    body: dict[str, Any] = wait_until(ended, timeout, "the job", interval=0.3)  # type: ignore[assignment]
    assert body["status"] == "succeeded", body["error"]
    return body

"""One (fold, seed, arm) run on disk: detections in safetensors, everything else in JSON.

`<name>.safetensors` holds, per evaluated checkpoint label, `<label>/boxes` (float32[D, 4],
x1, y1, x2, y2 in image pixels), `<label>/scores` (float32[D]) and `<label>/counts`
(int64[n_images]: how many of the D rows belong to each evaluation image, in the order of
`images` in the JSON). `<name>.json` is written last, so its presence means the run is
complete (resuming skips it); both are replaced atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from bench.study.arms import ArmRun


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_arm_run(run: ArmRun, directory: Path, name: str, images: list[str], extra: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for ev in run.evaluations:
        if len(ev.detections) != len(images):
            raise ValueError(f"{ev.label}: {len(ev.detections)} detections for {len(images)} images")
        tensors[f"{ev.label}/boxes"] = torch.cat([d["boxes"].reshape(-1, 4) for d in ev.detections]).float()
        tensors[f"{ev.label}/scores"] = torch.cat([d["scores"].reshape(-1) for d in ev.detections]).float()
        tensors[f"{ev.label}/counts"] = torch.tensor([len(d["scores"]) for d in ev.detections], dtype=torch.int64)
    _atomic_write(directory / f"{name}.safetensors", lambda p: save_file(tensors, str(p)))
    meta = {**extra, "arm": run.arm, "learning_rate": run.learning_rate, "seed": run.seed,
            "layer_order": run.layer_order, "seconds": round(run.seconds, 1), "images": images,
            "evaluations": [{k: v for k, v in asdict(ev).items() if k != "detections"} for ev in run.evaluations]}
    _atomic_write(directory / f"{name}.json", lambda p: p.write_text(json.dumps(meta, indent=1)))


def is_done(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").exists()


def load_arm_run(directory: Path, name: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Tensor]]]]:
    """(the JSON, {label: per-image [{"boxes", "scores"}] in `images` order})."""
    meta = json.loads((directory / f"{name}.json").read_text())
    tensors = load_file(str(directory / f"{name}.safetensors"))
    detections: dict[str, list[dict[str, Tensor]]] = {}
    for ev in meta["evaluations"]:
        label = ev["label"]
        counts = tensors[f"{label}/counts"].tolist()
        boxes = torch.split(tensors[f"{label}/boxes"], counts)
        scores = torch.split(tensors[f"{label}/scores"], counts)
        detections[label] = [{"boxes": b, "scores": s} for b, s in zip(boxes, scores, strict=True)]
    return meta, detections

"""The training loops that bench.train_speed and bench.gpu_check time: the old loop as it was at
commit a8b4147, kept here so that later changes to core do not change what the new loop is
compared with, and `time_loop`, which times either loop on a copy of a model.

Imports torch, torchvision and core only (no bench.report, matplotlib, OpenVINO or the service:
an import-linter contract in pyproject.toml keeps it so), because bench.gpu_check runs on a GPU
machine that has only torch, torchvision, numpy, pillow, safetensors, tqdm and pydantic.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.checkpoint import ModelCard
from core.data import ImageRecord, load_image
from core.pretrained import load_pretrained
from core.train import ImageCache, TrainOptions, train_detector


# -- the old loop (a8b4147), bench-local ----------------------------------------------------
def old_train_transforms() -> Any:
    """a8b4147's `core.data.train_transforms`: the v2 pipeline, per sample, full resolution."""
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: 0.5, "others": 0}, side_range=(1.0, 1.5), p=0.3),
        v2.RandomApply([v2.RandomIoUCrop(min_scale=0.5)], p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0),
    ])


class OldImageCache:
    """a8b4147's `core.train.ImageCache`: uint8 in memory, converted to float on every access."""

    def __init__(self) -> None:
        self._images: dict[str, Tensor] = {}

    def image(self, record: ImageRecord) -> Tensor:
        if record.name not in self._images:
            image = load_image(record.image, name=record.name)
            self._images[record.name] = (image * 255).round().to(torch.uint8)
        return self._images[record.name].float() / 255


def _old_sample(record: ImageRecord, transforms: Any, cache: OldImageCache) -> tuple[Tensor, dict[str, Tensor]]:
    """a8b4147's `DetectionDataset.__getitem__` with the cache as its loader."""
    image = cache.image(record)
    boxes = tv_tensors.BoundingBoxes(record.boxes.float(), format="XYXY", canvas_size=tuple(image.shape[-2:]))
    target: dict[str, Any] = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
    image, target = transforms(image, target)
    return (image.as_subclass(torch.Tensor).float(),
            {"boxes": target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
             "labels": target["labels"].as_subclass(torch.Tensor).long()})


def old_batches(records: Sequence[ImageRecord], batch_size: int, generator: torch.Generator,
                cache: OldImageCache) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """a8b4147's `core.train._batches`."""
    transforms = old_train_transforms()
    while True:
        order = torch.randperm(len(records), generator=generator).tolist()
        for start in range(0, max(1, len(order) - batch_size + 1), batch_size):
            items = [_old_sample(records[i], transforms, cache) for i in order[start:start + batch_size]]
            yield [img for img, _ in items], [tgt for _, tgt in items]


def old_train_loop(model: nn.Module, records: Sequence[ImageRecord], *, iterations: int, batch_size: int = 8,
                   learning_rate: float = 1e-3, seed: int = 0, warmup: int = 0, cache: OldImageCache | None = None,
                   on_iteration: Callable[[int, float, float, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, device: str = "cpu") -> float:
    """a8b4147's `core.train.train_detector`, plus the time spent waiting for batches:
    `on_iteration(iteration, seconds, data_wait_seconds, loss)` (1-based, since the call started)."""
    cache = cache or OldImageCache()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, iterations - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start, waited, loss_value = time.monotonic(), 0.0, float("nan")
    batches = old_batches(records, batch_size, generator, cache)
    for i in range(iterations):
        if should_stop is not None and should_stop():
            break
        fetch = time.monotonic()
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        waited += time.monotonic() - fetch
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())  # type: ignore[union-attr]
        if on_iteration is not None:
            on_iteration(i + 1, time.monotonic() - start, waited, loss_value)
    model.eval()
    return loss_value


# -- models ----------------------------------------------------------------------------------
def build_model(name: str) -> nn.Module:
    """A fresh detector for a cell: pedestrian_adas_0002 (bundled weights) at an input size, or
    PedNet at the registry's defaults (untrained: speed does not depend on the weights)."""
    if name.startswith("adas_"):
        h, w = (int(v) for v in name.removeprefix("adas_").split("x"))
        model, _ = load_pretrained("pedestrian_adas_0002", input_height=h, input_width=w)
        return model
    if name == "pednet":
        torch.manual_seed(0)
        return ModelCard(architecture="flexbin_pednet").build()
    raise ValueError(f"unknown cell model {name!r}")


# -- timing ----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_loop(loop: str, model: nn.Module, records: Sequence[ImageRecord], *, batch_size: int, device: str,
              budget_s: float, min_iters: int = 3, max_iters: int = 200, warmup_iters: int = 2,
              old_cache: OldImageCache | None = None, cache: ImageCache | None = None,
              workers: int | None = None, bf16: bool = False) -> dict[str, Any]:
    """ms per iteration of `loop` ("old" or "new") on a copy of `model`: a warm-up call, then a
    call that stops after `budget_s` (at least `min_iters` iterations). Mean (wall time of the
    call / iterations, after a device sync) and median of the per-iteration host times (on the
    CPU the robust figure on a shared machine; on CUDA the host runs ahead, so use the mean)."""
    model = copy.deepcopy(model)
    options = TrainOptions(loader_workers=workers, bf16=bf16)
    marks: list[tuple[float, float]] = []  # (seconds, data wait) since the call started

    def run(iterations: int, stop: Callable[[], bool] | None) -> None:
        if loop == "old":
            def on_old(_i: int, seconds: float, waited: float, _loss: float) -> None:
                marks.append((seconds, waited))

            old_train_loop(model, records, iterations=iterations, batch_size=batch_size, learning_rate=1e-4,
                           seed=1, cache=old_cache, on_iteration=on_old, should_stop=stop, device=device)
        else:
            def on_new(report: Any) -> None:
                marks.append((report.seconds, report.data_wait))

            train_detector(model, records, iterations=iterations, batch_size=batch_size, learning_rate=1e-4,
                           seed=1, cache=cache, on_iteration=on_new, should_stop=stop, device=device,
                           options=options)

    if warmup_iters:
        run(warmup_iters, None)
    _sync(device)
    marks.clear()
    started = time.monotonic()
    run(max_iters, lambda: len(marks) >= min_iters and time.monotonic() - started > budget_s)
    _sync(device)
    wall = time.monotonic() - started
    n = len(marks)
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip([(0.0, 0.0), *marks[:-1]], marks)]
    ms = 1000 * wall / n
    data_ms = 1000 * marks[-1][1] / n
    median_ms = 1000 * statistics.median(dt for dt, _ in steps)
    median_data = 1000 * statistics.median(dw for _, dw in steps)
    return {"iterations": n, "ms_per_iteration": round(ms, 1), "data_wait_ms": round(data_ms, 1),
            "compute_ms": round(ms - data_ms, 1), "data_wait_share": round(data_ms / ms, 3),
            "median_ms": round(median_ms, 1), "median_data_wait_ms": round(median_data, 1),
            "raw": {"wall": wall, "waited": marks[-1][1], "steps": steps}}


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several `time_loop` results of one variant (rounds alternating with the other loop) as one."""
    n = sum(r["iterations"] for r in results)
    wall = sum(r["raw"]["wall"] for r in results)
    waited = sum(r["raw"]["waited"] for r in results)
    steps = [s for r in results for s in r["raw"]["steps"]]
    ms, data_ms = 1000 * wall / n, 1000 * waited / n
    return {"iterations": n, "rounds": len(results), "ms_per_iteration": round(ms, 1), "data_wait_ms": round(data_ms, 1),
            "compute_ms": round(ms - data_ms, 1), "data_wait_share": round(data_ms / ms, 3),
            "median_ms": round(1000 * statistics.median(dt for dt, _ in steps), 1),
            "median_data_wait_ms": round(1000 * statistics.median(dw for _, dw in steps), 1)}

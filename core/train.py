"""Training, fine-tuning, evaluation and prediction loops shared by every detector.

Deterministic on CPU for a given seed: one generator drives sampling and augmentation,
images are decoded once and kept in memory, no worker processes.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from core.checkpoint import ModelCard
from core.data import (
    DetectionDataset,
    ImageRecord,
    eval_transforms,
    load_image,
    train_transforms,
)
from core.detection_metrics import DetectionMetrics, evaluate_detections


@dataclass(frozen=True)
class IterationReport:
    iteration: int  # 1-based, within this call
    total: int
    loss: float
    seconds: float  # since the call started


OnIteration = Callable[[IterationReport], None]


class ImageCache:
    """Decoded images by record name, so each file is read and decoded once per process."""

    def __init__(self) -> None:
        self._images: dict[str, Tensor] = {}

    def image(self, record: ImageRecord) -> Tensor:
        """FloatTensor[3, H, W] in [0, 1], decoded on first use (kept as uint8)."""
        if record.name not in self._images:
            image = load_image(record.image, name=record.name)
            self._images[record.name] = (image * 255).round().to(torch.uint8)
        return self._images[record.name].float() / 255


def _batches(records: Sequence[ImageRecord], batch_size: int, generator: torch.Generator,
             cache: ImageCache) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
    dataset = DetectionDataset(records, train_transforms(), loader=cache.image)
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, max(1, len(order) - batch_size + 1), batch_size):
            items = [dataset[i] for i in order[start:start + batch_size]]
            yield [img for img, _ in items], [tgt for _, tgt in items]


def train_detector(
    model: nn.Module,
    records: Sequence[ImageRecord],
    *,
    iterations: int,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    warmup: int = 0,
    cache: ImageCache | None = None,
    on_iteration: OnIteration | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str = "cpu",
) -> float:
    """Train all parameters with AdamW and a cosine schedule; returns the last loss.

    `should_stop` is polled before every iteration; when it answers True the loop ends
    early (the caller decides what that means).
    """
    if iterations <= 0:
        return float("nan")
    if not records:
        raise ValueError("no training images")
    cache = cache or ImageCache()
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
    start, loss_value = time.monotonic(), float("nan")
    batches = _batches(records, batch_size, generator, cache)
    for i in range(iterations):
        if should_stop is not None and should_stop():
            break
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        if on_iteration is not None:
            on_iteration(IterationReport(i + 1, iterations, loss_value, time.monotonic() - start))
    model.eval()
    return loss_value


@torch.no_grad()
def predict(model: nn.Module, images: Sequence[Tensor], *, batch_size: int = 8,
            device: str = "cpu") -> list[dict[str, Tensor]]:
    """Predictions (boxes in each input image's pixels, best first) for float images."""
    model.to(device).eval()
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(images), batch_size):
        batch = [im.to(device) for im in images[start:start + batch_size]]
        for pred in model(batch):
            order = pred["scores"].argsort(descending=True)
            out.append({k: v[order].cpu() for k, v in pred.items()})
    return out


def predict_records(model: nn.Module, records: Sequence[ImageRecord], *, cache: ImageCache | None = None,
                    device: str = "cpu") -> list[dict[str, Tensor]]:
    """`predict` on each record's image as evaluation sees it, in record order."""
    cache = cache or ImageCache()
    transform = eval_transforms()
    images = [transform(cache.image(r)) if transform else cache.image(r) for r in records]
    return predict(model, images, device=device)


def evaluate_model(model: nn.Module, records: Sequence[ImageRecord], *, cache: ImageCache | None = None,
                   device: str = "cpu") -> DetectionMetrics:
    """MR^-2, AP@0.5 and the MR-FPPI curve of `model` on `records`."""
    return evaluate_detections(predict_records(model, records, cache=cache, device=device),
                               [r.boxes for r in records])


@torch.no_grad()
def detection_loss(model: nn.Module, batches: Sequence[tuple[list[Tensor], list[dict[str, Tensor]]]],
                   device: str = "cpu") -> float:
    """Mean training loss over fixed batches, computed without updating anything.

    The model runs in train mode for the loss but BatchNorm statistics are not updated.
    """
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.train()
    saved = [m.momentum for m in bn]
    for m in bn:
        m.eval()  # use running statistics; no update
    total = 0.0
    for images, targets in batches:
        losses = model([im.to(device) for im in images],
                       [{k: v.to(device) for k, v in t.items()} for t in targets])
        total += float(sum(losses.values()))
    for m, momentum in zip(bn, saved):
        m.momentum = momentum
    model.eval()
    return total / max(1, len(batches))


class Recipe(TypedDict):
    iterations: int
    batch_size: int
    learning_rate: float
    warmup: int


# Recipe for FlexBin's default detector on Penn-Fudan (bench/tradeoff.py measures it).
DEFAULT_RECIPE: Recipe = {"iterations": 1500, "batch_size": 8, "learning_rate": 2e-3, "warmup": 50}


def train_float_detector(
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    *,
    architecture: str = "flexbin_pednet",
    builder_kwargs: dict[str, Any] | None = None,
    iterations: int = DEFAULT_RECIPE["iterations"],
    batch_size: int = DEFAULT_RECIPE["batch_size"],
    learning_rate: float = DEFAULT_RECIPE["learning_rate"],
    seed: int = 0,
    on_iteration: OnIteration | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train a detector from scratch; returns (model, card with val metrics + provenance)."""
    torch.manual_seed(seed)
    card = ModelCard(architecture=architecture, **(builder_kwargs or {}))
    model = card.build()
    cache = ImageCache()
    started = time.monotonic()
    train_detector(model, train_records, iterations=iterations, batch_size=batch_size,
                   learning_rate=learning_rate, seed=seed, warmup=DEFAULT_RECIPE["warmup"],
                   cache=cache, on_iteration=on_iteration, device=device)
    seconds = time.monotonic() - started
    metrics = evaluate_model(model, val_records, cache=cache, device=device)
    card = card.model_copy(update={
        "metrics": {"miss_rate": metrics.miss_rate, "ap50": metrics.ap50},
        "provenance": {"trained_by": "flexbin", "iterations": iterations, "batch_size": batch_size,
                       "learning_rate": learning_rate, "seed": seed,
                       "train_images": len(train_records), "val_images": len(val_records),
                       "train_seconds": round(seconds, 1)}})
    return model.eval(), card

"""Training, fine-tuning, evaluation and prediction loops shared by every detector.

Training (issue 18) augments at the network's resolution (`core.data.augment`): each image is
decoded once into a uint8 cache; a sample is box arithmetic plus one crop-and-resize, made by a
`torch.utils.data.DataLoader` (worker processes where they pay: on a CUDA machine; none on the
CPU, where they would take cores from the training itself), with pinned memory and
non-blocking copies on CUDA; the photometric distortion runs batched on the training device.
Deterministic for a seed whatever the number of loader workers: the sampling runs in the main
process from one generator seeded with `seed`, and each sample's augmentation from its own
generator seeded with (seed, iteration, position). The loss is read from the device only when
someone reads `IterationReport.loss`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from core.binary import InputBinarizer
from core.binary.fusion import fusing
from core.checkpoint import ModelCard
from core.data import (
    ImageRecord,
    eval_transforms,
    load_image,
)
from core.data.augment import (
    AugmentedDetectionSet,
    CachedImage,
    NetworkInput,
    TrainBatch,
    TrainSampler,
    cache_image,
    collate_batch,
)
from core.detection_metrics import DetectionMetrics, evaluate_detections
from core.distillation import Distillation, distilled_losses, supports_distillation
from core.models.adas import PedestrianAdas
from core.models.pednet import PedNet


@dataclass(frozen=True)
class IterationReport:
    """One training iteration done. `loss` waits for the device to read the loss: read it only
    when it is reported, not every iteration."""

    iteration: int  # 1-based, within this call
    total: int
    seconds: float  # since the call started
    data_wait: float = 0.0  # seconds of `seconds` spent waiting for batches
    loss_tensor: Tensor | None = field(default=None, repr=False)

    @property
    def loss(self) -> float:
        """The iteration's training loss (NaN when unknown)."""
        return float("nan") if self.loss_tensor is None else float(self.loss_tensor)


OnIteration = Callable[[IterationReport], None]


@dataclass(frozen=True)
class TrainOptions:
    """How fine-tuning uses the hardware (worker settings; results do not depend on them except
    `bf16`, which a step's provenance records).

    bf16: bfloat16 autocast for the forward and the loss (off by default: on only once measured
    equal in accuracy); loader_workers: DataLoader worker processes (None: none on the CPU, up
    to 8 on CUDA; the batches are the same whatever the number); channels_last: the network's
    convolutions in NHWC (None: on CUDA, and on the CPU for networks without BatchNorm; measured
    on 2 cores, bench/train_speed.py: pedestrian_adas_0002 a quarter faster, PedNet slightly slower);
    fuse_binarizers: the input binarizers' straight-through estimators as kernels compiled by
    torch.compile (`core.binary.fusion`; unfused, logged, where it cannot compile; the same maths,
    equal within float rounding; bench/fused_binarizers.py measures the gain).
    """

    bf16: bool = False
    loader_workers: int | None = None
    channels_last: bool | None = None
    fuse_binarizers: bool = True

    def use_channels_last(self, model: nn.Module, device: str) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        if torch.device(device).type == "cuda":
            return True
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def workers(self, device: str) -> int:
        if self.loader_workers is not None:
            return max(0, self.loader_workers)
        if torch.device(device).type != "cuda":
            return 0  # measured on 2 cores: workers only take cores from the training (bench/train_speed.py)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        return max(1, min(8, cores - 2))

    def provenance(self, device: str) -> dict[str, Any]:
        """What a step's card records about how it was trained."""
        return {"device": torch.device(device).type, "bf16_autocast": self.bf16}


def network_input(model: nn.Module) -> NetworkInput:
    """How `model` resizes an image to its input (what training's crop-and-resize reproduces)."""
    if isinstance(model, PedestrianAdas):  # the IR's plain antialiased stretch
        return NetworkInput("stretch", height=model.input_height, width=model.input_width, antialias=True)
    if isinstance(model, PedNet):  # longer side to input_size, plain bilinear
        return NetworkInput("longer_side", size=model.input_size)
    transform = getattr(model, "transform", None)  # torchvision's GeneralizedRCNNTransform
    fixed = getattr(transform, "fixed_size", None)
    if fixed:  # SSD: a plain bilinear stretch to (width, height) = fixed_size
        return NetworkInput("stretch", height=int(fixed[1]), width=int(fixed[0]))
    # Anything else resizes itself (Faster R-CNN's min / max size rule): crops at cache resolution.
    return NetworkInput("native", size=int(getattr(transform, "max_size", 0) or 0))


class ImageCache:
    """Decoded images by record name, so each file is read and decoded once per process; the
    training images at the network's resolution, and the training DataLoaders, live here too
    (one cache per run: `close` stops its loader workers)."""

    def __init__(self) -> None:
        self._images: dict[str, Tensor] = {}
        self._training: dict[tuple[str, int | None], CachedImage] = {}
        self._loaders: dict[tuple[Any, ...], _Loader] = {}

    def pixels(self, record: ImageRecord) -> Tensor:
        """ByteTensor[3, H, W], decoded on first use."""
        if record.name not in self._images:
            image = load_image(record.image, name=record.name)
            self._images[record.name] = (image * 255).round().to(torch.uint8)
        return self._images[record.name]

    def image(self, record: ImageRecord) -> Tensor:
        """FloatTensor[3, H, W] in [0, 1], decoded on first use (kept as uint8)."""
        return self.pixels(record).float() / 255

    def training_image(self, record: ImageRecord, max_side: int | None) -> CachedImage:
        """The image as training crops it: uint8, longer side at most `max_side`."""
        key = (record.name, max_side)
        if key not in self._training:
            self._training[key] = cache_image(self.pixels(record), max_side)
        return self._training[key]

    def training_batches(self, records: Sequence[ImageRecord], net: NetworkInput, *, seed: int, batch_size: int,
                         iterations: int, workers: int = 0, pin_memory: bool = False) -> Iterator[TrainBatch]:
        """`iterations` augmented batches (`core.data.augment`), from a DataLoader kept for the
        next call with the same records (persistent workers: each fine-tuning step reuses them)."""
        key = (tuple(r.name for r in records), net, workers, pin_memory)
        loader = self._loaders.get(key)
        if loader is None:
            images = [self.training_image(r, net.cache_side) for r in records]
            loader = self._loaders[key] = _Loader(AugmentedDetectionSet(records, net, images), workers, pin_memory)
        return loader.batches(seed=seed, batch_size=batch_size, iterations=iterations)

    def close(self) -> None:
        """Stop the training loaders' worker processes (they also stop with the cache)."""
        for loader in self._loaders.values():
            loader.close()
        self._loaders.clear()


class _Loader:
    """A DataLoader over whole batches whose sampler is reconfigured per call."""

    def __init__(self, dataset: AugmentedDetectionSet, workers: int, pin_memory: bool) -> None:
        self.sampler = TrainSampler(len(dataset))
        extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
        self.loader: torch.utils.data.DataLoader[TrainBatch] = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, collate_fn=collate_batch, num_workers=workers,
            pin_memory=pin_memory, generator=torch.Generator(), **extra)

    def batches(self, *, seed: int, batch_size: int, iterations: int) -> Iterator[TrainBatch]:
        self.sampler.configure(seed=seed, batch_size=batch_size, iterations=iterations)
        return iter(self.loader)

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


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
    options: TrainOptions | None = None,
    distillation: Distillation | None = None,
    binarizer_lr_multiplier: float = 1.0,
) -> float:
    """Train all parameters with AdamW and a cosine schedule; returns the last loss.

    `should_stop` is polled before every iteration; when it answers True the loop ends
    early (the caller decides what that means). `options`: how the hardware is used
    (`TrainOptions`). `distillation`: add `core.distillation`'s loss against a frozen teacher
    (its weight times the loss, as the loss "distillation"). `binarizer_lr_multiplier`: the
    input binarizers' parameters (thresholds, scales) learn at this times `learning_rate` (NNCF's
    `compression_lr_multiplier`). The model is left in eval mode, on `device`, in the default
    memory format.
    """
    if iterations <= 0:
        return float("nan")
    if not records:
        raise ValueError("no training images")
    options = options or TrainOptions()
    cache = cache or ImageCache()
    torch.manual_seed(seed)
    on_cuda = torch.device(device).type == "cuda"
    model.to(device)
    channels_last = options.use_channels_last(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    binarizer_ids = {id(p) for m in model.modules() if isinstance(m, InputBinarizer) for p in m.parameters()}
    groups = [{"params": [p for p in params if id(p) not in binarizer_ids], "lr": learning_rate},
              {"params": [p for p in params if id(p) in binarizer_ids],
               "lr": learning_rate * binarizer_lr_multiplier}]
    # The fused kernel (CPU and CUDA): the same update as the per-parameter loop, a few ms instead
    # of 16 per iteration on 2 cores for pedestrian_adas_0002.
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, weight_decay=1e-4,
                                  fused=True)

    def lr_at(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, iterations - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    if distillation is not None and not (supports_distillation(model) and supports_distillation(distillation.teacher)):
        raise ValueError(f"{type(model).__name__} does not expose dense outputs: it cannot be distilled")
    batches = cache.training_batches(records, network_input(model), seed=seed, batch_size=batch_size,
                                     iterations=iterations, workers=options.workers(device), pin_memory=on_cuda)
    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if options.bf16
                else contextlib.nullcontext())
    start, waited = time.monotonic(), 0.0
    last: Tensor | None = None
    try:
        for i in range(iterations):
            if should_stop is not None and should_stop():
                break
            fetch = time.monotonic()
            batch = next(batches).to(device, non_blocking=True)
            waited += time.monotonic() - fetch
            images, targets = batch.model_inputs()
            with autocast, fusing(options.fuse_binarizers):  # the binarizers' backward keeps the choice
                if distillation is None:
                    losses = model(images, targets)
                else:
                    losses = distilled_losses(model, distillation, images, targets)
                loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            last = loss.detach()
            if on_iteration is not None:
                on_iteration(IterationReport(i + 1, iterations, time.monotonic() - start, waited, last))
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()
    return float("nan") if last is None else float(last)


EVAL_BATCH_CUDA = 32  # images per forward in evaluation on CUDA (8 on the CPU, as before)


@torch.no_grad()
def predict(model: nn.Module, images: Sequence[Tensor], *, batch_size: int | None = None,
            device: str = "cpu") -> list[dict[str, Tensor]]:
    """Predictions (boxes in each input image's pixels, best first) for float images, by batches
    of `batch_size` (default: 8, or EVAL_BATCH_CUDA on CUDA) on `device`."""
    if batch_size is None:
        batch_size = EVAL_BATCH_CUDA if torch.device(device).type == "cuda" else 8
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
    """`predict` on each record's image as evaluation sees it, in record order. The images travel
    to the device as uint8 and become floats there (the same values as on the host)."""
    cache = cache or ImageCache()
    transform = eval_transforms()
    images = []
    for r in records:
        image = cache.pixels(r).to(device).float() / 255
        images.append(transform(image) if transform else image)
    return predict(model, images, device=device)


def evaluate_model(model: nn.Module, records: Sequence[ImageRecord], *, cache: ImageCache | None = None,
                   device: str = "cpu") -> DetectionMetrics:
    """MR^-2, AP@0.5 and the MR-FPPI curve of `model` on `records`."""
    return evaluate_detections(predict_records(model, records, cache=cache, device=device),
                               [r.boxes for r in records])


def fixed_batches(records: Sequence[ImageRecord], cache: ImageCache,
                  batch_size: int) -> list[tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """`records` in order as batches of (images, targets), unaugmented, as the detectors' training
    forward and `detection_loss` take them (images through `cache`, every box a pedestrian)."""
    return [([cache.image(r) for r in records[i:i + batch_size]],
             [{"boxes": r.boxes, "labels": torch.ones(len(r.boxes), dtype=torch.int64)}
              for r in records[i:i + batch_size]])
            for i in range(0, len(records), batch_size)]


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
    options: TrainOptions | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Train a detector from scratch; returns (model, card with val metrics + provenance)."""
    torch.manual_seed(seed)
    card = ModelCard(architecture=architecture, **(builder_kwargs or {}))
    model = card.build()
    cache = ImageCache()
    started = time.monotonic()
    train_detector(model, train_records, iterations=iterations, batch_size=batch_size,
                   learning_rate=learning_rate, seed=seed, warmup=DEFAULT_RECIPE["warmup"],
                   cache=cache, on_iteration=on_iteration, device=device, options=options)
    seconds = time.monotonic() - started
    metrics = evaluate_model(model, val_records, cache=cache, device=device)
    card = card.model_copy(update={
        "metrics": {"miss_rate": metrics.miss_rate, "ap50": metrics.ap50},
        "provenance": {"trained_by": "flexbin", "iterations": iterations, "batch_size": batch_size,
                       "learning_rate": learning_rate, "seed": seed,
                       "train_images": len(train_records), "val_images": len(val_records),
                       "train_seconds": round(seconds, 1)}})
    return model.eval(), card

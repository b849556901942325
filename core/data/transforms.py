"""Augmentation (torchvision.transforms.v2) and the torch Dataset for detection training."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.data.records import ImageRecord, load_image

Target = dict[str, torch.Tensor]
Sample = tuple[torch.Tensor, Target]


def train_transforms() -> v2.Compose:
    """Training augmentation on `(image, {"boxes": BoundingBoxes, "labels"})` samples.

    Photometric distortion, zoom-out (p=0.3, canvas up to 1.5x, mean-gray fill), an IoU crop
    keeping at least half of each side (p=0.5), horizontal flip (p=0.5), float32 in [0, 1]
    and removal of boxes that became degenerate (with their labels). Images stay roughly at
    their original scale: the detectors resize internally.

    The training loop no longer runs this per sample (issue 18): `core.data.augment` draws the
    same augmentation and makes the pixels once, at the network's resolution. This pipeline
    stays as the reference it reproduces (bench/train_speed.py keeps its own copy as the old loop).
    """
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: 0.5, "others": 0}, side_range=(1.0, 1.5),
                         p=0.3),
        v2.RandomApply([v2.RandomIoUCrop(min_scale=0.5)], p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0),
    ])


def eval_transforms() -> v2.Compose:
    """Evaluation: only conversion to a float32 image in [0, 1]; boxes untouched."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class DetectionDataset(torch.utils.data.Dataset[Sample]):
    """Records as `(image FloatTensor[3,H,W] in [0,1], {"boxes": FloatTensor[N,4] x1y1x2y2,
    "labels": Int64Tensor[N] all 1})`, optionally through a v2 `transforms` that receives
    boxes as `tv_tensors.BoundingBoxes` (XYXY). Outputs are plain tensors. Images are decoded
    on every access by `load_image`, unless `loader(record)` supplies them (a cache, say)."""

    def __init__(self, records: Sequence[ImageRecord],
                 transforms: Callable[..., Any] | None = None,
                 loader: Callable[[ImageRecord], torch.Tensor] | None = None) -> None:
        self.records = list(records)
        self.transforms = transforms
        self.loader = loader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        image = self.loader(rec) if self.loader else load_image(rec.image, name=rec.name)
        boxes = tv_tensors.BoundingBoxes(rec.boxes.float(), format="XYXY",
                                         canvas_size=tuple(image.shape[-2:]))
        target: dict[str, Any] = {"boxes": boxes,
                                  "labels": torch.ones(len(boxes), dtype=torch.int64)}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return (image.as_subclass(torch.Tensor).float(),
                {"boxes": target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
                 "labels": target["labels"].as_subclass(torch.Tensor).long()})


def collate_detection(batch: Sequence[Sample]) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader collate: `[(image, target), ...]` -> `(list of images, list of targets)`."""
    return [b[0] for b in batch], [b[1] for b in batch]

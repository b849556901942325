"""Datasets: records, readers (Penn-Fudan, COCO, zip uploads), the fixed split, augmentation.

Formats follow docs/CONVENTIONS.md: images FloatTensor[3,H,W] RGB in [0,1]; boxes
FloatTensor[N,4] x1y1x2y2 in 0-based continuous pixel coordinates; label 1 = pedestrian.
"""
from __future__ import annotations

from core.data.readers import (
    read_coco,
    read_dataset_dir,
    read_dataset_zip,
    read_pennfudan,
)
from core.data.records import DataError, ImageRecord, image_size, load_image
from core.data.split import kfold_records, split_records
from core.data.transforms import (
    DetectionDataset,
    collate_detection,
    eval_transforms,
    train_transforms,
)

__all__ = [
    "DataError", "DetectionDataset", "ImageRecord", "collate_detection", "eval_transforms",
    "image_size", "kfold_records", "load_image", "read_coco", "read_dataset_dir", "read_dataset_zip",
    "read_pennfudan", "split_records", "train_transforms",
]

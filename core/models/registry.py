"""Builders for every detection architecture FlexBin accepts, keyword-only and validated.

A card may only set the builder kwargs listed in `default_kwargs` (with the same types, within
`KWARG_RANGES`): an upload can never ask a builder for downloaded weights, other side effects
or unbounded allocations.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    ssdlite320_mobilenet_v3_large,
)

from core.models.adas import PedestrianAdas
from core.models.pednet import PedNet

DEFAULT_ARCHITECTURE = "flexbin_pednet"


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    description: str
    builder: Callable[..., nn.Module] = field(repr=False)
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 320


def _fasterrcnn(*, num_classes: int, min_size: int, max_size: int, box_score_thresh: float,
                box_detections_per_img: int) -> nn.Module:
    model: nn.Module = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
        max_size=max_size, box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img)
    return model


def _ssdlite(*, num_classes: int, score_thresh: float, detections_per_img: int) -> nn.Module:
    model: nn.Module = ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes,
        score_thresh=score_thresh, detections_per_img=detections_per_img)
    return model


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec(
            DEFAULT_ARCHITECTURE,
            "FlexBin's default pedestrian detector: VGG-style 3x3 conv stack, CenterNet head "
            "at stride 16; 11 binarizable layers, most parameters in the deepest ones.",
            PedNet,
            {"input_size": 224, "width": 24, "score_thresh": 0.01, "nms_thresh": 0.5,
             "detections_per_img": 100},
        ),
        ArchitectureSpec(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "torchvision Faster R-CNN, MobileNetV3-Large FPN backbone, 320 px (no pretrained "
            "weights: upload your own).",
            _fasterrcnn,
            {"min_size": 320, "max_size": 640, "box_score_thresh": 0.01,
             "box_detections_per_img": 100},
        ),
        ArchitectureSpec(
            "ssdlite320_mobilenet_v3_large",
            "torchvision SSDlite, MobileNetV3-Large backbone, 320 px (no pretrained weights: "
            "upload your own).",
            _ssdlite,
            {"score_thresh": 0.01, "detections_per_img": 100},
        ),
        ArchitectureSpec(
            "pedestrian_adas_0002",
            "Intel's pedestrian-detection-adas-0002 (Open Model Zoo): SSD on a channel-reduced "
            "MobileNet v1, 1.17 M parameters, input 384x672 (images resized plainly); pretrained "
            "weights converted from the OpenVINO IR ship with FlexBin (Apache-2.0).",
            PedestrianAdas,
            {"input_height": 384, "input_width": 672, "score_thresh": 0.01, "nms_thresh": 0.45,
             "detections_per_img": 200},
            input_size=672,
        ),
    )
}


# Inclusive ranges of the builder kwargs a card may set: sizes drive allocation at every
# forward pass (a 100 000 px `max_size` would take the serving process down), counts and
# thresholds have natural bounds.
KWARG_RANGES: dict[str, tuple[float, float]] = {
    "input_size": (16, 4096), "min_size": (16, 4096), "max_size": (16, 4096), "width": (1, 256),
    "score_thresh": (0.0, 1.0), "box_score_thresh": (0.0, 1.0), "nms_thresh": (0.0, 1.0),
    "detections_per_img": (1, 1000), "box_detections_per_img": (1, 1000),
    "input_height": (64, 1536), "input_width": (64, 1536),
}


def list_architectures() -> list[ArchitectureSpec]:
    return list(ARCHITECTURES.values())


def resolve_kwargs(architecture: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture's default kwargs overridden by `kwargs`, type-checked.

    Raises ValueError naming an unknown architecture, an unknown kwarg or a wrongly typed one.
    """
    spec = ARCHITECTURES.get(architecture)
    if spec is None:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    resolved = dict(spec.default_kwargs)
    for key, value in kwargs.items():
        if key not in spec.default_kwargs:
            raise ValueError(f"architecture {architecture!r} takes no argument {key!r}; "
                             f"allowed: {sorted(spec.default_kwargs)}")
        default = spec.default_kwargs[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              if isinstance(default, float) else type(value) is type(default))
        if not ok:
            raise ValueError(f"argument {key!r} of {architecture!r} must be "
                             f"{type(default).__name__}, got {value!r}")
        low, high = KWARG_RANGES.get(key, (float("-inf"), float("inf")))
        if not low <= value <= high:
            raise ValueError(f"argument {key!r} of {architecture!r} must be in [{low:g}, {high:g}], got {value!r}")
        resolved[key] = float(value) if isinstance(default, float) else value
    if resolved.get("min_size", 0) > resolved.get("max_size", float("inf")):
        raise ValueError(f"min_size ({resolved['min_size']}) of {architecture!r} exceeds max_size "
                         f"({resolved['max_size']})")
    return resolved


def build_model(architecture: str, *, num_classes: int = 2, **kwargs: Any) -> nn.Module:
    """Build an untrained detector. `num_classes` counts the background (2 = pedestrian)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= 1000:
        raise ValueError(f"num_classes must be an integer in [2, 1000], got {num_classes!r}")
    resolved = resolve_kwargs(architecture, kwargs)
    return ARCHITECTURES[architecture].builder(num_classes=num_classes, **resolved)

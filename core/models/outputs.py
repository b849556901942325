"""What a detector predicts densely, before decoding: one box regression and one set of class
logits per prior (an SSD's anchors, a CenterNet's heatmap cells). Both detectors return it from
`dense_outputs(images)` and compute their training losses from it (`dense_losses`), so that
`core.distillation` can compare a student's dense outputs with a teacher's without a second
forward pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor


@dataclass(frozen=True)
class DenseOutputs:
    boxes: Tensor  # [N, P, 4] box regression per prior, in the detector's own encoding
    logits: Tensor  # [N, P, K] class logits per prior
    #: how logits become class scores: softmax over K classes, class 0 the background (SSD), or
    #: an independent sigmoid per foreground class (CenterNet heatmaps)
    scores: Literal["softmax", "sigmoid"]
    raw: Any = None  # what the detector's own loss needs besides (priors, scales...)

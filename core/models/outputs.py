"""What a detector predicts densely, before decoding: one box regression and one set of class
logits per prior (an SSD's anchors, a CenterNet's heatmap cells), and the detectors built on it.

A `DenseDetector` (PedestrianAdas, PedNet) computes its `DenseOutputs` once per forward and
derives from them either its training losses or its detections, so that `core.distillation`
can compare a student's dense outputs with a teacher's without a second forward pass."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn


@dataclass(frozen=True)
class DenseOutputs:
    boxes: Tensor  # [N, P, 4] box regression per prior, in the detector's own encoding
    logits: Tensor  # [N, P, K] class logits per prior
    #: how logits become class scores: softmax over K classes, class 0 the background (SSD), or
    #: an independent sigmoid per foreground class (CenterNet heatmaps)
    scores: Literal["softmax", "sigmoid"]
    raw: Any = None  # what the detector's own loss needs besides (priors, scales...)


class DenseDetector(nn.Module):
    """torchvision's detection API over dense outputs. Train mode: `model(images, targets)` ->
    losses; eval mode: `model(images)` -> [{"boxes", "scores", "labels"}], best first."""

    def forward(self, images: list[Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        outputs = self.dense_outputs(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            return self.dense_losses(outputs, images, targets)
        return self.decode(outputs, images)

    def dense_outputs(self, images: Sequence[Tensor]) -> DenseOutputs:
        raise NotImplementedError

    def dense_losses(self, outputs: DenseOutputs, images: Sequence[Tensor],
                     targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses of `outputs` (this model's, for `images`) against `targets`."""
        raise NotImplementedError

    def decode(self, outputs: DenseOutputs, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections in each input image's pixels."""
        raise NotImplementedError

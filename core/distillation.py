"""Distillation from the job's float model (issue 19): while a binarized network fine-tunes,
it also learns to predict what the frozen float detector predicts on the same batch.

The loss compares dense outputs (`core.models.outputs.DenseOutputs`, one forward of each):
- class scores: KL divergence of the student's from the teacher's at a temperature T (softmax
  over classes for an SSD, a Bernoulli per class for CenterNet heatmaps), times T² so its
  gradients keep their size whatever T;
- box regressions: smooth L1 to the teacher's, on the priors the teacher is confident hold a
  pedestrian (foreground score above `confidence`), averaged over those priors.

NNCF's binarization recipe and ReActNet always distil; Hinton et al. (2015) for T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.outputs import DenseDetector, DenseOutputs

TEMPERATURE = 2.0
CONFIDENCE = 0.5


@dataclass(frozen=True)
class Distillation:
    """A frozen teacher (eval mode, on the training device) and the loss's weight."""

    teacher: nn.Module
    weight: float
    temperature: float = TEMPERATURE
    confidence: float = CONFIDENCE


def supports_distillation(model: nn.Module) -> bool:
    """Whether `model` exposes its dense outputs (a `core.models.outputs.DenseDetector`)."""
    return isinstance(model, DenseDetector)


def distilled_losses(model: nn.Module, distillation: Distillation, images: list[Tensor],
                     targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The model's own training losses and the weighted distillation loss, from one forward of
    the student and one (without gradients) of the teacher."""
    student_model, teacher_model = cast(DenseDetector, model), cast(DenseDetector, distillation.teacher)
    outputs = student_model.dense_outputs(images)
    with torch.no_grad():
        teacher = teacher_model.dense_outputs(images)
    losses = student_model.dense_losses(outputs, images, targets)
    return {**losses, "distillation": distillation.weight * distillation_loss(
        outputs, teacher, temperature=distillation.temperature, confidence=distillation.confidence)}


def frozen_teacher(model: nn.Module, device: str) -> nn.Module:
    """`model` itself, made a teacher: eval mode, no gradients, on `device` (pass a copy)."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distillation_loss(student: DenseOutputs, teacher: DenseOutputs, *, temperature: float = TEMPERATURE,
                      confidence: float = CONFIDENCE) -> Tensor:
    """KL(teacher ‖ student) of the class scores at `temperature` (× T²) + smooth L1 of the box
    regressions on the teacher's confident priors; zero when the student predicts what the
    teacher does. Computed in float32."""
    if student.scores != teacher.scores or student.logits.shape != teacher.logits.shape:
        raise ValueError("student and teacher must be the same kind of detector with the same priors")
    s, t = student.logits.float() / temperature, teacher.logits.float() / temperature
    if student.scores == "softmax":
        kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
        foreground = 1.0 - F.softmax(teacher.logits.float(), -1)[..., 0]
    else:  # a Bernoulli per class and prior
        p = torch.sigmoid(t)
        kl = (p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))).mean()
        foreground = torch.sigmoid(teacher.logits.float()).amax(-1)
    confident = foreground > confidence
    box = F.smooth_l1_loss(student.boxes.float()[confident], teacher.boxes.float()[confident], reduction="sum")
    return kl * temperature**2 + box / confident.sum().clamp(min=1)

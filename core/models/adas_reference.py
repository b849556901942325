"""The original pedestrian-detection-adas-0002 IR run by OpenVINO: the reference that
`core.models.adas.PedestrianAdas` is checked against (tests/core/test_adas.py,
bench/pretrained.py). Nothing in FlexBin's serving path uses it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.models.adas import PedestrianAdas
from core.paths import shared_models_dir

IR_XML = Path("pedestrian-detection-adas-0002") / "FP16" / "pedestrian-detection-adas-0002.xml"


def default_ir_path() -> Path:
    """`<shared models>/pedestrian-detection-adas-0002/FP16/pedestrian-detection-adas-0002.xml`
    (see `core.paths.shared_models_dir`); it may not exist (a fresh clone has no IR)."""
    return shared_models_dir() / IR_XML


class OpenVinoReference:
    """Runs the IR on CPU at float32 precision (OpenVINO might otherwise pick bf16 on CPUs
    that have it), on exactly the input the torch module computes (`PedestrianAdas.preprocess`),
    so a comparison checks the network and its post-processing, not two resizers."""

    def __init__(self, xml: Path) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, model: PedestrianAdas, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections in `PedestrianAdas`'s format: boxes FloatTensor[N, 4] x1, y1, x2, y2 in
        each image's pixels (clipped to it, as the module does), scores, labels, best first."""
        results = []
        with torch.no_grad():
            for image in images:
                bgr = model.preprocess([image]).cpu().numpy()
                rows = self.compiled(bgr)[self.compiled.output(0)][0, 0]  # [200, 7]
                # [image_id, label, conf, x1, y1, x2, y2]; unused rows are zeros (or image_id -1).
                rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] >= 1) & (rows[:, 2] > 0)]
                h, w = image.shape[-2:]
                boxes = torch.from_numpy(np.ascontiguousarray(rows[:, 3:7])) * torch.tensor([w, h, w, h])
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
                scores = torch.from_numpy(np.ascontiguousarray(rows[:, 2]))
                order = scores.argsort(descending=True)
                results.append({"boxes": boxes[order].float(), "scores": scores[order].float(),
                                "labels": torch.from_numpy(rows[:, 1].astype(np.int64))[order]})
        return results


def unmatched_top_detections(reference: dict[str, Tensor], candidate: dict[str, Tensor], *,
                             min_score: float, min_iou: float = 0.95,
                             max_score_diff: float = 0.01) -> list[str]:
    """The reference detections scoring >= `min_score` that `candidate` lacks, described.

    Each such detection (best first) must find a still unused candidate detection with IoU
    >= `min_iou` and a score within `max_score_diff`; an empty list means all of them do.
    """
    from torchvision.ops import box_iou

    missing = []
    used: set[int] = set()
    iou = box_iou(reference["boxes"], candidate["boxes"]) if len(candidate["boxes"]) else None
    for i in torch.nonzero(reference["scores"] >= min_score).flatten().tolist():
        score = float(reference["scores"][i])
        ok = [] if iou is None else [
            j for j in torch.argsort(iou[i], descending=True).tolist()
            if j not in used and iou[i, j] >= min_iou and abs(float(candidate["scores"][j]) - score) <= max_score_diff]
        if ok:
            used.add(ok[0])
        else:
            best = 0.0 if iou is None else float(iou[i].max())
            missing.append(f"box {reference['boxes'][i].tolist()} score {score:.4f} (best IoU {best:.3f})")
    return missing

"""The original pedestrian-detection-adas-0002 IR run by OpenVINO: the reference that
`core.models.adas.PedestrianAdas` is checked against (tests/unit/test_adas.py,
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

"""pedestrian_adas_0002's export graph: the network traced from PyTorch, then OpenVINO's own
`DetectionOutput` for the decoding and NMS, as Intel's IR of the same detector has it.

Why not trace the whole detector (what FlexBin exported before, issue 19): the traced decode,
per-class top-k and `batched_nms` become ~40 small ops (softmax, slices, a reference `Concat`,
`NonZero`, `If`, `TopK`, ...) that took about 0.6 ms per forward on a Xeon, against 0.14 ms for
Intel's single `DetectionOutput`. What the graph computes now:

    image (RGB in [0, 1], resized outside the graph)
      -> x - mean_rgb / 255             (one per-channel Subtract)
      -> the network, with the RGB->BGR flip and the x255·scale of the IR's pre-processing
         folded into conv1's weights (exact up to float rounding; `fold_input_normalisation`)
      -> loc [1, P, 4], conf logits [1, P, C]
      -> class probabilities: Softmax over the classes, computed on the transposed [1, C, P]
         (the softmax over a last axis of 2 ran at ~50 ns per prior)
      -> DetectionOutput (CENTER_SIZE with the variances, per class the `top_k` best above the
         confidence threshold, greedy NMS at IoU > nms_threshold, then the best `keep_top_k`)
      -> `detections` [1, 1, keep_top_k, 7]: (image id, label, score, x1, y1, x2, y2), boxes
         normalised to the network input, the list ended by a row whose image id is -1.

What differs from `PedestrianAdas._detections` (the PyTorch module), all below the parity
tests' tolerances (tests/core/test_adas_export.py): float rounding of the folded pre-processing
and of the decode (`var·loc·w + cx` against torchvision's `loc / (1/var) · w + cx`), and
torchvision's clamp of the width / height codes at log(1000/16) (`var·loc > 4.135`, a box over
60 times its prior's size), which DetectionOutput does not apply. Tied scores are ordered by
prior index here, arbitrarily in torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.models.adas import (
    IR_MEAN_BGR,
    IR_SCALE,
    IR_VARIANCES,
    PRE_NMS_TOP_K,
    PedestrianAdas,
)

POSTPROCESS_KIND = "detection_output"
OUTPUT_NAME = "detections"
POST_PREFIX = "flexbin:post/"
"""Friendly-name prefix of the post-processing nodes (excluded from int8 quantization)."""

MEAN_RGB01 = tuple(float(np.float32(m) / np.float32(255.0)) for m in reversed(IR_MEAN_BGR))
INPUT_SCALE = 255.0 * IR_SCALE


@torch.no_grad()
def fold_input_normalisation(conv: nn.Conv2d, signs: Tensor | None = None,
                             scale: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """Fold the IR's `(255·flip(x) - mean)·IR_SCALE` into the first conv, leaving `x - mean/255`
    (in RGB order) outside: the weights' input channels are reversed (RGB -> BGR) and multiplied
    by 255·IR_SCALE. The mean cannot go into the bias: zero padding of the normalised input is
    padding by mean/255 of the raw one, so a border-exact fold needs the Subtract.
    A 1-bit weight-only conv keeps its `scale · signs` form: (signs flipped, scale·255·IR_SCALE)."""
    if signs is not None and scale is not None:
        # the export writes ±1 · scale (1 bit per weight): keep the conv equal to exactly that product
        signs, scale = signs.flip(1), scale * INPUT_SCALE
        weight = scale[:, None, None, None] * signs
    else:
        weight = conv.weight.flip(1) * INPUT_SCALE
    conv.weight = nn.Parameter(weight.float(), requires_grad=False)
    return signs, scale


class AdasNetworkExport(nn.Module):
    """pedestrian_adas_0002 on an image already resized to its input: the network only, up to
    the concatenated box codes and class logits (`append_detection_output` adds the rest in
    OpenVINO). conv1 must already hold the folded pre-processing (`fold_input_normalisation`).
    After a forward, `priors` holds the [P, 4] prior boxes of that input size."""

    def __init__(self, model: PedestrianAdas) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB01, dtype=torch.float32).view(1, 3, 1, 1))
        self.priors: Tensor | None = None

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        loc, conf, sizes = model.head_outputs(image - self.get_buffer("mean_rgb"))
        self.priors = model.priors_for(sizes, (int(image.shape[-2]), int(image.shape[-1])), image.device)
        return loc, conf


def detection_output_spec(model: PedestrianAdas) -> dict[str, Any]:
    return {"kind": POSTPROCESS_KIND, "num_classes": model.num_classes, "score_thresh": model.score_thresh,
            "nms_thresh": model.nms_thresh, "pre_nms_top_k": PRE_NMS_TOP_K,
            "detections_per_img": model.detections_per_img}


def append_detection_output(ov_model: Any, priors: Tensor, post: dict[str, Any]) -> Any:
    """`ov_model` (changed in place and returned) with its (loc [1, P, 4], conf [1, P, C]) outputs
    replaced by DetectionOutput's [1, 1, keep_top_k, 7] (module docstring)."""
    import openvino.opset8 as op8
    import openvino.opset13 as ops

    loc, conf = (result.input_value(0) for result in ov_model.get_results())
    num_classes = int(post["num_classes"])
    p = int(priors.shape[0])

    def named(node: Any, name: str) -> Any:
        node.set_friendly_name(POST_PREFIX + name)
        return node

    # Softmax over the class axis, with that axis outermost: over the last axis (size 2) the CPU
    # kernel ran at ~50 ns per prior; transposed, it vectorises across the priors (two cheap
    # Transposes around it; measured 0.07 against 0.21 ms for P = 3108 on an AVX2 core).
    by_class = named(ops.transpose(conf, ops.constant(np.array([0, 2, 1], np.int64))), "conf_by_class")
    softmax = named(ops.softmax(by_class, 1), "softmax")
    probs = named(ops.transpose(softmax, ops.constant(np.array([0, 2, 1], np.int64))), "probabilities")
    flat_loc = named(ops.reshape(loc, ops.constant(np.array([1, p * 4], np.int64)), False), "loc")
    flat_conf = named(ops.reshape(probs, ops.constant(np.array([1, p * num_classes], np.int64)), False), "conf")
    variances = np.tile(np.asarray(IR_VARIANCES, np.float32), p)
    prior_data = np.stack([priors.detach().cpu().numpy().astype(np.float32).reshape(-1), variances])[None]
    attrs = {
        "background_label_id": 0, "top_k": int(post["pre_nms_top_k"]), "variance_encoded_in_target": False,
        "keep_top_k": [int(post["detections_per_img"])], "code_type": "caffe.PriorBoxParameter.CENTER_SIZE",
        "share_location": True, "nms_threshold": float(post["nms_thresh"]),
        "confidence_threshold": float(post["score_thresh"]), "clip_after_nms": False, "clip_before_nms": False,
        "decrease_label_id": False, "normalized": True, "input_height": 1, "input_width": 1, "objectness_score": 0.0,
    }
    detections = named(op8.detection_output(flat_loc, flat_conf, ops.constant(prior_data), attrs), "detection_output")
    for old in list(ov_model.get_results()):
        ov_model.remove_result(old)
    ov_model.add_results([ops.result(detections)])
    ov_model.validate_nodes_and_infer_types()
    return ov_model

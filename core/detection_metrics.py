"""Caltech-protocol detection metrics: log-average miss rate MR^-2 and AP@0.5.

MR^-2 follows the Caltech Pedestrian toolbox (Dollar et al., `dbEval.m` / `bbGt.m compRoc`),
without ignore regions: 9 reference FPPI values `10 ** linspace(-2, 0, 9)`; at each, the
recall of the last operating point whose FPPI is <= the reference (0 when there is none);
MR^-2 = exp(mean(log(max(1e-10, 1 - recall)))).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torchvision.ops import box_iou

REFERENCE_FPPI = np.logspace(-2.0, 0.0, 9)
MAX_CURVE_POINTS = 100


class DetectionMetrics(BaseModel):
    """Results of `evaluate_detections`.

    `miss_rate`: log-average miss rate MR^-2 over FPPI in [1e-2, 1] (lower is better, 1e-10
    for a perfect detector, 1 for no detections). `ap50`: average precision at the IoU
    threshold, all-point interpolation (area under the monotone precision envelope).
    `fppi_curve`: `(false positives per image, miss rate)` operating points in decreasing
    score order, thinned to at most 100 points (first and last kept; `[(0.0, 1.0)]` without
    detections).
    """

    model_config = ConfigDict(frozen=True)

    miss_rate: float
    ap50: float
    fppi_curve: list[tuple[float, float]]
    num_images: int
    num_ground_truth: int
    num_detections: int


def _boxes(t: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(t).detach().float().cpu()
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{what}: expected boxes of shape [N, 4], got {tuple(t.shape)}")
    return t


def evaluate_detections(predictions: Sequence[Mapping[str, torch.Tensor]],
                        ground_truths: Sequence[torch.Tensor], *,
                        iou_threshold: float = 0.5) -> DetectionMetrics:
    """Score detections against ground truth with the Caltech protocol.

    `predictions[i]`: {"boxes": FloatTensor[N,4] x1y1x2y2, "scores": FloatTensor[N]} for
    image i (other keys ignored); `ground_truths[i]`: FloatTensor[M,4] x1y1x2y2 (same frame).
    Matching is greedy in decreasing score over all images (stable for ties): a detection
    takes the still unmatched ground truth of its image with the highest IoU >= threshold,
    else it is a false positive, so duplicates of one pedestrian count as false positives.
    Raises ValueError when lengths differ, shapes are wrong or there is no ground truth.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} images")
    gts = [_boxes(g, f"ground_truths[{i}]") for i, g in enumerate(ground_truths)]
    num_gt = sum(len(g) for g in gts)
    if num_gt == 0:
        raise ValueError("no ground-truth boxes: miss rate and AP are undefined")
    scores, is_tp = [], []
    for i, (pred, gt) in enumerate(zip(predictions, gts, strict=True)):
        score, hits = match_image(pred, gt, iou_threshold=iou_threshold, what=f"predictions[{i}]")
        scores.append(score)
        is_tp.append(hits)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    tp = np.concatenate(is_tp) if is_tp else np.zeros(0, dtype=bool)
    # within an image matching already ran in score order, so a global stable sort of the
    # per-image lists is the same as matching globally sorted detections
    tp = tp[np.argsort(-all_scores, kind="stable")]
    n_img, n_det = len(gts), len(tp)
    if n_det == 0:
        return DetectionMetrics(miss_rate=1.0, ap50=0.0, fppi_curve=[(0.0, 1.0)],
                                num_images=n_img, num_ground_truth=num_gt, num_detections=0)
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(~tp)
    fppi, recall = cum_fp / n_img, cum_tp / num_gt
    miss_rate = float(log_average_miss_rate(fppi, recall))
    # VOC / COCO all-point AP: monotone precision envelope integrated over recall steps
    precision = cum_tp / (cum_tp + cum_fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope))
    keep = np.unique(np.linspace(0, n_det - 1, min(n_det, MAX_CURVE_POINTS)).round().astype(int))
    curve = [(float(fppi[k]), float(1.0 - recall[k])) for k in keep]
    return DetectionMetrics(miss_rate=miss_rate, ap50=ap, fppi_curve=curve, num_images=n_img,
                            num_ground_truth=num_gt, num_detections=n_det)


def match_image(prediction: Mapping[str, torch.Tensor], ground_truth: torch.Tensor, *,
                iou_threshold: float = 0.5, what: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    """One image's detections in decreasing score order (stable for ties) and whether each
    is a true positive: `(scores float32[N], hits bool[N])`.

    `prediction`: {"boxes": FloatTensor[N,4] x1y1x2y2, "scores": FloatTensor[N]};
    `ground_truth`: FloatTensor[M,4] x1y1x2y2. A detection takes the still unmatched ground
    truth with the highest IoU >= threshold, else it is a false positive. Matching never
    looks at other images, so the per-image results can be pooled over any multiset of
    images (`evaluate_detections`, the claim study's bootstrap).
    """
    gt = _boxes(ground_truth, "ground truth")
    boxes = _boxes(prediction["boxes"], f"{what}.boxes")
    score = torch.as_tensor(prediction["scores"]).detach().float().cpu().reshape(-1)
    if len(score) != len(boxes):
        raise ValueError(f"{what}: {len(boxes)} boxes but {len(score)} scores")
    order = torch.sort(score, descending=True, stable=True).indices
    iou = box_iou(boxes[order], gt) if len(gt) and len(boxes) else None
    taken = torch.zeros(len(gt), dtype=torch.bool)
    hits = np.zeros(len(boxes), dtype=bool)
    for k in range(len(boxes) if iou is not None else 0):
        assert iou is not None
        row = iou[k].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = hits[k] = True
    return score[order].numpy(), hits


def log_average_miss_rate(fppi: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """MR^-2 from operating points in decreasing score order: `fppi`, `recall` float[..., D],
    non-decreasing along the last axis; returns float[...] (a 0-d array for 1-D input).

    Caltech compRoc: at each reference FPPI, the recall of the last operating point whose
    FPPI is <= the reference (0 when there is none); MR^-2 is the geometric mean of the miss
    rates, each clamped below at 1e-10. Leading axes are independent curves (the claim
    study evaluates thousands of bootstrap resamples at once).
    """
    fppi, recall = np.asarray(fppi, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    log_miss = np.zeros(fppi.shape[:-1])
    for reference in REFERENCE_FPPI:
        last = (fppi <= reference).sum(axis=-1) - 1  # fppi is sorted: the count is the index + 1
        at_ref = np.take_along_axis(recall, np.maximum(last, 0)[..., None], axis=-1)[..., 0]
        at_ref = np.where(last >= 0, at_ref, 0.0)
        log_miss += np.log(np.maximum(1e-10, 1.0 - at_ref))
    return np.exp(log_miss / len(REFERENCE_FPPI))

"""FlexBin's default pedestrian detector: a VGG-style, single-scale CenterNet.

Designed for the paper's setting: a plain stack of 3x3 convolutions (like the VGG-based
detectors Zhuang et al. binarized) whose parameters sit mostly in the deeper layers, so the
binarization order matters; small enough to train from scratch on two CPU cores.

Detection follows CenterNet (Zhou et al. 2019, "Objects as Points"): a heatmap of
pedestrian centres at stride 16, plus per-cell centre offset and log box size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

from core.models.outputs import DenseDetector, DenseOutputs

STRIDE = 16


def _conv(c_in: int, c_out: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PedNet(DenseDetector):
    """CenterNet-style pedestrian detector following torchvision's detection API.

    Input: list of FloatTensor[3, H, W] in [0, 1], any sizes. Each image is resized so its
    longer side is `input_size`; a batch is padded to a common multiple of the stride.
    Train mode: `model(images, targets)` -> {"heatmap", "regression", "giou"} losses.
    Eval mode: `model(images)` -> [{"boxes": FloatTensor[N, 4] x1, y1, x2, y2 in the input
    image's pixels, "scores": FloatTensor[N], "labels": Int64Tensor[N]}], best first.
    """

    mean: Tensor  # ImageNet normalisation, [3, 1, 1] buffers
    std: Tensor

    def __init__(
        self,
        *,
        num_classes: int = 2,
        input_size: int = 224,
        width: int = 24,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + pedestrian), got {num_classes}")
        if input_size % STRIDE or input_size < 64:
            raise ValueError(f"input_size must be a multiple of {STRIDE} and >= 64, got {input_size}")
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        self.num_classes = num_classes
        self.input_size = input_size
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        w = width
        self.features = nn.Sequential(
            _conv(3, w, stride=2),            # 1/2
            _conv(w, 2 * w, stride=2),        # 1/4
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, stride=2),    # 1/8
            _conv(4 * w, 4 * w),
            _conv(4 * w, 8 * w, stride=2),    # 1/16
            _conv(8 * w, 8 * w),
            _conv(8 * w, 8 * w, dilation=2),  # wider context for tall pedestrians
        )
        self.neck = _conv(8 * w, 4 * w)
        self.heatmap = nn.Conv2d(4 * w, num_classes - 1, 1)
        self.regression = nn.Conv2d(4 * w, 4, 1)  # centre offset (dx, dy), log(w, h / stride)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1), persistent=False)
        # Start the heatmap at a low prior so the focal loss is stable from scratch.
        assert self.heatmap.bias is not None
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))

    # -- input -----------------------------------------------------------------
    def _batch(self, images: list[Tensor]) -> tuple[Tensor, list[float]]:
        """Resize each image so its longer side is `input_size`, normalise, and pad the batch
        (bottom / right) to the smallest multiple of the stride holding them all."""
        scales, sizes = [], []
        for image in images:
            h, w = image.shape[-2:]
            scale = self.input_size / max(h, w)
            scales.append(scale)
            sizes.append((max(1, round(h * scale)), max(1, round(w * scale))))
        height = -(-max(h for h, _ in sizes) // STRIDE) * STRIDE
        width = -(-max(w for _, w in sizes) // STRIDE) * STRIDE
        canvas = images[0].new_zeros(len(images), 3, height, width)
        for i, (image, (nh, nw)) in enumerate(zip(images, sizes)):
            resized = image if tuple(image.shape[-2:]) == (nh, nw) else F.interpolate(  # same size: identity
                image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            canvas[i, :, :nh, :nw] = (resized - self.mean) / self.std
        return canvas, scales

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.neck(self.features(x))
        return self.heatmap(x), self.regression(x)

    def decode(self, outputs: DenseOutputs, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        logits, regression, scales = outputs.raw
        return self._decode(logits, regression, list(images), scales)

    def dense_outputs(self, images: Sequence[Tensor]) -> DenseOutputs:
        """Regression and heatmap logits per output cell (sigmoid scores; `raw` holds the maps
        and the images' scales)."""
        x, scales = self._batch(list(images))
        logits, regression = self._heads(x)
        return DenseOutputs(regression.flatten(2).transpose(1, 2), logits.flatten(2).transpose(1, 2), "sigmoid",
                            raw=(logits, regression, scales))

    def dense_losses(self, outputs: DenseOutputs, images: Sequence[Tensor],
                     targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The heatmap, regression and GIoU losses of `outputs` against `targets`."""
        logits, regression, scales = outputs.raw
        # the loss in float32, also under bf16 autocast
        return self._losses(logits.float(), regression.float(), targets, scales)

    # -- training ----------------------------------------------------------------
    def _losses(self, logits: Tensor, regression: Tensor, targets: list[dict[str, Tensor]],
                scales: list[float]) -> dict[str, Tensor]:
        """CenterNet focal loss on a Gaussian heatmap; box regression at the centre cell and
        its 3x3 neighbours inside the box (smooth L1 on offset / log size, plus GIoU)."""
        n, _, gh, gw = logits.shape
        heat = logits.new_zeros(n, gh, gw)
        ys = torch.arange(gh, device=logits.device, dtype=logits.dtype).view(-1, 1)
        xs = torch.arange(gw, device=logits.device, dtype=logits.dtype).view(1, -1)
        cells: list[tuple[int, int, int]] = []  # (image, y, x) of regression positives
        reg_targets: list[list[float]] = []
        gt_boxes: list[list[float]] = []
        for i, (image_target, scale) in enumerate(zip(targets, scales)):
            boxes = image_target["boxes"].to(logits) * scale / STRIDE
            for x1, y1, x2, y2 in boxes.tolist():
                bw, bh = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
                # Gaussian of CenterNet's size-adaptive radius, per axis.
                sx, sy = max(bw / 6, 0.5), max(bh / 6, 0.5)
                g = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - ((ys - iy) ** 2) / (2 * sy**2))
                heat[i] = torch.maximum(heat[i], g)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        jx, jy = ix + dx, iy + dy
                        inside = x1 <= jx + 0.5 <= x2 and y1 <= jy + 0.5 <= y2
                        if 0 <= jx < gw and 0 <= jy < gh and (inside or (dx, dy) == (0, 0)):
                            cells.append((i, jy, jx))
                            reg_targets.append([cx - jx, cy - jy, math.log(bw), math.log(bh)])
                            gt_boxes.append([x1, y1, x2, y2])
        num_pos = logits.new_tensor(float(max(1, sum(len(t["boxes"]) for t in targets))))
        losses = {"heatmap": _centernet_focal_loss(logits[:, 0], heat) / num_pos}
        if not cells:
            zero = regression.sum() * 0.0
            return {**losses, "regression": zero, "giou": zero}
        idx = torch.tensor(cells, device=logits.device)
        pred = regression[idx[:, 0], :, idx[:, 1], idx[:, 2]]  # [P, 4]
        target = torch.tensor(reg_targets, dtype=logits.dtype, device=logits.device)
        centre = idx[:, [2, 1]].to(logits.dtype) + pred[:, :2]
        size = pred[:, 2:].clamp(max=8).exp()
        boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
        gt = torch.tensor(gt_boxes, dtype=logits.dtype, device=logits.device)
        return {
            **losses,
            "regression": F.smooth_l1_loss(pred, target, reduction="sum") / len(cells),
            "giou": generalized_box_iou_loss(boxes, gt, reduction="mean"),
        }

    # -- inference ---------------------------------------------------------------
    def _decode(self, logits: Tensor, regression: Tensor, images: list[Tensor],
                scales: list[float]) -> list[dict[str, Tensor]]:
        heat = logits[:, 0].sigmoid()
        peaks = heat * (F.max_pool2d(heat[:, None], 3, stride=1, padding=1)[:, 0] == heat)
        results = []
        gw = heat.shape[-1]
        for i, image in enumerate(images):
            scores, idx = peaks[i].flatten().topk(min(self.detections_per_img, peaks[i].numel()))
            keep = scores > self.score_thresh
            scores, idx = scores[keep], idx[keep]
            iy, ix = (idx // gw).to(heat.dtype), (idx % gw).to(heat.dtype)
            r = regression[i].flatten(1)[:, idx]
            cx, cy = (ix + r[0]) * STRIDE, (iy + r[1]) * STRIDE
            bw, bh = r[2].clamp(max=8).exp() * STRIDE, r[3].clamp(max=8).exp() * STRIDE
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) / scales[i]
            h, w = image.shape[-2:]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            labels = torch.ones_like(scores, dtype=torch.int64)
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


def _centernet_focal_loss(logits: Tensor, heat: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """Penalty-reduced pixel-wise focal loss of CenterNet, summed over the batch."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).to(logits.dtype)
    pos_loss = -torch.log(pred) * (1 - pred) ** alpha * pos
    neg_loss = -torch.log(1 - pred) * pred**alpha * (1 - heat) ** beta * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()

"""Dalal-Triggs HOG + linear SVM people detector (OpenCV's default model) as a baseline."""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from torchvision.ops import nms


class HogPeopleDetector:
    """`cv2.HOGDescriptor` with `HOGDescriptor_getDefaultPeopleDetector()` (64x128 window).

    `__call__(images)` takes `list[FloatTensor[3, H, W]]` (RGB in [0, 1]) and returns, per
    image, `{"boxes": FloatTensor[N,4] x1y1x2y2 in that image's pixels, "scores":
    FloatTensor[N] (SVM margins), "labels": Int64Tensor[N] all 1}`, sorted by score.
    Each image is resized by `upscale` before detection, run through
    `detectMultiScale(winStride, padding, scale)` without OpenCV grouping, mapped back to the
    original frame, shrunk by `shrink` = (fraction of the width, of the height) on each side
    (the 64x128 window holds a ~96 px tall person with margins; Penn-Fudan boxes are tight),
    clipped to the image and reduced by NMS at `nms_iou`. The default detector finds people
    from ~100 px tall and Penn-Fudan pedestrians are 150-400 px tall, so on Penn-Fudan
    *down*scaling wins: `upscale=0.4, shrink=(0.2, 0.1)` were picked on the train split
    (train MR^-2 0.44 against 0.98 at `upscale=1` without shrinking); raise `upscale` for
    datasets of small pedestrians.
    `num_threads` sets OpenCV's global thread count (default: the CPUs this process may use).
    """

    def __init__(self, *, upscale: float = 0.4, shrink: tuple[float, float] = (0.2, 0.1), win_stride: tuple[int, int] = (8, 8),
                 padding: tuple[int, int] = (16, 16), scale: float = 1.05,
                 hit_threshold: float = 0.0, nms_iou: float = 0.45,
                 num_threads: int | None = None) -> None:
        if upscale <= 0 or scale <= 1:
            raise ValueError("upscale must be > 0 and scale > 1")
        self.upscale, self.shrink = upscale, shrink
        self.win_stride, self.padding = win_stride, padding
        self.scale, self.hit_threshold, self.nms_iou = scale, hit_threshold, nms_iou
        cv2.setNumThreads(num_threads or len(os.sched_getaffinity(0)))
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One FloatTensor[3, H, W] image -> one prediction dict (see class docstring)."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape [3, H, W], got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        rgb = (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if self.upscale != 1.0:
            size = (max(1, round(w * self.upscale)), max(1, round(h * self.upscale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        rects, weights = self.hog.detectMultiScale(
            bgr, hitThreshold=self.hit_threshold, winStride=self.win_stride,
            padding=self.padding, scale=self.scale, groupThreshold=0)
        boxes = torch.as_tensor(np.asarray(rects, dtype=np.float32).reshape(-1, 4))
        scores = torch.as_tensor(np.asarray(weights, dtype=np.float32).reshape(-1))
        boxes[:, 2:] += boxes[:, :2]
        boxes /= self.upscale
        margin = (boxes[:, 2:] - boxes[:, :2]) * torch.tensor(self.shrink)
        boxes += torch.cat([margin, -margin], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[valid], scores[valid]
        keep = nms(boxes, scores, self.nms_iou)  # sorted by decreasing score
        return {"boxes": boxes[keep], "scores": scores[keep],
                "labels": torch.ones(len(keep), dtype=torch.int64)}

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detect people in each image; see the class docstring for formats."""
        return [self.detect(im) for im in images]

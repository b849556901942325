"""bench.baselines.hog: output format and frame of the OpenCV HOG people detector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from bench.baselines import HogPeopleDetector
from core.data import load_image, read_pennfudan
from core.paths import default_data_dir


def test_hog_on_two_pennfudan_images():
    records = [r for r in read_pennfudan(default_data_dir())
               if r.name in ("FudanPed00001", "FudanPed00007")]
    images = [load_image(r.image) for r in records]
    detector = HogPeopleDetector()
    preds = detector(images)
    assert len(preds) == 2
    for image, record, p in zip(images, records, preds, strict=True):
        _, h, w = image.shape
        boxes, scores, labels = p["boxes"], p["scores"], p["labels"]
        assert boxes.dtype == scores.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(scores), 4) and len(labels) == len(scores) > 0
        assert torch.equal(scores, scores.sort(descending=True).values)
        assert (labels == 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
        # boxes are in the original frame: they find the annotated pedestrians
        assert box_iou(record.boxes, boxes).max() > 0.5
    # same internal image from a 2x larger input: boxes come back in that input's frame
    big = F.interpolate(images[0][None], scale_factor=2.0, mode="bilinear")[0].clamp(0, 1)
    p2 = HogPeopleDetector(upscale=detector.upscale / 2)([big])[0]
    assert box_iou(preds[0]["boxes"][:1] * 2, p2["boxes"]).max() > 0.9

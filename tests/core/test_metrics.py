"""core.detection_metrics: Caltech MR^-2 and AP@0.5 on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from core.detection_metrics import evaluate_detections


def pred(boxes: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def gt(*boxes: list[float]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


A, B = [0, 0, 10, 10], [20, 0, 30, 10]


def test_perfect_detections():
    m = evaluate_detections([pred([A, B], [0.9, 0.8]), pred([A], [0.7])], [gt(A, B), gt(A)])
    assert m.miss_rate <= 1e-9 and m.ap50 == pytest.approx(1.0)
    assert (m.num_images, m.num_ground_truth, m.num_detections) == (2, 3, 3)
    assert m.fppi_curve[-1] == (0.0, 0.0)


def test_no_detections():
    m = evaluate_detections([pred([], []), pred([], [])], [gt(A), gt(A, B)])
    assert m.miss_rate == 1.0 and m.ap50 == 0.0 and m.num_detections == 0
    assert m.fppi_curve == [(0.0, 1.0)]


def test_known_mix():
    # image 0: GTs A, B; image 1: GTs A, C.  Detections (score, image, outcome):
    #   0.90 img0 = A -> TP; 0.85 img1 far away -> FP; 0.80 img0 far away -> FP;
    #   0.70 img1 = A -> TP; 0.60 img1 = C -> TP.   (B is missed.)
    # cumTP 1 1 1 2 3, cumFP 0 1 2 2 2, 2 images, 4 GTs:
    #   fppi   0    .5   1    1   1
    #   recall .25 .25  .25  .5  .75
    # refs 0.01 .. 0.316 (7 values) and 0.562: last point with fppi <= ref has recall .25;
    # ref 1.0: the last point (fppi 1) has recall .75.
    #   MR^-2 = exp((8 ln .75 + ln .25) / 9)
    # precision 1 .5 .333 .5 .6 -> envelope 1 .6 .6 .6 .6, recall steps .25 at points 1, 4, 5:
    #   AP = .25 * 1 + .25 * .6 + .25 * .6 = .55
    far, c = [100, 100, 110, 110], [50, 50, 60, 60]
    preds = [pred([A, far], [0.9, 0.8]), pred([far, A, c], [0.85, 0.7, 0.6])]
    m = evaluate_detections(preds, [gt(A, B), gt(A, c)])
    assert m.miss_rate == pytest.approx(math.exp((8 * math.log(0.75) + math.log(0.25)) / 9))
    assert m.ap50 == pytest.approx(0.55)
    assert m.fppi_curve == [(0, .75), (.5, .75), (1, .75), (1, .5), (1, .25)]
    # input order within an image does not matter
    shuffled = [pred([far, A], [0.8, 0.9]), pred([c, far, A], [0.6, 0.85, 0.7])]
    assert evaluate_detections(shuffled, [gt(A, B), gt(A, c)]) == m


def test_duplicates_are_false_positives():
    # GTs A, B in one image; detections A (0.9), A again (0.8), B (0.7): TP, FP, TP.
    # fppi 0 1 1, recall .5 .5 1 -> 8 refs below 1 see recall .5, ref 1 sees recall 1
    #   MR^-2 = exp((8 ln .5 + ln 1e-10) / 9);  AP = .5 * 1 + .5 * (2/3)
    m = evaluate_detections([pred([A, A, B], [0.9, 0.8, 0.7])], [gt(A, B)])
    assert m.miss_rate == pytest.approx(math.exp((8 * math.log(0.5) + math.log(1e-10)) / 9))
    assert m.ap50 == pytest.approx(0.5 + 0.5 * 2 / 3)


@pytest.mark.parametrize(("y2", "matched"), [(4.99, False), (5.0, True), (5.01, True)])
def test_iou_threshold(y2, matched):
    # [0, 0, 10, y2] inside A has IoU y2 / 10 with A
    m = evaluate_detections([pred([[0, 0, 10, y2]], [1.0])], [gt(A)])
    assert m.ap50 == pytest.approx(1.0 if matched else 0.0)
    assert (m.miss_rate <= 1e-9) if matched else (m.miss_rate == 1.0)


def test_matches_the_highest_iou_ground_truth():
    # d1 overlaps a (IoU .54) and b (.82) and must take b, leaving a for d2 (IoU .82 with a,
    # .33 with b). Taking the first GT above threshold would turn d2 into a false positive.
    a, b = [0, 0, 10, 10], [4, 0, 14, 10]
    m = evaluate_detections([pred([[3, 0, 13, 10], [-1, 0, 9, 10]], [0.9, 0.8])], [gt(a, b)])
    assert m.ap50 == pytest.approx(1.0) and m.miss_rate <= 1e-9


def test_curve_is_thinned_and_errors():
    boxes = [[float(i), 0.0, i + 10.0, 10.0] for i in range(0, 5000, 5)]
    m = evaluate_detections([pred(boxes, torch.linspace(1, 0, 1000).tolist())], [gt(A)])
    assert len(m.fppi_curve) <= 100 and m.fppi_curve[-1] == (999.0, 0.0)
    with pytest.raises(ValueError, match="no ground-truth"):
        evaluate_detections([pred([A], [1.0])], [gt()])
    with pytest.raises(ValueError):
        evaluate_detections([pred([A], [1.0])], [gt(A), gt(A)])

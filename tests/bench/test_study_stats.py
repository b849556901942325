"""bench.study.stats: the claim study's bootstrap and decision rule on synthetic per-image
results whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.study.stats import (
    MissRateSample,
    PooledDetections,
    Units,
    difference_interval,
    resample_weights,
    verdict,
)
from core.detection_metrics import evaluate_detections, match_image


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (-0.08, -0.04, "better"),
    (-0.02, -0.001, "better"),      # excludes 0 inside the band: still a (small) difference
    (0.001, 0.02, "worse"),
    (0.01, 0.09, "worse"),
    (-0.02, 0.02, "equivalent"),
    (-0.03, 0.03, "equivalent"),    # the band's edges belong to it
    (0.0, 0.0, "equivalent"),
    (-0.1, 0.0, "inconclusive"),    # touches 0: not below it, and leaves the band
    (-0.031, 0.01, "inconclusive"),
    (-0.01, 0.2, "inconclusive"),
])
def test_decision_rule_gives_each_interval_one_verdict(lo: float, hi: float, expected: str) -> None:
    assert verdict(lo, hi) == expected


def test_decision_rule_rejects_a_reversed_interval() -> None:
    with pytest.raises(ValueError, match="not an interval"):
        verdict(0.1, -0.1)


def _boxes(rng: np.random.Generator, n: int) -> torch.Tensor:
    x, y = rng.uniform(0, 400, n), rng.uniform(0, 300, n)
    return torch.tensor(np.stack([x, y, x + 40, y + 100], 1), dtype=torch.float32)


def _image(rng: np.random.Generator, n_gt: int, recall: float, false_positives: int) -> tuple[torch.Tensor, dict]:
    """Ground truth and detections: each pedestrian found with probability `recall` (score
    high), plus `false_positives` boxes far away (scores spread), all scores distinct."""
    gt = _boxes(rng, n_gt)
    found = gt[torch.from_numpy(rng.random(n_gt) < recall)]
    fp = _boxes(rng, false_positives) + 1000
    boxes = torch.cat([found, fp])
    scores = torch.tensor(np.concatenate([rng.uniform(0.5, 1, len(found)), rng.uniform(0, 0.9, false_positives)]),
                          dtype=torch.float32)
    return gt, {"boxes": boxes, "scores": scores}


def _study(recall_a: float, recall_b: float, *, folds: int = 3, seeds: int = 2, images: int = 30, same: bool = False):
    """Synthetic per-image results of two arms over every (fold, seed, image) unit."""
    rng = np.random.default_rng(7)
    keys, gts, a, b = [], [], [], []
    for f in range(folds):
        truth = [_boxes(rng, int(rng.integers(1, 4))) for _ in range(images)]
        for s in range(seeds):
            for i in range(images):
                g = truth[i]
                _, det_a = _image(rng, 0, 0, int(rng.integers(0, 3)))
                det_a = _with_found(rng, g, recall_a, det_a)
                det_b = det_a if same else _with_found(rng, g, recall_b, _image(rng, 0, 0, int(rng.integers(0, 3)))[1])
                keys.append((f, s, f * images + i))
                gts.append(g)
                a.append(det_a)
                b.append(det_b)
    units = Units(*(np.array(col) for col in zip(*keys, strict=True)))
    return units, gts, a, b


def _with_found(rng: np.random.Generator, gt: torch.Tensor, recall: float, fp: dict) -> dict:
    found = gt[torch.from_numpy(rng.random(len(gt)) < recall)]
    return {"boxes": torch.cat([found, fp["boxes"]]),
            "scores": torch.cat([torch.tensor(rng.uniform(0.5, 1, len(found)), dtype=torch.float32), fp["scores"]])}


def _interval(units: Units, gts: list, a: list, b: list, resamples: int = 2000):
    weights = resample_weights(units, resamples, seed=3)
    counts = [len(g) for g in gts]
    pooled = [PooledDetections.pool([match_image(d, g) for d, g in zip(arm, gts, strict=True)], counts) for arm in (a, b)]
    samples = [MissRateSample.of(p, weights) for p in pooled]
    return difference_interval([samples[0]], [samples[1]])


def test_a_clear_win_is_better_and_a_clear_loss_worse() -> None:
    units, gts, a, b = _study(recall_a=0.95, recall_b=0.6)
    win, draws = _interval(units, gts, a, b)
    assert draws.shape == (2000,)
    assert win.estimate < -0.1 and win.hi < 0 and verdict(win.lo, win.hi) == "better"
    loss, _ = _interval(units, gts, b, a)
    assert loss.estimate == pytest.approx(-win.estimate)
    assert loss.lo > 0 and verdict(loss.lo, loss.hi) == "worse"


def test_a_tie_is_equivalent() -> None:
    units, gts, a, b = _study(recall_a=0.8, recall_b=0.8, same=True)
    tie, draws = _interval(units, gts, a, b)
    assert np.all(draws == 0) and (tie.lo, tie.hi) == (0.0, 0.0)
    assert verdict(tie.lo, tie.hi) == "equivalent"


def test_weighted_miss_rate_is_evaluate_detections_on_the_drawn_multiset() -> None:
    units, gts, a, _ = _study(recall_a=0.7, recall_b=0.7, folds=2, images=12)
    pooled = PooledDetections.pool([match_image(d, g) for d, g in zip(a, gts, strict=True)], [len(g) for g in gts])
    weights = resample_weights(units, 5, seed=11)
    rates = pooled.miss_rates(weights)
    for w, rate in zip(weights, rates, strict=True):
        drawn = [u for u in range(len(units)) for _ in range(w[u])]
        expected = evaluate_detections([a[u] for u in drawn], [gts[u] for u in drawn]).miss_rate
        assert rate == pytest.approx(expected, rel=1e-12, abs=1e-12)
    ones = np.ones((1, len(units)), dtype=np.int64)
    assert pooled.miss_rates(ones)[0] == pytest.approx(evaluate_detections(a, gts).miss_rate, rel=1e-12)


def test_resamples_draw_images_and_seeds_within_each_fold() -> None:
    fold = np.repeat([0, 1], [2 * 5, 2 * 4])
    seed = np.concatenate([np.repeat([0, 1], 5), np.repeat([0, 1], 4)])
    image = np.concatenate([np.tile(np.arange(5), 2), np.tile(np.arange(5, 9), 2)])
    units = Units(fold, seed, image)
    weights = resample_weights(units, 300, seed=0)
    for f, n_images in ((0, 5), (1, 4)):
        in_fold = weights[:, fold == f]
        assert np.all(in_fold.sum(axis=1) == 2 * n_images)  # fold sizes never change
        # unit weight = seed draws x image draws: the same image pattern under both seeds, scaled
        per_seed = in_fold.reshape(300, 2, n_images)
        image_draws = per_seed.sum(axis=1)
        seed_draws = per_seed.sum(axis=2) // n_images
        assert np.array_equal(per_seed, seed_draws[:, :, None] * image_draws[:, None, :] // 2)
    assert len({tuple(row) for row in weights}) > 250  # resamples differ
    fixed = resample_weights(units, 50, seed=0, resample_seeds=False)
    assert np.array_equal(fixed[:, (fold == 0) & (seed == 0)], fixed[:, (fold == 0) & (seed == 1)])


def test_units_require_every_image_once_per_seed() -> None:
    with pytest.raises(ValueError, match="twice"):
        Units(np.array([0, 0]), np.array([0, 0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="once per seed"):
        Units(np.array([0, 0, 0]), np.array([0, 1, 0]), np.array([1, 1, 2]))

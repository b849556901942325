"""The claim study's statistics, fixed before any result existed (README, "The claim study").

Design. Every image is evaluated once per seed and arm: a *unit* is one (fold, seed, image)
triple. MR^-2 is a dataset-level metric, so a resample never averages per-image numbers: it
draws a multiset of units and recomputes MR^-2 from the saved detections of those units, with
the Caltech definition of `core.detection_metrics` (`log_average_miss_rate`).

Resampling (hierarchical, stratified by fold, paired across arms). Each resample draws, in
every fold independently, the fold's images with replacement (as many as it has) and the
fold's seeds with replacement (as many as there are); unit (f, s, i) then counts
`seed draws of s x image draws of i` times. All arms of a comparison use the same draws, so
the difference is paired by image and by seed; drawing seeds too puts run-to-run training
noise into the interval instead of treating the trained networks as fixed. Seeds thus
combine by pooling: MR^-2 of an arm is computed over the detections of all its seeds at once
(as if the evaluation set held each image once per seed).

Interval: the percentile interval of `resamples` (>= 2000) bootstrap differences, 2.5 % and
97.5 % (numpy's default linear interpolation), from a fixed generator seed. Point estimate:
the difference on the data as observed (every unit once).

Decision rule for an interval [lo, hi] of a difference A - B (MR^-2, lower is better), with
margin m = 0.03, applied in this order so that every interval gets exactly one verdict:
  1. hi < 0             -> "better"       (A's miss rate is lower; the interval excludes 0)
  2. lo > 0             -> "worse"
  3. -m <= lo and hi <= m (the interval holds 0 here) -> "equivalent"
  4. otherwise          -> "inconclusive"
A difference that excludes 0 is reported as better/worse even when it lies inside the margin
(a real but small difference is still a difference); the interval itself says how large.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.detection_metrics import log_average_miss_rate, match_image

Verdict = Literal["better", "worse", "equivalent", "inconclusive"]
EQUIVALENCE_MARGIN = 0.03
MIN_RESAMPLES = 2000
CONFIDENCE = 0.95
_CHUNK = 128  # resamples per vectorised block: bounds memory at ~CHUNK x detections floats


def verdict(lo: float, hi: float, margin: float = EQUIVALENCE_MARGIN) -> Verdict:
    """The pre-registered verdict for the interval [lo, hi] of a difference A - B."""
    if not lo <= hi:
        raise ValueError(f"not an interval: [{lo}, {hi}]")
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    if -margin <= lo and hi <= margin:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class Units:
    """The evaluation units of a study: unit u is image `image[u]` of fold `fold[u]`,
    evaluated by the run of seed `seed[u]` (int arrays of equal length U)."""

    fold: np.ndarray
    seed: np.ndarray
    image: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.fold) == len(self.seed) == len(self.image) > 0:
            raise ValueError("fold, seed and image must be non-empty and of equal length")
        keys = set(zip(self.fold.tolist(), self.seed.tolist(), self.image.tolist(), strict=True))
        if len(keys) != len(self.fold):
            raise ValueError("a (fold, seed, image) unit appears twice")
        for f in np.unique(self.fold):
            in_fold = self.fold == f
            seeds, images = np.unique(self.seed[in_fold]), np.unique(self.image[in_fold])
            if in_fold.sum() != len(seeds) * len(images):
                raise ValueError(f"fold {f}: every image must be evaluated once per seed")

    def __len__(self) -> int:
        return len(self.fold)


def resample_weights(units: Units, resamples: int, *, seed: int = 0,
                     resample_seeds: bool = True) -> np.ndarray:
    """How often each unit is drawn in each resample: int64[resamples, U] (see module doc).

    `resample_seeds=False` keeps every seed once (the interval then treats the trained
    networks as fixed; a diagnostic, not the pre-registered interval).
    """
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(units)), dtype=np.int64)
    for f in np.unique(units.fold):
        in_fold = np.flatnonzero(units.fold == f)
        seeds, seed_of = np.unique(units.seed[in_fold], return_inverse=True)
        images, image_of = np.unique(units.image[in_fold], return_inverse=True)
        image_draws = rng.multinomial(len(images), np.full(len(images), 1 / len(images)), size=resamples)
        if resample_seeds:
            seed_draws = rng.multinomial(len(seeds), np.full(len(seeds), 1 / len(seeds)), size=resamples)
        else:
            seed_draws = np.ones((resamples, len(seeds)), dtype=np.int64)
        weights[:, in_fold] = seed_draws[:, seed_of] * image_draws[:, image_of]
    return weights


@dataclass(frozen=True)
class PooledDetections:
    """One evaluated checkpoint of one arm on every unit, ready for weighted MR^-2.

    scores float64[D] in decreasing order (stable: ties keep unit order), hits bool[D] (true
    positive), unit int[D] (the unit that produced each detection), ground_truth int[U]
    (pedestrians per unit).
    """

    scores: np.ndarray
    hits: np.ndarray
    unit: np.ndarray
    ground_truth: np.ndarray

    @classmethod
    def pool(cls, matched: Sequence[tuple[np.ndarray, np.ndarray]], ground_truth: Sequence[int]
             ) -> PooledDetections:
        """`matched[u]`: `core.detection_metrics.match_image(...)` of unit u (scores already in
        decreasing order); `ground_truth[u]`: its number of ground-truth boxes."""
        if len(matched) != len(ground_truth):
            raise ValueError(f"{len(matched)} matched units for {len(ground_truth)} ground-truth counts")
        scores = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in matched])
        hits = np.concatenate([np.asarray(h, dtype=bool) for _, h in matched])
        unit = np.repeat(np.arange(len(matched)), [len(s) for s, _ in matched])
        # the same global stable sort as evaluate_detections: equal weights reproduce it exactly
        order = np.argsort(-scores, kind="stable")
        return cls(scores[order], hits[order], unit[order], np.asarray(ground_truth, dtype=np.int64))

    def miss_rates(self, weights: np.ndarray) -> np.ndarray:
        """MR^-2 under each row of unit weights int[R, U] -> float64[R]; a row of ones gives
        exactly `evaluate_detections(...).miss_rate` of all units."""
        weights = np.atleast_2d(weights)
        if weights.shape[1] != len(self.ground_truth):
            raise ValueError(f"weights for {weights.shape[1]} units, detections of {len(self.ground_truth)}")
        out = np.empty(len(weights))
        for start in range(0, len(weights), _CHUNK):
            w = weights[start:start + _CHUNK].astype(np.float64)
            images, ground_truth = w.sum(axis=1), w @ self.ground_truth
            if np.any(ground_truth == 0):
                raise ValueError("a resample without ground truth: MR^-2 is undefined")
            if len(self.scores) == 0:
                out[start:start + len(w)] = 1.0
                continue
            per_detection = w[:, self.unit]
            fppi = np.cumsum(per_detection * ~self.hits, axis=1) / images[:, None]
            recall = np.cumsum(per_detection * self.hits, axis=1) / ground_truth[:, None]
            out[start:start + len(w)] = log_average_miss_rate(fppi, recall)
        return out


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def percentile_interval(estimate: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(estimate), float(lo), float(hi))


@dataclass(frozen=True)
class MissRateSample:
    """MR^-2 of one evaluated checkpoint: on the data as observed, and under each resample."""

    estimate: float
    draws: np.ndarray  # float64[R]

    @classmethod
    def of(cls, pooled: PooledDetections, weights: np.ndarray) -> MissRateSample:
        ones = np.ones((1, len(pooled.ground_truth)), dtype=np.int64)
        return cls(float(pooled.miss_rates(ones)[0]), pooled.miss_rates(weights))

    def interval(self, confidence: float = CONFIDENCE) -> Interval:
        return percentile_interval(self.estimate, self.draws, confidence)


def difference_interval(a: Sequence[MissRateSample], b: Sequence[MissRateSample],
                        confidence: float = CONFIDENCE) -> tuple[Interval, np.ndarray]:
    """Paired interval of mean_j [MR^-2(a_j) - MR^-2(b_j)] over matched points j.

    a[j] and b[j]: the two arms at matched point j, sampled with the same resample weights
    (pooled over the same units). Returns (interval, the resampled differences float[R]).
    """
    if len(a) != len(b) or not a:
        raise ValueError("a and b need the same, non-zero number of matched points")
    if any(x.draws.shape != a[0].draws.shape for x in (*a, *b)):
        raise ValueError("every sample must come from the same resamples")
    estimate = float(np.mean([x.estimate - y.estimate for x, y in zip(a, b, strict=True)]))
    draws = np.mean([x.draws - y.draws for x, y in zip(a, b, strict=True)], axis=0)
    return percentile_interval(estimate, draws, confidence), draws


def image_resamples(images: int, resamples: int = MIN_RESAMPLES, *, seed: int = 0) -> np.ndarray:
    """Resample weights int64[resamples, images] for networks held fixed on one image set (one
    fold, one seed, images drawn with replacement): what the benches' per-row intervals use.
    Rows sampled with the same weights are paired by image."""
    zeros = np.zeros(images, dtype=np.int64)
    units = Units(fold=zeros, seed=zeros, image=np.arange(images))
    return resample_weights(units, resamples, seed=seed, resample_seeds=False)


def image_sample(predictions: Sequence[dict[str, Any]], truth: Sequence[Any], weights: np.ndarray) -> MissRateSample:
    """MR^-2 of one network's predictions ({"boxes", "scores"} tensors per image, as
    `core.detection_metrics.evaluate_detections` takes them) on the images of `truth`, as observed
    and under each resample of `weights` (`image_resamples`)."""
    matched = [match_image(p, t) for p, t in zip(predictions, truth, strict=True)]
    return MissRateSample.of(PooledDetections.pool(matched, [len(t) for t in truth]), weights)

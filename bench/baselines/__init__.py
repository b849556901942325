"""Classic (non-deep) pedestrian detectors used as reference points."""
from __future__ import annotations

from bench.baselines.hog import HogPeopleDetector

__all__ = ["HogPeopleDetector"]

"""Classic (non-deep) pedestrian detectors used as reference points."""
from __future__ import annotations

from core.baselines.hog import HogPeopleDetector

__all__ = ["HogPeopleDetector"]

"""The fixed train / validation split."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from core.data.records import ImageRecord


def split_records(records: Sequence[ImageRecord], *, val_fraction: float = 0.25
                  ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split deterministically into `(train, val)`, both sorted by name.

    Records are ranked by the SHA-1 hex digest of their `name` (the file stem); the first
    `round(val_fraction * n)` (Python's round, halves to even) are validation. The split
    depends only on the names, never on a seed or the input order, and a record keeps its
    side when others are added or removed. On the 130 Penn-Fudan images shipped in
    `shared/data/PennFudanPed` it gives a fixed validation set of 32 images (98 train).
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    ranked = sorted(records, key=lambda r: (hashlib.sha1(r.name.encode()).hexdigest(), r.name))
    k = round(val_fraction * len(ranked))
    return sorted(ranked[k:], key=lambda r: r.name), sorted(ranked[:k], key=lambda r: r.name)

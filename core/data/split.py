"""The fixed train / validation split, and the fixed K-fold partition of the claim study."""
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


def kfold_records(records: Sequence[ImageRecord], *, folds: int = 4
                  ) -> list[tuple[list[ImageRecord], list[ImageRecord]]]:
    """Partition into `folds` disjoint evaluation sets: `[(train, evaluate)]` per fold, both
    sorted by name.

    Records are ranked by the SHA-1 hex digest of their `name`, as in `split_records`, and the
    record of rank i is evaluated in fold `i % folds`, so every record is evaluated in exactly
    one fold and trains the other folds' models; fold sizes differ by at most one (130
    Penn-Fudan images, 4 folds: 33, 33, 32, 32). Like the fixed split, the partition depends
    only on the names.
    """
    if not 2 <= folds <= len(records):
        raise ValueError(f"folds must be in [2, {len(records)}] for {len(records)} records, got {folds}")
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise ValueError("record names must be unique: the partition is by name")
    ranked = sorted(records, key=lambda r: (hashlib.sha1(r.name.encode()).hexdigest(), r.name))
    parts = [ranked[f::folds] for f in range(folds)]
    return [(sorted((r for g, part in enumerate(parts) if g != f for r in part), key=lambda r: r.name),
             sorted(parts[f], key=lambda r: r.name))
            for f in range(folds)]

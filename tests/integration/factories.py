"""Tiny inputs for the integration tests: a small PedNet and a few Penn-Fudan images."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from core.paths import default_data_dir

TINY_CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 4}


def tiny_model(card: dict | None = None, *, seed: int = 0) -> tuple[bytes, str]:
    """(safetensors weights, card JSON) of an untrained tiny PedNet."""
    import torch

    from core.checkpoint import ModelCard, save_model_bytes

    torch.manual_seed(seed)
    parsed = ModelCard.model_validate(card or TINY_CARD)
    return save_model_bytes(parsed.build(), parsed)[0], json.dumps(card or TINY_CARD)


def pennfudan_names(n: int) -> list[str]:
    root = default_data_dir()
    return sorted(p.stem for p in (root / "PNGImages").glob("*.png"))[:n]


def dataset_zip(n: int = 8, *, extra: dict[str, bytes] | None = None,
                replace: dict[str, bytes] | None = None) -> bytes:
    """A Penn-Fudan-layout zip of the first `n` images; `extra` adds entries, `replace` swaps some."""
    root: Path = default_data_dir()
    entries: dict[str, bytes] = {}
    for stem in pennfudan_names(n):
        entries[f"PNGImages/{stem}.png"] = (root / "PNGImages" / f"{stem}.png").read_bytes()
        entries[f"Annotation/{stem}.txt"] = (root / "Annotation" / f"{stem}.txt").read_bytes()
    entries.update(replace or {})
    entries.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()

"""Which torch device a worker uses (`FLEXBIN_DEVICE`: auto = CUDA when present)."""
from __future__ import annotations


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"FLEXBIN_DEVICE={setting} but CUDA is not available")
    return setting

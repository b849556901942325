"""Where FlexBin finds its data by default."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """The Penn-Fudan images: `$FLEXBIN_DEMO_DATA`, else `../shared/data/PennFudanPed`."""
    env = os.environ.get("FLEXBIN_DEMO_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data" / "PennFudanPed").resolve()


def shared_models_dir() -> Path:
    """Reference model files (e.g. the OpenVINO IRs pretrained weights were converted from):
    `$FLEXBIN_SHARED_MODELS`, else `../shared/models`. Only tools, tests and benchmarks read
    it; FlexBin itself runs without it."""
    env = os.environ.get("FLEXBIN_SHARED_MODELS")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "models").resolve()

"""Pretrained weights that ship with FlexBin, pinned by sha256.

Builders never read files (an uploaded card must never trigger a file read); loading
pretrained weights is this separate, explicit step. Each entry is a FlexBin float model
(`weights.safetensors` + `card.json`) under `core/models/weights/<name>/`, next to the
licence and a NOTICE saying where the weights come from and how they were converted. It sits
above `core.checkpoint` (which builds models through `core.models`), so nothing imports in a
circle.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.checkpoint import ModelCard, load_model_bytes

WEIGHTS_ROOT = Path(__file__).resolve().parent / "models" / "weights"


@dataclass(frozen=True)
class PretrainedWeights:
    name: str
    architecture: str
    origin: str
    license: str
    weights_sha256: str
    card_sha256: str

    @property
    def directory(self) -> Path:
        return WEIGHTS_ROOT / self.name


PRETRAINED: dict[str, PretrainedWeights] = {
    p.name: p
    for p in (
        PretrainedWeights(
            name="pedestrian_adas_0002",
            architecture="pedestrian_adas_0002",
            origin="Intel Open Model Zoo pedestrian-detection-adas-0002, FP16 OpenVINO IR, converted "
                   "to safetensors (FP16) by tools/convert_adas_ir.py",
            license="Apache-2.0",
            weights_sha256="4ef15d0a6620fdc2d596b5eff40ea930a33e511949bf5626efc83a5f1de5365a",
            card_sha256="5421c77dbb43e04e3acc0ef118543bc97ce0a0a90be9b83dcb1fa3826e550f35",
        ),
    )
}


class PretrainedWeightsError(ValueError):
    """Pretrained weights that are unknown, missing or not the pinned files."""


def pretrained_for(architecture: str) -> PretrainedWeights | None:
    """The bundled weights of an architecture, if it has any."""
    return next((p for p in PRETRAINED.values() if p.architecture == architecture), None)


def _read_pinned(path: Path, expected: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PretrainedWeightsError(f"{path} is missing; re-create it with tools/convert_adas_ir.py "
                                     "or restore it from git") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise PretrainedWeightsError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupted or was replaced; "
            "restore it from git (or re-create it with tools/convert_adas_ir.py and pin its new sha256 "
            "in core/pretrained.py)")
    return data


def load_pretrained(name: str, **builder_kwargs: Any) -> tuple[nn.Module, ModelCard]:
    """The pretrained float model `name` and its card, after checking both files' sha256.

    `builder_kwargs` override the card's (validated like an uploaded card's), e.g.
    `input_height=192, input_width=336` for pedestrian_adas_0002 at half resolution: its
    weights do not depend on the input size. Raises PretrainedWeightsError for an unknown
    name, a missing file or a sha256 that differs from the pinned one.
    """
    spec = PRETRAINED.get(name)
    if spec is None:
        raise PretrainedWeightsError(f"no pretrained weights named {name!r}; known: {sorted(PRETRAINED)}")
    weights = _read_pinned(spec.directory / "weights.safetensors", spec.weights_sha256)
    card = _read_pinned(spec.directory / "card.json", spec.card_sha256)
    return load_model_bytes(weights, card, overrides=builder_kwargs)

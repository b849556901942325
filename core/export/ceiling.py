"""The speed ceiling of 1-bit pedestrian_adas_0002 (issue 19): every dense conv that can take
binary inputs gets 1-bit weights and 1-bit inputs, with no training (accuracy destroyed: the
export is for timing only), and is exported as FlexBin exports any checkpoint.

The binarization is the pipeline's own (`core.pipeline.run` does the same per step:
`binarize_module(m, 1)` then `binarize_input(m)` where `supports_binary_input(m)`), thresholds at
their initial 0. On pedestrian_adas_0002 that is 41 of its 42 dense convs: every pointwise conv,
the four 1x1 convs of the extra layers and the 20 SSD head convs; conv1 (3 input channels) stays
float, as do the 17 depthwise convs (OpenVINO's 1-bit kernel has no groups).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from core.binary import binarize_input, binarize_module, supports_binary_input
from core.checkpoint import ModelCard, pack_checkpoint
from core.export.openvino import OpenVinoExport, export_checkpoint
from core.pretrained import load_pretrained

ARCHITECTURE = "pedestrian_adas_0002"
HEIGHT, WIDTH = 192, 336


def binarize_all(model: nn.Module) -> list[str]:
    """Make every Conv2d that `supports_binary_input` 1-bit in weights and inputs (in place);
    returns their names in module order."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and supports_binary_input(module):
            binarize_module(module, 1)
            binarize_input(module)
            names.append(name)
    return names


def float_model(input_height: int = HEIGHT, input_width: int = WIDTH) -> tuple[nn.Module, ModelCard]:
    model, card = load_pretrained(ARCHITECTURE, input_height=input_height, input_width=input_width)
    return model.eval(), card


def export_all_one_bit(model: nn.Module | None = None, card: ModelCard | None = None, *,
                       input_height: int = HEIGHT, input_width: int = WIDTH) -> tuple[OpenVinoExport, list[str]]:
    """(the OpenVINO export of the all-1-bit model, its 1-bit layers). `model` / `card`: a float
    model to binarize (a copy is taken); default the pretrained pedestrian_adas_0002 at
    `input_height` x `input_width`."""
    import copy

    if model is None or card is None:
        model, card = float_model(input_height, input_width)
    model = copy.deepcopy(model).eval()
    layers = binarize_all(model)
    return export_checkpoint(pack_checkpoint(model, card)), layers


def export_float(model: nn.Module | None = None, card: ModelCard | None = None, *,
                 input_height: int = HEIGHT, input_width: int = WIDTH) -> OpenVinoExport:
    if model is None or card is None:
        model, card = float_model(input_height, input_width)
    return export_checkpoint(pack_checkpoint(model, card))


__all__: list[Any] = ["binarize_all", "export_all_one_bit", "export_float", "float_model"]

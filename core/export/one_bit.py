"""What 1-bit buys in time. `layer_savings` times each layer of a model as float and as 1-bit
(the `latency` order's table, any architecture). The speed ceiling of 1-bit pedestrian_adas_0002 (issue 19): every dense conv that can take
binary inputs gets 1-bit weights and 1-bit inputs, with no training (accuracy destroyed: the
export is for timing only), and is exported as FlexBin exports any checkpoint.

The binarization is the pipeline's own (`core.pipeline.run` does the same per step:
`binarize_module(m, 1)` then `binarize_input(m)` where `supports_binary_input(m)`), thresholds at
their initial 0. On pedestrian_adas_0002 that is 41 of its 42 dense convs: every pointwise conv,
the four 1x1 convs of the extra layers and the 20 SSD head convs; conv1 (3 input channels) stays
float, as do the 17 depthwise convs (OpenVINO's 1-bit kernel has no groups).
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Collection
from typing import Any

from torch import nn

from core.binary import binarize_input, binarize_module, supports_binary_input
from core.checkpoint import ModelCard, pack_checkpoint
from core.export.openvino import OpenVinoExport, export_checkpoint, layer_times
from core.pretrained import load_pretrained

ARCHITECTURE = "pedestrian_adas_0002"
HEIGHT, WIDTH = 192, 336


def binarize_all(model: nn.Module, only: Collection[str] | None = None) -> list[str]:
    """Make every Conv2d that `supports_binary_input` (of `only`, when given) 1-bit in weights and
    inputs (in place); returns their names in module order."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and supports_binary_input(module) and (only is None or name in only):
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


SAVINGS_RESOLUTION_MS = 0.02
"""The `latency` order's table is rounded to this many ms. Layers closer than that in saving are
timing noise apart (the median over repeated compiles still moves about ±0.01 ms on
pedestrian_adas_0002): rounded, they tie and go deepest first, so noise alone reorders fewer layers.
Not none: two savings astride a rounding edge still swap (two PedNet jobs on one CPU did)."""


def layer_savings(model: nn.Module, card: ModelCard, layers: Collection[str], *, threads: int = 1,
                  runs: int = 20, repeats: int = 5, resolution_ms: float = SAVINGS_RESOLUTION_MS) -> dict[str, float]:
    """Milliseconds each of `layers` saves at 1 bit (weights and inputs) on this CPU: its time in
    the float export minus its time in an export where every one of `layers` that can take
    binary inputs is 1-bit (`core.export.openvino.layer_times`: its standalone binarization
    counts against it), the median over `repeats` compiles of each (one compile's times differ
    from the next by more than its `runs` inferences do), rounded to `resolution_ms`. Layers that
    cannot run at 1 bit save 0. The `latency` order binarizes by this table, largest saving first
    (`core.priority`)."""
    float_export = export_checkpoint(pack_checkpoint(model, card))
    binary = copy.deepcopy(model).eval()
    one_bit = set(binarize_all(binary, only=layers))
    binary_export = export_checkpoint(pack_checkpoint(binary, card))
    saved: dict[str, list[float]] = {layer: [] for layer in one_bit}
    for _ in range(repeats):
        float_times = layer_times(float_export, threads=threads, runs=runs)
        binary_times = layer_times(binary_export, threads=threads, runs=runs)
        for layer in one_bit:
            saved[layer].append(float_times.get(layer, 0.0) - binary_times.get(layer, 0.0))
    return {layer: round(round(statistics.median(saved[layer]) / resolution_ms) * resolution_ms, 4)
            if layer in one_bit else 0.0 for layer in layers}


__all__: list[Any] = ["SAVINGS_RESOLUTION_MS", "binarize_all", "export_all_one_bit", "export_float", "float_model", "layer_savings"]

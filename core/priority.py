"""Which layers can be binarized, how deep each is, and in which order to binarize them.

Depth is the position of a layer's first call in a real forward pass (execution order),
so discovery works on any architecture, including ones whose module tree does not follow
the data flow (FPNs, detection heads called once per feature level).

Orders:
- `inverse_depth`: deepest first — the layer-wise priority of Zhuang et al. 2017.
- `forward`: shallowest first, the opposite, as a control.
- `sensitivity`: measured — detection-loss increase per saved bit when only that layer is
  binarized (no fine-tuning), least harmful per bit first. The paper names a better
  priority metric as future work; this is one.
- `latency`: measured — milliseconds a layer saves at 1 bit (weights and inputs) on the worker's
  CPU, largest first, so the speed comes early rather than last (`core.export.one_bit.layer_savings`:
  the float model exported and timed per layer, once as it is and once with every candidate at
  1 bit, the median of repeated compiles rounded to `SAVINGS_RESOLUTION_MS`, so that timing noise
  alone reorders fewer layers). Ties, and layers that save nothing, go deepest first.

  Savings need not add up. The table is measured with every candidate at 1 bit at once, so it
  leaves out what exists only in a mixed graph: the layout conversions (`Reorder` nodes) between a
  1-bit layer and a float neighbour, and a binarization that fuses into the producing 1-bit
  convolution in the all-1-bit graph but stands alone after a float one. The order is a
  ranking, not a forecast: each step's real latency is measured on its own export, and a latency
  target is checked on that measurement, never on the table's sum.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.binary import (
    WeightQuantizer,
    binarize_module,
    latent_weight,
    strip_binarization,
    weight_quantizer_from_config,
)

BINARIZABLE = (nn.Conv2d, nn.Linear)
ORDERS = ("inverse_depth", "forward", "sensitivity", "latency")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    depth: int  # 0 = first executed
    shape: tuple[int, ...]
    groups: int = 1  # Conv2d groups: > 1 for depthwise / grouped convolutions
    macs: int = 0  # multiply-accumulates of the discovery forward pass (every call of the layer)

    @property
    def num_params(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def discover_layers(model: nn.Module, input_size: int = 320) -> list[LayerInfo]:
    """Conv2d / Linear layers in the order a forward pass on a dummy image first runs them, with
    the multiply-accumulates each did in that pass (`layer_macs`).

    Layers that the forward pass never reaches are left out: binarizing them would change
    nothing the detector computes.
    """
    order, macs = _trace(model, input_size, input_size)
    modules = dict(model.named_modules())
    return [
        LayerInfo(name, type(modules[name]).__name__, depth, tuple(latent_weight(modules[name]).shape),
                  getattr(modules[name], "groups", 1), macs[name])
        for depth, name in enumerate(order)
    ]


def layer_macs(model: nn.Module, height: int, width: int) -> dict[str, int]:
    """Multiply-accumulates of each Conv2d / Linear layer in one forward of a height x width image
    (every call of the layer; a detector that resizes its input counts at its own resolution)."""
    return _trace(model, height, width)[1]


def _trace(model: nn.Module, height: int, width: int) -> tuple[list[str], dict[str, int]]:
    """The Conv2d / Linear layers in the order one forward of a dummy image first calls them, and
    each one's multiply-accumulates in it."""
    first_call: dict[str, int] = {}
    macs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, BINARIZABLE):
            def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                first_call.setdefault(name, len(first_call))
                per_output = latent_weight(mod)[0].numel()  # (in / groups) x kernel, or in_features
                macs[name] = macs.get(name, 0) + out.numel() * per_output
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model([torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sorted(first_call, key=first_call.__getitem__), macs


def saved_bytes(layer: LayerInfo, quantizer: WeightQuantizer) -> int:
    """Bytes saved by storing this layer's weight packed by `quantizer` instead of as float32."""
    return 4 * layer.num_params - quantizer.packed_nbytes(layer.shape)


def order_layers(layers: Sequence[LayerInfo], order: str, sensitivity: dict[str, float] | None = None,
                 savings: dict[str, float] | None = None) -> list[LayerInfo]:
    """`layers` in the binarization order `order` (module docstring); `sensitivity` and `savings`
    are the measured tables the `sensitivity` and `latency` orders need."""
    if order == "inverse_depth":
        return sorted(layers, key=lambda layer: -layer.depth)
    if order == "forward":
        return sorted(layers, key=lambda layer: layer.depth)
    if order == "sensitivity":
        if sensitivity is None:
            raise ValueError("order 'sensitivity' needs measured sensitivities")
        return sorted(layers, key=lambda layer: (sensitivity[layer.name], -layer.depth))
    if order == "latency":
        if savings is None:
            raise ValueError("order 'latency' needs the measured time each layer saves at 1 bit")
        return sorted(layers, key=lambda layer: (-max(savings.get(layer.name, 0.0), 0.0), -layer.depth, layer.name))
    raise ValueError(f"unknown order {order!r}; known: {list(ORDERS)}")


def measure_sensitivity(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    loss_fn: Callable[[nn.Module], float],
    quantizer: WeightQuantizer,
) -> dict[str, float]:
    """Loss increase per saved megabit when only that layer is binarized (by a fresh copy of
    `quantizer`), no fine-tuning.

    loss_fn(model) evaluates the detection loss on fixed batches (deterministic).
    Negative increases are clamped to 0 so free layers rank first by depth.
    """
    modules = dict(model.named_modules())
    base = loss_fn(model)
    result = {}
    for layer in layers:
        module = modules[layer.name]
        original = module.weight.detach().clone()
        binarize_module(module, weight_quantizer_from_config(quantizer.to_config()))
        increase = loss_fn(model) - base
        strip_binarization(module)
        with torch.no_grad():
            module.weight.copy_(original)
        result[layer.name] = max(increase, 0.0) / (8 * saved_bytes(layer, quantizer) / 1e6)
    return result

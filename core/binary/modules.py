"""Binarizing a layer: a Conv2d / Linear computes through a weight quantizer.

The quantizer (`core.binary.quantizers.WeightQuantizer`) is registered as a
`torch.nn.utils.parametrize` parametrization of the weight, so `module.weight` is the
binarized value, the latent real weight that is trained lives at
`module.parametrizations.weight.original`, and `state_dict()` stores the latent weight under
`parametrizations.weight.original`. Wrap repeated evaluation in
`torch.nn.utils.parametrize.cached()` to fit once per forward.
"""
from __future__ import annotations

from typing import cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from core.binary.approx import BinaryApprox
from core.binary.quantizers import WeightQuantizer, weight_quantizer


def binarize_module(module: nn.Module, quantizer: WeightQuantizer | int) -> None:
    """Make a Conv2d / Linear compute with its weight quantized by `quantizer` (or, for an
    int, the default weight quantizer of that many bits: `sign` for 1, `kbit` above), trained
    through the STE; the existing weight becomes the latent weight (same Parameter object, so
    optimizers holding it keep working)."""
    name = type(module).__name__
    if not isinstance(module, nn.Conv2d | nn.Linear):
        msg = f"only Conv2d and Linear layers can be binarized, got {name}"
        # ValueError, not TypeError: CONVENTIONS route bad user input through ValueError.
        raise ValueError(msg)  # noqa: TRY004
    if is_binarized(module):
        raise ValueError(f"{name} is already binarized ({binary_bits(module)} bits)")
    if not isinstance(quantizer, WeightQuantizer):
        quantizer = weight_quantizer(quantizer)
    parametrize.register_parametrization(module, "weight", quantizer)


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    parametrizations = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, parametrizations["weight"])


def weight_quantizer_of(module: nn.Module) -> WeightQuantizer | None:
    """The quantizer a binarized module's weight goes through; None when it is not binarized."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in _weight_parametrizations(module) if isinstance(p, WeightQuantizer)), None)


def is_binarized(module: nn.Module) -> bool:
    """Whether `module.weight` goes through a weight quantizer."""
    return weight_quantizer_of(module) is not None


def binary_bits(module: nn.Module) -> int | None:
    """The bits of the module's binarization, None when it is not binarized."""
    quantizer = weight_quantizer_of(module)
    return None if quantizer is None else quantizer.bits


def latent_weight(module: nn.Module) -> Tensor:
    """The real weight that is trained: the parametrization's `original` when the weight is
    parametrized, else `module.weight`."""
    if parametrize.is_parametrized(module, "weight"):
        return _weight_parametrizations(module).original
    return cast(Tensor, module.weight)


def binary_approx(module: nn.Module) -> BinaryApprox:
    """The `BinaryApprox` a binarized module computes with: `reconstruct()` equals
    `module.weight` (in float32) exactly; for packing checkpoints."""
    quantizer = weight_quantizer_of(module)
    if quantizer is None:
        raise ValueError(f"{type(module).__name__} is not binarized")
    return quantizer.fit(latent_weight(module))


def strip_binarization(module: nn.Module) -> None:
    """Remove the parametrization, leaving the binarized value `Q(W)` as a plain weight
    Parameter (the latent Parameter object, its data replaced)."""
    if not is_binarized(module):
        raise ValueError(f"{type(module).__name__} is not binarized")
    if len(_weight_parametrizations(module)) != 1:
        raise ValueError("weight has parametrizations besides its quantizer; remove them first")
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

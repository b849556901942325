"""Fine-tuning binarized layers: latent real weights and a straight-through estimator.

A binarized Conv2d / Linear keeps its real ("latent") weight `W` as the trained parameter
and computes with `Q(W) = Σ_i α_i B_i` (see `core.binary.approx`). `Q` is piecewise
constant, so its true gradient is 0 almost everywhere; the clipped straight-through
estimator of BinaryConnect (Courbariaux et al. 2015) and XNOR-Net (Rastegari et al. 2016)
instead uses

    ∂L/∂W = ∂L/∂Q · 1{|W| ≤ 1},

i.e. the gradient of the hard-tanh, which stops latent weights from drifting far past the
binarization threshold where sign() could no longer flip. Zhuang et al. 2017 (arXiv
1709.04344) fine-tune the network this way after binarizing each layer.

The binarization is a `torch.nn.utils.parametrize` parametrization, so `module.weight` is
the binarized value, the latent weight lives at `module.parametrizations.weight.original`
and `state_dict()` stores the latent weight under `parametrizations.weight.original`.
Wrap repeated evaluation in `torch.nn.utils.parametrize.cached()` to fit once per forward.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from core.binary.approx import (
    MAX_BITS,
    BinaryApprox,
    approximate,
    combine,
    fit,
    sign_scale,
)

# Alternating iterations in the k > 1 forward: a fit per training step must be cheap, and
# the refinement gains little after the first few sweeps.
STE_ITERATIONS = 3


def _check_bits(bits: int, iterations: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")


def _binarized(weight: Tensor, bits: int, iterations: int) -> Tensor:
    """`approximate(weight, bits, iterations=iterations).reconstruct()`, bit for bit, in
    the weight's dtype, without the checks and the error bookkeeping."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if bits == 1:
        scale, base = sign_scale(w)
        out = scale[:, None] * base
    else:
        scales, bases, _ = fit(w, bits, iterations)
        out = combine(scales, bases)
    return out.reshape(weight.shape).to(weight.dtype)


class _BinarizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: Tensor, bits: int, iterations: int) -> Tensor:
        ctx.save_for_backward(weight)
        return _binarized(weight, bits, iterations)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad * (weight.abs() <= 1).to(grad.dtype), None, None


def binarize_ste(weight: Tensor, bits: int, *, iterations: int = STE_ITERATIONS) -> Tensor:
    """Forward: `Q(W) = Σ_i α_i B_i`, the per-output-channel `bits`-bit approximation of
    `approximate(W, bits, iterations=iterations)` (for bits = 1 the closed form
    `mean|W| · sign(W)`). Backward: the clipped straight-through estimator
    `∂L/∂W = ∂L/∂Q · 1{|W| ≤ 1}` (BinaryConnect / XNOR-Net); α gets no gradient path."""
    _check_bits(bits, iterations)
    if weight.dim() < 2:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(weight.shape)}")
    return _BinarizeSTE.apply(weight, bits, iterations)


class BinaryWeight(nn.Module):
    """Parametrization `W ↦ binarize_ste(W, bits)`, for
    `parametrize.register_parametrization(module, "weight", BinaryWeight(bits))`."""

    def __init__(self, bits: int, *, iterations: int = STE_ITERATIONS) -> None:
        super().__init__()
        _check_bits(bits, iterations)
        self.bits = bits
        self.iterations = iterations

    def forward(self, weight: Tensor) -> Tensor:
        return _BinarizeSTE.apply(weight, self.bits, self.iterations)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, iterations={self.iterations}"


def _parametrization(module: nn.Module) -> BinaryWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    return next((p for p in plist if isinstance(p, BinaryWeight)), None)


def binarize_module(module: nn.Module, bits: int, *, iterations: int = STE_ITERATIONS) -> None:
    """Make a Conv2d / Linear compute with its `bits`-bit binarized weight, trained through
    the STE; the existing weight becomes the latent weight (same Parameter object, so
    optimizers holding it keep working)."""
    name = type(module).__name__
    if not isinstance(module, nn.Conv2d | nn.Linear):
        msg = f"only Conv2d and Linear layers can be binarized, got {name}"
        # ValueError, not TypeError: CONVENTIONS route bad user input through ValueError.
        raise ValueError(msg)  # noqa: TRY004
    if is_binarized(module):
        raise ValueError(f"{name} is already binarized ({binary_bits(module)} bits)")
    parametrize.register_parametrization(
        module, "weight", BinaryWeight(bits, iterations=iterations)
    )


def is_binarized(module: nn.Module) -> bool:
    """Whether `module.weight` goes through a `BinaryWeight` parametrization."""
    return _parametrization(module) is not None


def binary_bits(module: nn.Module) -> int | None:
    """The bits of the module's binarization, None when it is not binarized."""
    p = _parametrization(module)
    return None if p is None else p.bits


def latent_weight(module: nn.Module) -> Tensor:
    """The real weight that is trained: the parametrization's `original` when the weight is
    parametrized, else `module.weight`."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def binary_approx(module: nn.Module) -> BinaryApprox:
    """The `BinaryApprox` a binarized module computes with: `reconstruct()` equals
    `module.weight` (in float32) exactly; for packing checkpoints."""
    p = _parametrization(module)
    if p is None:
        raise ValueError(f"{type(module).__name__} is not binarized")
    return approximate(latent_weight(module), p.bits, iterations=p.iterations)


def strip_binarization(module: nn.Module) -> None:
    """Remove the parametrization, leaving the binarized value `Q(W)` as a plain weight
    Parameter (the latent Parameter object, its data replaced)."""
    if not is_binarized(module):
        raise ValueError(f"{type(module).__name__} is not binarized")
    if len(module.parametrizations.weight) != 1:
        raise ValueError("weight has parametrizations besides BinaryWeight; remove them first")
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

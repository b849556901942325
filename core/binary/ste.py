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

These are the pure functions; `core.binary.quantizers` wraps them in named, registered
quantizers, and `core.binary.modules` makes a layer compute through one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from core.binary.approx import check_bits, check_iterations, combine, fit, sign_scale

# Alternating iterations in the k > 1 forward: a fit per training step must be cheap, and
# the refinement gains little after the first few sweeps.
STE_ITERATIONS = 3


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
    check_bits(bits)
    check_iterations(iterations)
    if weight.dim() < 2:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(weight.shape)}")
    quantized: Tensor = _BinarizeSTE.apply(weight, bits, iterations)
    return quantized

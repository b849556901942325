"""Binary weight approximation, STE fine-tuning and 1-bit packing (Zhuang et al. 2017,
arXiv 1709.04344): `approximate` fits `W ≈ Σ α_i B_i` per output channel, `binarize_module`
makes a Conv2d / Linear train through that approximation, `pack_approx` stores it;
`binarize_input` makes a Conv2d binarize its inputs too (`H(x - τ)`, for 1-bit kernels).
"""
from __future__ import annotations

from core.binary.activation import (
    ACTIVATION_QUANTIZER,
    BinaryActivation,
    activation_quantizers,
    binarize_input,
    binary_activation,
    has_binary_input,
    input_binarizer,
    supports_binary_input,
)
from core.binary.approx import MAX_BITS, BinaryApprox, approximate
from core.binary.packing import (
    pack_approx,
    pack_signs,
    packed_nbytes,
    unpack_approx,
    unpack_signs,
)
from core.binary.ste import (
    BinaryWeight,
    binarize_module,
    binarize_ste,
    binary_approx,
    binary_bits,
    is_binarized,
    latent_weight,
    strip_binarization,
)

__all__ = [
    "ACTIVATION_QUANTIZER",
    "MAX_BITS",
    "BinaryActivation",
    "BinaryApprox",
    "BinaryWeight",
    "activation_quantizers",
    "approximate",
    "binarize_input",
    "binarize_module",
    "binarize_ste",
    "binary_activation",
    "binary_approx",
    "binary_bits",
    "has_binary_input",
    "input_binarizer",
    "is_binarized",
    "latent_weight",
    "pack_approx",
    "pack_signs",
    "packed_nbytes",
    "strip_binarization",
    "supports_binary_input",
    "unpack_approx",
    "unpack_signs",
]

"""Binary weight approximation, STE fine-tuning and 1-bit packing (Zhuang et al. 2017,
arXiv 1709.04344): `approximate` fits `W ≈ Σ α_i B_i` per output channel, the registered
quantizers (`sign`, `kbit` for weights; `rsign`, `scale_threshold` for inputs; `quantizers.py`, `activation.py`)
wrap that maths with a name and a config, `binarize_module` makes a Conv2d / Linear train
through one, `binarize_input` makes a Conv2d binarize its inputs too (`H(x - τ)`, for 1-bit
kernels), `pack_approx` stores the weights.
"""
from __future__ import annotations

from core.binary.activation import (
    ACTIVATION_QUANTIZER,
    INPUT_BINARIZERS,
    BinaryActivation,
    InputBinarizer,
    RPReLU,
    ScaleThresholdActivation,
    activation_quantizer_from_config,
    activation_quantizers,
    binarize_input,
    binary_activation,
    has_binary_input,
    input_binarizer,
    new_input_binarizer,
    supports_binary_input,
)
from core.binary.approx import MAX_BITS, BinaryApprox, approximate, check_bits
from core.binary.modules import (
    binarize_module,
    binary_approx,
    binary_bits,
    is_binarized,
    latent_weight,
    strip_binarization,
    weight_quantizer_of,
)
from core.binary.packing import (
    pack_approx,
    pack_signs,
    packed_nbytes,
    unpack_approx,
    unpack_signs,
)
from core.binary.quantizers import (
    QUANTIZERS,
    KBitQuantizer,
    Quantizer,
    SignQuantizer,
    WeightQuantizer,
    quantizer_from_config,
    register_quantizer,
    weight_quantizer,
    weight_quantizer_from_config,
)
from core.binary.ste import binarize_ste

__all__ = [
    "ACTIVATION_QUANTIZER",
    "INPUT_BINARIZERS",
    "MAX_BITS",
    "QUANTIZERS",
    "BinaryActivation",
    "BinaryApprox",
    "InputBinarizer",
    "KBitQuantizer",
    "Quantizer",
    "RPReLU",
    "ScaleThresholdActivation",
    "SignQuantizer",
    "WeightQuantizer",
    "activation_quantizer_from_config",
    "activation_quantizers",
    "approximate",
    "binarize_input",
    "binarize_module",
    "binarize_ste",
    "binary_activation",
    "binary_approx",
    "binary_bits",
    "check_bits",
    "has_binary_input",
    "input_binarizer",
    "is_binarized",
    "latent_weight",
    "new_input_binarizer",
    "pack_approx",
    "pack_signs",
    "packed_nbytes",
    "quantizer_from_config",
    "register_quantizer",
    "strip_binarization",
    "supports_binary_input",
    "unpack_approx",
    "unpack_signs",
    "weight_quantizer",
    "weight_quantizer_from_config",
    "weight_quantizer_of",
]

"""Quantizers by name, as in larq: pure functions do the maths (`core.binary.approx`,
`core.binary.ste`), small registered classes wrap them with a serialisable config, and job
configs and checkpoint cards refer to them by that config.

A quantizer is a `torch.nn.Module` (so one with learnable parameters keeps them in the model's
state_dict) whose forward pass quantizes a tensor and passes gradients straight through.
Its `kind` says what it quantizes:

- `"weight"` (`WeightQuantizer`): a Conv2d / Linear weight `W ≈ Σ_i α_i B_i` per output
  channel, fitted exactly as the forward pass does (`fit`), stored bit-packed (`pack` /
  `unpack`, `packed_nbytes`). Registered: `sign` (1 bit, α = mean|W|) and `kbit` (k bits,
  greedy + alternating fit).
- `"activation"`: a layer's input, in the forward pass only (nothing to pack).

`{"name": "kbit", "bits": 2, "iterations": 3}` is a config; `quantizer_from_config` builds it
and `quantizer.to_config()` gives it back. A new quantizer is a subclass decorated with
`@register_quantizer`; the contract test (tests/core/binary/test_quantizers.py) runs over every one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Self, TypeVar

from torch import Tensor, nn

from core.binary.approx import BinaryApprox, approximate, check_bits, check_iterations
from core.binary.packing import pack_approx, packed_nbytes, unpack_approx
from core.binary.ste import STE_ITERATIONS, binarize_ste

QuantizerKind = Literal["weight", "activation"]


class Quantizer(nn.Module):
    """A named, registered quantizer: `forward(x)` is the quantized value (straight-through
    gradient), `to_config()` / `quantizer_from_config` its JSON form."""

    name: ClassVar[str]
    kind: ClassVar[QuantizerKind]

    def get_config(self) -> dict[str, Any]:
        """The constructor's keyword arguments, JSON-able."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.get_config()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config().items())


class WeightQuantizer(Quantizer):
    """Quantizes a Conv2d / Linear weight `[C_out, ...]` per output channel to `bits` binary
    bases; the parametrization of a binarized layer (`core.binary.modules`)."""

    kind: ClassVar[QuantizerKind] = "weight"
    bits: int

    @classmethod
    def for_bits(cls, bits: int) -> Self:
        """This quantizer at `bits` bits per weight (ValueError when it cannot be)."""
        return cls(bits=bits)

    def fit(self, weight: Tensor) -> BinaryApprox:
        """The approximation the forward pass computes, exactly (`reconstruct()` equals
        `forward(weight)` in float32)."""
        raise NotImplementedError

    def pack(self, weight: Tensor) -> dict[str, Tensor]:
        """The stored form of `weight`'s approximation: named CPU tensors for safetensors."""
        return pack_approx(self.fit(weight))

    def unpack(self, tensors: Mapping[str, Tensor], shape: Sequence[int]) -> Tensor:
        """The float32 weight of `shape` that `pack` stored (exact)."""
        return unpack_approx(tensors, shape).reconstruct()

    def packed_nbytes(self, shape: Sequence[int]) -> int:
        """Bytes `pack` stores for a weight of `shape`."""
        return packed_nbytes(shape, self.bits)


QUANTIZERS: dict[str, type[Quantizer]] = {}
"""Every registered quantizer by name."""

Q = TypeVar("Q", bound=type[Quantizer])


def register_quantizer(cls: Q) -> Q:
    """Class decorator: make `cls` buildable by its `name` from a config."""
    if cls.name in QUANTIZERS:
        raise ValueError(f"a quantizer named {cls.name!r} is already registered")
    QUANTIZERS[cls.name] = cls
    return cls


@register_quantizer
class SignQuantizer(WeightQuantizer):
    """1 bit: `W ≈ α·sign(W)` per output channel with the least-squares `α = mean|W|`
    (XNOR-Net / BWN, Rastegari et al. 2016), sign(0) = +1; clipped STE
    `∂L/∂W = ∂L/∂Q · 1{|W| ≤ 1}`."""

    name: ClassVar[str] = "sign"
    bits = 1

    @classmethod
    def for_bits(cls, bits: int) -> Self:
        if bits != 1:
            raise ValueError(f"quantizer sign has 1 bit per weight, not {bits} (kbit has k)")
        return cls()

    def forward(self, weight: Tensor) -> Tensor:
        return binarize_ste(weight, 1)

    def fit(self, weight: Tensor) -> BinaryApprox:
        return approximate(weight.detach(), 1)


@register_quantizer
class KBitQuantizer(WeightQuantizer):
    """k bits: `W ≈ Σ_{i<k} α_i B_i` per output channel, the greedy residual expansion refined
    by `iterations` alternating least-squares sweeps (`core.binary.approx`); clipped STE."""

    name: ClassVar[str] = "kbit"

    def __init__(self, bits: int = 2, iterations: int = STE_ITERATIONS) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.iterations = check_iterations(iterations)

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "iterations": self.iterations}

    def forward(self, weight: Tensor) -> Tensor:
        return binarize_ste(weight, self.bits, iterations=self.iterations)

    def fit(self, weight: Tensor) -> BinaryApprox:
        return approximate(weight.detach(), self.bits, iterations=self.iterations)


def quantizer_from_config(config: Mapping[str, Any]) -> Quantizer:
    """The quantizer a config names (`{"name": "kbit", "bits": 2}`); ValueError naming an
    unknown quantizer or argument."""
    params = dict(config)
    name = params.pop("name", None)
    cls = QUANTIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown quantizer {name!r}; registered: {', '.join(sorted(QUANTIZERS))}")
    try:
        return cls.from_config(params)
    except TypeError as exc:  # an argument the class does not take
        raise ValueError(f"quantizer {name}: {exc}") from None


def weight_quantizer(bits: int = 1, name: str | None = None) -> WeightQuantizer:
    """The weight quantizer `name` at `bits` bits; without a name, `sign` for 1 bit and `kbit`
    for more (a job spec's default too: `core.job_spec.default_weight_quantizer`, kept equal by
    tests/core/binary/test_quantizers.py)."""
    cls = QUANTIZERS.get(name or ("sign" if bits == 1 else "kbit"))
    if cls is None or not issubclass(cls, WeightQuantizer):
        weights = sorted(n for n, c in QUANTIZERS.items() if issubclass(c, WeightQuantizer))
        raise ValueError(f"unknown weight quantizer {name!r}; registered: {', '.join(weights)}")
    return cls.for_bits(check_bits(bits))


def weight_quantizer_from_config(config: Mapping[str, Any]) -> WeightQuantizer:
    """`quantizer_from_config` for a weight quantizer (ValueError for another kind)."""
    quantizer = quantizer_from_config(config)
    if quantizer.kind != "weight":
        raise ValueError(f"quantizer {quantizer.name} is an {quantizer.kind} quantizer, not a weight quantizer")
    assert isinstance(quantizer, WeightQuantizer)
    return quantizer


__all__ = [
    "QUANTIZERS", "KBitQuantizer", "Quantizer", "QuantizerKind", "SignQuantizer", "WeightQuantizer",
    "quantizer_from_config", "register_quantizer", "weight_quantizer", "weight_quantizer_from_config",
]

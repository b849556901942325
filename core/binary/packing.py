"""Storage of a `BinaryApprox` at 1 bit per weight and base, plus float32 scales.

A k-bit approximation of a weight with n elements and C_out output channels takes
`ceil(k·n/8)` bytes of signs (bit 1 = +1, numpy's big-endian bit order, all k bases
flattened C-order into one stream) and `4·k·C_out` bytes of scales, against `4·n` bytes of
float32: a ratio just under 32/k. Unpacking is exact: the same ±1 bases and the same
float32 scales come back.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from core.binary.approx import BinaryApprox, check_bits


def pack_signs(bases: Tensor) -> Tensor:
    """uint8 `[ceil(numel/8)]`: the bits `bases > 0`, flattened, 8 to a byte (MSB first)."""
    signs = (bases.detach() > 0).cpu().numpy().reshape(-1)
    return torch.from_numpy(np.packbits(signs))


def unpack_signs(packed: Tensor, shape: torch.Size | Sequence[int]) -> Tensor:
    """Inverse of `pack_signs`: float32 ±1 of the given shape."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed signs must be a 1-D uint8 tensor, got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    if packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed signs hold {packed.numel()} bytes, shape {shape} needs "
                         f"{(n + 7) // 8}")
    bits = np.unpackbits(packed.cpu().numpy(), count=n)
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1).reshape(shape)


def pack_approx(approx: BinaryApprox) -> dict[str, Tensor]:
    """`{"bits": uint8 packed signs of all k bases, "scales": float32 [k, C_out]}`, CPU and
    contiguous, ready for safetensors."""
    return {
        "bits": pack_signs(approx.bases),
        "scales": approx.scales.detach().to("cpu", torch.float32).contiguous(),
    }


def unpack_approx(
    tensors: Mapping[str, Tensor], shape: torch.Size | Sequence[int]
) -> BinaryApprox:
    """Inverse of `pack_approx` for a weight of `shape`; `error` is nan (not stored)."""
    missing = {"bits", "scales"} - set(tensors)
    if missing:
        raise ValueError(f"packed approximation lacks {', '.join(sorted(missing))}")
    shape = tuple(int(s) for s in shape)
    scales = tensors["scales"]
    if scales.dtype != torch.float32 or scales.dim() != 2 or len(shape) < 2 or scales.shape[1] != shape[0]:
        raise ValueError(f"scales must be float32 [k, C_out = {shape[:1]}] for weight shape {shape}, "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    k = check_bits(int(scales.shape[0]))
    bases = unpack_signs(tensors["bits"], (k, *shape)).to(torch.int8)
    return BinaryApprox(scales.clone(), bases, float("nan"))


def packed_nbytes(shape: torch.Size | Sequence[int], bits: int) -> int:
    """Bytes `pack_approx` stores for a `bits`-bit weight of `shape`: `ceil(bits·n/8)` of
    signs plus `4·bits·C_out` of float32 scales."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"weight shape must be at least 2-D, got {shape}")
    check_bits(bits)
    return (bits * math.prod(shape) + 7) // 8 + 4 * bits * shape[0]

"""Multi-bit binary approximation of a weight tensor, one problem per output channel.

For an output channel `w ∈ R^n` (dimension 0 of a Conv2d / Linear weight, the other dims
flattened) a k-bit approximation is `w ≈ Σ_{i<k} α_i b_i` with `α_i ≥ 0`, `b_i ∈ {-1, +1}^n`,
chosen to minimise `||w - Σ α_i b_i||²`; "Flexible Network Binarization with Layer-wise
Priority" (arXiv 1709.04344) binarizes each layer this way before fine-tuning.

* k = 1 has a closed form: `b = sign(w)`, `α = <w, b>/n = mean|w|` (Rastegari et al. 2016).
* k > 1 is a combinatorial problem. We start from the greedy residual expansion
  (`b_i = sign(r_i)`, `α_i = mean|r_i|`, `r_{i+1} = r_i - α_i b_i`; Guo et al. 2017,
  "Network Sketching") and refine by block coordinate descent (as in Xu et al. 2018,
  "Alternating Multi-bit Quantization"), each step an exact minimiser of its block, so the
  error cannot rise:
  (a) given all `b_i`, the `α` are a k-variable least-squares problem,
  `(BBᵀ) α = B w`, solved for every channel at once;
  (b) given `α` (made ≥ 0 by flipping `b_i`), `b_i = sign(w - Σ_{j≠i} α_j b_j)` minimises
  the error over `b_i` element-wise.
  Each channel keeps the best iterate it has seen, so the returned error is never above
  the greedy one, whatever round-off the solve has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_BITS = 8
# Relative ridge on the k×k normal equations: only there to keep a rank-deficient B
# (two identical bases, e.g. when a residual is exactly 0) solvable; its bias is ~1e-9.
_RIDGE = 1e-9


@dataclass(frozen=True, eq=False)
class BinaryApprox:
    """`W ≈ Σ_i scales[i, c] · bases[i, c, ...]` for every output channel c.

    scales: float32 `[k, C_out]`, ≥ 0.
    bases: int8 `[k, *weight.shape]`, values ±1.
    error: relative reconstruction error `||W - Σ α_i B_i||² / ||W||²` (0 for W = 0,
        nan when unknown, e.g. after unpacking).
    """

    scales: Tensor
    bases: Tensor
    error: float

    def __post_init__(self) -> None:
        if self.scales.dim() != 2 or self.bases.dim() < 3:
            raise ValueError(
                f"scales must be [k, C_out] and bases [k, C_out, ...]; got "
                f"{tuple(self.scales.shape)} and {tuple(self.bases.shape)}"
            )
        if tuple(self.bases.shape[:2]) != tuple(self.scales.shape):
            raise ValueError(
                f"bases {tuple(self.bases.shape)} do not match scales {tuple(self.scales.shape)}"
            )

    @property
    def bits(self) -> int:
        """k, the number of binary bases (= bits per weight)."""
        return self.scales.shape[0]

    @property
    def shape(self) -> torch.Size:
        """The approximated weight's shape."""
        return self.bases.shape[1:]

    def reconstruct(self) -> Tensor:
        """`Σ_i α_i B_i` as float32 in the weight's shape."""
        k, c = self.scales.shape
        flat = combine(self.scales.float(), self.bases.reshape(k, c, -1))
        return flat.reshape(self.shape)


def check_bits(bits: object) -> int:
    """`bits` when it is a whole number of binary bases in [1, MAX_BITS]; ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return bits


def check_iterations(iterations: object) -> int:
    """`iterations` when it is a non-negative integer; ValueError otherwise."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    return iterations


def approximate(weight: Tensor, bits: int = 1, *, iterations: int = 20) -> BinaryApprox:
    """Fit a `bits`-bit binary approximation to `weight`, per output channel (dim 0).

    `iterations` bounds the alternating refinement for bits > 1 (0 = greedy only; it stops
    early once the bases stop changing); it is ignored for bits = 1, which is exact.
    Works on the weight's device; the computation is float32 (float64 for the k×k solves).
    """
    check_bits(bits)
    check_iterations(iterations)
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got {_describe(weight)}")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have an output-channel dim and at least one more (Conv2d/Linear), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise ValueError(f"weight is empty, shape {tuple(weight.shape)}")
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains NaN or infinite values")
    scales, bases, sq_err = fit(w, bits, iterations)
    total = float(torch.sum(w.square(), dtype=torch.float64))
    error = float(sq_err.sum()) / total if total > 0 else 0.0
    return BinaryApprox(scales, bases.reshape(bits, *weight.shape), error)


def fit(w: Tensor, bits: int, iterations: int) -> tuple[Tensor, Tensor, Tensor]:
    """Unchecked core of `approximate` on a float32 `[C, n]` matrix.

    Returns scales `[k, C]` float32, bases `[k, C, n]` int8 and the per-channel squared
    error `[C]` float64. Deterministic, so the STE forward and the packed checkpoint agree.
    """
    if bits == 1:
        scale, base = sign_scale(w)
        scales, bases = scale[None], base[None]
    else:
        # Bases stay float32 while fitting: int8 operands cost a conversion in every op.
        scales, bases = _greedy(w, bits)
        best = (scales, bases, _sq_error(w, scales, bases))
        if iterations > 0:
            scales, bases = _solve_scales(w, bases)
            best = _keep_best(best, (scales, bases, _sq_error(w, scales, bases)))
        for _ in range(iterations):
            bases, changed = _update_bases(w, scales, bases)
            if not changed:
                break
            scales, bases = _solve_scales(w, bases)
            best = _keep_best(best, (scales, bases, _sq_error(w, scales, bases)))
        scales, bases, _ = best
    bases = bases.to(torch.int8)
    return scales, bases, _sq_error(w, scales, bases)


def sign_scale(w: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form 1-bit fit of `[C, n]` rows: `α = mean|w|` (`[C]`), `b = sign(w)` with
    sign(0) := +1 (`[C, n]`, float ±1). `α` solves `d/dα ||w - α b||² = 0`, i.e.
    `α = <w, b>/<b, b> = Σ|w|/n`."""
    return w.abs().mean(dim=1), _sign(w)


def _sign(x: Tensor) -> Tensor:
    # torch.sign maps 0 to 0, which is not binary; copysign of x + 0.0 (which turns -0.0
    # into +0.0) gives sign(±0) = +1 and is ~10x faster on CPU than a torch.where.
    return torch.ones_like(x).copysign_(x + 0.0)


def combine(scales: Tensor, bases: Tensor) -> Tensor:
    """`Σ_i scales[i, :, None] · bases[i]` for `[k, C]` scales and `[k, C, n]` bases, as
    float32 (bases may be int8 or float; ±1 times α is exact, so both give the same bits)."""
    out = scales[0, :, None] * bases[0]
    for i in range(1, scales.shape[0]):
        out = out + scales[i, :, None] * bases[i]
    return out


def _sq_error(w: Tensor, scales: Tensor, bases: Tensor) -> Tensor:
    # float32 row sums (pairwise, ~1e-7 relative) then float64: a float64 sum would first
    # copy the whole matrix to float64.
    return (w - combine(scales, bases)).square().sum(dim=1).double()


def _greedy(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    residual, scales, bases = w, [], []
    for _ in range(bits):
        scale, base = sign_scale(residual)
        residual = residual - scale[:, None] * base
        scales.append(scale)
        bases.append(base)
    return torch.stack(scales), torch.stack(bases)


def _solve_scales(w: Tensor, bases: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares α for fixed bases, per channel: `(BBᵀ + λI) α = Bw`; negative α are
    made positive by flipping their base, which leaves `Σ α_i b_i` unchanged."""
    k, _, n = bases.shape
    b = bases.permute(1, 0, 2)  # [C, k, n]
    # BBᵀ holds integers |.| <= n, exact in float32 up to n = 2^24; the solve is float64.
    gram = (b @ b.transpose(1, 2)).double()
    gram = gram + (_RIDGE * n) * torch.eye(k, dtype=gram.dtype, device=gram.device)
    rhs = (b @ w[:, :, None]).double()
    alpha = torch.linalg.solve(gram, rhs)[..., 0].T.float()  # [k, C]
    return alpha.abs(), bases * _sign(alpha)[:, :, None]


def _update_bases(w: Tensor, scales: Tensor, bases: Tensor) -> tuple[Tensor, bool]:
    """One sweep of `b_i = sign(w - Σ_{j≠i} α_j b_j)`, i = 0..k-1 (α ≥ 0 makes it optimal)."""
    bases = bases.clone()
    residual = w - combine(scales, bases)
    changed = False
    for i in range(bases.shape[0]):
        target = residual.add_(scales[i, :, None] * bases[i])  # w - Σ_{j≠i} α_j b_j
        new = _sign(target)
        changed = changed or not torch.equal(new, bases[i])
        residual = target.sub_(scales[i, :, None] * new)
        bases[i] = new
    return bases, changed


def _keep_best(
    best: tuple[Tensor, Tensor, Tensor], cand: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel, the iterate with the lower squared error (ties keep the earlier one)."""
    better = cand[2] < best[2]
    # lerp with a 0/1 weight is exact on ±1 bases (b + {0, ±2} is exact) and, on CPU,
    # several times faster than a broadcast torch.where.
    pick = better.to(cand[1].dtype)[None, :, None]
    return (
        torch.where(better[None], cand[0], best[0]),
        torch.lerp(best[1], cand[1], pick),
        torch.where(better, cand[2], best[2]),
    )


def _describe(x: object) -> str:
    return f"{x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__


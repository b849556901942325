from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from torch import nn

from core.binary import (
    BinaryApprox,
    KBitQuantizer,
    approximate,
    binarize_module,
    binarize_ste,
    binary_approx,
    binary_bits,
    is_binarized,
    latent_weight,
    pack_approx,
    pack_signs,
    packed_nbytes,
    strip_binarization,
    unpack_approx,
    unpack_signs,
)


def _gauss(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rel_err(w: torch.Tensor, q: torch.Tensor) -> float:
    return float((w.double() - q.double()).square().sum() / w.double().square().sum())


# --- approximate -------------------------------------------------------------------------


def test_one_bit_is_closed_form_and_least_squares_optimal() -> None:
    w = _gauss(16, 8, 3, 3)
    a = approximate(w, 1)
    assert a.bits == 1 and a.scales.shape == (1, 16) and a.bases.shape == (1, 16, 8, 3, 3)
    assert a.scales.dtype == torch.float32 and a.bases.dtype == torch.int8
    torch.testing.assert_close(a.scales[0], w.abs().mean(dim=(1, 2, 3)))
    assert torch.equal(a.bases[0], torch.where(w >= 0, 1, -1).to(torch.int8))
    assert a.error == pytest.approx(_rel_err(w, a.reconstruct()), rel=1e-6)
    # perturbing any channel's α either way raises that channel's error
    base = a.bases[0].double()
    for c in range(16):
        errs = [
            float((w[c].double() - (a.scales[0, c].double() + d) * base[c]).square().sum())
            for d in (-1e-3, 0.0, 1e-3)
        ]
        assert errs[1] < errs[0] and errs[1] < errs[2]


def test_one_bit_sign_of_zero_is_plus_one_and_zero_weight() -> None:
    w = torch.tensor([[0.0, -0.0, 1.0, -2.0]])
    assert approximate(w).bases[0, 0].tolist() == [1, 1, 1, -1]
    z = approximate(torch.zeros(3, 5), 2)
    assert z.error == 0.0 and torch.equal(z.reconstruct(), torch.zeros(3, 5))


def test_k_bit_scales_are_least_squares_for_their_bases() -> None:
    w = _gauss(8, 64, seed=1)
    for k in (2, 3):
        a = approximate(w, k)
        assert bool((a.scales >= 0).all())
        assert set(a.bases.unique().tolist()) <= {-1, 1}
        # per channel, lstsq over the same bases gives the same α (up to float32)
        design = a.bases.double().permute(1, 2, 0)  # [C, n, k]
        ref = torch.linalg.lstsq(design, w.double()[:, :, None]).solution[..., 0].T
        torch.testing.assert_close(a.scales.double(), ref, rtol=1e-4, atol=1e-6)


def test_error_falls_with_bits_and_refinement_beats_greedy() -> None:
    w = _gauss(32, 16, 3, 3, seed=2)
    errs = [approximate(w, k).error for k in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2] > 0
    # Gaussian reference points: 1 - 2/π for 1 bit, and each extra bit helps a lot
    assert errs[0] == pytest.approx(1 - 2 / math.pi, abs=0.03)
    for k in (2, 3):
        by_iter = [approximate(w, k, iterations=t).error for t in (0, 1, 2, 5, 20)]
        assert all(b <= a for a, b in itertools.pairwise(by_iter))  # keep-the-best
        assert by_iter[-1] < by_iter[0]  # alternating refinement strictly beats greedy here
    for k in (1, 2, 3):
        a = approximate(w, k)
        assert a.error == pytest.approx(_rel_err(w, a.reconstruct()), rel=1e-5)


def test_degenerate_channels_stay_finite() -> None:
    # row 0 is exactly 1-bit, row 1 constant (B_1 = B_2: a singular Gram matrix)
    w = torch.stack([0.5 * torch.tensor([1.0, -1, 1, 1, -1, 1]), torch.full((6,), 0.3)])
    for k in (2, 3):
        a = approximate(w, k)
        assert bool(torch.isfinite(a.scales).all()) and a.error < 1e-10
        torch.testing.assert_close(a.reconstruct(), w)


def test_approximate_is_per_output_channel_and_keeps_shape() -> None:
    w = _gauss(4, 10, seed=3)
    w[2] *= 100.0  # one loud channel must not change the others' scales
    a, b = approximate(w, 2), approximate(w[[0, 1, 3]], 2)
    torch.testing.assert_close(a.scales[:, [0, 1, 3]], b.scales)
    assert a.reconstruct().shape == w.shape and a.reconstruct().dtype == torch.float32
    assert approximate(w.half(), 1).reconstruct().dtype == torch.float32


@pytest.mark.parametrize(
    ("weight", "kwargs"),
    [
        (torch.randn(3, 3), {"bits": 0}),
        (torch.randn(3, 3), {"bits": 9}),
        (torch.randn(3, 3), {"bits": True}),
        (torch.randn(3, 3), {"iterations": -1}),
        (torch.randn(3), {}),
        (torch.ones(3, 3, dtype=torch.int64), {}),
        (torch.zeros(0, 3), {}),
        (torch.tensor([[1.0, float("nan")]]), {}),
    ],
)
def test_approximate_rejects_bad_arguments(weight: torch.Tensor, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        approximate(weight, **kwargs)


# --- packing -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5, 3, 3), (7, 13), (1, 1, 1, 1), (5, 3, 1, 1)])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_pack_round_trip_is_exact(shape: tuple[int, ...], bits: int) -> None:
    w = _gauss(*shape, seed=bits)
    a = approximate(w, bits)
    packed = pack_approx(a)
    assert packed["bits"].dtype == torch.uint8 and packed["scales"].dtype == torch.float32
    nbytes = sum(t.numel() * t.element_size() for t in packed.values())
    assert nbytes == packed_nbytes(shape, bits)
    # through safetensors bytes, as a checkpoint would
    b = unpack_approx(load(save(packed)), shape)
    assert math.isnan(b.error) and b.bits == bits
    assert torch.equal(b.bases, a.bases) and torch.equal(b.scales, a.scales)
    assert torch.equal(b.reconstruct(), a.reconstruct())


def test_pack_signs_round_trip_and_errors() -> None:
    bases = torch.where(_gauss(2, 3, 7) >= 0, 1.0, -1.0)
    packed = pack_signs(bases)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(42 / 8),)
    assert torch.equal(unpack_signs(packed, bases.shape), bases)
    with pytest.raises(ValueError, match="bytes"):
        unpack_signs(packed, (2, 3, 9))
    with pytest.raises(ValueError, match="lacks scales"):
        unpack_approx({"bits": packed}, (6, 7))
    with pytest.raises(ValueError, match="scales"):
        unpack_approx({"bits": packed, "scales": torch.ones(1, 5)}, (6, 7))


def test_packed_nbytes_gives_near_32x_over_k() -> None:
    shape = (256, 256, 3, 3)
    assert packed_nbytes(shape, 1) == 256 * 256 * 9 // 8 + 4 * 256
    assert 31 < 4 * math.prod(shape) / packed_nbytes(shape, 1) < 32
    assert 10 < 4 * math.prod(shape) / packed_nbytes(shape, 3) < 32 / 3


# --- straight-through estimator and parametrization -------------------------------------


@pytest.mark.parametrize("bits", [1, 2])
def test_ste_passes_clipped_gradient(bits: int) -> None:
    w = torch.tensor([[0.5, -1.5, 1.0, -0.2], [2.0, -0.9, 0.1, -1.0]], requires_grad=True)
    q = binarize_ste(w, bits)
    torch.testing.assert_close(q, approximate(w.detach(), bits, iterations=3).reconstruct())
    assert binarize_ste(w.detach().half(), bits).dtype == torch.float16
    upstream = torch.arange(1.0, 9.0).reshape(2, 4)
    q.backward(upstream)
    assert torch.equal(w.grad, torch.where(w.detach().abs() <= 1, upstream, 0.0))


def test_binarized_conv_forward_equals_sign_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    w = conv.weight.detach().clone()
    binarize_module(conv, 1)
    assert is_binarized(conv) and binary_bits(conv) == 1 and latent_weight(conv) is not conv.weight
    x = torch.randn(2, 3, 9, 9)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    ref = F.conv2d(x, alpha * torch.where(w >= 0, 1.0, -1.0), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), ref)
    # gradients reach the latent weight, which an optimizer can then update
    conv(x).square().sum().backward()
    assert latent_weight(conv).grad is not None and latent_weight(conv).grad.abs().sum() > 0


def test_binary_approx_matches_forward_weight_exactly() -> None:
    for bits in (1, 2, 3):
        lin = nn.Linear(20, 6)
        binarize_module(lin, bits)
        assert torch.equal(binary_approx(lin).reconstruct(), lin.weight.detach())


def test_binarize_module_rejections_and_plain_modules() -> None:
    bn = nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        binarize_module(bn, 1)
    lin = nn.Linear(4, 3)
    assert not is_binarized(lin) and binary_bits(lin) is None and latent_weight(lin) is lin.weight
    with pytest.raises(ValueError, match="not binarized"):
        strip_binarization(lin)
    binarize_module(lin, 2)
    with pytest.raises(ValueError, match="already binarized"):
        binarize_module(lin, 1)
    with pytest.raises(ValueError, match="bits must be an integer"):
        KBitQuantizer(0)


def test_strip_binarization_leaves_binarized_weight() -> None:
    conv = nn.Conv2d(4, 5, 3)
    param = conv.weight
    binarize_module(conv, 2)
    q = conv.weight.detach().clone()
    strip_binarization(conv)
    assert not is_binarized(conv) and isinstance(conv.weight, nn.Parameter)
    assert conv.weight is param  # same Parameter, so optimizers keep their state
    assert torch.equal(conv.weight.detach(), q)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_parametrized_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    binarize_module(src[0], 1)
    binarize_module(src[2], 3)
    state = src.state_dict()
    assert "0.parametrizations.weight.original" in state
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    binarize_module(dst[0], 1)
    binarize_module(dst[2], 3)
    dst.load_state_dict(load(save({k: v.contiguous() for k, v in state.items()})))
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(dst(x), src(x))
    assert torch.equal(latent_weight(dst[2]), latent_weight(src[2]))


def test_binary_approx_dataclass_checks_shapes() -> None:
    with pytest.raises(ValueError):
        BinaryApprox(torch.ones(2, 3), torch.ones(2, 4, 5, dtype=torch.int8), 0.0)

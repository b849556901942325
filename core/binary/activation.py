"""Binary input activations for binarized convolutions: `a = H(x - τ_c)`, trained through a
clipped straight-through estimator, with a learnable threshold per input channel.

With 1-bit weights *and* 1-bit inputs a convolution is an XNOR + popcount, which OpenVINO runs
as `BinaryConvolution` (`core.export.openvino`); with 1-bit weights alone the CPU still
multiplies floats. ReActNet (Liu et al. 2020, "ReActNet: Towards Precise Binary Neural
Network with Generalized Activation Functions") showed that a learnable per-channel shift
before the sign ("RSign") recovers much of the accuracy a fixed sign loses; this is RSign in
its {0, 1} form:

    a = H(x - τ_c) = 1 if x > τ_c else 0          (forward, per input channel c)
    ∂a/∂x ≈ ½ · 1{|x - τ_c| ≤ 1},  ∂a/∂τ_c ≈ -Σ ½ · 1{|x - τ_c| ≤ 1}   (backward)

The backward pass is the gradient of the hard sigmoid `clip((x - τ + 1)/2, 0, 1)`, i.e. the
clipped STE of BinaryConnect / XNOR-Net for `sign`, halved because `a = (sign + 1)/2`.

Why {0, 1} and not ±1: the two are the same layer up to a per-channel constant,
`conv(s, B) = 2·conv(a, B) - Σ B` for `s = 2a - 1` *when s is padded with -1* — and that is
exactly what zero padding of `a` is. So training pads `a` with 0 (the convolution's own zero
padding, nothing to change) and export pads the ±1 tensor with -1 (`BinaryConvolution`
`pad_value = -1`): the two agree bit for bit. A ±1 tensor padded with 0 would not be binary.
OpenVINO's CPU plugin also needs the {0, 1} form: its 2-level FakeQuantize becomes a 1-bit
binarization only with output levels 0 and 1 (measured: (-1, +1) levels compiled, then read
every -1 as a set bit and gave wrong results).

Ties: `x == τ` gives 0, as OpenVINO's binarization (`x > threshold`) does.

Two input binarizers are registered (`InputBinarizer`, chosen by a job's `activation_quantizer`):

- `rsign` (`BinaryActivation`): `H(x - τ_c)` as above, values {0, 1}.
- `scale_threshold` (`ScaleThresholdActivation`): NNCF's activation binarization (NNCF ≤ 2.9,
  `nncf/torch/binarization/`): `s·H(x - s·t_c)` with one learnable scale `s = exp(log_s)` per
  layer, initialised on the first training batch at the 99.9th percentile of its input (so the
  binary input keeps about the float input's magnitude, and the BatchNorm after the conv sees
  what it was trained on), and a learnable per-channel `t_c = sigmoid(θ_c)`, initialised at ½.
  Its STE passes gradients for `0 ≤ x ≤ s` (PACT-like), NNCF's backward.

Both export the same way: `τ_c` (`export_threshold()`) feeds the 1-bit convolution's
binarization and the scale `s` (`output_scale()`, 1 for `rsign`) folds into the convolution's
per-channel weight scale, `conv(s·a, α·B) = conv(a, s·α·B)`: no extra op at run time.

Either can carry ReActNet's RPReLU (`RPReLU`, `rprelu_channels` in its config) on the binary
conv's *output*, applied by a forward hook of the conv; the export traces it as plain ops.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.binary.fusion import FusedKernel, fusion_enabled
from core.binary.quantizers import (
    Quantizer,
    QuantizerKind,
    quantizer_from_config,
    register_quantizer,
)


def _all_but_channels(t: Tensor) -> list[int]:
    """The dims a per-channel parameter ([1, C, 1, ...]) broadcasts over: its gradient sums them."""
    return [d for d in range(t.dim()) if d != 1]


@FusedKernel
def _heaviside_forward(x: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    shifted = x - threshold
    return (shifted > 0).to(x.dtype), shifted


@FusedKernel
def _heaviside_backward(shifted: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    grad_x = grad * (shifted.abs() <= 1).to(grad.dtype) * 0.5
    return grad_x, -grad_x.sum(dim=_all_but_channels(grad_x), keepdim=True)


class _HeavisideSTE(torch.autograd.Function):
    # Fused while fine-tuning (`core.binary.fusion`); the choice made in forward holds for backward.
    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: Tensor) -> Tensor:
        ctx.fuse = fusion_enabled()
        out, shifted = _heaviside_forward.run(ctx.fuse, x, threshold)
        ctx.save_for_backward(shifted)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        (shifted,) = ctx.saved_tensors
        return _heaviside_backward.run(ctx.fuse, shifted, grad)


def binary_activation(x: Tensor, threshold: Tensor) -> Tensor:
    """`H(x - τ)` with the clipped straight-through estimator (module docstring).

    x: FloatTensor[N, C, ...] (a conv input; any spatial dims).
    threshold: FloatTensor[C], one threshold per channel.
    Returns FloatTensor like x with values in {0, 1}.
    """
    if x.dim() < 2 or threshold.dim() != 1 or threshold.shape[0] != x.shape[1]:
        raise ValueError(f"threshold must be [C] for an input [N, C, ...]; got {tuple(threshold.shape)} "
                         f"for {tuple(x.shape)}")
    view = threshold.view(1, -1, *([1] * (x.dim() - 2)))
    out: Tensor = _HeavisideSTE.apply(x, view)
    return out


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return channels


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020) on a binary-input conv's output, per output channel c:

        y ↦ PReLU_β(y - γ_c) + ζ_c,   PReLU_β(z) = z if z > 0 else β_c·z

    ReActNet puts it *in place of* the network's activation, its slope started at 0.25. FlexBin
    cannot rewire an uploaded network's forward, so here it goes *in front of* the network's own
    activation (and of a BatchNorm that follows the conv), and it starts as the identity
    (γ = ζ = 0, β = 1): a step begins from the network as it was, and fine-tuning learns where
    the kink sits and how much of the negative side passes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        channels = _check_channels(channels)
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.ones(channels))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    @property
    def channels(self) -> int:
        return int(self.slope.shape[0])

    def forward(self, y: Tensor) -> Tensor:
        view = (1, -1, *([1] * (y.dim() - 2)))
        return F.prelu(y - self.shift_in.view(view), self.slope) + self.shift_out.view(view)


class InputBinarizer(Quantizer):
    """An activation quantizer that binarizes a conv's input per channel: its forward pass is
    `output_scale() · H(x - export_threshold())` (straight-through gradients), which the export
    runs as a 1-bit convolution (module docstring). With `rprelu_channels` it also holds an
    `RPReLU` for the conv's output (`rprelu`, applied by `binarize_input`'s forward hook)."""

    kind: ClassVar[QuantizerKind] = "activation"
    rprelu: RPReLU | None

    def __init__(self, rprelu_channels: int | None = None) -> None:
        super().__init__()
        self.rprelu = None if rprelu_channels is None else RPReLU(rprelu_channels)

    def _rprelu_config(self) -> dict[str, Any]:
        return {} if self.rprelu is None else {"rprelu_channels": self.rprelu.channels}

    def export_threshold(self) -> Tensor:
        """τ [C]: the input is 1 where `x > τ_c`."""
        raise NotImplementedError

    def output_scale(self) -> float:
        """The value a 1 stands for (the export folds it into the conv's weight scale)."""
        raise NotImplementedError


@register_quantizer
class BinaryActivation(InputBinarizer):
    """The registered activation quantizer `rsign`: `x ↦ H(x - τ_c)` with a learnable threshold
    per input channel, initialised at 0 (ReActNet initialises its shift at 0 too; after a
    BatchNorm + ReLU, "is this feature on" is a fair first guess). Its config,
    `{"name": "rsign", "channels": C}` (with `"rprelu_channels"` when it has an RPReLU), is stored
    in model cards (`activation_quantizers`)."""

    name: ClassVar[str] = "rsign"

    def __init__(self, channels: int, rprelu_channels: int | None = None) -> None:
        super().__init__(rprelu_channels)
        self.threshold = nn.Parameter(torch.zeros(_check_channels(channels)))

    def forward(self, x: Tensor) -> Tensor:
        return binary_activation(x, self.threshold)

    def get_config(self) -> dict[str, Any]:
        return {"channels": int(self.threshold.shape[0]), **self._rprelu_config()}

    def export_threshold(self) -> Tensor:
        return self.threshold.detach()

    def output_scale(self) -> float:
        return 1.0


@FusedKernel
def _scale_threshold_forward(x: Tensor, scale: Tensor, t: Tensor) -> Tensor:
    return (x > scale * t).to(x.dtype) * scale


@FusedKernel
def _scale_threshold_backward(x: Tensor, scale: Tensor, out: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """NNCF's backward (NNCF ≤ 2.9, ActivationBinarizationScaleThresholdFn): ∂/∂x passes on
    0 ≤ x ≤ s, ∂/∂s is (out - x)/s there and 1 above, ∂/∂t is -1 on 0 < x < s."""
    below = (x <= scale).to(grad.dtype)
    grad_x = grad * (x >= 0).to(grad.dtype) * below
    grad_scale = (grad * (below * (out - x) / scale + (1 - below))).sum().view(1)
    grad_t = -grad * ((x > 0) & (x < scale)).to(grad.dtype)
    return grad_x, grad_scale, grad_t.sum(dim=_all_but_channels(grad_t), keepdim=True)


class _ScaleThresholdSTE(torch.autograd.Function):
    """`s·H(x - s·t)` with NNCF's backward, fused while fine-tuning (`core.binary.fusion`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, t: Tensor) -> Tensor:
        ctx.fuse = fusion_enabled()
        out = _scale_threshold_forward.run(ctx.fuse, x, scale, t)
        ctx.save_for_backward(x, scale, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, scale, out = ctx.saved_tensors
        return _scale_threshold_backward.run(ctx.fuse, x, scale, out, grad)


SCALE_PERCENTILE = 99.9
"""`scale_threshold` starts its scale at this percentile of the first training batch's input
(NNCF: the smallest of the top 0.1 %)."""


@register_quantizer
class ScaleThresholdActivation(InputBinarizer):
    """The registered activation quantizer `scale_threshold`: NNCF's `s·H(x - s·t_c)` (module
    docstring), `{"name": "scale_threshold", "channels": C}` in model cards. Its state: `log_scale`
    [1], `threshold` [C] (the logits θ of `t = sigmoid(θ)`) and `scale_initialized` [1] (0 until
    the first training batch has set the scale)."""

    name: ClassVar[str] = "scale_threshold"

    def __init__(self, channels: int, rprelu_channels: int | None = None) -> None:
        super().__init__(rprelu_channels)
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.threshold = nn.Parameter(torch.zeros(_check_channels(channels)))
        self.register_buffer("scale_initialized", torch.zeros(1, dtype=torch.int32))
        self._scale_ready = False

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.threshold.shape[0]:
            raise ValueError(f"a {self.threshold.shape[0]}-channel binarizer got an input {tuple(x.shape)}")
        if self.training and not self._scale_ready:
            # the buffer is read (a host sync) only until the scale is set, or loaded with the state
            self._scale_ready = bool(self.get_buffer("scale_initialized").item())
            if not self._scale_ready:
                self._init_scale(x.detach())
        t = self.threshold.sigmoid().view(1, -1, *([1] * (x.dim() - 2)))
        out: Tensor = _ScaleThresholdSTE.apply(x, self.log_scale.exp(), t)
        return out

    @torch.no_grad()
    def _init_scale(self, x: Tensor) -> None:
        flat = x.reshape(-1)
        top = flat.topk(max(1, round(flat.numel() * (1 - SCALE_PERCENTILE / 100)))).values
        self.log_scale.fill_(float(top.min().clamp(min=1e-3).log()))
        self.get_buffer("scale_initialized").fill_(1)
        self._scale_ready = True

    def get_config(self) -> dict[str, Any]:
        return {"channels": int(self.threshold.shape[0]), **self._rprelu_config()}

    def export_threshold(self) -> Tensor:
        return (self.log_scale.exp() * self.threshold.sigmoid()).detach()

    def output_scale(self) -> float:
        return float(self.log_scale.detach().exp())


ACTIVATION_QUANTIZER = BinaryActivation.name
"""Registry name of the default input binarizer, as stored in job configs and model cards."""

INPUT_BINARIZERS = {cls.name: cls for cls in (BinaryActivation, ScaleThresholdActivation)}
"""The registered input binarizers by name (a job's `activation_quantizer`)."""


def activation_quantizer_from_config(config: dict[str, Any]) -> InputBinarizer:
    """`quantizer_from_config` for a layer's input binarizer (ValueError for any other quantizer)."""
    quantizer = quantizer_from_config(config)
    if not isinstance(quantizer, InputBinarizer):
        msg = (f"quantizer {quantizer.name} is a {quantizer.kind} quantizer, not an input binarizer "
               f"({', '.join(INPUT_BINARIZERS)})")
        raise ValueError(msg)  # noqa: TRY004 - a bad config is bad data, a ValueError here
    return quantizer


def new_input_binarizer(name: str, channels: int, *, rprelu_channels: int | None = None) -> InputBinarizer:
    """A fresh input binarizer `name` (`rsign`, `scale_threshold`) for `channels` channels, with an
    `RPReLU` of `rprelu_channels` (the conv's output channels) when given."""
    cls = INPUT_BINARIZERS.get(name)
    if cls is None:
        raise ValueError(f"unknown activation quantizer {name!r}; registered: {', '.join(INPUT_BINARIZERS)}")
    return cls(channels, rprelu_channels)


INPUT_BINARIZER = "input_binarizer"
"""Submodule name under a binarized conv: its threshold is saved as `<layer>.input_binarizer.threshold`."""


BINARY_INPUT_CHANNEL_MULTIPLE = 8
"""OpenVINO's CPU BinaryConvolution packs input channels 8 to a byte: other channel counts
compile and then compute wrong results (core.export.openvino documents the experiment)."""


def supports_binary_input(module: nn.Module) -> bool:
    """A dense Conv2d with zero padding and a multiple of 8 input channels: what OpenVINO's
    `BinaryConvolution` computes exactly. Grouped / depthwise convolutions and Linear layers
    keep float inputs."""
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
            and module.in_channels % BINARY_INPUT_CHANNEL_MULTIPLE == 0)


def _binarize_input_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (getattr(module, INPUT_BINARIZER)(args[0]), *args[1:])


def _rprelu_hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
    # registered only when the binarizer has an RPReLU (the export's stand-in keeps it too)
    activated: Tensor = getattr(module, INPUT_BINARIZER).rprelu(out)
    return activated


def binarize_input(module: nn.Module, binarizer: InputBinarizer | None = None) -> InputBinarizer:
    """Make a Conv2d binarize its input with an `InputBinarizer` (a new `rsign` at τ = 0 unless
    given), registered as the submodule `input_binarizer` (so the optimizer trains τ and
    `state_dict()` saves it) and applied by a forward pre-hook; a binarizer's RPReLU is applied
    to the conv's output by a forward hook."""
    if not supports_binary_input(module):
        raise ValueError(f"{type(module).__name__} cannot take binary inputs: only dense Conv2d layers "
                         f"(groups=1, zero padding, input channels a multiple of {BINARY_INPUT_CHANNEL_MULTIPLE}) "
                         "run as 1-bit convolutions")
    if has_binary_input(module):
        raise ValueError("the layer already binarizes its input")
    assert isinstance(module, nn.Conv2d)
    binarizer = binarizer or BinaryActivation(module.in_channels)
    channels = int(binarizer.get_config()["channels"])
    if channels != module.in_channels:
        raise ValueError(f"binarizer has {channels} channels, the layer takes {module.in_channels}")
    if binarizer.rprelu is not None and binarizer.rprelu.channels != module.out_channels:
        raise ValueError(f"RPReLU has {binarizer.rprelu.channels} channels, the layer gives {module.out_channels}")
    module.add_module(INPUT_BINARIZER, binarizer.to(module.weight.device).train(module.training))
    module.register_forward_pre_hook(_binarize_input_hook)
    if binarizer.rprelu is not None:
        module.register_forward_hook(_rprelu_hook)
    return binarizer


def has_binary_input(module: nn.Module) -> bool:
    return isinstance(getattr(module, INPUT_BINARIZER, None), InputBinarizer)


def input_binarizer(module: nn.Module) -> InputBinarizer:
    binarizer = getattr(module, INPUT_BINARIZER, None)
    if not isinstance(binarizer, InputBinarizer):
        raise ValueError(f"{type(module).__name__} does not binarize its input")  # noqa: TRY004 - bad input is a ValueError here
    return binarizer


def activation_quantizers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """`{layer name: quantizer config}` of every layer that binarizes its input."""
    return {name: input_binarizer(m).to_config() for name, m in model.named_modules() if has_binary_input(m)}

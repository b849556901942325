"""Binary input activations (core.binary.activation): forward values, the clipped STE, the
thresholds in checkpoints and resume states, which layers may take binary inputs, and NNCF's
scale-threshold binarizer (its scale's initialisation, gradients and round trips)."""
from __future__ import annotations

import copy
import json
from typing import get_args

import pytest
import torch
from torch import nn

from core.binary import (
    INPUT_BINARIZERS,
    BinaryActivation,
    RPReLU,
    ScaleThresholdActivation,
    activation_quantizer_from_config,
    activation_quantizers,
    binarize_input,
    binarize_module,
    binary_activation,
    has_binary_input,
    input_binarizer,
    new_input_binarizer,
    supports_binary_input,
)
from core.binary.fusion import FusedKernel, fusing
from core.checkpoint import (
    CheckpointError,
    ModelCard,
    load_state,
    pack_checkpoint,
    save_state,
    unpack_checkpoint,
)
from core.data import read_pennfudan, split_records
from core.job_spec import ActivationQuantizerName, PipelineConfig, Target
from core.paths import default_data_dir
from core.train import train_detector

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 8}


def test_forward_is_a_per_channel_heaviside_with_ties_at_zero() -> None:
    x = torch.tensor([[[[-1.0, 0.0]], [[0.5, 2.0]]]])  # [1, 2, 1, 2]
    threshold = torch.tensor([0.0, 0.5])
    out = binary_activation(x, threshold)
    # channel 0: x > 0; channel 1: x > 0.5 (x == τ gives 0, as OpenVINO's `x > threshold`)
    assert out.tolist() == [[[[0.0, 0.0]], [[0.0, 1.0]]]]


def test_straight_through_gradient_is_clipped_and_reaches_the_threshold() -> None:
    x = torch.tensor([[[[-2.0, -0.5, 0.5, 3.0]]]], requires_grad=True)  # [1, 1, 1, 4]
    threshold = torch.zeros(1, requires_grad=True)
    (binary_activation(x, threshold) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    # ½·1{|x - τ| ≤ 1}: only the two inner positions pass gradient
    assert x.grad.flatten().tolist() == [0.0, 1.0, 1.5, 0.0]
    assert threshold.grad.tolist() == [-2.5]


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold must be"):
        binary_activation(torch.zeros(1, 3, 4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="channels"):
        BinaryActivation(0)


def test_config_round_trip_and_unknown_names() -> None:
    quantizer = BinaryActivation(16)
    assert quantizer.to_config() == {"name": "rsign", "channels": 16} and quantizer.kind == "activation"
    again = activation_quantizer_from_config(json.loads(json.dumps(quantizer.to_config())))
    assert again.threshold.shape == (16,)
    with pytest.raises(ValueError, match="not an input binarizer"):
        activation_quantizer_from_config({"name": "sign"})
    with pytest.raises(ValueError, match="unknown quantizer"):
        activation_quantizer_from_config({"name": "nope", "channels": 16})


def test_only_dense_convs_with_a_multiple_of_8_inputs_take_binary_inputs() -> None:
    assert supports_binary_input(nn.Conv2d(16, 8, 3, padding=1))
    assert not supports_binary_input(nn.Conv2d(12, 8, 3))  # OpenVINO's 1-bit kernel packs 8 channels a byte
    assert not supports_binary_input(nn.Conv2d(16, 16, 3, groups=16))
    assert not supports_binary_input(nn.Linear(16, 4))
    with pytest.raises(ValueError, match="cannot take binary inputs"):
        binarize_input(nn.Conv2d(3, 8, 3))


def test_a_conv_with_binary_inputs_sees_only_zeros_and_ones() -> None:
    conv = nn.Conv2d(8, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    binarize_input(conv)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(conv(x), (x > 0).float().sum(dim=1, keepdim=True))
    assert has_binary_input(conv) and "input_binarizer.threshold" in conv.state_dict()
    with pytest.raises(ValueError, match="already"):
        binarize_input(conv)


def _model_with_binary_inputs() -> tuple[nn.Module, ModelCard]:
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    model = card.build().eval()
    for name in ("features.6.0", "neck.0"):
        layer = dict(model.named_modules())[name]
        binarize_module(layer, 1)
        binarize_input(layer)
        with torch.no_grad():
            layer.input_binarizer.threshold.uniform_(0.0, 0.2)
    return model, card


def test_checkpoints_store_the_thresholds_and_name_the_layers() -> None:
    model, card = _model_with_binary_inputs()
    served, served_card = unpack_checkpoint(pack_checkpoint(model, card))
    assert set(served_card.activation_quantizers) == {"features.6.0", "neck.0"}
    assert served_card.activation_quantizers["neck.0"] == {"name": "rsign", "channels": 64}
    assert activation_quantizers(served) == served_card.activation_quantizers
    original = dict(model.named_modules())["neck.0"].input_binarizer.threshold
    assert torch.equal(dict(served.named_modules())["neck.0"].input_binarizer.threshold, original)
    image = [torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        assert torch.allclose(model(image)[0]["scores"], served(image)[0]["scores"], atol=1e-6)


def test_resume_states_keep_binary_inputs() -> None:
    model, card = _model_with_binary_inputs()
    resumed = load_state(card, save_state(model))
    assert activation_quantizers(resumed) == activation_quantizers(model)
    assert torch.equal(resumed.state_dict()["neck.0.input_binarizer.threshold"],
                       model.state_dict()["neck.0.input_binarizer.threshold"])


def test_weights_only_checkpoints_are_unchanged() -> None:
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    model = card.build().eval()
    binarize_module(model.neck[0], 1)
    _, served_card = unpack_checkpoint(pack_checkpoint(model, card))
    assert served_card.activation_quantizers == {}
    restored = load_state(card, save_state(model))
    assert not any(has_binary_input(m) for m in restored.modules())


def test_a_card_naming_an_unknown_layer_is_refused() -> None:
    model, card = _model_with_binary_inputs()
    data = pack_checkpoint(model, card)
    size = int.from_bytes(data[:8], "little")
    header = data[8:8 + size].replace(b"features.6.0\\\": {", b"features.9.9\\\": {")
    assert header != data[8:8 + size]
    with pytest.raises(CheckpointError, match="unknown layer 'features.9.9'"):
        unpack_checkpoint(data[:8] + header + data[8 + size:])


# -- scale_threshold (NNCF) ------------------------------------------------------------
def test_scale_threshold_starts_its_scale_at_the_first_training_batch() -> None:
    x = torch.arange(2000, dtype=torch.float32).view(2, 10, 10, 10)  # 0 .. 1999
    quantizer = ScaleThresholdActivation(10).eval()
    assert quantizer.output_scale() == 1.0 and torch.equal(quantizer(x), (x > 0.5).float())  # eval: untouched
    quantizer.train()
    out = quantizer(x)
    assert quantizer.output_scale() == pytest.approx(1998.0)  # the smallest of the top 0.1 % (2 of 2000)
    assert torch.equal(out, (x > 999.0).float() * quantizer.output_scale())  # s·H(x - s·½)
    quantizer(2 * x)  # later batches leave it alone
    assert quantizer.output_scale() == pytest.approx(1998.0)


@pytest.mark.parametrize("fuse", [False, True], ids=["eager", "fused"])
def test_scale_threshold_gradients_are_nncfs(fuse: bool) -> None:
    quantizer = ScaleThresholdActivation(1).eval()  # s = 1, t = ½
    x = torch.tensor([[[[-0.5, 0.25, 0.75, 2.0]]]], requires_grad=True)
    with fusing(fuse):  # the backward keeps the forward's choice
        out = quantizer(x)
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    out.sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]  # 1{0 <= x <= s}
    # ∂/∂s: (out - x)/s where x <= s (negative x included, as NNCF's), 1 above: 0.5 - 0.25 + 0.25 + 1;
    # ∂/∂log s = s·∂/∂s with s = 1
    assert quantizer.log_scale.grad.item() == pytest.approx(0.5 - 0.25 + 0.25 + 1.0)
    # ∂/∂t = -Σ 1{0 < x < s}, then through the sigmoid (slope ¼ at θ = 0)
    assert quantizer.threshold.grad.tolist() == [pytest.approx(-2 * 0.25)]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", sorted(INPUT_BINARIZERS))
def test_fused_binarizers_compute_what_the_eager_ones_do(name: str, memory_format: torch.memory_format) -> None:
    torch.manual_seed(0)
    binarizer = new_input_binarizer(name, 16).train()
    x = torch.relu(torch.randn(4, 16, 9, 7)).contiguous(memory_format=memory_format)
    x[0, 0, 0, :3] = 0.0  # the STEs' edges: ReLU's zeros
    binarizer(x)  # starts scale_threshold's scale on this batch
    results = []
    for fuse in (False, True):
        inputs = x.clone().requires_grad_()
        binarizer.zero_grad()
        with fusing(fuse):
            out = binarizer(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        assert inputs.grad is not None and inputs.grad.is_contiguous(memory_format=memory_format)
        results.append((out.detach(), inputs.grad, [p.grad for p in binarizer.parameters()]))
    (out, grad, params), (fused_out, fused_grad, fused_params) = results
    assert torch.equal(out, fused_out)
    torch.testing.assert_close(fused_grad, grad)
    for fused_param, param in zip(fused_params, params, strict=True):
        torch.testing.assert_close(fused_param, param)  # sums in another order: float rounding apart


def test_a_kernel_that_cannot_compile_runs_eagerly_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    def doubled_where_positive(x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype) * 2 * x

    kernel = FusedKernel(doubled_where_positive)
    x = torch.randn(2, 3, 5, 5)
    # a real failure: Inductor looks for a C++ compiler that is not there (no cached build to reuse)
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        out = kernel.fused(x)
    assert kernel.failed and torch.equal(out, doubled_where_positive(x))
    assert "could not fuse" in caplog.text and "doubled_where_positive" in caplog.text
    assert torch.equal(kernel.fused(x), out)  # eager from then on, without another try


def _pednet_with_binary_neck(binarizer: str, *, rprelu: bool = False) -> tuple[nn.Module, ModelCard, nn.Module]:
    """A tiny PedNet whose `neck.0` has 1-bit weights and inputs (binarizer `binarizer`, with an
    RPReLU on its output under `rprelu`), and that layer."""
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    model = card.build().eval()
    layer = model.get_submodule("neck.0")
    binarize_module(layer, 1)
    binarize_input(layer, new_input_binarizer(binarizer, layer.in_channels,
                                              rprelu_channels=layer.out_channels if rprelu else None))
    return model, card, layer


def test_scale_threshold_checkpoints_and_resumes_with_its_scale() -> None:
    model, card, layer = _pednet_with_binary_neck("scale_threshold")
    with torch.no_grad():
        layer.input_binarizer.log_scale.fill_(0.7)
        layer.input_binarizer.threshold.uniform_(-1.0, 1.0)
    served, served_card = unpack_checkpoint(pack_checkpoint(model, card))
    assert served_card.activation_quantizers == {"neck.0": {"name": "scale_threshold", "channels": 64}}
    binarizer = input_binarizer(dict(served.named_modules())["neck.0"])
    assert binarizer.output_scale() == pytest.approx(float(torch.tensor(0.7).exp()))
    assert torch.equal(binarizer.export_threshold(), layer.input_binarizer.export_threshold())
    resumed = input_binarizer(dict(load_state(card, save_state(model)).named_modules())["neck.0"])
    assert resumed.output_scale() == binarizer.output_scale()
    image = [torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        assert torch.allclose(model(image)[0]["scores"], served(image)[0]["scores"], atol=1e-6)


def test_the_job_config_names_exactly_the_registered_input_binarizers() -> None:
    assert set(get_args(ActivationQuantizerName)) == set(INPUT_BINARIZERS)
    for name in INPUT_BINARIZERS:
        config = PipelineConfig(target=Target(min_compression_ratio=2.0), activation_bits=1, activation_quantizer=name)
        assert new_input_binarizer(config.activation_quantizer, 8).to_config() == {"name": name, "channels": 8}
    binary = PipelineConfig(target=Target(min_compression_ratio=2.0), activation_bits=1)
    assert (binary.activation_quantizer, binary.binarizer_lr_multiplier) == ("scale_threshold", 100.0)
    weights_only = PipelineConfig(target=Target(min_compression_ratio=2.0))
    assert (weights_only.activation_quantizer, weights_only.binarizer_lr_multiplier) == ("rsign", 1.0)
    with pytest.raises(ValueError, match="activation_quantizer scale_threshold needs activation_bits 1"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), activation_quantizer="scale_threshold")
    with pytest.raises(ValueError, match="unknown activation quantizer 'sign'"):
        new_input_binarizer("sign", 8)


def test_the_binarizer_learning_rate_multiplier_moves_only_the_binarizers() -> None:
    """One AdamW step moves each parameter by about the learning rate: with a multiplier of 100 the
    thresholds move 100 times as far, and every other parameter exactly as far as without it."""
    train, _ = split_records(read_pennfudan(default_data_dir()))
    start, _, _ = _pednet_with_binary_neck("rsign")
    moved = {}
    for multiplier in (1.0, 100.0):
        model = copy.deepcopy(start)
        train_detector(model, train[:4], iterations=1, batch_size=2, learning_rate=1e-4, seed=0,
                       binarizer_lr_multiplier=multiplier)
        moved[multiplier] = {k: (v - start.state_dict()[k]).abs() for k, v in model.state_dict().items()
                             if v.is_floating_point()}
    key = "neck.0.input_binarizer.threshold"
    assert moved[1.0][key].max() > 0
    ratio = moved[100.0][key].sum() / moved[1.0][key].sum()
    assert 50 < float(ratio) < 150
    for k in moved[1.0]:
        if k != key and "running" not in k:
            assert torch.allclose(moved[1.0][k], moved[100.0][k], atol=1e-7), k


# -- RPReLU (ReActNet) ------------------------------------------------------------------
def test_rprelu_starts_as_the_identity_and_learns_a_kink() -> None:
    rprelu = RPReLU(3)
    y = torch.randn(2, 3, 4, 4)
    assert torch.equal(rprelu(y), y)
    with torch.no_grad():
        rprelu.shift_in.copy_(torch.tensor([0.5, 0.0, -0.5]))
        rprelu.slope.copy_(torch.tensor([0.25, 0.0, 1.0]))
        rprelu.shift_out.copy_(torch.tensor([0.1, 0.0, 0.0]))
    out = rprelu(torch.tensor([0.0, -1.0, 2.0]).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(out, torch.tensor([0.25 * -0.5 + 0.1, 0.0, 2.5]))
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        RPReLU(0)


def test_rprelu_follows_the_binary_conv_and_checkpoints_with_it() -> None:
    plain, card, _ = _pednet_with_binary_neck("rsign")
    model, _, layer = _pednet_with_binary_neck("rsign", rprelu=True)
    image = [torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        assert torch.equal(model(image)[0]["scores"], plain(image)[0]["scores"])  # identity at the start
        layer.input_binarizer.rprelu.shift_in.uniform_(-0.5, 0.5)
        layer.input_binarizer.rprelu.slope.uniform_(0.0, 0.5)
        assert not torch.equal(model(image)[0]["scores"], plain(image)[0]["scores"])
    served, served_card = unpack_checkpoint(pack_checkpoint(model, card))
    assert served_card.activation_quantizers == {"neck.0": {"name": "rsign", "channels": 64, "rprelu_channels": 32}}
    resumed = load_state(card, save_state(model))
    with torch.no_grad():
        for other in (served, resumed.eval()):
            assert torch.allclose(model(image)[0]["scores"], other(image)[0]["scores"], atol=1e-6)
    with pytest.raises(ValueError, match="RPReLU has 5 channels, the layer gives 32"):
        binarize_input(card.build().get_submodule("neck.0"), new_input_binarizer("rsign", 64, rprelu_channels=5))


def test_rprelu_is_a_binary_input_option() -> None:
    config = PipelineConfig(target=Target(min_compression_ratio=2.0), activation_bits=1, rprelu=True)
    assert config.rprelu
    with pytest.raises(ValueError, match="rprelu needs activation_bits 1"):
        PipelineConfig(target=Target(min_compression_ratio=2.0), rprelu=True)

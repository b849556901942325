"""Export to OpenVINO IR (core.export.openvino): the 1-bit kernel really runs, and the IR
computes what the PyTorch model computes.

What makes OpenVINO produce and run `BinaryConvolution` (and what makes it fall back or go
wrong) is written down in core/export/openvino.py's module docstring; these tests pin the
parts FlexBin relies on.
"""
from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.binary import binarize_input, binarize_module
from core.checkpoint import ModelCard, pack_checkpoint, unpack_checkpoint
from core.export import runtime
from core.export.openvino import (
    BINARY_WEIGHTS,
    BINARY_WEIGHTS_ACTIVATIONS,
    FLOAT,
    LAYER_NODE_PREFIX,
    export_checkpoint,
    runtime_layer_precision,
)

CARD = {"architecture": "flexbin_pednet", "num_classes": 2, "input_size": 64, "width": 8}


def _random_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


def binarized_pednet(weights_only: tuple[str, ...] = (), with_inputs: tuple[str, ...] = ()) -> bytes:
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    model = card.build().eval()
    _random_batchnorm(model, 1)
    modules = dict(model.named_modules())
    for name in weights_only + with_inputs:
        binarize_module(modules[name], 1)
    for name in with_inputs:
        binarize_input(modules[name])
        with torch.no_grad():
            modules[name].input_binarizer.threshold.uniform_(0.0, 0.3)
    return pack_checkpoint(model, card)


def torch_heads(model: nn.Module, canvas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """What the exported PedNet graph computes, in PyTorch: normalise, network, peak-masked heatmap."""
    with torch.no_grad():
        logits, regression = model._heads((canvas - model.mean) / model.std)
        heat = logits.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    return peaks.numpy(), regression.numpy()


def test_a_binary_activation_layer_runs_as_a_1bit_convolution() -> None:
    """The proof: one conv with binary weights and inputs, exported and compiled on the CPU, is a
    BinaryConvolution executed in u1 (a float fallback fails this), and the model's outputs equal
    the PyTorch forward pass."""
    data = binarized_pednet(with_inputs=("features.6.0",))
    export = export_checkpoint(data)
    compiled = ov.Core().compile_model(export.model, "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                             "INFERENCE_PRECISION_HINT": "f32"})
    runtime_nodes = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = {k: v.astype(str) for k, v in node.get_rt_info().items()}
        for original in info["originalLayersNames"].split(","):
            if original == LAYER_NODE_PREFIX + "features.6.0#0":
                runtime_nodes[info["layerType"]] = info["runtimePrecision"]
    assert runtime_nodes == {"BinaryConvolution": "u1"}
    assert runtime_layer_precision(compiled)["features.6.0"] == BINARY_WEIGHTS_ACTIVATIONS

    model, _ = unpack_checkpoint(data)
    canvas = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    heat, regression = torch_heads(model, canvas)
    result = compiled(canvas.numpy())
    assert np.allclose(result["heatmap"], heat, atol=1e-5)
    assert np.allclose(result["regression"], regression, atol=1e-4)


def convolution_weight_source(node: ov.Node) -> tuple[str, ov.Type]:
    """(friendly name, element type of the constant its weights come from, through Convert and
    the per-channel affine)."""
    source = node.input_value(1).get_node()
    while source.get_type_name() in ("Convert", "Multiply", "Subtract"):
        source = source.input_value(0).get_node()
    return node.get_friendly_name(), source.get_element_type()


def test_every_binary_activation_layer_is_1bit_and_binary_weights_are_stored_at_1bit_exactly() -> None:
    inputs = ("features.5.0", "features.6.0", "features.7.0", "neck.0")
    data = binarized_pednet(weights_only=("features.3.0", "features.4.0"), with_inputs=inputs)
    export = export_checkpoint(data)
    assert {n for n, p in export.layers.items() if p == BINARY_WEIGHTS_ACTIVATIONS} == set(inputs)
    assert {n for n, p in export.layers.items() if p == BINARY_WEIGHTS} == {"features.3.0", "features.4.0"}
    assert export.layers["features.0.0"] == FLOAT
    # every binary layer's weights are a u1 constant in the IR (packed signs), not int8 or float copies
    u1_sources = {convolution_weight_source(node) for node in export.model.get_ordered_ops()
                  if node.get_type_name() in ("Convolution", "BinaryConvolution")}
    layers_with_u1 = {name.split("#")[0].removeprefix(LAYER_NODE_PREFIX) for name, kind in u1_sources if kind == ov.Type.u1}
    assert layers_with_u1 == set(inputs) | {"features.3.0", "features.4.0"}
    constants = {n.get_element_type() for n in export.model.get_ordered_ops() if n.get_type_name() == "Constant"}
    assert ov.Type.i8 not in constants

    detector = export.detector()
    compiled = detector.compiled([2, 3, 64, 48])  # reshaped: batch of 2, a 64 x 48 canvas
    runs_as = runtime_layer_precision(compiled)
    assert {n for n, p in runs_as.items() if p == BINARY_WEIGHTS_ACTIVATIONS} == set(inputs)
    model, _ = unpack_checkpoint(data)
    canvas = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    heat, regression = torch_heads(model, canvas)
    result = detector.infer(canvas.numpy())
    assert np.allclose(result["heatmap"], heat, atol=1e-5)
    assert np.allclose(result["regression"], regression, atol=1e-4)


def test_the_command_line_exports_nncf_int8_with_1bit_layers_kept(tmp_path) -> None:
    """`python -m core export --calibrate N` writes what `?format=openvino-int8` serves: NNCF int8
    calibrated on N training images, the 1-bit conv still 1-bit, the binary-weight conv int8."""
    from core.__main__ import main
    from core.export.int8 import is_int8, runtime_precisions
    from core.export.openvino import OpenVinoExport

    checkpoint, out = tmp_path / "checkpoint.safetensors", tmp_path / "int8.zip"
    checkpoint.write_bytes(binarized_pednet(weights_only=("features.3.0",), with_inputs=("features.5.0",)))
    main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--calibrate", "4"])
    export = OpenVinoExport.from_zip(out.read_bytes())
    assert export.spec["quantization"]["method"] == "nncf.quantize"
    assert export.spec["quantization"]["calibration_images"] == 4
    compiled = export.detector().compiled([1, 3, 64, 64])
    precisions = runtime_precisions(compiled)
    assert precisions[("BinaryConvolution", "u1")] == 1
    assert sum(n for (kind, precision), n in precisions.items() if kind == "Convolution" and is_int8(precision)) >= 2
    # the binary-weight conv, stored at 1 bit in the export, is an int8 convolution here
    assert runtime_layer_precision(compiled)["features.3.0"] == "int8"


def test_int8_calibrates_on_images_whose_canvas_is_smaller_than_the_export_input() -> None:
    """PedNet's canvas follows the image (a multiple of 16), but NNCF runs the export at its static
    input shape: a wide image's canvas is padded further, as a batch with a larger image pads it."""
    from core.export.int8 import calibration_inputs, quantize_int8

    export = export_checkpoint(binarized_pednet(with_inputs=("features.5.0",)))
    wide = np.random.default_rng(0).random((3, 100, 300), dtype=np.float32)  # resized to 21 x 64: a 32 x 64 canvas
    (canvas,) = calibration_inputs([wide], export.spec)
    assert canvas.shape == (1, 3, 64, 64)
    assert np.allclose(canvas[0, :, 21:, :], np.array(export.spec["input"]["pad_value"])[:, None, None])
    quantize_int8(export, [wide])


def test_unsupported_binary_inputs_are_refused_at_training_time() -> None:
    model = ModelCard.model_validate({**CARD, "width": 4}).build()
    with pytest.raises(ValueError, match="multiple of 8"):
        binarize_input(model.features[1][0])  # 4 input channels


def test_serving_precision_f32_bf16_or_the_faster_of_the_two() -> None:
    export = export_checkpoint(binarized_pednet(with_inputs=("features.5.0",)))
    xml, weights = export.ir_bytes()
    card = export.card_json()
    image = np.random.default_rng(0).random((3, 96, 128), dtype=np.float32)
    reference = runtime.Detector(xml, weights, card).detect([image])[0]
    auto = runtime.Detector(xml, weights, card, precision="auto")
    found = auto.detect([image])[0]
    (chosen,) = auto.chosen.values()
    has_bf16 = "BF16" in auto.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert chosen in (("f32", "bf16") if has_bf16 else ("f32",))
    if chosen == "f32":  # the same compiled model as the default: the same detections
        np.testing.assert_array_equal(found.scores, reference.scores)
    assert runtime.Detector(xml, weights, card, precision="bf16").detect([image])[0].boxes.shape[1:] == (4,)
    with pytest.raises(ValueError, match="precision must be f32, bf16 or auto"):
        runtime.Detector(xml, weights, card, precision="fp16")

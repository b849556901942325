"""Issue 19's speed ceiling and real int8 (core.export.one_bit, core.export.int8, core.export.ssd):
the all-1-bit pedestrian_adas_0002 still computes what PyTorch computes, NNCF int8 of a float
export runs int8 convolutions and detects what float detects, and a mixed export keeps its 1-bit
convolutions next to int8 ones. Small input (96x168) and few images: the tests are about the
graphs, not accuracy."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import openvino as ov
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from core.binary import binarize_input, binarize_module
from core.checkpoint import ModelCard, pack_checkpoint, unpack_checkpoint
from core.data import read_pennfudan, split_records
from core.export import runtime
from core.export.int8 import int8_export, is_int8, quantize_int8, runtime_precisions
from core.export.one_bit import binarize_all, float_model
from core.export.openvino import (
    BINARY_WEIGHTS_ACTIVATIONS,
    LAYER_NODE_PREFIX,
    export_checkpoint,
    runtime_layer_precision,
)
from core.paths import default_data_dir
from core.train import ImageCache
from tests.core.test_openvino_export import CARD, torch_heads

HEIGHT, WIDTH = 96, 168
IMAGES = 6
BINARY_INPUT_LAYERS = 41  # every dense conv of pedestrian_adas_0002 but conv1 (3 input channels)


@pytest.fixture(scope="module")
def adas() -> dict:
    model, card = float_model(HEIGHT, WIDTH)
    train, val = split_records(read_pennfudan(default_data_dir()))
    cache = ImageCache()
    return {"model": model, "card": card, "float": export_checkpoint(pack_checkpoint(model, card)),
            "train": [cache.image(r).numpy() for r in train[:IMAGES]],
            "val": [cache.image(r).numpy() for r in val[:IMAGES]]}


@pytest.fixture(scope="module")
def all_one_bit(adas: dict) -> dict:
    """Every eligible conv 1-bit, thresholds uniform in [0, 0.3) (not 0: the bits must depend on
    the input for the comparison to mean something, as in test_openvino_export.py)."""
    model = copy.deepcopy(adas["model"])
    layers = binarize_all(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in layers:
            threshold = model.get_submodule(name).input_binarizer.threshold
            threshold.copy_(torch.rand(threshold.shape, generator=generator) * 0.3)
    return {"model": model.eval(), "layers": layers, "export": export_checkpoint(pack_checkpoint(model, adas["card"]))}


def _compiled(model: ov.Model) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", runtime.compile_config(1))


def _network_outputs(export_model: ov.Model) -> ov.Model:
    """The export with the network's concatenated box codes and class logits as extra outputs
    (the inputs of its post-processing: DetectionOutput <- Reshape <- loc; <- Reshape <-
    Transpose <- Softmax <- Transpose <- conf)."""
    model = export_model.clone()
    detection = next(n for n in model.get_ordered_ops() if n.get_type_name() == "DetectionOutput")
    loc = detection.input_value(0).get_node().input_value(0)
    conf = detection.input_value(1).get_node()
    for _ in range(3):
        conf = conf.input_value(0).get_node()
    model.add_outputs([loc, conf.input_value(0)])
    return model


def test_the_all_1bit_export_fuses_and_computes_what_torch_computes(adas: dict, all_one_bit: dict) -> None:
    export, model = all_one_bit["export"], all_one_bit["model"]
    assert len(all_one_bit["layers"]) == BINARY_INPUT_LAYERS
    compiled = _compiled(_network_outputs(export.model))
    runs_as = runtime_layer_precision(compiled)
    assert sum(p == BINARY_WEIGHTS_ACTIVATIONS for p in runs_as.values()) == BINARY_INPUT_LAYERS
    # post-processing is one DetectionOutput (no traced NMS: NonZero, If, TopK), no softmax over an axis of 2
    kinds = {n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()}
    assert "DetectionOutput" in kinds and not kinds & {"NonZero", "If", "TopK", "NonMaxSuppression"}

    spread = []
    for image in adas["val"][:2]:
        canvas = runtime.canvas_batch([runtime.prepare(image, export.spec)], export.spec)
        result = compiled(canvas)
        with torch.no_grad():
            loc, conf, _ = model.raw_outputs((torch.from_numpy(canvas) * 255.0).flip(1))
        # 1-bit convs are integer-exact; the float parts (conv1, depthwise, affine) round differently
        np.testing.assert_allclose(result[1], loc.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(result[2], conf.numpy(), atol=1e-4, rtol=1e-4)
        spread.append(loc.numpy())
    assert np.abs(spread[0] - spread[1]).max() > 0.1, "the outputs must depend on the input"


def test_nncf_int8_of_a_float_export_runs_int8_and_detects_what_float_detects(adas: dict) -> None:
    int8 = int8_export(adas["float"], adas["train"])
    precisions = runtime_precisions(_compiled(int8.model))
    assert precisions and all(is_int8(p) for (_, p) in precisions), precisions
    ours = adas["float"].detector().detect(adas["val"])
    theirs = int8.detector().detect(adas["val"])
    confident = 0
    for a, b in zip(ours, theirs, strict=True):
        # Tolerance: every float detection above 0.5 has an int8 one at IoU >= 0.6 whose score is
        # within 0.15 (measured on 32 validation images at 192x336: IoU >= 0.77, |diff| <= 0.074).
        for box, score in zip(a.boxes[a.scores > 0.5], a.scores[a.scores > 0.5]):
            confident += 1
            iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(b.boxes))[0].numpy()
            assert iou.size and iou.max() >= 0.6
            assert abs(float(b.scores[iou.argmax()]) - float(score)) <= 0.15
    assert confident >= 3, "the float model must detect someone for this test to mean anything"


def test_a_mixed_export_keeps_1bit_convolutions_and_runs_the_others_in_int8(adas: dict, all_one_bit: dict) -> None:
    """By default the convs a 1-bit conv feeds stay float (their u8 quantizer could not fuse);
    `int8_after_1bit=True` quantizes every other conv."""
    mixed = quantize_int8(all_one_bit["export"], adas["train"][:2])
    precisions = runtime_precisions(_compiled(mixed))
    assert precisions[("BinaryConvolution", "u1")] == BINARY_INPUT_LAYERS
    int8 = sum(n for (kind, p), n in precisions.items() if kind == "Convolution" and is_int8(p))
    floats = sum(n for (kind, p), n in precisions.items() if p == "f32")
    assert int8 >= 1 and floats >= 1, precisions  # conv1 (fed by the input) int8, the depthwise convs float
    everywhere = runtime_precisions(_compiled(quantize_int8(all_one_bit["export"], adas["train"][:2],
                                                            int8_after_1bit=True)))
    assert everywhere[("BinaryConvolution", "u1")] == BINARY_INPUT_LAYERS
    assert sum(n for (kind, p), n in everywhere.items() if p == "f32") == 0, everywhere


def test_consecutive_1bit_layers_fold_scale_bias_and_threshold_into_one_node() -> None:
    """A 1-bit conv feeding another: OpenVINO folds the producer's scale and bias (BatchNorm with
    negative scales too) and the consumer's threshold into one BinaryConvolution that writes
    bits (the consumer's binarizing FakeQuantize is fused, not standalone), and stays exact."""
    torch.manual_seed(0)
    card = ModelCard.model_validate(CARD)
    model = card.build().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                sign = torch.where(torch.rand(m.num_features, generator=generator) > 0.5, 1.0, -1.0)
                m.weight.copy_((torch.rand(m.num_features, generator=generator) + 0.5) * sign)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
    chain = ("features.5.0", "features.6.0", "features.7.0")
    for name in chain:
        binarize_module(model.get_submodule(name), 1)
        binarize_input(model.get_submodule(name))
        with torch.no_grad():
            model.get_submodule(name).input_binarizer.threshold.uniform_(0.0, 0.3, generator=generator)
    packed = pack_checkpoint(model, card)
    compiled = _compiled(export_checkpoint(packed).model)
    fused = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = {k: v.astype(str) for k, v in node.get_rt_info().items()}
        for original in info["originalLayersNames"].split(","):
            if original.startswith(LAYER_NODE_PREFIX) and original.endswith("/binarize"):
                fused[original] = info["layerType"]
    for producer, consumer in itertools.pairwise(chain):
        assert fused[f"{LAYER_NODE_PREFIX}{consumer}#0/binarize"] == "BinaryConvolution", (producer, fused)
    served, _ = unpack_checkpoint(packed)
    canvas = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    heat, regression = torch_heads(served, canvas)
    result = compiled(canvas.numpy())
    np.testing.assert_allclose(result["heatmap"], heat, atol=1e-5)
    np.testing.assert_allclose(result["regression"], regression, atol=1e-4)

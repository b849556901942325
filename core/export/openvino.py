"""FlexBin checkpoint -> OpenVINO IR, with binary layers as exact 1-bit weights or real 1-bit convolutions.

What the IR holds (`export_openvino`):
- **Float layers**: BatchNorm folded into the convolution (`W·γ/σ`, `(b - μ)·γ/σ + β`), float32.
- **Binary-weight layers** (1 bit, float inputs): `α·sign(W)` is one bit per weight and a float
  scale per output channel, so the IR stores `Convert(Constant(u1 [W > 0]))·2α − α` with
  α = α·γ/σ (1 bit per weight instead of 32; until 2026-12 it was `Convert(i8 ±1)·α`, 8 bits).
  OpenVINO's CPU plugin folds that back to float32 weights at compile time and runs a float
  convolution; `core.export.int8` (NNCF) makes them u8 x i8 convolutions, exactly, by
  quantizing their inputs (`?format=openvino-int8`), and that file stores them in 8 bits.
  k-bit layers (k > 1) stay float32.
- **Binary-activation layers** (`core.binary.activation`): a 2-level `FakeQuantize(x, τ, τ, 0, 1)`
  (per-channel threshold τ, output levels {0, 1}) feeding a `BinaryConvolution` (XNOR-popcount,
  weights `sign(W)` packed 1 bit each, `pad_value = -1`), then `(y + ΣB)·½·α·γ/σ (+ bias)`.
  BinaryConvolution computes `conv(2a - 1, B)` with -1 padding, which equals `2·conv(a, B) - ΣB`
  for the zero-padded {0, 1} input a that training used.

What makes OpenVINO 2026.4's CPU plugin run `BinaryConvolution` as a 1-bit kernel
(`jit_avx512_u1` / `jit_avx2_u1`; checked in tests/core/test_openvino_export.py, which asserts
the runtime layer type of every binary-activation layer), found by experiment:
- static input shapes (a dynamic dimension fails to compile: "Unsupported operation");
- the FakeQuantize's input_low == input_high (= the threshold) and output levels exactly 0 and 1:
  output (-1, +1) compiles but the u1 reorder reads every -1 as a set bit (wrong results), and
  input_low != input_high binarizes at the wrong point;
- input channels a multiple of 8 (other counts compile and give wrong results; C_in = 3 does not
  compile): `core.binary.activation.supports_binary_input` refuses them at training time;
- weights packed LSB first within each byte (`np.packbits(..., bitorder="little")`);
- anything dense: strides, dilation, kernel sizes 1/3/5, bias, batch > 1, 1 or 2 threads,
  output channels not a multiple of 8, and an f32 or bf16 precision hint all stay exact.
`ov.convert_model` alone does not produce it from a traced torch graph: its offline passes fold
the per-channel scale into the ±1 weights, so the convolution stops being binary. Hence the
graph surgery below, on convolutions found by the names the PyTorch frontend gives them
(`__module.<path>/aten::_convolution/Convolution`; BatchNorm is folded *before* tracing so that
no fusion renames them).

What the CPU plugin fuses around the 1-bit layers (OpenVINO 2026.4, read from
`compiled.get_runtime_model()`; bench/ceiling.py and tests/core/test_ceiling_export.py):
- a `BinaryConvolution` takes its `(y + ΣB)·½·scale` affine, bias and ReLU as post-ops, and, when
  it is the only consumer, the next layer's binarizing FakeQuantize as its last post-op (it then
  writes bits): OpenVINO's own transformations fold the affine into that FakeQuantize's
  per-channel thresholds (negative BatchNorm scales included), so consecutive 1-bit layers need
  no Subtract / Multiply in between and no folding here;
- a binarizing FakeQuantize never fuses into a float or int8 (depthwise) convolution (the plugin
  excludes binarization from their post-ops), so after a depthwise conv it runs standalone (a
  per-pixel kernel: 25-40 ns per pixel on an AVX2 core). Alternatives measured and dropped: a
  2-level FakeQuantize with input_low < input_high fuses into the depthwise conv, but the plugin
  then inserts a reference f32 -> u1 Reorder, slower than the standalone binarization; u8 data
  into a BinaryConvolution compiles and computes wrong results;
- a `BinaryConvolution` fuses no u8 quantizer either, so int8 after a 1-bit conv costs a
  standalone FakeQuantize (`core.export.int8`, `int8_after_1bit`).
pedestrian_adas_0002's post-processing is OpenVINO's DetectionOutput, not a traced NMS
(`core.export.ssd`).

What the IR computes end to end (input, outputs, post-processing) is documented in
`core.export.runtime`, which also runs it, and travels in the zip as `flexbin_detect.py`.
"""
from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.binary import (
    has_binary_input,
    input_binarizer,
    is_binarized,
    strip_binarization,
)
from core.binary.activation import INPUT_BINARIZER
from core.checkpoint import ModelCard, unpack_checkpoint
from core.detection_metrics import DetectionMetrics, evaluate_detections
from core.export import runtime
from core.export.ssd import OUTPUT_NAME as SSD_OUTPUT
from core.export.ssd import (
    AdasNetworkExport,
    append_detection_output,
    detection_output_spec,
    fold_input_normalisation,
)
from core.models.adas import PedestrianAdas
from core.models.pednet import STRIDE, PedNet

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
INPUT_NAME = "image"
RUNTIME_FILENAME = "flexbin_detect.py"
LAYER_NODE_PREFIX = "flexbin:"
"""Friendly name of every exported Conv2d node: `flexbin:<layer>#<k>` for the k-th call of the
layer (an FPN head runs once per level; OpenVINO would otherwise suffix duplicate names itself)."""
GENERIC_PAD_VALUE = (0.0, 0.0, 0.0)

# What a layer is (the checkpoint), and how the compiled model runs it (`runtime_layer_precision`).
FLOAT, BINARY_WEIGHTS, BINARY_WEIGHTS_ACTIVATIONS, INT8 = (
    "float", "binary_weights", "binary_weights_activations", "int8")


class ExportError(ValueError):
    """A model that cannot be exported as asked; the message names the layer and the reason."""


@dataclass
class OpenVinoExport:
    """An exported detector: the `openvino.Model`, the source card and the `export` section
    (`spec`: input, outputs, post-processing; see `core.export.runtime`), and each Conv2d /
    Linear layer's precision (`float`, `binary_weights`, `binary_weights_activations`)."""

    model: Any  # openvino.Model
    card: ModelCard
    spec: dict[str, Any]
    layers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_zip(cls, data: bytes) -> OpenVinoExport:
        """The export a FlexBin OpenVINO zip holds (`zip_bytes`): its IR, card and `export` spec.
        ValueError when the bytes are not such a zip."""
        import openvino as ov

        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                xml, weights = zf.read("model.xml"), zf.read("model.bin")
                card_json = json.loads(zf.read("card.json"))
            spec = card_json.pop("export")
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ValueError(f"not a FlexBin OpenVINO zip: {exc}") from None
        model = ov.Core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
        return cls(model, ModelCard.model_validate(card_json), spec, dict(spec.get("layers", {})))

    def card_json(self) -> dict[str, Any]:
        return {**self.card.model_dump(mode="json"), "export": self.spec}

    def ir_bytes(self) -> tuple[bytes, bytes]:
        """(model.xml, model.bin) as `openvino.save_model` writes them (float32 weights: FP16
        compression would move the binarization thresholds)."""
        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.xml"
            ov.save_model(self.model, path, compress_to_fp16=False)
            return path.read_bytes(), path.with_suffix(".bin").read_bytes()

    def zip_bytes(self) -> bytes:
        """A zip with model.xml, model.bin, card.json, README.txt and flexbin_detect.py: all a
        user needs to run the detector with plain OpenVINO."""
        xml, weights = self.ir_bytes()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("model.xml", xml)
            zf.writestr("model.bin", weights)
            zf.writestr("card.json", json.dumps(self.card_json(), indent=2, sort_keys=True))
            zf.writestr("README.txt", readme(self.card_json()))
            zf.writestr(RUNTIME_FILENAME, Path(runtime.__file__).read_text())
        return buf.getvalue()

    def detector(self, *, threads: int = 1, precision: str = "f32") -> runtime.Detector:
        xml, weights = self.ir_bytes()
        return runtime.Detector(xml, weights, self.card_json(), threads=threads, precision=precision)


# -- entry points ---------------------------------------------------------------------
def export_checkpoint(data: bytes) -> OpenVinoExport:
    """Export a packed checkpoint (`core.checkpoint.pack_checkpoint` bytes)."""
    model, card = unpack_checkpoint(data)
    return export_openvino(model, card)


def export_openvino(model: nn.Module, card: ModelCard) -> OpenVinoExport:
    """Export `model` (an unpacked checkpoint, or a model in training form whose binarized layers
    are still parametrized) as described in the module docstring (int8: `core.export.int8`).

    Raises ExportError when a binary-activation layer cannot be exported as a 1-bit convolution.
    """
    import openvino as ov

    model = _inference_copy(model)
    binary_bits = dict(card.binary_layers)
    binary_inputs = {name for name, m in model.named_modules() if has_binary_input(m)}
    for name in binary_inputs:
        # the binarizer's output scale s folds into the weights: conv(s·a, W) = conv(a, s·W)
        module = model.get_submodule(name)
        assert isinstance(module, nn.Conv2d)  # only dense convs take binary inputs
        binarizer = input_binarizer(module)
        with torch.no_grad():
            module.weight.mul_(binarizer.output_scale())
        setattr(module, INPUT_BINARIZER, _ThresholdExport(binarizer.export_threshold(), binarizer.rprelu))
    units = _fold_batchnorm(model, binary_bits)
    wrapper, spec = _export_adapter(model, card, units)
    shape = spec["input"]["shape"]
    with torch.no_grad():
        # Traced here without torch's check pass (a second and third forward: ~40 % of the export
        # time of a small model); the parity tests check the graph instead.
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper, (torch.rand(*shape),), check_trace=False, strict=False)
        ov_model = ov.convert_model(traced, example_input=(torch.rand(*shape),), input=[tuple(shape)])
    if isinstance(wrapper, AdasNetworkExport):
        assert wrapper.priors is not None  # set by the traced forward
        ov_model = append_detection_output(ov_model, wrapper.priors, spec["postprocess"])
    _name_io(ov_model, spec)
    layers = {name: _precision(name, binary_bits, binary_inputs) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d | nn.Linear)}
    _rewrite_convolutions(ov_model, units, binary_inputs)
    ov_model.validate_nodes_and_infer_types()
    spec = {**spec, "layers": layers}
    return OpenVinoExport(ov_model, card, spec, layers)


def export_network(model: nn.Module, card: ModelCard) -> tuple[nn.Module, dict[str, Any]]:
    """The torch module the export traces, before BatchNorm folding and 1-bit rewriting (an
    inference copy of `model`: binarized layers hold their binarized weights as plain weights,
    wrapped for the graph's fixed input), and the `export` spec of its input and outputs: the
    same network on PyTorch, e.g. to time it against the IR."""
    return _adapter(_inference_copy(model), card)


def _precision(name: str, binary_bits: dict[str, int], binary_inputs: set[str]) -> str:
    if name in binary_inputs:
        return BINARY_WEIGHTS_ACTIVATIONS
    return BINARY_WEIGHTS if name in binary_bits else FLOAT


def _inference_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).cpu().eval()
    for module in model.modules():
        if is_binarized(module):
            strip_binarization(module)  # the binarized value becomes the plain weight
    return model


# -- BatchNorm folding ----------------------------------------------------------------
@dataclass
class _Unit:
    """A Conv2d after folding: `weight = scale[:, None, None, None] · signs` for 1-bit layers
    (signs ±1 float, scale α·γ/σ), `signs is None` for float and k-bit layers."""

    module: nn.Conv2d
    signs: Tensor | None = None
    scale: Tensor | None = None


def _fold_batchnorm(model: nn.Module, binary_bits: dict[str, int]) -> dict[str, _Unit]:
    """Fold every BatchNorm that directly follows a Conv2d in a Sequential into that conv; 1-bit
    layers keep their weight as an exact `scale · signs` product. A conv with an RPReLU on its
    output (`core.binary.activation.RPReLU`, applied before the BatchNorm) keeps its BatchNorm,
    which the trace then exports as its own (elementwise) ops."""
    names = {m: n for n, m in model.named_modules()}
    units: dict[str, _Unit] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        unit = _Unit(module)
        if binary_bits.get(name) == 1:
            w = module.weight.detach()
            unit.signs = torch.where(w >= 0, 1.0, -1.0)
            # W = α·sign(W) exactly (unpacked checkpoint): |W| is α in every position of a channel
            unit.scale = w.abs().flatten(1).amax(dim=1)
            if not torch.equal(unit.scale[:, None, None, None] * unit.signs, w):
                raise ExportError(f"layer {name!r} is marked 1-bit but its weight is not α·sign(W)")
        units[name] = unit
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (_, conv), (bn_key, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and _is_batchnorm(bn) and conv in names and not _has_rprelu(conv):
                _fold(units[names[conv]], bn)
                setattr(parent, bn_key, nn.Identity())
    return units


def _has_rprelu(conv: nn.Conv2d) -> bool:
    return getattr(getattr(conv, INPUT_BINARIZER, None), "rprelu", None) is not None


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) or type(module).__name__ == "FrozenBatchNorm2d"


@torch.no_grad()
def _fold(unit: _Unit, bn: Any) -> None:
    """Fold an eval-mode BatchNorm2d / FrozenBatchNorm2d (`bn`) into the unit's conv."""
    conv = unit.module
    eps = getattr(bn, "eps", 1e-5)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    s = gamma / torch.sqrt(bn.running_var + eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    if unit.signs is not None and unit.scale is not None:
        unit.scale = unit.scale * s
        weight = unit.scale[:, None, None, None] * unit.signs
    else:
        weight = conv.weight * s[:, None, None, None]
    conv.weight = nn.Parameter(weight.float(), requires_grad=False)
    conv.bias = nn.Parameter(((bias - bn.running_mean) * s + beta).float(), requires_grad=False)


class _ThresholdExport(nn.Module):
    """`(x > τ)` as plain ops, so the traced graph shows a Greater the rewrite can find (the
    training module's custom autograd function would not trace as such); the binarizer's RPReLU,
    if any, stays as it is (it traces as Subtract, PRelu, Add after the conv)."""

    def __init__(self, threshold: Tensor, rprelu: nn.Module | None = None) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.float().clone())
        self.rprelu = rprelu  # applied by the conv's forward hook when there is one

    def forward(self, x: Tensor) -> Tensor:
        threshold = self.get_buffer("threshold")
        return (x > threshold.view(1, -1, 1, 1)).to(x.dtype)


# -- per-architecture graph boundaries -------------------------------------------------
class _CenterNetExport(nn.Module):
    """PedNet from a prepared canvas to its raw CenterNet maps (decoding: core.export.runtime)."""

    def __init__(self, model: PedNet) -> None:
        super().__init__()
        self.model: Any = model  # Any: PedNet's mean / std buffers read as Tensor | Module to mypy

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = (image - self.model.mean) / self.model.std
        logits, regression = self.model._heads(x)
        heat = logits.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        return peaks, regression


class _DetectorExport(nn.Module):
    """Any torchvision-API detector, whole (its own transform and NMS in the graph), batch 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


class _AdasExport(nn.Module):
    """pedestrian_adas_0002 on an image already resized to its input (as Intel's IR takes it):
    the resize stays out of the graph, where it cost half of the forward at 192x336."""

    def __init__(self, model: PedestrianAdas) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model.detect_resized(image)[0]
        return out["boxes"], out["scores"], out["labels"]


def _export_adapter(model: nn.Module, card: ModelCard, units: dict[str, _Unit]) -> tuple[nn.Module, dict[str, Any]]:
    """What `export_openvino` traces, and the spec of the exported graph: `_adapter`'s, except
    for pedestrian_adas_0002, whose graph is the network (its pre-processing folded into conv1)
    followed by OpenVINO's DetectionOutput (`core.export.ssd`)."""
    wrapper, spec = _adapter(model, card)
    if not isinstance(model, PedestrianAdas):
        return wrapper, spec
    unit = next(u for u in units.values() if u.module is model.features["conv1"].conv)
    first = unit.module
    unit.signs, unit.scale = fold_input_normalisation(first, unit.signs, unit.scale)
    spec = {**spec, "outputs": [SSD_OUTPUT], "postprocess": detection_output_spec(model)}
    return AdasNetworkExport(model).eval(), spec


def _adapter(model: nn.Module, card: ModelCard) -> tuple[nn.Module, dict[str, Any]]:
    """The module that runs the whole detector on a prepared input (what bench/speed.py times in
    PyTorch) and the `export` spec of its input, outputs and post-processing."""
    size = card.input_size
    if isinstance(model, PedestrianAdas):
        h, w = model.input_height, model.input_width
        spec = {
            "format": EXPORT_FORMAT,
            "input": {"name": INPUT_NAME, "shape": [1, 3, h, w], "layout": "NCHW", "range": [0.0, 1.0],
                      "color": "RGB", "resize": "stretch", "antialias": True, "size": max(h, w), "height": h,
                      "width": w, "canvas": "fixed", "pad_value": list(GENERIC_PAD_VALUE), "max_batch": 1},
            "outputs": ["boxes", "scores", "labels"],
            "postprocess": {"kind": "detections"},
        }
        return _AdasExport(model).eval(), spec
    if isinstance(model, PedNet):
        spec = {
            "format": EXPORT_FORMAT,
            "input": {"name": INPUT_NAME, "shape": [1, 3, size, size], "layout": "NCHW", "range": [0.0, 1.0],
                      "color": "RGB", "resize": "longer_side", "size": size, "canvas": STRIDE,
                      "pad_value": [float(v) for v in model.get_buffer("mean").flatten()], "max_batch": None},
            "outputs": ["heatmap", "regression"],
            "postprocess": {"kind": "centernet", "stride": STRIDE, "score_thresh": model.score_thresh,
                            "nms_thresh": model.nms_thresh, "detections_per_img": model.detections_per_img},
        }
        return _CenterNetExport(model).eval(), spec
    # torchvision detectors: SSD resizes to a fixed size (stretching), the others keep the aspect
    fixed = getattr(getattr(model, "transform", None), "fixed_size", None)
    spec = {
        "format": EXPORT_FORMAT,
        "input": {"name": INPUT_NAME, "shape": [1, 3, size, size], "layout": "NCHW", "range": [0.0, 1.0],
                  "color": "RGB", "resize": "stretch" if fixed else "longer_side", "size": size,
                  "canvas": "fixed", "pad_value": list(GENERIC_PAD_VALUE), "max_batch": 1},
        "outputs": ["boxes", "scores", "labels"],
        "postprocess": {"kind": "detections"},
    }
    return _DetectorExport(model).eval(), spec


def _name_io(ov_model: Any, spec: dict[str, Any]) -> None:
    ov_model.inputs[0].get_tensor().set_names({spec["input"]["name"]})
    if len(ov_model.outputs) != len(spec["outputs"]):
        raise ExportError(f"the traced model has {len(ov_model.outputs)} outputs, expected {spec['outputs']}")
    for out, name in zip(ov_model.outputs, spec["outputs"]):
        out.get_tensor().set_names({name})


# -- graph surgery --------------------------------------------------------------------
def _layer_convolutions(ov_model: Any) -> dict[str, list[Any]]:
    """Convolution nodes by torch layer name (the PyTorch frontend names a traced conv
    `__module.model.<layer>/aten::_convolution/Convolution`; a layer called twice appears twice)."""
    found: dict[str, list[Any]] = {}
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        name = node.get_friendly_name()
        if name.startswith("__module.model.") and "/aten::_convolution/" in name:
            found.setdefault(name[len("__module.model."):].split("/aten::_convolution/")[0], []).append(node)
    return found


def _rewrite_convolutions(ov_model: Any, units: dict[str, _Unit], binary_inputs: set[str]) -> None:
    convs = _layer_convolutions(ov_model)
    for name in binary_inputs:
        if name not in convs:
            raise ExportError(f"binary-activation layer {name!r} was not found in the traced graph")
    for name, nodes in convs.items():
        unit = units.get(name)
        for k, node in enumerate(nodes):
            node_name = f"{LAYER_NODE_PREFIX}{name}#{k}"
            node.set_friendly_name(node_name)
            if unit is None or unit.signs is None or node.get_type_name() != "Convolution":
                continue
            if name in binary_inputs:
                _to_binary_convolution(name, node_name, node, unit)
            else:
                _to_one_bit_weights(node, unit)


def _constant(array: np.ndarray | np.generic) -> Any:
    import openvino.opset13 as ops

    return ops.constant(np.ascontiguousarray(array))


def _u1_constant(bits: np.ndarray, *, bitorder: Literal["big", "little"]) -> Any:
    """A u1 Constant of the boolean array `bits`, packed 8 to a byte in `bitorder` (what the op
    that reads it expects: BinaryConvolution little, Convert big)."""
    import openvino as ov

    tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(bits.shape)))
    tensor.data[:] = np.packbits(bits.reshape(-1), bitorder=bitorder)
    return ov.op.Constant(tensor)


def _to_one_bit_weights(node: Any, unit: _Unit) -> None:
    """weights <- Convert(u1 b)·2α − α, b = [sign(W) > 0]: α·sign(W) exactly (2α·1 − α = α and
    0 − α = −α in float), stored 1 bit per weight. `Convert` reads u1 constants most significant
    bit first (BinaryConvolution's weights are least significant bit first); the CPU plugin
    folds the chain into float32 weights at compile time, so the layer runs as the float
    convolution the i8 ±1 form gave, from a file 8x smaller."""
    import openvino.opset13 as ops

    assert unit.signs is not None and unit.scale is not None
    bits = _u1_constant(unit.signs.numpy() > 0, bitorder="big")
    alpha = unit.scale.numpy().astype(np.float32).reshape(-1, 1, 1, 1)
    weights = ops.subtract(ops.multiply(ops.convert(bits, "f32"), _constant(2 * alpha)), _constant(alpha))
    node.input(1).replace_source_output(weights.output(0))


def _to_binary_convolution(name: str, node_name: str, node: Any, unit: _Unit) -> None:
    """Replace `conv(Convert(x > τ), scale·B)` by `(BinaryConvolution(FQ01(x; τ), B) + ΣB)·½·scale`."""
    import openvino.opset1 as op1
    import openvino.opset13 as ops

    assert unit.signs is not None and unit.scale is not None
    convert = node.input_value(0).get_node()
    greater = convert.input_value(0).get_node() if convert.get_type_name() == "Convert" else None
    if greater is None or greater.get_type_name() != "Greater":
        raise ExportError(f"layer {name!r}: expected its input to be Convert(Greater(x, threshold)), found "
                          f"{convert.get_type_name()}")
    x = greater.input_value(0)
    threshold = greater.input_value(1).get_node()
    if threshold.get_type_name() != "Constant":
        raise ExportError(f"layer {name!r}: the binarization threshold is not a constant")
    conv = unit.module
    if conv.in_channels % 8:
        raise ExportError(f"layer {name!r}: {conv.in_channels} input channels; OpenVINO's 1-bit kernel "
                          "needs a multiple of 8")
    tau = threshold.get_data().astype(np.float32).reshape(1, -1, 1, 1)
    t = _constant(tau)
    fq = ops.fake_quantize(x, t, t, _constant(np.float32(0.0)), _constant(np.float32(1.0)), 2)
    fq.set_friendly_name(f"{node_name}/binarize")
    signs = unit.signs.numpy()
    strides = list(node.get_attributes()["strides"])
    pads_begin = list(node.get_attributes()["pads_begin"])
    pads_end = list(node.get_attributes()["pads_end"])
    dilations = list(node.get_attributes()["dilations"])
    binary = op1.binary_convolution(fq, _u1_constant(signs > 0, bitorder="little"), strides, pads_begin, pads_end,
                                    dilations, "xnor-popcount", -1.0)
    binary.set_friendly_name(node_name)
    sum_signs = signs.reshape(signs.shape[0], -1).sum(axis=1).astype(np.float32).reshape(1, -1, 1, 1)
    half_scale = (0.5 * unit.scale.numpy().astype(np.float32)).reshape(1, -1, 1, 1)
    out = ops.multiply(ops.add(binary, _constant(sum_signs)), _constant(half_scale))
    for target in list(node.output(0).get_target_inputs()):
        target.replace_source_output(out.output(0))


# -- what runs ------------------------------------------------------------------------
def runtime_layer_precision(compiled: Any) -> dict[str, str]:
    """How the compiled model runs each exported Conv2d: `binary_weights_activations` (a 1-bit
    BinaryConvolution), `int8` (an int8 convolution) or `float`, read from the runtime graph
    (`originalLayersNames` of every executed node holds the `flexbin:<layer>#<k>` names it
    fused); a layer called several times counts as 1-bit only if every call is."""
    found: dict[str, str] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in ("Convolution", "BinaryConvolution", "GroupConvolution", "Deconvolution"):
            continue
        precision = info["runtimePrecision"].astype(str)
        for original in info["originalLayersNames"].astype(str).split(","):
            if not original.startswith(LAYER_NODE_PREFIX) or original.endswith("/binarize"):
                continue
            layer = original[len(LAYER_NODE_PREFIX):].rsplit("#", 1)[0]
            if kind == "BinaryConvolution" and precision == "u1":
                runs_as = BINARY_WEIGHTS_ACTIVATIONS
            elif precision in ("i8", "u8"):
                runs_as = INT8
            else:
                runs_as = FLOAT
            # the least reduced precision of its calls: a fallback anywhere must show
            order = (BINARY_WEIGHTS_ACTIVATIONS, INT8, FLOAT)
            found[layer] = max(found.get(layer, runs_as), runs_as, key=order.index)
    return found


def measure_latency(export: OpenVinoExport, *, threads: int = 1, budget_s: float = 1.0) -> tuple[float, dict[str, str]]:
    """(median forward ms of the exported model at its static input shape on this CPU with
    `threads` threads, runtime precision per layer). About budget_s + a compile."""
    detector = export.detector(threads=threads)
    compiled = detector.compiled(export.spec["input"]["shape"])
    canvas = np.random.default_rng(0).random(export.spec["input"]["shape"], dtype=np.float32)
    request = compiled.create_infer_request()
    latency = runtime.median_forward_ms(lambda: request.infer([canvas]), budget_s=budget_s)
    return latency, runtime_layer_precision(compiled)


def detection_tensors(detections: Sequence[runtime.Detections]) -> list[dict[str, Tensor]]:
    """The runtime's detections as `core.detection_metrics.evaluate_detections` takes predictions."""
    return [{"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores)} for d in detections]


def evaluate_export(export: OpenVinoExport, images: Sequence[np.ndarray], truth: Sequence[Tensor], *,
                    threads: int = 1) -> DetectionMetrics:
    """MR^-2, AP@0.5 and MR-FPPI curve of the exported IR itself (f32, one image per inference,
    as `/detect` runs it) on RGB float32 [3, H, W] `images` in [0, 1] with boxes `truth`."""
    return evaluate_detections(detection_tensors(export.detector(threads=threads).detect(images)), truth)


def _original_layers(node: Any) -> list[str]:
    """The exported Conv2d layers a compiled node computes (`flexbin:<layer>#<k>` originals; a
    layer's `/binarize` FakeQuantize counts as that layer's)."""
    names = node.get_rt_info()["originalLayersNames"].astype(str).split(",")
    layers = {n[len(LAYER_NODE_PREFIX):].removesuffix("/binarize").rsplit("#", 1)[0]
              for n in names if n.startswith(LAYER_NODE_PREFIX)}
    return sorted(layers)


def layer_times(export: OpenVinoExport, *, threads: int = 1, runs: int = 20) -> dict[str, float]:
    """Milliseconds each exported Conv2d layer takes on this CPU: OpenVINO's per-node times
    (PERF_COUNT, a compile of its own so the latency timing is not slowed), median over `runs`
    inferences, each compiled node's time split over the layers it fused, a layer's standalone
    binarization included. Nodes of no layer (reorders, post-processing) are left out, so the
    times sum to less than the forward."""
    import openvino as ov

    config = {**runtime.compile_config(threads), "PERF_COUNT": True}
    compiled = ov.Core().compile_model(export.model, "CPU", config)
    owners = {node.get_friendly_name(): _original_layers(node) for node in compiled.get_runtime_model().get_ordered_ops()}
    canvas = np.random.default_rng(0).random(export.spec["input"]["shape"], dtype=np.float32)
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer([canvas])
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        request.infer([canvas])
        run: dict[str, float] = {}
        for info in request.profiling_info:
            layers = owners.get(info.node_name, [])
            for layer in layers:
                run[layer] = run.get(layer, 0.0) + info.real_time.total_seconds() * 1e3 / len(layers)
        per_run.append(run)
    return {layer: round(float(np.median([r.get(layer, 0.0) for r in per_run])), 4)
            for layer in sorted(set().union(*per_run))}


def layer_report(export: OpenVinoExport, runs_as: dict[str, str] | None,
                 times: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """`{layer: {"precision": what the checkpoint holds, "runs_as": what the compiled model runs,
    "ms": its measured time (`layer_times`)}}`."""
    runs_as, times = runs_as or {}, times or {}
    return {name: {"precision": precision, "runs_as": runs_as.get(name), "ms": times.get(name)}
            for name, precision in export.layers.items()}


def _resize_target(source: dict[str, Any]) -> str:
    if source.get("height") and source.get("width"):
        return f"{source['height']}x{source['width']} (height x width)"
    return f"{source['size']} px"


def readme(card: dict[str, Any]) -> str:
    spec = card["export"]
    source = spec["input"]
    lines = [
        f"FlexBin detector ({card['architecture']}) exported to OpenVINO IR (format {spec['format']}).",
        "",
        "Files: model.xml + model.bin (the IR), card.json (model card; its 'export' section describes",
        f"input, outputs and post-processing), {RUNTIME_FILENAME} (numpy + Pillow + openvino only).",
        "",
        f"Run it:  pip install openvino numpy pillow && python {RUNTIME_FILENAME} . image.jpg",
        "",
        f"Input '{source['name']}': float32 {source['shape']} (N, 3, H, W), RGB in [0, 1].",
        (f"  resize: {source['resize']} to {_resize_target(source)} (bilinear, half-pixel centres, "
         f"{'antialiased as torch interpolate(antialias=True)' if source.get('antialias') else 'no antialiasing'});"),
        f"  canvas: {source['canvas']} (pad bottom/right with {source['pad_value']}); the graph normalises.",
        f"  batch: {'any (reshape the model)' if source.get('max_batch') is None else source['max_batch']}.",
        f"Outputs: {', '.join(spec['outputs'])}; post-processing '{spec['postprocess']['kind']}': see the",
        f"docstring at the top of {RUNTIME_FILENAME}.",
        "",
        "Layers (float / binary_weights: +-1 weights x scale, stored 1 bit per weight, run as float",
        "convolutions / binary_weights_activations: 1-bit BinaryConvolution):",
        *[f"  {name}: {precision}" for name, precision in spec["layers"].items()],
        "",
        *(_quantization_lines(spec["quantization"]) if spec.get("quantization") else []),
        "Compile with INFERENCE_PRECISION_HINT=f32 for results equal to FlexBin's PyTorch model.",
    ]
    return "\n".join(lines) + "\n"


def _quantization_lines(quantization: dict[str, Any]) -> list[str]:
    """The zip README's account of an int8 file: which layers are int8 and which stayed float."""
    lines = [(f"Quantized: {quantization['method']} ({quantization['tool']}), calibrated on "
              f"{quantization.get('calibration_images', 'its')} training images. Every layer that is not 1-bit is "
              "int8")]
    if quantization.get("int8_after_1bit"):
        lines[0] += "."
    else:
        lines += ["except the convs a 1-bit conv feeds: they stay float, since their u8 quantizer could not fuse",
                  "into the 1-bit convolution."]
    if quantization["method"] != "nncf.quantize":
        lines.append(f"NNCF's accuracy control (max_drop {quantization['max_drop']}) may have left more layers float.")
    return [*lines, "BinaryConvolution layers and post-processing are untouched.", ""]


__all__: list[str] = [
    "BINARY_WEIGHTS", "BINARY_WEIGHTS_ACTIVATIONS", "FLOAT", "INT8", "ExportError", "OpenVinoExport",
    "export_checkpoint", "export_network", "export_openvino", "layer_report", "layer_times", "measure_latency",
    "runtime_layer_precision",
]

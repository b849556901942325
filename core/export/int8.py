"""Real int8 through NNCF's post-training quantization (issue 19), for any FlexBin export.

`quantize_int8(export, images)` runs `nncf.quantize` on the exported `openvino.Model`, calibrated
on images prepared exactly as the runtime prepares its inputs (`core.export.runtime.prepare` +
`canvas_batch`), and returns the int8 `openvino.Model` (same input, outputs and `export` spec as
the export it came from, so `runtime.Detector` runs it unchanged):

- a float checkpoint gets plain NNCF int8 (FakeQuantize pairs that the CPU plugin turns into
  u8 x i8 convolutions);
- a checkpoint with 1-bit layers keeps them: every `BinaryConvolution` and the 2-level
  FakeQuantize that binarizes its input are in NNCF's ignored scope (`one_bit_scope`), so the
  result is mixed, 1-bit where inputs are binary and int8 elsewhere;
- the post-processing (`core.export.ssd`: Softmax, DetectionOutput; or the traced NMS of the
  other detectors) is left float: NNCF would otherwise quantize the head of the class scores.

What the CPU plugin makes of a mixed graph (OpenVINO 2026.4, measured by bench/ceiling.py): a
`BinaryConvolution` can fuse only a *binarization* FakeQuantize after it, so the u8 quantizer
that NNCF puts on the input of an int8 depthwise conv fed by a 1-bit conv runs as a standalone
FakeQuantize. So by default (`int8_after_1bit=False`) those layers stay float (NNCF's ignored
scope): int8 goes only where its quantizer fuses (the first conv, and convs fed by float or int8
layers). Measured on three trained binary-input checkpoints of pedestrian_adas_0002 (10, 16 and 22
convs 1-bit; bench/results/ceiling_intel_xeon_amx_staged.md), that default was both more accurate
(validation MR^-2 0.114 / 0.158 / 0.139 against 0.139 / 0.200 / 0.183 with int8 after the 1-bit
convs too; the export alone: 0.124 / 0.170 / 0.111) and faster at 1 thread f32 (4.38 / 3.02 / 3.00
against 4.58 / 4.30 / 4.33 ms in one run). `int8_after_1bit=True` quantizes them as well.

`quantize_int8_with_accuracy_control` is NNCF's accuracy-aware variant (`max_drop` on a
validation metric of the decoded detections, e.g. 1 - MR^-2); `int8_export(...,
accuracy_control=AccuracyControl(...))` makes a download of it (a job's `int8_max_drop`, validated
on its calibration images);
`compress_weights_int8` stores only the weights of the float convs in 8 bits (`nncf.compress_weights`,
inputs float: measured on the IR size by bench/ceiling.py, not a download format);
`runtime_precisions` reads the compiled graph (what actually runs as u1 / i8 / u8 / f32).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from core.export import runtime

K = TypeVar("K")


def kept_int8_file(files: dict[K, tuple[float, float]]) -> K:
    """`int8_after_1bit: "auto"`'s choice among int8 files of one checkpoint, given each as
    (MR^-2 on the calibration images, forward ms): the lower MR^-2, the faster on a tie. The
    validation split has no say (core.pipeline makes the job's file by it, bench.ceiling reports it)."""
    return min(files, key=lambda k: files[k])


POST_PREFIXES = ("flexbin:post/",)
"""Friendly-name prefixes of post-processing nodes that stay float."""
POST_TYPES = ("DetectionOutput", "Softmax", "NonMaxSuppression", "TopK")
CONV_TYPES = ("Convolution", "GroupConvolution", "BinaryConvolution")


def calibration_inputs(images: Iterable[np.ndarray], spec: dict[str, Any]) -> list[np.ndarray]:
    """The model inputs for RGB float32 [3, H, W] images in [0, 1]: each resized as
    `runtime.Detector` resizes it (one image per inference), on the export's static input shape."""
    return [static_canvas(runtime.prepare(image, spec), spec) for image in images]


def static_canvas(prepared: runtime.Prepared, spec: dict[str, Any]) -> np.ndarray:
    """float32 [1, 3, H, W] at the export's own input shape, which NNCF runs the model at. A
    variable canvas (PedNet: the smallest multiple of the stride holding the image) is padded
    further, bottom and right with `pad_value`, as a batch with a larger image pads it."""
    canvas = runtime.canvas_batch([prepared], spec)
    shape = tuple(spec["input"]["shape"])
    if canvas.shape == shape:
        return canvas
    if canvas.shape[2] > shape[2] or canvas.shape[3] > shape[3]:
        raise ValueError(f"an image's canvas {canvas.shape[2:]} is larger than the export's input {shape[2:]}")
    static = np.empty(shape, dtype=np.float32)
    static[:] = np.asarray(spec["input"]["pad_value"], dtype=np.float32)[None, :, None, None]
    static[:, :, :canvas.shape[2], :canvas.shape[3]] = canvas
    return static


def _model_and_spec(export: Any, spec: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """(openvino.Model, export spec) of an `OpenVinoExport` or of a model given with its spec."""
    if spec is None:
        spec = getattr(export, "spec", None)
        if spec is None:
            raise ValueError("pass the export spec with a bare openvino.Model")
        return export.model, spec
    return getattr(export, "model", export), spec


def one_bit_nodes(model: Any) -> list[str]:
    """Friendly names of every BinaryConvolution and of each FakeQuantize feeding one."""
    names = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "BinaryConvolution":
            continue
        names.append(node.get_friendly_name())
        source = node.input_value(0).get_node()
        if source.get_type_name() == "FakeQuantize":
            names.append(source.get_friendly_name())
    return names


def _fed_by_1bit(model: Any) -> list[str]:
    """Convolutions whose input comes from a BinaryConvolution through elementwise ops only
    (its scale and bias, ReLU): NNCF's input quantizer on them could not fuse."""
    elementwise = {"Add", "Multiply", "Subtract", "Relu", "Clamp"}
    names = []
    for node in model.get_ordered_ops():
        if node.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        source = node.input_value(0).get_node()
        while source.get_type_name() in elementwise:
            source = source.input_value(0).get_node()
        if source.get_type_name() == "BinaryConvolution":
            names.append(node.get_friendly_name())
    return names


def _upstream(node: Any, path: Sequence[tuple[int, str]]) -> Any:
    """The node reached from `node` through (input port, op type) steps, or None where a type differs."""
    for port, kind in path:
        node = node.input_value(port).get_node()
        if node.get_type_name() != kind:
            return None
    return node


def with_int8_binary_weights(model: Any) -> Any:
    """`model` with each weights-only binary layer's 1-bit weights, `Convert(u1 b)·2α − α`
    (`core.export.openvino._to_one_bit_weights`), rewritten as `Convert(i8 ±1)·α`, the same
    values. NNCF takes that form for weights already quantized and makes the layer a u8 x i8
    convolution, exact for ±α; it leaves the u1 form float. Changes `model` in place."""
    import openvino as ov
    import openvino.opset13 as ops

    for node in model.get_ordered_ops():
        if node.get_type_name() != "Convolution":
            continue
        bits = _upstream(node, ((1, "Subtract"), (0, "Multiply"), (0, "Convert"), (0, "Constant")))
        alpha = _upstream(node, ((1, "Subtract"), (1, "Constant")))
        if bits is None or alpha is None or bits.get_element_type() != ov.Type.u1:
            continue
        shape = list(bits.get_output_shape(0))
        signs = np.unpackbits(bits.get_data(), bitorder="big")[:int(np.prod(shape))].reshape(shape)
        signs = signs.astype(np.int8) * 2 - 1
        weights = ops.multiply(ops.convert(ops.constant(signs), "f32"), ops.constant(alpha.get_data()))
        node.input(1).replace_source_output(weights.output(0))
    return model


def ignored_scope(model: Any, *, int8_after_1bit: bool = False) -> Any:
    """NNCF's ignored scope for a FlexBin export: the 1-bit layers (`one_bit_nodes`), the
    post-processing, and, without `int8_after_1bit`, the convs fed by a 1-bit conv."""
    import nncf  # type: ignore[import-untyped]

    names = one_bit_nodes(model)
    if not int8_after_1bit:
        names += _fed_by_1bit(model)
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if name.startswith(POST_PREFIXES) or node.get_type_name() in POST_TYPES:
            names.append(name)
    return nncf.IgnoredScope(names=sorted(set(names)), validate=False)


def quantize_int8(export: Any, images: Sequence[np.ndarray], *, spec: dict[str, Any] | None = None,
                  subset_size: int = 300, int8_after_1bit: bool = False, fast_bias_correction: bool = True,
                  **nncf_kwargs: Any) -> Any:
    """An int8 `openvino.Model` of `export` (an `OpenVinoExport`, or an `openvino.Model` with its
    `spec`) by `nncf.quantize`, calibrated on `images` (RGB float32 [3, H, W] in [0, 1], e.g. the
    job's training images; at most `subset_size` are used). 1-bit layers and post-processing stay
    as they are (`ignored_scope`). The export's own model is not changed."""
    import nncf

    model, spec = _model_and_spec(export, spec)
    inputs = calibration_inputs(images, spec)
    if not inputs:
        raise ValueError("int8 calibration needs at least one image")
    model = with_int8_binary_weights(model.clone())
    return nncf.quantize(model, nncf.Dataset(inputs), subset_size=min(subset_size, len(inputs)),
                         fast_bias_correction=fast_bias_correction,
                         ignored_scope=ignored_scope(model, int8_after_1bit=int8_after_1bit), **nncf_kwargs)


@dataclass(frozen=True)
class AccuracyControl:
    """What `nncf.quantize_with_accuracy_control` validates on: `images` (RGB float32 [3, H, W]),
    `metric(detections, indices)` (higher is better, e.g. 1 - MR^-2 of those images' detections)
    and the largest absolute drop of it that the int8 model may show."""

    images: Sequence[np.ndarray]
    metric: Callable[[list[runtime.Detections], list[int]], float]
    max_drop: float


def int8_export(export: Any, images: Sequence[np.ndarray], *, subset_size: int = 300,
                int8_after_1bit: bool = False, accuracy_control: AccuracyControl | None = None,
                **nncf_kwargs: Any) -> Any:
    """`quantize_int8` of an `OpenVinoExport` (or, with `accuracy_control`,
    `quantize_int8_with_accuracy_control`), as an `OpenVinoExport` (same card, input, outputs and
    post-processing; its spec records the quantization), so `.detector()` and `.zip_bytes()` work
    as for any export."""
    import dataclasses

    import nncf

    quantization: dict[str, Any] = {"tool": f"nncf {nncf.__version__}", "method": "nncf.quantize",
                                    "calibration_images": min(len(images), subset_size),
                                    "int8_after_1bit": int8_after_1bit}
    if accuracy_control is None:
        model = quantize_int8(export, images, subset_size=subset_size, int8_after_1bit=int8_after_1bit,
                              **nncf_kwargs)
    else:
        if int8_after_1bit:
            raise ValueError("accuracy control quantizes with the default scope (int8_after_1bit=False)")
        model = quantize_int8_with_accuracy_control(
            export, images, accuracy_control.images, accuracy_control.metric, max_drop=accuracy_control.max_drop,
            subset_size=subset_size, **nncf_kwargs)
        quantization.update(method="nncf.quantize_with_accuracy_control", max_drop=accuracy_control.max_drop,
                            validation_images=len(accuracy_control.images))
    return dataclasses.replace(export, model=model, spec={**export.spec, "quantization": quantization})


def int8_zip(openvino_zip: bytes, images: Sequence[np.ndarray], **kwargs: Any) -> bytes:
    """`?format=openvino-int8`: the zip of a FlexBin OpenVINO export (`OpenVinoExport.zip_bytes`)
    quantized by `int8_export`, calibrated on `images`, as a zip of the same layout (its card's
    `export.quantization` and README.txt say how it was made). Runs with the same
    `flexbin_detect.py`."""
    # torch (the model card) loads only to make an int8 file, not to run one
    from core.export.openvino import OpenVinoExport

    export = int8_export(OpenVinoExport.from_zip(openvino_zip), images, **kwargs)
    return export.zip_bytes()  # type: ignore[no-any-return]


def quantize_int8_with_accuracy_control(
        export: Any, calibration_images: Sequence[np.ndarray], validation_images: Sequence[np.ndarray],
        metric: Callable[[list[runtime.Detections], list[int]], float], *, spec: dict[str, Any] | None = None,
        max_drop: float = 0.03, subset_size: int = 300, **nncf_kwargs: Any) -> Any:
    """`nncf.quantize_with_accuracy_control`: int8 as `quantize_int8`, then layers reverted to
    float, the most harmful first, until the validation metric is at most `max_drop` (absolute)
    below the float model's.

    metric(detections, indices) -> a float where higher is better (e.g. 1 - MR^-2), for the
    detections of `validation_images[i]` for i in `indices` (in that order; NNCF also scores
    single images to rank the layers). The model is run as `runtime.Detector` runs it: same
    pre-processing, one image per inference, same decoding."""
    import nncf

    model, spec = _model_and_spec(export, spec)
    calibration = calibration_inputs(calibration_images, spec)
    prepared = [runtime.prepare(image, spec) for image in validation_images]
    items = [(i, static_canvas(p, spec)) for i, p in enumerate(prepared)]

    def validation_fn(compiled: Any, data: Iterable[tuple[int, np.ndarray]]) -> tuple[float, None]:
        indices, detections = [], []
        for i, canvas in data:
            raw = runtime.outputs_by_name(compiled, compiled(canvas), spec)
            detections.append(runtime.decode(raw, 0, prepared[i], spec))
            indices.append(i)
        return float(metric(detections, indices)), None

    model = with_int8_binary_weights(model.clone())  # as quantize_int8: weights-only binary layers go int8
    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calibration), nncf.Dataset(items, lambda item: item[1]), validation_fn,
        max_drop=max_drop, subset_size=min(subset_size, len(calibration)), ignored_scope=ignored_scope(model),
        **nncf_kwargs)


def compress_weights_int8(export: Any) -> Any:
    """An `openvino.Model` of `export` (an `OpenVinoExport`) whose float
    convs keep 8-bit weights (`nncf.compress_weights`, asymmetric per output channel) and float
    inputs, so the file shrinks without quantizing any activation. Depthwise convs stay f32: the
    binarization thresholds read their outputs. The export's own model is not changed."""
    import nncf

    return nncf.compress_weights(export.model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM,
                                 ignored_scope=nncf.IgnoredScope(types=["GroupConvolution"], validate=False))


def runtime_precisions(compiled: Any) -> Counter[tuple[str, str]]:
    """How many nodes of each (layer type, runtime precision) the compiled model runs, for the
    convolution types: e.g. {("BinaryConvolution", "u1"): 41, ("Convolution", "u8"): 18}
    (an int8 convolution reports its input precision, u8 or i8)."""
    found: Counter[tuple[str, str]] = Counter()
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in CONV_TYPES:
            found[(kind, info["runtimePrecision"].astype(str))] += 1
    return found


def is_int8(precision: str) -> bool:
    return precision in ("i8", "u8")


__all__ = ["AccuracyControl", "calibration_inputs", "compress_weights_int8", "ignored_scope", "int8_export", "int8_zip", "is_int8", "one_bit_nodes", "quantize_int8",
           "quantize_int8_with_accuracy_control", "runtime_precisions"]

"""Convert Intel's pedestrian-detection-adas-0002 FP16 OpenVINO IR into FlexBin's model format.

    python tools/convert_adas_ir.py                      # IR from ../shared/models/..., writes
                                                         # core/models/weights/pedestrian_adas_0002/
    python tools/convert_adas_ir.py --ir DIR --out DIR

Reads the IR with `openvino` (no network), checks that every attribute FlexBin's module
hard-codes (preprocessing mean and scale, the PriorBox and DetectionOutput attributes, the
layer shapes) is what the IR says, and writes:
- `weights.safetensors`: every convolution's weight and bias as FP16, exactly the IR's
  values (its BatchNorm is already folded into them), under the names of
  `core.models.adas.PedestrianAdas`;
- `card.json`: the FlexBin card (architecture `pedestrian_adas_0002`, provenance);
- `LICENSE` (the Open Model Zoo's Apache-2.0 licence, copied) and `NOTICE`.
It prints the sha256 of the two model files: `core/pretrained.py` pins them.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetensors.torch import save as st_save

from core.checkpoint import ModelCard
from core.models import adas
from core.paths import shared_models_dir
from core.pretrained import PRETRAINED

IR_NAME = "pedestrian-detection-adas-0002"
NAME = "pedestrian_adas_0002"


def ir_layer_names() -> dict[str, str]:
    """IR convolution name -> `PedestrianAdas` module name."""
    names = {}
    for block in adas.BACKBONE:
        if not block.depthwise:
            names[block.name] = f"features.{block.name}.conv"
            continue
        names[f"{block.name}/dw"] = f"features.{block.name}.dw"
        # The extra layers' pointwise convs were renamed `_new` when the model was trained.
        sep = f"{block.name}_new" if block.name in {"conv6_2", "conv7_2", "conv8_2", "conv9_2"} \
            else f"{block.name}/sep"
        names[sep] = f"features.{block.name}.sep"
    for spec in adas.PRIORS:
        base, big = spec.head.removesuffix("_bigpriors"), spec.head.endswith("_bigpriors")
        for kind in ("loc", "conf"):
            names[f"{base}_mbox_{kind}" + ("_bigpriors" if big else "")] = f"heads.{spec.head}.{kind}"
    return names


def _constant(node) -> np.ndarray:
    """The value of a Constant, looking through the FP16 -> FP32 Convert the IR puts after it."""
    if node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant":
        raise SystemExit(f"expected a Constant, found {node.get_type_name()} {node.get_friendly_name()}")
    return node.get_data()


def _source(op, index: int):
    return op.input(index).get_source_output().get_node()


def _check(what: str, actual, expected) -> None:
    if not np.allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                       rtol=1e-6, atol=0):
        raise SystemExit(f"the IR's {what} is {actual}, core/models/adas.py says {expected}")


def read_ir(xml: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(FP16 tensors by IR name `<layer>.weight` / `<layer>.bias`, the other ops by type)."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    tensors: dict[str, np.ndarray] = {}
    others: dict[str, list] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution"):
            others.setdefault(kind, []).append(op)
            continue
        name = op.get_friendly_name().removesuffix("/WithoutBiases")
        weight = _constant(_source(op, 1))
        if kind == "GroupConvolution":  # [groups, out/groups, in/groups, kh, kw] -> torch's layout
            weight = weight.reshape(weight.shape[0] * weight.shape[1], *weight.shape[2:])
        (consumer,) = [t.get_node() for t in op.output(0).get_target_inputs()]
        if consumer.get_type_name() != "Add":
            raise SystemExit(f"{name}: expected a bias Add after the convolution, found {consumer.get_type_name()}")
        bias = _constant(_source(consumer, 1))
        tensors[f"{name}.weight"] = weight
        tensors[f"{name}.bias"] = bias.reshape(-1)
    return tensors, others


def check_attributes(others: dict[str, list]) -> None:
    """Fail unless the IR's preprocessing, priors and detection output are the module's."""
    (subtract,) = others["Subtract"]
    (multiply,) = others["Multiply"]
    _check("mean (BGR)", _constant(_source(subtract, 1)).reshape(-1), adas.IR_MEAN_BGR)
    _check("input scale", _constant(_source(multiply, 1)).reshape(-1), [adas.IR_SCALE])
    (parameter,) = others["Parameter"]
    _check("input shape", list(parameter.get_output_shape(0)), [1, 3, adas.IR_INPUT_HEIGHT, adas.IR_INPUT_WIDTH])
    priors = {op.get_friendly_name().split("/")[0]: op.get_attributes() for op in others["PriorBox"]}
    for spec in adas.PRIORS:
        base, big = spec.head.removesuffix("_bigpriors"), spec.head.endswith("_bigpriors")
        attrs = priors.pop(f"{base}_mbox_priorbox" + ("_bigpriors" if big else ""))
        _check(f"{spec.head} min_size", attrs["min_size"], [np.float32(spec.min_size)])
        _check(f"{spec.head} max_size", attrs["max_size"], [np.float32(spec.max_size)])
        _check(f"{spec.head} aspect_ratio", attrs["aspect_ratio"], spec.aspect_ratios)
        _check(f"{spec.head} step", [attrs["step"]], [spec.step])
        _check(f"{spec.head} offset", [attrs["offset"]], [0.5])
        _check(f"{spec.head} variance", attrs["variance"], np.float32(adas.IR_VARIANCES))
        if not (attrs["flip"] and attrs["scale_all_sizes"]) or attrs["clip"] or attrs["fixed_size"] \
                or attrs["density"]:
            raise SystemExit(f"{spec.head}: PriorBox flags differ from the module's: {attrs}")
    if priors:
        raise SystemExit(f"the IR has PriorBox layers the module lacks: {sorted(priors)}")
    (detection,) = others["DetectionOutput"]
    attrs = detection.get_attributes()
    expected = {"code_type": "caffe.PriorBoxParameter.CENTER_SIZE", "share_location": True,
                "variance_encoded_in_target": False, "background_label_id": 0, "normalized": True,
                "top_k": adas.PRE_NMS_TOP_K, "keep_top_k": [adas.IR_KEEP_TOP_K]}
    for key, value in expected.items():
        if attrs[key] != value:
            raise SystemExit(f"DetectionOutput {key} is {attrs[key]!r}, the module assumes {value!r}")
    _check("NMS threshold", [attrs["nms_threshold"]], [np.float32(adas.IR_NMS_THRESHOLD)])
    _check("confidence threshold", [attrs["confidence_threshold"]], [np.float32(adas.IR_CONFIDENCE_THRESHOLD)])


def convert(ir_dir: Path, out: Path) -> None:
    xml, bin_ = ir_dir / "FP16" / f"{IR_NAME}.xml", ir_dir / "FP16" / f"{IR_NAME}.bin"
    tensors, others = read_ir(xml)
    check_attributes(others)
    card = ModelCard(
        architecture=NAME, num_classes=2,
        provenance={
            "source": "Intel Open Model Zoo, pedestrian-detection-adas-0002 (FP16 OpenVINO IR)",
            "license": "Apache-2.0",
            "converted_by": "tools/convert_adas_ir.py (FlexBin): weights and biases copied as FP16; "
                            "BatchNorm was already folded into them in the IR",
            "ir_sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (xml, bin_)},
            "published": {"ap_percent": 88.0, "gflops": 2.836, "mparams": 1.165,
                          "dataset": "Intel internal, 1001 pedestrians"},
        })
    model = card.build()
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for ir_name, module_name in ir_layer_names().items():
        for suffix in ("weight", "bias"):
            value = tensors.pop(f"{ir_name}.{suffix}")
            key = f"{module_name}.{suffix}"
            if tuple(value.shape) != tuple(expected[key].shape):
                raise SystemExit(f"{ir_name}.{suffix} has shape {value.shape}, {key} needs {tuple(expected[key].shape)}")
            state[key] = torch.from_numpy(np.array(value, dtype=np.float16))  # a writable copy
    if tensors:
        raise SystemExit(f"IR convolutions the module does not have: {sorted(tensors)}")
    if set(state) != set(expected):
        raise SystemExit(f"module tensors the IR does not fill: {sorted(set(expected) - set(state))}")
    out.mkdir(parents=True, exist_ok=True)
    weights = st_save(state)
    card_json = card.model_dump_json(indent=2) + "\n"
    (out / "weights.safetensors").write_bytes(weights)
    (out / "card.json").write_text(card_json)
    shutil.copyfile(ir_dir / "LICENSE", out / "LICENSE")
    (out / "NOTICE").write_text(NOTICE.format(xml=card.provenance["ir_sha256"][xml.name],
                                              bin=card.provenance["ir_sha256"][bin_.name]))
    pinned = PRETRAINED[NAME]
    for what, data, pin in (("weights.safetensors", weights, pinned.weights_sha256),
                            ("card.json", card_json.encode(), pinned.card_sha256)):
        digest = hashlib.sha256(data).hexdigest()
        note = "matches the pin" if digest == pin else "DIFFERS from the pin in core/pretrained.py"
        print(f"{digest}  {out / what}  ({len(data)} bytes; {note})")


NOTICE = """pedestrian-detection-adas-0002 weights, converted for FlexBin

Origin: Intel Open Model Zoo, model "pedestrian-detection-adas-0002" (SSD with a channel-reduced
MobileNet v1 feature extractor), distributed as an OpenVINO IR under the Apache License 2.0
(LICENSE in this folder). Copyright (C) Intel Corporation.

The IR files used (FP16 precision; the Open Model Zoo files as redistributed by the public
GitHub repository yas-sim/object-tracking-line-crossing-area-intrusion, Apache-2.0):
  sha256 {xml}  FP16/pedestrian-detection-adas-0002.xml
  sha256 {bin}  FP16/pedestrian-detection-adas-0002.bin

Changes: FlexBin's tools/convert_adas_ir.py read the IR with the `openvino` Python package and
copied every convolution's weight and bias (FP16, values unchanged; the IR already has
BatchNorm folded into them) into weights.safetensors under the layer names of
core/models/adas.py, which re-implements the network (preprocessing, prior boxes, detection
output) in PyTorch. card.json is FlexBin's description of the model. No weight was retrained.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir", type=Path, default=shared_models_dir() / IR_NAME,
                        help="folder holding FP16/<name>.xml|.bin and LICENSE")
    parser.add_argument("--out", type=Path, default=PRETRAINED[NAME].directory)
    args = parser.parse_args()
    convert(args.ir, args.out)


if __name__ == "__main__":
    main()

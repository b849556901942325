"""Models and checkpoints on disk and in bytes: safetensors + a JSON card, never pickle.

Three byte formats, all safetensors:
- *float model* (`weights.safetensors` + `card.json`): the model's state_dict as uploaded.
- *packed checkpoint*: what serving runs. Float tensors as they are; each binarized weight
  W ≈ Σ α_i B_i stored bit-packed as `<key>::bits` (uint8, 1 bit per weight and base) and
  `<key>::scales` (float32 [k, C_out]); the card travels in the safetensors metadata.
- *resume state*: the latent real weights of a run in progress (binarized layers keep
  real weights under the straight-through estimator), for resuming a pipeline step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from core.binary import (
    BinaryActivation,
    activation_quantizers,
    binarize_input,
    binarize_module,
    binary_approx,
    binary_bits,
    is_binarized,
    pack_approx,
    unpack_approx,
)
from core.models import build_model
from core.models.registry import ARCHITECTURES, resolve_kwargs

# One metadata key: safetensors writes several in no fixed order, and we want equal
# checkpoints to be equal bytes (a resumed run reproduces an uninterrupted one exactly).
META_KEY = "flexbin"
_BITS, _SCALES = "::bits", "::scales"
MAX_INPUT_SIZE = 4096  # pixels, longer side


class CheckpointError(ValueError):
    """A model, card or checkpoint that cannot be used; the message names the problem."""


class ModelCard(BaseModel):
    """What a set of weights is and how it was made.

    On disk the builder kwargs sit at the top level next to `architecture` and
    `num_classes` (the API's card format); unknown top-level keys are builder kwargs and are
    validated against the architecture's allowed kwargs.
    """

    model_config = ConfigDict(extra="forbid")

    architecture: str
    num_classes: int = Field(default=2, ge=2, le=1000)
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_size: int = 320
    binary_layers: dict[str, int] = Field(default_factory=dict, description="layer -> bits")
    activation_quantizers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="layer -> quantizer config of the layers whose *inputs* are "
        'binary too ({"name": "rsign", "channels": C}: core.binary.activation); their thresholds are '
        "saved as <layer>.input_binarizer.threshold")
    metrics: dict[str, float] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_builder_kwargs(cls, data: Any) -> Any:
        if isinstance(data, dict):
            spec = ARCHITECTURES.get(data.get("architecture"))  # type: ignore[arg-type]
            builder_args = set(spec.default_kwargs) if spec else set()
            known = set(cls.model_fields) - builder_args  # input_size may be a builder arg
            extra = {k: v for k, v in data.items() if k not in known}
            data = {k: v for k, v in data.items() if k in known}
            data["builder_kwargs"] = {**data.get("builder_kwargs", {}), **extra}
        return data

    @model_validator(mode="after")
    def _check_architecture(self) -> ModelCard:
        self.builder_kwargs = resolve_kwargs(self.architecture, self.builder_kwargs)
        self.input_size = int(self.builder_kwargs.get(
            "input_size", ARCHITECTURES[self.architecture].input_size))
        if not 16 <= self.input_size <= MAX_INPUT_SIZE:  # the dummy forward pass runs at this size
            raise ValueError(f"input_size must be in [16, {MAX_INPUT_SIZE}], got {self.input_size}")
        return self

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {**data.pop("builder_kwargs"), **data}

    @classmethod
    def parse(cls, raw: str | bytes) -> ModelCard:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "card"
            raise CheckpointError(f"invalid card: {where}: {first['msg']}") from None
        except ValueError as exc:  # e.g. non-UTF-8 bytes
            raise CheckpointError(f"invalid card: {exc}") from None

    def build(self) -> nn.Module:
        return build_model(self.architecture, num_classes=self.num_classes, **self.builder_kwargs)


# -- float models ------------------------------------------------------------------
def save_model_bytes(model: nn.Module, card: ModelCard) -> tuple[bytes, str]:
    """(weights.safetensors bytes, card.json text) of a float model."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return st_save(state), card.model_dump_json(indent=2)


def save_model(model: nn.Module, card: ModelCard, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    weights, card_json = save_model_bytes(model, card)
    (directory / "weights.safetensors").write_bytes(weights)
    (directory / "card.json").write_text(card_json)


def load_model_bytes(weights: bytes, card_json: str | bytes) -> tuple[nn.Module, ModelCard]:
    """Build the card's architecture and load the weights strictly.

    Raises CheckpointError for a card that names an unknown architecture or argument, a file
    that is not safetensors (a pickle, say), and the first missing, unexpected or
    wrongly shaped tensor.
    """
    card = ModelCard.parse(card_json)
    state = _read_safetensors(weights, "weights")
    try:  # shapes only first: a card asking for a model far bigger than its weights allocates nothing
        with torch.device("meta"):
            skeleton = card.build()
    except Exception as exc:  # noqa: BLE001 - builder kwargs the architecture cannot take
        raise CheckpointError(f"invalid card: cannot build {card.architecture}: {exc}") from None
    _check_state(skeleton.state_dict(), state)
    model = card.build()
    load_state_strict(model, state)
    model.eval()
    return model, card


def load_model(directory: Path) -> tuple[nn.Module, ModelCard]:
    return load_model_bytes((directory / "weights.safetensors").read_bytes(),
                            (directory / "card.json").read_text())


def load_state_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    _check_state(model.state_dict(), state)
    model.load_state_dict(state, strict=True)


def _check_state(expected: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """CheckpointError naming the first missing, unexpected or wrongly shaped tensor."""
    for key in sorted(expected.keys() | state.keys()):
        if key not in state:
            raise CheckpointError(f"weights: missing tensor {key!r} {tuple(expected[key].shape)}")
        if key not in expected:
            raise CheckpointError(f"weights: unexpected tensor {key!r}")
        if state[key].shape != expected[key].shape:
            raise CheckpointError(f"weights: tensor {key!r} has shape {tuple(state[key].shape)}, "
                                  f"the architecture needs {tuple(expected[key].shape)}")
        if state[key].is_floating_point() != expected[key].is_floating_point():
            raise CheckpointError(f"weights: tensor {key!r} has dtype {state[key].dtype}, "
                                  f"expected {expected[key].dtype}")


def check_forward(model: nn.Module, card: ModelCard) -> None:
    """One forward pass on a dummy image; CheckpointError if the model cannot run."""
    model.eval()
    try:
        with torch.no_grad():
            out = model([torch.rand(3, card.input_size, card.input_size)])
        if not (isinstance(out, list) and "boxes" in out[0] and "scores" in out[0]):
            raise CheckpointError("model output is not a list of {boxes, scores} predictions")
        if not torch.isfinite(out[0]["scores"]).all():
            raise CheckpointError("model produced non-finite scores on a dummy image")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of an uploaded model is the upload's fault
        raise CheckpointError(f"model failed a forward pass on a dummy image: {exc}") from None


def _read_safetensors(data: bytes, what: str) -> dict[str, Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{what} is not a valid safetensors file: {exc}") from None


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (header size: 8-byte little-endian prefix)."""
    if len(data) < 8:
        raise CheckpointError("checkpoint is not a valid safetensors file: too short")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, 100_000_000):
        raise CheckpointError("checkpoint is not a valid safetensors file: header size lies")
    try:
        return json.loads(data[8 : 8 + size]).get("__metadata__", {}) or {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint header is not JSON: {exc}") from None


# -- packed (binary) checkpoints ---------------------------------------------------
def binarized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_binarized(m)}


def pack_checkpoint(model: nn.Module, card: ModelCard) -> bytes:
    """The packed checkpoint of a (partly) binarized model: 1 bit per binary weight.

    Binarized layers are those carrying a `core.binary` parametrization; their weights are
    re-approximated from the latent weights exactly as the straight-through forward pass
    does, so the packed checkpoint serves the values that were fine-tuned and evaluated.
    """
    tensors, shapes, layers = _packed_tensors(model)
    card = card.model_copy(update={"binary_layers": layers, "activation_quantizers": activation_quantizers(model)})
    meta = {"card": card.model_dump(mode="json"), "packed_shapes": shapes}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def compression_ratio(model: nn.Module) -> float:
    """float32 checkpoint bytes / packed checkpoint bytes, both as safetensors files of the
    same tensors (the card metadata, identical in both, left out): exactly 1.0 with no
    binarized layer."""
    return float_checkpoint_nbytes(model) / len(st_save(_packed_tensors(model)[0]))


def _packed_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, list[int]], dict[str, int]]:
    binary = binarized_modules(model)
    layers = {name: int(binary_bits(m)) for name, m in binary.items()}
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in _plain_state(model).items():
        layer = key.removesuffix(".weight")
        if key.endswith(".weight") and layer in binary:
            packed = pack_approx(binary_approx(binary[layer]))  # exactly what the STE forward computes
            tensors[key + _BITS] = packed["bits"]
            tensors[key + _SCALES] = packed["scales"]
            shapes[key] = list(value.shape)
        else:
            tensors[key] = value.float() if value.is_floating_point() else value
    return tensors, shapes, layers


def unpack_checkpoint(data: bytes) -> tuple[nn.Module, ModelCard]:
    """An inference model (plain float weights = the unpacked binary ones) and its card."""
    try:
        meta = json.loads(_metadata(data)[META_KEY])
        card = ModelCard.parse(json.dumps(meta["card"]))
        shapes = {str(k): [int(s) for s in v] for k, v in meta["packed_shapes"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint metadata is not a FlexBin packed checkpoint: {exc}") from None
    tensors = _read_safetensors(data, "checkpoint")
    state: dict[str, Tensor] = {k: v for k, v in tensors.items() if "::" not in k}
    for key, shape in shapes.items():
        try:
            approx = unpack_approx({"bits": tensors[key + _BITS], "scales": tensors[key + _SCALES]},
                                   tuple(shape))
        except KeyError as exc:
            raise CheckpointError(f"checkpoint lacks packed tensor {exc}") from None
        state[key] = approx.reconstruct()
    model = card.build()
    _attach_activation_quantizers(model, card.activation_quantizers, "checkpoint")
    load_state_strict(model, state)
    model.eval()
    return model, card


def _attach_activation_quantizers(model: nn.Module, quantizers: dict[str, dict[str, Any]], what: str) -> None:
    """Give the layers named in a card / resume state their input binarizers back (before
    loading the thresholds); CheckpointError for an unknown layer or quantizer."""
    modules = dict(model.named_modules())
    for name, config in quantizers.items():
        if name not in modules:
            raise CheckpointError(f"{what} binarizes the inputs of unknown layer {name!r}")
        try:
            binarize_input(modules[name], BinaryActivation.from_config(config))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{what}: layer {name!r}: {exc}") from None


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """state_dict with parametrized weights under their plain names (binarized values)."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue  # latent weights; the binarized value is read from the module below
        state[key] = value.detach().cpu().contiguous()
    for name, module in binarized_modules(model).items():
        state[f"{name}.weight" if name else "weight"] = module.weight.detach().cpu().contiguous()
    return state


def float_checkpoint_nbytes(model: nn.Module) -> int:
    """Bytes of the model's float32 safetensors checkpoint (the compression baseline)."""
    return len(st_save({k: v.float() if v.is_floating_point() else v
                        for k, v in _plain_state(model).items()}))


# -- resume state ------------------------------------------------------------------
def save_state(model: nn.Module) -> bytes:
    """Latent weights + which layers are binarized (with bits), for resuming a run."""
    layers = {name: int(binary_bits(m)) for name, m in binarized_modules(model).items()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"binary_layers": json.dumps(layers)}
    quantizers = activation_quantizers(model)
    if quantizers:  # absent when empty: weights-only states stay byte-identical to older ones
        metadata["activation_quantizers"] = json.dumps(quantizers, sort_keys=True)
    return st_save(state, metadata=metadata)


def load_state(card: ModelCard, data: bytes) -> nn.Module:
    """Rebuild a model in training form (binarized layers parametrized) from `save_state`."""
    meta = _metadata(data)
    layers: dict[str, int] = json.loads(meta.get("binary_layers", "{}"))
    model = card.build()
    modules = dict(model.named_modules())
    for name, bits in layers.items():
        if name not in modules:
            raise CheckpointError(f"resume state names unknown layer {name!r}")
        binarize_module(modules[name], bits)
    _attach_activation_quantizers(model, json.loads(meta.get("activation_quantizers", "{}")), "resume state")
    load_state_strict(model, _read_safetensors(data, "resume state"))
    return model


__all__ = [
    "CheckpointError", "ModelCard", "check_forward", "compression_ratio", "float_checkpoint_nbytes",
    "load_model", "load_model_bytes", "load_state", "load_state_strict", "pack_checkpoint",
    "save_model", "save_model_bytes", "save_state", "unpack_checkpoint",
]

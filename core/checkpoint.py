"""Models and checkpoints on disk and in bytes: safetensors + a JSON card, never pickle.

Three byte formats, all safetensors:
- *float model* (`weights.safetensors` + `card.json`): the model's state_dict as uploaded.
- *packed checkpoint*: what serving runs. Float tensors as they are; each binarized weight
  stored by its quantizer (`<key>::<part>`; `sign` and `kbit` store W ≈ Σ α_i B_i as
  `<key>::bits`, uint8, 1 bit per weight and base, and `<key>::scales`, float32 [k, C_out]);
  the card, which names each binarized layer's quantizer, travels in the safetensors metadata.
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
    WeightQuantizer,
    activation_quantizer_from_config,
    activation_quantizers,
    binarize_input,
    binarize_module,
    latent_weight,
    weight_quantizer,
    weight_quantizer_from_config,
    weight_quantizer_of,
)
from core.models import build_model
from core.models.registry import ARCHITECTURES, resolve_kwargs

# One metadata key: safetensors writes several in no fixed order, and we want equal
# checkpoints to be equal bytes (a resumed run reproduces an uninterrupted one exactly).
META_KEY = "flexbin"
_PART = "::"  # <weight key>::<part> holds one tensor of a binarized weight's packed form
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
    weight_quantizers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="layer -> the config of the quantizer that binarized it (`core.binary.quantizers`); "
        "a card without it (older checkpoints) means the default quantizer of the layer's bits")
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

    def layer_quantizer(self, layer: str) -> WeightQuantizer:
        """The quantizer that binarized `layer` (CheckpointError for a layer the card does not
        list as binary, or a quantizer config that does not build)."""
        try:
            if layer in self.weight_quantizers:
                return weight_quantizer_from_config(self.weight_quantizers[layer])
            return weight_quantizer(self.binary_layers[layer])
        except KeyError:
            raise CheckpointError(f"card: layer {layer!r} is packed but not listed in binary_layers") from None
        except ValueError as exc:
            raise CheckpointError(f"card: layer {layer!r}: {exc}") from None


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


def load_model_bytes(weights: bytes, card_json: str | bytes, *,
                     overrides: dict[str, Any] | None = None) -> tuple[nn.Module, ModelCard]:
    """Build the card's architecture (its fields replaced by `overrides`, e.g. another input
    size for weights that do not depend on it) and load the weights strictly.

    Raises CheckpointError for a card that names an unknown architecture or argument, a file
    that is not safetensors (a pickle, say), and the first missing, unexpected or
    wrongly shaped tensor.
    """
    if overrides:
        card_json = json.dumps({**json.loads(card_json), **overrides})
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


def load_model(directory: Path, *, overrides: dict[str, Any] | None = None) -> tuple[nn.Module, ModelCard]:
    return load_model_bytes((directory / "weights.safetensors").read_bytes(),
                            (directory / "card.json").read_text(), overrides=overrides)


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
def binarized_modules(model: nn.Module) -> dict[str, WeightQuantizer]:
    """Each binarized layer's name and its weight quantizer."""
    return {name: q for name, m in model.named_modules() if (q := weight_quantizer_of(m)) is not None}


def _layer_records(model: nn.Module) -> dict[str, Any]:
    """How a (partly) binarized model is binarized, as the card records it."""
    binary = binarized_modules(model)
    return {"binary_layers": {name: q.bits for name, q in binary.items()},
            "weight_quantizers": {name: q.to_config() for name, q in binary.items()},
            "activation_quantizers": activation_quantizers(model)}


def pack_checkpoint(model: nn.Module, card: ModelCard) -> bytes:
    """The packed checkpoint of a (partly) binarized model: 1 bit per binary weight.

    Binarized layers are those carrying a `core.binary` parametrization; their weights are
    re-approximated from the latent weights exactly as the straight-through forward pass
    does, so the packed checkpoint serves the values that were fine-tuned and evaluated.
    """
    tensors, shapes = _packed_tensors(model)
    card = card.model_copy(update=_layer_records(model))
    meta = {"card": card.model_dump(mode="json"), "packed_shapes": shapes}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def compression_ratio(model: nn.Module) -> float:
    """float32 checkpoint bytes / packed checkpoint bytes, both as safetensors files of the
    same tensors (the card metadata, identical in both, left out): exactly 1.0 with no
    binarized layer."""
    return float_checkpoint_nbytes(model) / len(st_save(_packed_tensors(model)[0]))


def _packed_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    binary = binarized_modules(model)
    modules = dict(model.named_modules())
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in _plain_state(model).items():
        layer = key.removesuffix(".weight")
        if key.endswith(".weight") and layer in binary:
            # re-fitted from the latent weight exactly as the STE forward computes it
            for part, tensor in binary[layer].pack(latent_weight(modules[layer])).items():
                tensors[key + _PART + part] = tensor
            shapes[key] = list(value.shape)
        else:
            tensors[key] = value.float() if value.is_floating_point() else value
    return tensors, shapes


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
        layer = key.removesuffix(".weight")
        parts = {k.removeprefix(key + _PART): v for k, v in tensors.items() if k.startswith(key + _PART)}
        try:
            state[key] = card.layer_quantizer(layer).unpack(parts, tuple(shape))
        except (KeyError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint: packed weight {key!r}: {exc}") from None
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
            binarize_input(modules[name], activation_quantizer_from_config(config))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{what}: layer {name!r}: {exc}") from None


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """state_dict with parametrized weights under their plain names (binarized values)."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue  # latent weights; the binarized value is read from the module below
        state[key] = value.detach().cpu().contiguous()
    modules = dict(model.named_modules())
    for name in binarized_modules(model):
        state[f"{name}.weight" if name else "weight"] = modules[name].weight.detach().cpu().contiguous()
    return state


def float_checkpoint_nbytes(model: nn.Module) -> int:
    """Bytes of the model's float32 safetensors checkpoint (the compression baseline)."""
    return len(st_save({k: v.float() if v.is_floating_point() else v
                        for k, v in _plain_state(model).items()}))


# -- resume state ------------------------------------------------------------------
def save_state(model: nn.Module) -> bytes:
    """Latent weights + which layers are binarized (with their bits and quantizers), for
    resuming a run."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key, as in packed checkpoints: safetensors orders several keys at random, and
    # a resumed run must reproduce an uninterrupted one byte for byte.
    return st_save(state, metadata={META_KEY: json.dumps(_layer_records(model), sort_keys=True)})


def load_state(card: ModelCard, data: bytes) -> nn.Module:
    """Rebuild a model in training form (binarized layers parametrized) from `save_state`."""
    meta = _metadata(data)
    # States written before the single metadata key kept each record under its own key.
    records = json.loads(meta[META_KEY]) if META_KEY in meta else {
        k: json.loads(meta.get(k, "{}")) for k in ("binary_layers", "weight_quantizers", "activation_quantizers")}
    layers = card.model_copy(update=records)
    model = card.build()
    modules = dict(model.named_modules())
    for name in layers.binary_layers:
        if name not in modules:
            raise CheckpointError(f"resume state names unknown layer {name!r}")
        binarize_module(modules[name], layers.layer_quantizer(name))
    _attach_activation_quantizers(model, layers.activation_quantizers, "resume state")
    load_state_strict(model, _read_safetensors(data, "resume state"))
    return model


__all__ = [
    "CheckpointError", "ModelCard", "binarized_modules", "check_forward", "compression_ratio", "float_checkpoint_nbytes",
    "load_model", "load_model_bytes", "load_state", "load_state_strict", "pack_checkpoint",
    "save_model", "save_model_bytes", "save_state", "unpack_checkpoint",
]

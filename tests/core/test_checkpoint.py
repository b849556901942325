"""Strict loading, never unpickling, and exact packed round trips."""
from __future__ import annotations

import io
import json
import pickle

import pytest
import torch
from safetensors.torch import save as st_save

from core.binary import binarize_module
from core.checkpoint import (
    CheckpointError,
    ModelCard,
    float_checkpoint_nbytes,
    load_model_bytes,
    load_state,
    pack_checkpoint,
    save_model_bytes,
    save_state,
    unpack_checkpoint,
)


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    return card.build().eval(), card


def test_wrong_shape_names_the_tensor(tiny) -> None:
    model, card = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["heatmap.weight"] = torch.zeros(1, 3, 1, 1)
    with pytest.raises(CheckpointError, match=r"'heatmap.weight' has shape \(1, 3, 1, 1\)"):
        load_model_bytes(st_save(state), card.model_dump_json())


def test_missing_and_unexpected_tensors(tiny) -> None:
    model, card = tiny
    state = dict(model.state_dict())
    del state["neck.0.weight"]
    with pytest.raises(CheckpointError, match="missing tensor 'neck.0.weight'"):
        load_model_bytes(st_save(state), card.model_dump_json())
    state = {**model.state_dict(), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra'"):
        load_model_bytes(st_save(state), card.model_dump_json())


def test_pickle_posing_as_weights_is_refused_without_unpickling(tiny) -> None:
    _, card = tiny

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    payload = pickle.dumps({"w": Boom()})
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model_bytes(payload, card.model_dump_json())
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)  # a TorchScript / torch.save zip
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model_bytes(buffer.getvalue(), card.model_dump_json())


def test_lying_header_is_refused(tiny) -> None:
    _, card = tiny
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * 16
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model_bytes(data, card.model_dump_json())
    with pytest.raises(CheckpointError):
        unpack_checkpoint(b"\xff" * 8 + b"{}")


def test_packed_checkpoint_round_trip_serves_the_binarized_weights(tiny) -> None:
    model, card = tiny
    for name in ("neck.0", "features.6.0"):
        binarize_module(dict(model.named_modules())[name], 1)
    packed = pack_checkpoint(model, card)
    served, served_card = unpack_checkpoint(packed)
    assert served_card.binary_layers == {"features.6.0": 1, "neck.0": 1}
    modules = dict(served.named_modules())
    for name in ("neck.0", "features.6.0"):
        w = modules[name].weight
        alpha = w.abs().flatten(1).amax(1)
        assert torch.allclose(w.abs().flatten(1), alpha[:, None].expand_as(w.flatten(1)))  # ±α per channel
        assert torch.equal(w, dict(model.named_modules())[name].weight.detach())
    image = [torch.rand(3, 80, 60)]
    with torch.no_grad():
        assert torch.allclose(served(image)[0]["scores"], model(image)[0]["scores"])
    assert float_checkpoint_nbytes(model) / len(packed) > 1.5
    assert pack_checkpoint(model, card) == packed  # deterministic bytes


def test_resume_state_round_trip(tiny) -> None:
    model, card = tiny
    binarize_module(dict(model.named_modules())["neck.0"], 2)
    restored = load_state(card, save_state(model))
    for (ka, a), (kb, b) in zip(sorted(model.state_dict().items()), sorted(restored.state_dict().items())):
        assert ka == kb and torch.equal(a, b)


def test_float_model_round_trip_keeps_card_fields(tiny) -> None:
    model, card = tiny
    card = card.model_copy(update={"metrics": {"miss_rate": 0.5}, "provenance": {"by": "test"}})
    weights, card_json = save_model_bytes(model, card)
    assert json.loads(card_json)["width"] == 4  # builder kwargs sit at the top level
    _, loaded = load_model_bytes(weights, card_json)
    assert loaded.metrics == {"miss_rate": 0.5} and loaded.provenance == {"by": "test"}

"""Contract over every registered architecture: build, save, load strictly, forward, compare."""
from __future__ import annotations

import pytest
import torch

from core.checkpoint import (
    CheckpointError,
    ModelCard,
    check_forward,
    load_model_bytes,
    save_model_bytes,
)
from core.models import ARCHITECTURES, build_model, list_architectures
from core.priority import discover_layers

TINY = {"flexbin_pednet": {"width": 4, "input_size": 64}}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_build_save_load_forward_matches(name: str) -> None:
    torch.manual_seed(0)
    card = ModelCard(architecture=name, num_classes=2, **TINY.get(name, {}))
    model = card.build().eval()
    weights, card_json = save_model_bytes(model, card)
    loaded, loaded_card = load_model_bytes(weights, card_json)
    assert loaded_card == card
    image = torch.rand(3, 120, 90, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model([image])[0], loaded([image])[0]
    assert set(a) >= {"boxes", "scores", "labels"}
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    check_forward(loaded, loaded_card)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_layer_discovery_follows_execution(name: str) -> None:
    card = ModelCard(architecture=name, **TINY.get(name, {}))
    layers = discover_layers(card.build(), card.input_size)
    assert len(layers) >= 8
    assert [layer.depth for layer in layers] == list(range(len(layers)))
    assert len({layer.name for layer in layers}) == len(layers)


def test_default_detector_keeps_parameters_deep() -> None:
    layers = discover_layers(build_model("flexbin_pednet"), 320)
    params = [layer.num_params for layer in layers]
    half = len(params) // 2
    assert len(layers) >= 8
    assert sum(params[half:]) > 3 * sum(params[:half])


def test_builders_validate_arguments() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="takes no argument 'weights'"):
        build_model("ssdlite320_mobilenet_v3_large", weights="DEFAULT")
    with pytest.raises(ValueError, match="width"):
        build_model("flexbin_pednet", width="wide")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("flexbin_pednet", num_classes=1)
    with pytest.raises(ValueError, match=r"'max_size' .* must be in \[16, 4096\], got 100000"):
        build_model("fasterrcnn_mobilenet_v3_large_320_fpn", max_size=100_000)
    with pytest.raises(ValueError, match="min_size .* exceeds max_size"):
        build_model("fasterrcnn_mobilenet_v3_large_320_fpn", min_size=800, max_size=400)
    with pytest.raises(ValueError, match="'score_thresh' .* must be in"):
        build_model("ssdlite320_mobilenet_v3_large", score_thresh=-0.5)
    with pytest.raises(ValueError, match="'width' .* must be in"):
        build_model("flexbin_pednet", width=0)
    assert {spec.name for spec in list_architectures()} >= {
        "flexbin_pednet", "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"}


def test_card_rejects_unknown_architecture_and_arguments() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture"):
        ModelCard.parse('{"architecture": "resnet9000"}')
    with pytest.raises(CheckpointError, match="takes no argument 'evil'"):
        ModelCard.parse('{"architecture": "flexbin_pednet", "evil": 1}')
    with pytest.raises(CheckpointError, match="invalid card"):
        ModelCard.parse(b"\xff\xfe not json")
    with pytest.raises(CheckpointError, match="must be in"):
        ModelCard.parse('{"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "max_size": 1000000}')
    card = ModelCard.parse('{"architecture": "flexbin_pednet", "num_classes": 2, "width": 8}')
    assert card.builder_kwargs["width"] == 8 and card.input_size == 224

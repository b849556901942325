"""pedestrian_adas_0002 exported to OpenVINO: the network at its own input size (the resize
outside the graph, torch's antialiased bilinear reproduced in numpy), detections equal to the
PyTorch module's, and binary-activation layers running as 1-bit convolutions."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.binary import binarize_input, binarize_module
from core.checkpoint import pack_checkpoint
from core.data import read_pennfudan, split_records
from core.detection_metrics import evaluate_detections
from core.export.openvino import (
    BINARY_WEIGHTS_ACTIVATIONS,
    export_checkpoint,
    runtime_layer_precision,
)
from core.export.runtime import resize_antialiased
from core.paths import default_data_dir
from core.pretrained import load_pretrained
from core.train import ImageCache, predict

HEIGHT, WIDTH = 96, 168  # small: the test is about the export, not accuracy
DEEPEST = 3
IMAGES = 8


@pytest.mark.parametrize(("h", "w", "height", "width"), [(480, 640, 192, 336), (120, 90, 384, 672), (37, 300, 37, 50)])
def test_antialiased_resize_matches_torch(h: int, w: int, height: int, width: int) -> None:
    image = np.random.default_rng(0).random((3, h, w), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(image)[None], size=(height, width), mode="bilinear",
                             align_corners=False, antialias=True)[0].numpy()
    assert np.abs(resize_antialiased(image, height, width) - expected).max() < 1e-4


@pytest.fixture(scope="module")
def pretrained() -> dict:
    model, card = load_pretrained("pedestrian_adas_0002", input_height=HEIGHT, input_width=WIDTH)
    _, val = split_records(read_pennfudan(default_data_dir()))
    cache = ImageCache()
    return {"model": model.eval(), "card": card, "images": [cache.image(r) for r in val[:IMAGES]],
            "truth": [r.boxes for r in val[:IMAGES]]}


def _binary_activations(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """The deepest dense convs with 1-bit weights and inputs (untrained: parity, not accuracy)."""
    model = copy.deepcopy(model)
    dense = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.in_channels % 8 == 0]
    chosen = dense[-DEEPEST:]
    for _, module in chosen:
        binarize_module(module, 1)
        binarize_input(module)
    return model.eval(), [n for n, _ in chosen]


@pytest.mark.parametrize("kind", ["float", "binary_activations"])
def test_the_export_detects_what_the_module_detects(pretrained: dict, kind: str) -> None:
    model, binary = (pretrained["model"], []) if kind == "float" else _binary_activations(pretrained["model"])
    export = export_checkpoint(pack_checkpoint(model, pretrained["card"]))
    assert export.spec["input"]["shape"] == [1, 3, HEIGHT, WIDTH]  # no resize inside the graph
    torch.set_num_threads(1)
    ours = predict(model, pretrained["images"], batch_size=4)
    detector = export.detector(threads=1)
    theirs = [{"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores)}
              for d in detector.detect([image.numpy() for image in pretrained["images"]])]

    a, b = evaluate_detections(ours, pretrained["truth"]), evaluate_detections(theirs, pretrained["truth"])
    assert abs(a.miss_rate - b.miss_rate) <= 0.005
    for t, o in zip(ours, theirs, strict=True):
        confident = int((t["scores"] > 0.05).sum())  # the detections anyone looks at: box for box
        assert np.allclose(o["scores"][:confident].numpy(), t["scores"][:confident].numpy(), atol=2e-3)
        assert np.allclose(o["boxes"][:confident].numpy(), t["boxes"][:confident].numpy(), atol=0.5)
    if binary:
        runs_as = runtime_layer_precision(detector.compiled([1, 3, HEIGHT, WIDTH]))
        assert {n for n, p in runs_as.items() if p == BINARY_WEIGHTS_ACTIVATIONS} == set(binary)

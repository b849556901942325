"""Issue 18's training loop: augmentation at the network's resolution, a DataLoader that gives the
same batches whatever its worker count, a batched photometric distortion, a sync-free SSD loss, and
the device every entry point resolves."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as TF

from core.checkpoint import ModelCard
from core.data import read_pennfudan, split_records
from core.data.augment import (
    FILL,
    MIN_BOX_SIZE,
    CachedImage,
    Geometry,
    NetworkInput,
    adjust_hue,
    cache_image,
    distort,
    render_sample,
    sample_geometry,
    sample_photometric,
    sample_rng,
)
from core.device import DeviceUnavailable, resolve_device
from core.models.adas import NEGATIVES_PER_POSITIVE, PedestrianAdas, multibox_loss
from core.paths import default_data_dir
from core.train import (
    ImageCache,
    IterationReport,
    TrainOptions,
    network_input,
    train_detector,
)

ADAS_IN = NetworkInput("stretch", height=96, width=160, antialias=True)


@pytest.fixture(scope="module")
def records():
    train, _ = split_records(read_pennfudan(default_data_dir()))
    return train[:10]


def _batches(records, workers: int, seed: int = 3):
    cache = ImageCache()
    try:
        return list(cache.training_batches(records, ADAS_IN, seed=seed, batch_size=4, iterations=3, workers=workers))
    finally:
        cache.close()


# -- determinism ------------------------------------------------------------------------------
def test_the_same_batches_with_0_and_2_loader_workers(records) -> None:
    serial, parallel = _batches(records, 0), _batches(records, 2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a.images.shape == (4, 3, 96, 160)
        assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and a.counts == b.counts
        assert torch.equal(a.photometric, b.photometric) and torch.equal(a.content, b.content)
        assert torch.equal(a.hue_rows, b.hue_rows)
    other = _batches(records, 0, seed=4)
    assert not torch.equal(serial[0].images, other[0].images)


def test_a_persistent_loader_reconfigured_per_step_repeats_a_seed(records) -> None:
    cache = ImageCache()
    try:
        first = [b.images for b in cache.training_batches(records, ADAS_IN, seed=7, batch_size=4, iterations=2,
                                                          workers=1)]
        cache_again = list(cache.training_batches(records, ADAS_IN, seed=8, batch_size=2, iterations=1, workers=1))
        again = [b.images for b in cache.training_batches(records, ADAS_IN, seed=7, batch_size=4, iterations=2,
                                                          workers=1)]
    finally:
        cache.close()
    assert cache_again[0].images.shape[0] == 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_training_is_identical_with_0_and_2_workers(records) -> None:
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    weights = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = card.build()
        losses: list[IterationReport] = []
        train_detector(model, records, iterations=3, batch_size=4, seed=5, on_iteration=losses.append,
                       options=TrainOptions(loader_workers=workers))
        assert [r.iteration for r in losses] == [1, 2, 3] and all(r.loss > 0 for r in losses)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- geometry ---------------------------------------------------------------------------------
def test_augmented_boxes_stay_inside_and_degenerate_ones_are_dropped() -> None:
    pixels = (torch.rand(3, 120, 90) * 255).to(torch.uint8)
    # Thin boxes (1 and 1.5 px) and boxes at the edges, among ordinary ones.
    boxes = [[0.0, 0.0, 30.0, 60.0], [40.0, 10.0, 41.0, 100.0], [60.0, 50.0, 90.0, 120.0], [10.0, 70.0, 25.0, 71.5]]
    for net in (ADAS_IN, NetworkInput("longer_side", size=128), NetworkInput("native"),
                NetworkInput("stretch", height=40, width=32)):  # the last caches the image downscaled
        image = cache_image(pixels, net.cache_side)
        for seed in range(60):
            geometry = sample_geometry(sample_rng(seed, 0, 0), 90, 120, boxes)
            out, out_boxes, content = render_sample(image, geometry, net)
            _, h, w = out.shape
            if net.mode == "stretch":
                assert (h, w) == (net.height, net.width)
            elif net.mode == "longer_side":
                assert max(h, w) == 128
            assert out_boxes.shape[1] == 4 and len(out_boxes) <= 2  # the thin ones never survive
            assert (out_boxes[:, :2] >= 0).all() and (out_boxes[:, 2] <= w).all() and (out_boxes[:, 3] <= h).all()
            x0, y0, x1, y1 = geometry.window  # at least 2 px of the original image each way
            assert ((out_boxes[:, 2] - out_boxes[:, 0]) * (x1 - x0) / w >= MIN_BOX_SIZE - 1e-3).all()
            assert ((out_boxes[:, 3] - out_boxes[:, 1]) * (y1 - y0) / h >= MIN_BOX_SIZE - 1e-3).all()
            assert 0 <= content[0] < content[2] <= w and 0 <= content[1] < content[3] <= h
            assert 0.0 <= out.min() and out.max() <= 1.0


def test_a_window_beyond_the_image_is_gray_and_boxes_follow_the_crop() -> None:
    pixels = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    image = CachedImage(pixels, 40, 60)
    # The window: x -30..60, y 0..40 (30 px of gray on the left), a box cut at the window's
    # right edge, a sliver (1 px wide once clipped) and a flip.
    geometry = Geometry((-30, 0, 60, 40), True, [(10.0, 5.0, 20.0, 35.0), (59.0, 0.0, 60.0, 40.0)])
    out, boxes, content = render_sample(image, geometry, NetworkInput("native"))
    assert out.shape == (3, 40, 90)
    # flipped: the image is on the left now (x 0..60), the gray on the right
    assert torch.allclose(out[:, :, :60], torch.tensor(200 / 255)) and torch.allclose(out[:, :, 60:], torch.tensor(FILL))
    assert content == (0.0, 0.0, 60.0, 40.0)
    assert boxes.tolist() == [[40.0, 5.0, 50.0, 35.0]]  # x 40..50 in the window, mirrored; the sliver is gone


def test_iou_crop_keeps_its_rules() -> None:
    boxes = [[20.0, 20.0, 60.0, 140.0], [100.0, 30.0, 150.0, 150.0]]
    crops = 0
    for seed in range(300):
        g = sample_geometry(sample_rng(seed, 1, 2), 200, 160, boxes)
        x0, y0, x1, y1 = g.window
        if (x1 - x0) < 200 and (y1 - y0) < 160:  # cropped (no zoom-out larger than the image)
            crops += 1
            assert x1 - x0 >= 100 and y1 - y0 >= 80  # min_scale 0.5 of each side
            assert 0.5 <= (x1 - x0) / (y1 - y0) <= 2.0
        assert g.boxes  # a crop keeps the boxes centred inside it, and there is always one
    assert 60 <= crops <= 180  # p = 0.5 * (6/7 of the options crop), zoom-out aside


def test_cache_keeps_at_most_twice_the_input() -> None:
    big = torch.zeros(3, 500, 1000, dtype=torch.uint8)
    cached = cache_image(big, ADAS_IN.cache_side)
    assert cached.pixels.shape == (3, 160, 320) and (cached.orig_height, cached.orig_width) == (500, 1000)
    assert cache_image(big[:, :100, :150], ADAS_IN.cache_side).pixels.shape == (3, 100, 150)


# -- photometric ------------------------------------------------------------------------------
def test_photometric_distortion_on_a_batch_leaves_boxes_unchanged(records) -> None:
    batch = _batches(records, 0)[0]
    images, targets = batch.model_inputs()
    assert torch.equal(torch.cat([t["boxes"] for t in targets]), batch.boxes)
    assert all(t["labels"].tolist() == [1] * len(t["boxes"]) for t in targets)
    stacked = torch.stack(images)
    assert stacked.shape == batch.images.shape and not torch.equal(stacked, batch.images)
    assert 0.0 <= stacked.min() and stacked.max() <= 1.0


def test_photometric_distortion_matches_torchvision_per_sample() -> None:
    x = torch.rand(6, 3, 24, 32)
    rows = [sample_photometric(random.Random(i)) for i in range(6)]
    params = torch.tensor(rows)
    content = torch.tensor([[0.0, 0.0, 32.0, 24.0]] * 6)
    ours = distort(x, params, content)
    for i, row in enumerate(rows):
        ref = x[i]
        b, c_before, s, hue, c_after, hue_on, *perm = row
        ref = TF.adjust_brightness(ref, b)
        ref = TF.adjust_contrast(ref, c_before)
        ref = TF.adjust_saturation(ref, s)
        if hue_on:
            ref = TF.adjust_hue(ref, hue)
        ref = TF.adjust_contrast(ref, c_after)
        ref = ref[[int(p) for p in perm]]
        assert torch.allclose(ours[i], ref, atol=1e-5), i
    # outside the content box: the undistorted gray fill
    content[0] = torch.tensor([8.0, 0.0, 32.0, 24.0])
    assert torch.equal(distort(x, params, content)[0, :, :, :8], torch.full((3, 24, 8), FILL))
    f = torch.tensor([0.05, -0.05, 0.02, 0.0, -0.013, 0.031])
    assert torch.allclose(adjust_hue(x, f), torch.stack([TF.adjust_hue(x[i], float(f[i])) for i in range(6)]),
                          atol=1e-5)


# -- the models' own resize and the loss ----------------------------------------------------------
def test_the_models_resize_is_skipped_only_where_it_is_an_identity() -> None:
    adas = PedestrianAdas(input_height=96, input_width=160)
    assert network_input(adas) == ADAS_IN
    images = [torch.rand(3, 96, 160), torch.rand(3, 96, 160)]
    resized = torch.cat([F.interpolate(im[None] * 255.0, size=(96, 160), mode="bilinear", align_corners=False,
                                       antialias=True) for im in images]).flip(1)
    assert torch.equal(adas.preprocess(images), resized)
    pednet = ModelCard(architecture="flexbin_pednet", width=4, input_size=64).build()
    assert network_input(pednet) == NetworkInput("longer_side", size=64)


def _per_image_multibox_loss(loc, conf, priors, boxes, labels, box_coder, matcher):
    """The loss as computed before issue 18 (one image at a time), the reference."""
    n, num_priors, num_classes = conf.shape
    cls_targets = conf.new_zeros((n, num_priors), dtype=torch.int64)
    box_losses, num_positive = [], []
    for i in range(n):
        if boxes[i].numel() == 0:
            num_positive.append(0)
            continue
        matched = matcher(box_iou(boxes[i], priors))
        positive = torch.nonzero(matched >= 0).squeeze(1)
        gt = matched[positive]
        cls_targets[i, positive] = labels[i][gt]
        target = box_coder.encode_single(boxes[i][gt], priors[positive])
        box_losses.append(F.smooth_l1_loss(loc[i, positive], target, reduction="sum"))
        num_positive.append(int(positive.numel()))
    cls_loss = F.cross_entropy(conf.reshape(-1, num_classes), cls_targets.reshape(-1), reduction="none").view(n, -1)
    foreground = cls_targets > 0
    negative = cls_loss.detach().clone()
    negative[foreground] = -float("inf")
    rank = negative.argsort(dim=1, descending=True).argsort(dim=1)
    background = rank < NEGATIVES_PER_POSITIVE * torch.tensor(num_positive)[:, None]
    normaliser = max(1, sum(num_positive))
    box_loss = torch.stack(box_losses).sum() if box_losses else loc.sum() * 0.0
    return {"bbox_regression": box_loss / normaliser,
            "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / normaliser}


def test_the_batched_multibox_loss_equals_the_per_image_one() -> None:
    torch.manual_seed(0)
    model = PedestrianAdas(input_height=96, input_width=160)
    loc, conf, priors = model.raw_outputs(torch.rand(4, 3, 96, 160) * 255)
    g = torch.Generator().manual_seed(1)
    boxes = []
    for k in (3, 0, 1, 5):
        xy = torch.rand(k, 2, generator=g) * 0.7
        boxes.append(torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 0.3 + 0.02], 1))
    boxes[3][1] = boxes[3][0]  # two ground truths on the same best prior
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    ref = _per_image_multibox_loss(loc, conf, priors, boxes, labels, model.box_coder, model.matcher)
    ours = multibox_loss(loc, conf, priors, boxes, labels, model.box_coder, model.matcher)
    for key in ref:
        assert torch.allclose(ours[key], ref[key], rtol=1e-6), key
    grads_ref = torch.autograd.grad(sum(ref.values()), [loc, conf], retain_graph=True)
    grads = torch.autograd.grad(sum(ours.values()), [loc, conf])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, grads_ref))


def test_bf16_autocast_trains_and_leaves_the_model_as_it_was(records) -> None:
    model = ModelCard(architecture="flexbin_pednet", width=4, input_size=64).build()
    loss = train_detector(model, records, iterations=1, batch_size=2, options=TrainOptions(bf16=True))
    assert math.isfinite(loss) and not model.training
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert TrainOptions(bf16=True).provenance("cpu") == {"device": "cpu", "bf16_autocast": True}


# -- devices ----------------------------------------------------------------------------------
def test_device_parsing_and_the_cuda_absent_path(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(" cpu ") == "cpu"
    with pytest.raises(DeviceUnavailable, match="--device=cuda but CUDA is not available"):
        resolve_device("cuda", what="--device")
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(RuntimeError, match="FLEXBIN_DEVICE=cuda"):  # as the worker names its setting
        resolve_device("cuda", what="FLEXBIN_DEVICE")
    from core.__main__ import main

    for command in (["evaluate", "--model", "nowhere"], ["train", "--out", "nowhere"],
                    ["binarize", "--model", "m", "--out", "o", "--min-compression-ratio", "8"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--device", "cuda"])
        assert exit_info.value.code == 2
        assert "--device=cuda but CUDA is not available" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceUnavailable, match="1 CUDA device"):
        resolve_device("cuda:1")

"""pedestrian_adas_0002: the bundled weights, parity with the original IR run by OpenVINO,
layer discovery (dense vs depthwise), the multibox loss and a grouped pipeline run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from core import pretrained as pretrained_module
from core.checkpoint import unpack_checkpoint
from core.data import read_pennfudan, split_records
from core.detection_metrics import evaluate_detections
from core.job_spec import PipelineConfig, Target
from core.models.adas import PRIORS, PedestrianAdas, multibox_loss
from core.models.adas_reference import default_ir_path, unmatched_top_detections
from core.paths import default_data_dir
from core.pipeline import eligible_layers, plan_steps, run
from core.pretrained import PRETRAINED, load_pretrained
from core.priority import discover_layers, order_layers
from core.train import ImageCache, predict

NAME = "pedestrian_adas_0002"
PARITY_IMAGES = 8

needs_ir = pytest.mark.skipif(
    not default_ir_path().is_file(),
    reason=f"the original IR is not at {default_ir_path()} (set FLEXBIN_SHARED_MODELS to the folder holding "
           "pedestrian-detection-adas-0002/); FlexBin itself only needs the converted weights")


@pytest.fixture(scope="module")
def pretrained() -> tuple[PedestrianAdas, object]:
    model, card = load_pretrained(NAME)
    assert isinstance(model, PedestrianAdas)
    return model, card


@pytest.fixture(scope="module")
def records():
    return read_pennfudan(default_data_dir())


# -- the bundled weights ----------------------------------------------------------------
def test_bundled_weights_load_and_describe_themselves(pretrained) -> None:
    model, card = pretrained
    assert card.architecture == NAME and card.input_size == 672
    assert (card.builder_kwargs["input_height"], card.builder_kwargs["input_width"]) == (384, 672)
    assert card.provenance["license"] == "Apache-2.0"
    assert 1_160_000 < sum(p.numel() for p in model.parameters()) < 1_170_000  # the card's 1.165 M
    folder = PRETRAINED[NAME].directory
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "converted" in (folder / "NOTICE").read_text()


def test_a_changed_or_missing_weights_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / NAME
    shutil.copytree(PRETRAINED[NAME].directory, copy)
    monkeypatch.setattr(pretrained_module, "WEIGHTS_ROOT", tmp_path)
    load_pretrained(NAME)  # an exact copy loads
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(pretrained_module.PretrainedWeightsError, match="weights.safetensors has sha256 .* expected"):
        load_pretrained(NAME)
    (copy / "weights.safetensors").unlink()
    with pytest.raises(pretrained_module.PretrainedWeightsError, match="missing"):
        load_pretrained(NAME)
    with pytest.raises(pretrained_module.PretrainedWeightsError, match="no pretrained weights named 'yolo'"):
        load_pretrained("yolo")


def test_builder_kwargs_override_the_card_and_are_validated() -> None:
    model, card = load_pretrained(NAME, input_height=192, input_width=336)
    assert (model.input_height, model.input_width) == (192, 336) and card.builder_kwargs["input_width"] == 336
    with pytest.raises(ValueError, match="'input_width' .* must be in"):
        load_pretrained(NAME, input_width=100_000)


# -- parity with the original IR --------------------------------------------------------
@needs_ir
@pytest.mark.parametrize("size", [(384, 672), (192, 336)])
def test_priors_are_the_irs_priorbox_output(pretrained, size: tuple[int, int]) -> None:
    """The priors equal the IR's concatenated PriorBox output, also for the IR reshaped to
    half resolution (how the module generates priors for a lower fine-tuning resolution)."""
    import openvino as ov

    core = ov.Core()
    ir = core.read_model(default_ir_path())
    ir.reshape([1, 3, *size])
    (priors_op,) = [op for op in ir.get_ordered_ops() if op.get_friendly_name() == "mbox_priorbox"]
    ir.add_outputs([priors_op.output(0)])
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    expected = compiled(torch.zeros(1, 3, *size).numpy())[compiled.output(1)][0, 0].reshape(-1, 4)
    model, _ = pretrained
    with torch.no_grad():
        _, _, priors = model.raw_outputs(torch.zeros(1, 3, *size))
    assert priors.shape == expected.shape
    assert torch.allclose(priors, torch.from_numpy(expected), atol=1e-6)


@needs_ir
def test_detections_match_openvino_on_a_subset(pretrained, records) -> None:
    from core.models.adas_reference import OpenVinoReference

    model, _ = pretrained
    chosen = records[:: len(records) // PARITY_IMAGES][:PARITY_IMAGES]
    cache = ImageCache()
    images = [cache.image(r) for r in chosen]
    reference = OpenVinoReference(default_ir_path())(model, images)
    ours = predict(model, images, batch_size=4)
    for record, ref, det in zip(chosen, reference, ours):
        assert len(ref["boxes"]) > 0
        # Both ways: every detection scoring >= 0.05 (the /detect default) has its twin.
        assert unmatched_top_detections(ref, det, min_score=0.05) == [], record.name
        assert unmatched_top_detections(det, ref, min_score=0.05) == [], record.name
    truth = [r.boxes for r in chosen]
    ref_metrics, our_metrics = evaluate_detections(reference, truth), evaluate_detections(ours, truth)
    assert abs(ref_metrics.miss_rate - our_metrics.miss_rate) <= 0.005
    assert our_metrics.ap50 > 0.8  # a pretrained pedestrian detector, not random weights


# -- layers --------------------------------------------------------------------------------
def test_discovery_finds_dense_convs_and_keeps_depthwise_float_by_default(pretrained) -> None:
    model, card = pretrained
    layers = discover_layers(model, card.input_size)
    depthwise = [layer for layer in layers if layer.groups > 1]
    assert len(layers) == 59 and len(depthwise) == 17
    assert all(layer.groups == layer.shape[0] and layer.shape[1] == 1 for layer in depthwise)
    names = [layer.name for layer in layers]
    # heads run right after their feature map: the stride-16 heads are shallower than conv5_6
    assert names.index("heads.conv4_3_norm.conf") < names.index("features.conv5_6.dw")
    assert names[-1] == "heads.conv9_2.conf"

    config = PipelineConfig(target=Target(min_compression_ratio=8.0))
    dense = eligible_layers(model, card, config)
    assert len(dense) == 41 and all(layer.groups == 1 for layer in dense)
    total = sum(layer.num_params for layer in layers)
    assert sum(layer.num_params for layer in dense) / total > 0.97
    assert 0.02 < sum(layer.num_params for layer in depthwise) / total < 0.03
    with_depthwise = eligible_layers(model, card, config.model_copy(update={"binarize_depthwise": True,
                                                                            "min_layer_params": 0}))
    assert len(with_depthwise) == 59  # every conv: 41 dense + 17 depthwise + the 3x3 stem
    assert {layer.name for layer in depthwise} <= {layer.name for layer in with_depthwise}


def test_layers_per_step_groups_consecutive_layers(pretrained) -> None:
    model, card = pretrained
    one = plan_steps(model, card, PipelineConfig(target=Target(min_compression_ratio=8.0)))
    four = plan_steps(model, card, PipelineConfig(target=Target(min_compression_ratio=8.0), layers_per_step=4))
    assert [name for step in four.steps for name in step] == [name for step in one.steps for name in step]
    assert [len(step) for step in four.steps] == [4] * 10 + [1]
    assert four.expected_steps == -(-one.expected_steps // 4)
    baseline = plan_steps(model, card, PipelineConfig(target=Target(min_compression_ratio=8.0),
                                                      layers_per_step=4, method="all_at_once"))
    assert baseline.steps == [[name for step in one.steps[: one.expected_steps] for name in step]]
    assert baseline.iterations == [four.expected_steps * 200]  # the grouped run's budget


# -- the loss ------------------------------------------------------------------------------
def test_multibox_loss_is_near_zero_for_the_encoded_targets_and_mines_negatives() -> None:
    model = PedestrianAdas(input_height=96, input_width=160)
    with torch.no_grad():
        loc, conf, priors = model.raw_outputs(torch.zeros(1, 3, 96, 160))
    boxes = [torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.6, 0.1, 0.8, 0.7]])]
    labels = [torch.tensor([1, 1])]
    random_losses = multibox_loss(loc, conf, priors, boxes, labels, model.box_coder, model.matcher)
    # The perfect prediction: the encoded ground truth at every matched prior, confident classes.
    matched = model.matcher(box_iou(boxes[0], priors))
    positive = matched >= 0
    perfect_loc = torch.zeros_like(loc)
    perfect_loc[0, positive] = model.box_coder.encode_single(boxes[0][matched[positive]], priors[positive])
    perfect_conf = torch.zeros_like(conf)
    perfect_conf[0, :, 0] = 20.0
    perfect_conf[0, positive, 0], perfect_conf[0, positive, 1] = 0.0, 20.0
    perfect = multibox_loss(perfect_loc, perfect_conf, priors, boxes, labels, model.box_coder, model.matcher)
    assert positive.sum() >= 2  # each ground truth keeps at least its best prior
    assert perfect["bbox_regression"] < 1e-6 and perfect["classification"] < 1e-6
    assert random_losses["classification"] > 0.1
    # Decoding the encoded targets gives the ground truth back: encoding and decoding agree.
    decoded = model.box_coder.decode_single(perfect_loc[0, positive], priors[positive])
    assert torch.allclose(decoded, boxes[0][matched[positive]], atol=1e-5)
    # No ground truth: no positives, so no negatives are mined either and the loss is 0.
    empty = multibox_loss(loc, conf, priors, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)],
                          model.box_coder, model.matcher)
    assert float(empty["classification"]) == 0.0 and float(empty["bbox_regression"]) == 0.0


def test_one_prediction_per_prior_at_any_input_size() -> None:
    model = PedestrianAdas(input_height=96, input_width=160)
    with torch.no_grad():
        loc, conf, priors = model.raw_outputs(torch.zeros(2, 3, 96, 160))
    # Feature maps at 96x160: 6x10, 3x5, 2x3, 1x2, 1x1, 1x1 cells; 2, 2, 2, 2, 1, 1 heads on them.
    per_map = [(60, PRIORS[0]), (60, PRIORS[1]), (15, PRIORS[2]), (15, PRIORS[3]), (6, PRIORS[4]),
               (6, PRIORS[5]), (2, PRIORS[6]), (2, PRIORS[7]), (1, PRIORS[8]), (1, PRIORS[9])]
    assert priors.shape == (sum(cells * spec.num_priors for cells, spec in per_map), 4) == (764, 4)
    assert loc.shape == (2, 764, 4) and conf.shape == (2, 764, 2)


# -- a grouped pipeline run ----------------------------------------------------------------
def test_two_grouped_steps_at_low_resolution(records) -> None:
    model, card = load_pretrained(NAME, input_height=96, input_width=160)
    train, val = split_records(records)
    config = PipelineConfig(target=Target(min_compression_ratio=1.05), layers_per_step=3, finetune_iters=1,
                            batch_size=2, learning_rate=1e-4)
    order = [layer.name for layer in order_layers(eligible_layers(model, card, config), "inverse_depth")]
    result = run(model, card, train[:4], val[:3], config)
    assert [s.index for s in result.steps] == [0, 1, 2] and result.target_met
    assert result.steps[1].layers == order[:3] and result.steps[2].layers == order[3:6]
    assert sorted(result.steps[2].binary_layers) == sorted(order[:6])
    assert 1.0 == result.steps[0].compression_ratio < result.steps[1].compression_ratio \
        < 1.05 <= result.steps[2].compression_ratio
    served, served_card = unpack_checkpoint(result.steps[2].checkpoint)
    assert isinstance(served, PedestrianAdas) and (served.input_height, served.input_width) == (96, 160)
    assert set(served_card.binary_layers) == set(order[:6])
    out = served([torch.rand(3, 120, 90)])[0]
    assert out["boxes"].shape[1] == 4 and torch.isfinite(out["scores"]).all()

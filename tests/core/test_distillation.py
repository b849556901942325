"""Distillation from the job's float model (issue 19): the loss, the detectors' dense outputs
it compares, and a job that uses it."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from core.checkpoint import ModelCard
from core.data import read_pennfudan, split_records
from core.distillation import Distillation, distillation_loss, frozen_teacher
from core.job_spec import PipelineConfig, Target
from core.models.adas import PedestrianAdas
from core.models.outputs import DenseOutputs
from core.paths import default_data_dir
from core.pipeline import run
from core.train import IterationReport, train_detector


@pytest.fixture(scope="module")
def records():
    train, val = split_records(read_pennfudan(default_data_dir()))
    return train[:6], val[:3]


def _pednet() -> torch.nn.Module:
    torch.manual_seed(0)
    return ModelCard(architecture="flexbin_pednet", width=4, input_size=64).build()


def _images(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 80, 120, generator=g) for _ in range(n)]


@pytest.mark.parametrize("build", [_pednet, lambda: PedestrianAdas(input_height=96, input_width=160)],
                         ids=["pednet", "adas"])
def test_the_loss_is_zero_when_student_equals_teacher_and_grows_apart(build) -> None:
    model = build().eval()
    with torch.no_grad():
        outputs = model.dense_outputs(_images())
    # ADAS's untrained heads are zero-initialised nowhere: some priors are "confident"
    assert distillation_loss(outputs, outputs).item() == pytest.approx(0.0, abs=1e-6)
    shifted = DenseOutputs(outputs.boxes + 0.5, outputs.logits + torch.randn_like(outputs.logits), outputs.scores,
                           outputs.raw)
    assert distillation_loss(shifted, outputs).item() > 0.01


def test_box_terms_count_only_the_teachers_confident_priors() -> None:
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])  # prior 0 background, prior 1 a pedestrian
    teacher = DenseOutputs(torch.zeros(1, 2, 4), logits, "softmax")
    wrong_on_background = DenseOutputs(torch.tensor([[[9.0] * 4, [0.0] * 4]]), logits, "softmax")
    wrong_on_pedestrian = DenseOutputs(torch.tensor([[[0.0] * 4, [1.0] * 4]]), logits, "softmax")
    assert distillation_loss(wrong_on_background, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(wrong_on_pedestrian, teacher).item() == pytest.approx(4 * 0.5)  # smooth L1 at 1


def test_dense_outputs_give_the_models_own_losses() -> None:
    model = _pednet().train()
    images = _images()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 70.0]]), "labels": torch.ones(1, dtype=torch.int64)}
               for _ in images]
    torch.manual_seed(3)
    direct = model(images, targets)
    torch.manual_seed(3)
    via_dense = model.dense_losses(model.dense_outputs(images), images, targets)
    assert direct.keys() == via_dense.keys()
    assert all(torch.allclose(direct[k], via_dense[k]) for k in direct)


def test_training_with_a_teacher_adds_its_loss_and_leaves_the_teacher_alone(records) -> None:
    train, _ = records
    model = _pednet()
    teacher = frozen_teacher(copy.deepcopy(model), "cpu")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    reports: list[IterationReport] = []
    loss = train_detector(model, train, iterations=2, batch_size=2, on_iteration=reports.append,
                          distillation=Distillation(teacher, weight=1.0))
    assert math.isfinite(loss) and len(reports) == 2
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_a_job_distils_from_its_float_model(records) -> None:
    train, val = records
    model = _pednet().eval()
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    config = PipelineConfig(target=Target(min_compression_ratio=3.0), finetune_iters=2, batch_size=2,
                            min_layer_params=0, distillation_weight=0.5)
    result = run(model, card, train, val, config, export_openvino=False)
    assert result.steps[-1].compression_ratio >= 3.0 and len(result.steps) > 1
    with pytest.raises(ValueError, match="distillation_weight"):
        PipelineConfig(target=Target(min_compression_ratio=3.0), distillation_weight=-1.0)

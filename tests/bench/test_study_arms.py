"""The claim study's folds, arms and iteration budgets (bench.study, core.pipeline's
consolidation), with tiny detectors and no long training."""
from __future__ import annotations

import copy
import random
from collections import Counter

import numpy as np
import pytest
import torch

from bench.study.arms import (
    ARMS,
    BASELINE,
    CONTROL,
    StudyDesign,
    StudyUnavailable,
    choose_learning_rate,
    evaluation_units,
    folds_of,
    inner_split,
    matched_points,
    pipeline_config,
    planned_iterations,
)
from bench.study.drift import layer_output_errors
from bench.study.stats import Units
from core.binary import binarize_module
from core.checkpoint import ModelCard, load_state, pack_checkpoint, unpack_checkpoint
from core.data import kfold_records, read_pennfudan
from core.paths import default_data_dir
from core.pipeline import PipelineConfig, StepOutcome, Target, consolidate, run
from core.priority import discover_layers


@pytest.fixture(scope="module")
def records():
    return read_pennfudan(default_data_dir())


def test_folds_partition_the_images_with_no_image_on_both_sides(records) -> None:
    folds = kfold_records(records, folds=4)
    names = {r.name for r in records}
    assert sorted(len(evaluate) for _, evaluate in folds) == [32, 32, 33, 33]
    evaluated = [r.name for _, evaluate in folds for r in evaluate]
    assert sorted(evaluated) == sorted(names)  # every image evaluated in exactly one fold
    for train, evaluate in folds:
        assert not {r.name for r in train} & {r.name for r in evaluate}
        assert {r.name for r in train} | {r.name for r in evaluate} == names
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert [[r.name for r in e] for _, e in kfold_records(shuffled, folds=4)] == \
        [[r.name for r in e] for _, e in folds]  # fixed by the names alone
    with pytest.raises(ValueError, match="folds"):
        kfold_records(records, folds=1)


def test_every_image_is_evaluated_once_per_seed(records) -> None:
    design = StudyDesign(seeds=3)
    units = evaluation_units(records, design)
    assert Counter((seed, name) for _, seed, name in units) == \
        Counter((seed, r.name) for seed in range(3) for r in records)
    index = {r.name: i for i, r in enumerate(records)}
    Units(*(np.array(col) for col in zip(*[(f, s, index[n]) for f, s, n in units], strict=True)))
    quick = StudyDesign(evaluated_folds=(0, 1), seeds=1)
    assert len(evaluation_units(records, quick)) == sum(len(e) for _, e in kfold_records(records)[:2])


def test_learning_rates_are_chosen_on_training_images_only(records) -> None:
    design = StudyDesign()
    for train, evaluate in folds_of(records, design).values():
        inner_train, inner_val = inner_split(train, design)
        held_out = {r.name for r in evaluate}
        assert not held_out & {r.name for r in inner_train + inner_val}
        assert not {r.name for r in inner_train} & {r.name for r in inner_val}
    assert choose_learning_rate({1e-3: 0.30, 3e-4: 0.25, 1e-4: 0.25}) == 1e-4  # a tie: the smaller rate
    assert choose_learning_rate({1e-3: 0.20, 3e-4: 0.25}) == 1e-3


def test_arms_get_equal_iterations_at_every_matched_point() -> None:
    card = ModelCard(architecture="flexbin_pednet")  # the study's detector, untrained: plans only
    model = card.build().eval()
    design = StudyDesign()
    assert matched_points(model, card, design) == {2: 2, 4: 4, 6: 6, 8: 8}
    iterations = planned_iterations(model, card, design)
    assert set(iterations) == set(ARMS)
    for k in (2, 4, 6, 8):
        expected = k * design.finetune_iters + design.consolidation_iters
        assert iterations["inverse_depth"][k] == iterations[BASELINE][k] == iterations[CONTROL][k] == expected
    assert iterations["forward"] == iterations["sensitivity"] == {8: iterations[BASELINE][8]}


def test_binary_activations_are_unavailable_until_the_pipeline_has_them() -> None:
    design = StudyDesign(activation_bits=1)
    if "activation_bits" in PipelineConfig.model_fields:
        assert pipeline_config(design, "inverse_depth", learning_rate=1e-3, seed=0).activation_bits == 1
    else:
        with pytest.raises(StudyUnavailable, match="activation_bits"):
            pipeline_config(design, "inverse_depth", learning_rate=1e-3, seed=0)


@pytest.fixture(scope="module")
def tiny(records):
    torch.manual_seed(0)
    card = ModelCard(architecture="flexbin_pednet", width=4, input_size=64)
    return card.build().eval(), card, records[:6], records[6:9]


def test_consolidation_serves_a_consolidated_copy_and_resumes_from_the_chain(tiny) -> None:
    model, card, train, val = tiny
    config = PipelineConfig(target=Target(min_compression_ratio=1.5), finetune_iters=2, batch_size=2,
                            min_layer_params=100, consolidation_iters=3)
    seen: list[StepOutcome] = []
    result = run(model, card, train, val, config, on_step=seen.append)
    chain = run(model, card, train, val, config.model_copy(update={"consolidation_iters": 0}))
    assert len(result.steps) == len(chain.steps) == 3
    for a, b in zip(result.steps[1:], chain.steps[1:], strict=True):
        assert a.state == b.state  # the run continues from the unconsolidated network
        assert a.checkpoint != b.checkpoint  # but serves the consolidated copy
    # the study's branch (resume state + consolidate) serves exactly the pipeline's checkpoint
    net = load_state(card, seen[1].state)
    consolidate(net, train, config, num_binary_layers=len(seen[1].binary_layers))
    served, _ = unpack_checkpoint(seen[1].checkpoint)
    ours, _ = unpack_checkpoint(pack_checkpoint(net, card))
    for (key, a), b in zip(served.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    resumed = run(model, card, train, val, config, completed=seen[:2])
    assert [s.checkpoint for s in resumed.steps] == [s.checkpoint for s in result.steps]


def test_layer_drift_is_zero_before_the_binarized_layer_and_grows_after(tiny) -> None:
    model, card, _, _ = tiny
    images = [torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    layers = [layer.name for layer in discover_layers(model, card.input_size)]
    assert set(layer_output_errors(model, model, images, layers).values()) == {0.0}
    binarized = copy.deepcopy(model)
    middle = layers[len(layers) // 2]
    binarize_module(dict(binarized.named_modules())[middle], 1)
    errors = layer_output_errors(binarized, model, images, layers)
    before = layers[: layers.index(middle)]
    assert all(errors[name] == 0.0 for name in before)
    assert errors[middle] > 0.01 and all(errors[name] > 0 for name in layers[layers.index(middle):])
